"""Speed benchmark: cost of each model family relative to the plain ResNet of the same depth and width.

For every model and input size: parameters, forward FLOPs per image (``torch.utils.flop_counter``), training
images/s (forward + backward + SGD step), inference images/s, and training memory; each as a ratio to the plain
ResNet measured in the SAME process. Models are interleaved inside every repeat and medians are taken, so
machine-load drift hits every model alike.

Training memory: on CUDA ``torch.cuda.max_memory_allocated`` over a training step. On CPU torch keeps no
allocator statistics (and the process max-RSS only ever grows), so it is computed: parameters + gradients +
momentum + every tensor saved for the backward pass (counted once per storage with ``saved_tensors_hooks``),
which is what dominates a training step's peak.

Usage::

    python -m benchmarks.speed --quick                      # CPU, 64 and 128 px, batch 16, 3 repeats
    python -m benchmarks.speed --device cuda --repeats 10
    python -m benchmarks.speed --models resnet20,msresnet20 --sizes 64
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import msresnet

DEFAULT_MODELS = (
    "resnet20",
    "msresnet20",
    "msresnet20_lite",
    "msresnet20_pyramid",
    "msresnet20_softmax",
    "msresnet20_kernels",
    "msresnet20_hermite",
    "scalechannel_fovmax_resnet20",
    "sesn_resnet20",
    "res2net_resnet20",
)
RESULTS = Path(__file__).resolve().parent / "results"


def baseline_for(name: str) -> str:
    """The plain ResNet of the same depth (digits in the name), width from the same kwargs."""
    m = re.search(r"(\d+)", name)
    cand = f"resnet{m.group(1)}" if m else "resnet20"
    return cand if msresnet.models.is_model(cand) else "resnet20"


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; timings need it finished)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs for the batch ``x`` (conv/matmul FLOPs as counted by torch)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def training_memory_mb(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak training memory in MiB (measured on CUDA, computed on CPU; see the module docstring)."""
    model.train()
    if x.device.type == "cuda":
        train_step(model, opt, x, y)  # allocate optimizer state first
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(x.device)
        train_step(model, opt, x, y)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(x.device) / 2**20
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    activations = sum(v for k, v in seen.items() if k not in params and k != x.untyped_storage().data_ptr())
    loss.backward()
    model.zero_grad(set_to_none=True)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return (3 * param_bytes + activations + x.numel() * x.element_size()) / 2**20


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    names = list(dict.fromkeys([*(baseline_for(n) for n in args.models), *args.models]))
    models, opts = {}, {}
    for name in names:
        torch.manual_seed(0)
        models[name] = msresnet.create_model(name, num_classes=10, in_chans=args.in_chans, width=args.width).to(device)
        opts[name] = torch.optim.SGD(models[name].parameters(), lr=1e-3, momentum=0.9)
    rows = []
    for size in args.sizes:
        x = torch.randn(args.batch, args.in_chans, size, size, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        static: dict[str, dict[str, float]] = {}
        for name, model in models.items():
            flops = count_flops(model, x[:1])
            static[name] = {
                "params": sum(p.numel() for p in model.parameters()),
                "gflops_per_image": flops / 1e9,
                "train_mem_mb": training_memory_mb(model, opts[name], x, y),
            }
            for _ in range(args.warmup):  # warm-up: allocator, cudnn autotuning, lazy init
                model.train()
                train_step(model, opts[name], x, y)
                model.eval()
                with torch.no_grad():
                    model(x)
        train_ips: dict[str, list[float]] = {n: [] for n in models}
        infer_ips: dict[str, list[float]] = {n: [] for n in models}
        for _ in range(args.repeats):
            for name, model in models.items():  # interleaved: drift in machine load hits every model alike
                model.train()
                sync_device(device)
                t0 = time.perf_counter()
                for _ in range(args.iters):
                    train_step(model, opts[name], x, y)
                sync_device(device)
                train_ips[name].append(args.batch * args.iters / (time.perf_counter() - t0))
                model.eval()
                with torch.no_grad():
                    sync_device(device)
                    t0 = time.perf_counter()
                    for _ in range(args.iters):
                        model(x)
                    sync_device(device)
                infer_ips[name].append(args.batch * args.iters / (time.perf_counter() - t0))
        for name in args.models:
            base = baseline_for(name)
            row = {"model": name, "baseline": base, "size": size, **static[name]}
            row["train_img_s"] = statistics.median(train_ips[name])
            row["infer_img_s"] = statistics.median(infer_ips[name])
            b = static[base]
            row["ratio"] = {
                "params": row["params"] / b["params"],
                "flops": row["gflops_per_image"] / b["gflops_per_image"],
                # cost ratios: > 1 means slower / bigger than the plain ResNet
                "train_time": statistics.median(train_ips[base]) / row["train_img_s"],
                "infer_time": statistics.median(infer_ips[base]) / row["infer_img_s"],
                "train_mem": row["train_mem_mb"] / b["train_mem_mb"],
            }
            rows.append(row)
            print_row(row)
    return {
        "benchmark": "speed",
        "git_revision": git_revision(),
        "torch": torch.__version__,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "in_chans": args.in_chans,
        "width": args.width,
        "repeats": args.repeats,
        "iters": args.iters,
        "memory": "cuda max_memory_allocated" if device.type == "cuda" else "params*3 + saved activations",
        "rows": rows,
    }


HEADER = (
    f"{'model':30s} {'px':>4s} {'params':>8s} {'GFLOP/img':>9s} {'train img/s':>11s} {'infer img/s':>11s} "
    f"{'mem MiB':>8s} | {'xFLOPs':>6s} {'xTrain':>6s} {'xInfer':>6s} {'xMem':>5s}"
)


def print_row(r: dict[str, Any]) -> None:
    q = r["ratio"]
    print(
        f"{r['model']:30s} {r['size']:4d} {r['params'] / 1e6:7.3f}M {r['gflops_per_image']:9.4f} "
        f"{r['train_img_s']:11.1f} {r['infer_img_s']:11.1f} {r['train_mem_mb']:8.1f} | "
        f"{q['flops']:6.2f} {q['train_time']:6.2f} {q['infer_time']:6.2f} {q['train_mem']:5.2f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", type=lambda s: s.split(","), default=list(DEFAULT_MODELS))
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[64, 128])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=3, help="steps per timed measurement")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="CPU-friendly: batch 16, 3 repeats of 1 step, no extra warm-up")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/speed[_cuda].json)")
    args = p.parse_args(argv)
    if args.quick:  # the memory and FLOP passes already warm every model up
        args.batch, args.repeats, args.iters, args.warmup = 16, 3, 1, 0
    for n in args.models:
        msresnet.models.model_entrypoint(n)  # unknown names fail before any timing
    print(HEADER)
    result = run(args)
    out = args.out or RESULTS / ("speed_cuda.json" if args.device.startswith("cuda") else "speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
