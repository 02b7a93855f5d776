"""Profile one training step per model and numeric mode, to find where a model's step time goes.

For every model and mode (``fp32``, ``bf16``, ``fp32-cl``, ``bf16-cl``; ``-cl`` = channels-last, as the engine's
``--channels-last`` sets it) this times a few training steps (forward + backward + SGD step under the engine's
autocast), then records one more step with ``torch.profiler``: the ops taking the most self time (device time on
CUDA), how many ops and device kernels one step launches, and the ops that copy memory between layouts or wait for
the device (``aten::copy_``, ``aten::contiguous``, ``aten::item``, ``cudaStreamSynchronize``...). A model that is
slow only under one mode shows it here: a layout copy per layer, a slow fallback kernel, or a host sync.

``--si-view`` takes the step the way the msresnet rows train on fmnist-res and fmnist-scale: the scale-invariance
loss with its resized second view, one random size per step, so most steps meet shapes not seen before.
``--autotune on,off`` repeats every measurement with cuDNN's autotuner (``torch.backends.cudnn.benchmark``) on and
off: it re-tunes every convolution at each new shape, which is why the engine turns it off for such runs.

Usage::

    python -m benchmarks.profile_step --device cuda --batch 128       # the GPU question: bf16 + channels-last
    python -m benchmarks.profile_step --quick                         # CPU, small batch, a few seconds a model
    python -m benchmarks.profile_step --device cuda --si-view --autotune on,off --models resnet20,msresnet20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

import msresnet
from benchmarks.speed import git_revision, sync_device
from msresnet.engine.step import TrainStep, autocast, to_channels_last
from msresnet.losses import ScaleInvarianceLoss

MODES = ("fp32", "bf16", "fp32-cl", "bf16-cl")
DEFAULT_MODELS = ("resnet20", "msresnet20", "msresnet20_canonical")
# op or runtime-call names that mean a layout copy or a host wait
COPY_OPS = ("aten::copy_", "aten::contiguous", "aten::clone", "aten::_to_copy")
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize",
            "cudaDeviceSynchronize", "cudaMemcpyAsync")  # fmt: skip
RESULTS = Path(__file__).resolve().parent / "results"


def parse_mode(mode: str) -> tuple[str | None, bool]:
    """``"bf16-cl"`` -> (``"bf16"``, channels-last)."""
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    dtype, _, cl = mode.partition("-")
    return (None if dtype == "fp32" else dtype), cl == "cl"


def _on_off(text: str) -> list[bool]:
    """``"on,off"`` -> ``[True, False]``."""
    words = text.split(",")
    if any(w not in ("on", "off") for w in words):
        raise argparse.ArgumentTypeError(f"expected on / off values separated by commas, got {text!r}")
    return [w == "on" for w in words]


def make_step(model: torch.nn.Module, amp: str | None, device: torch.device, si_view: bool = False):  # noqa: ANN201
    """One training step as the engine takes it (autocast forward, float32 loss, backward, SGD); with ``si_view``
    the loss is the scale-invariance loss with its resized view (a second forward at a random size)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    net = TrainStep(model, ScaleInvarianceLoss(weight=1.0) if si_view else None, 0.0)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(device, amp):
            loss, _ = net(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _self_time(evt: Any, on_device: bool) -> float:
    """Self time in microseconds: device time on CUDA (kernels), CPU time otherwise."""
    if on_device:
        return float(getattr(evt, "self_device_time_total", getattr(evt, "self_cuda_time_total", 0.0)))
    return float(evt.self_cpu_time_total)


def profile_one(name: str, mode: str, args: argparse.Namespace, device: torch.device, autotune: bool) -> dict[str, Any]:
    """Times and profiles training steps of ``name`` under ``mode``, with cuDNN's autotuner on or off."""
    amp, channels_last = parse_mode(mode)
    torch.backends.cudnn.benchmark = autotune
    torch.manual_seed(0)
    model = msresnet.create_model(name, num_classes=10, in_chans=1).to(device).train()
    x = torch.randn(args.batch, 1, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    if channels_last:
        model = to_channels_last(model)
        x = x.contiguous(memory_format=torch.channels_last)
    step = make_step(model, amp, device, args.si_view)
    for _ in range(args.warmup):
        step(x, y)
    times = []
    for _ in range(args.repeats):
        sync_device(device)
        t0 = time.perf_counter()
        for _ in range(args.iters):
            step(x, y)
        sync_device(device)
        times.append((time.perf_counter() - t0) / args.iters)
    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    with profile(activities=activities) as prof:
        step(x, y)
        sync_device(device)
    events = prof.key_averages()
    kernels = sum(e.count for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
    top = sorted(events, key=lambda e: -_self_time(e, on_device))[: args.top]
    return {
        "model": name,
        "mode": mode,
        "autotune": autotune,
        "step_s": statistics.median(times),
        "images_per_s": args.batch / statistics.median(times),
        "ops_per_step": sum(e.count for e in events if e.key.startswith("aten::")),
        "kernels_per_step": kernels,
        "copies": {e.key: e.count for e in events if e.key in COPY_OPS},
        "syncs": {e.key: e.count for e in events if e.key in SYNC_OPS},
        "top": [{"op": e.key, "count": e.count, "self_us": round(_self_time(e, on_device), 1)} for e in top],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for autotune in args.autotune:
        for mode in args.modes:
            for name in args.models:
                row = profile_one(name, mode, args, device, autotune)
                same = [r for r in rows if (r["mode"], r["autotune"], r["model"]) == (mode, autotune, args.models[0])]
                row["time_ratio"] = row["step_s"] / (same[0] if same else row)["step_s"]  # first model, same setting
                rows.append(row)
                _print_row(row, tag="" if device.type != "cuda" else " tune-" + ("on" if autotune else "off"))
    return {
        "benchmark": "profile_step",
        "git_revision": git_revision(),
        "torch": torch.__version__,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "batch": args.batch,
        "size": args.size,
        "si_view": args.si_view,
        "baseline": args.models[0],
        "rows": rows,
    }


def _print_row(row: dict[str, Any], tag: str) -> None:
    copies = sum(row["copies"].values())
    mode, name = row["mode"] + tag, row["model"]
    print(f"{mode:17s} {name:24s} {row['images_per_s']:10.1f} img/s  x{row['time_ratio']:5.2f}  "
          f"ops {row['ops_per_step']:5d}  kernels {row['kernels_per_step']:5d}  copies {copies:4d}  "
          f"top: {row['top'][0]['op'] if row['top'] else '-'}", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", type=lambda s: s.split(","), default=list(DEFAULT_MODELS),
                   help="comma-separated; the first is the baseline of the time ratios")  # fmt: skip
    p.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, default=5, help="steps per timed measurement")
    p.add_argument("--top", type=int, default=12, help="ops listed per profile")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument(
        "--si-view",
        action="store_true",
        help="the scale-invariance loss with its resized view: a second pass at a random size each step",
    )
    p.add_argument(
        "--autotune",
        type=_on_off,
        default=None,
        help="cuDNN autotuner settings to measure, e.g. on,off (default: on for cuda, off otherwise)",
    )
    p.add_argument("--quick", action="store_true", help="CPU-friendly: batch 8, 32 px, 1 warm-up, 1 x 1 step")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default benchmarks/results/profile_step[_cuda].json)")  # fmt: skip
    args = p.parse_args(argv)
    if args.autotune is None:
        args.autotune = [args.device.startswith("cuda")]
    if args.quick:
        args.batch, args.size, args.warmup, args.repeats, args.iters = 8, 32, 1, 1, 1
    for mode in args.modes:
        parse_mode(mode)
    for n in args.models:
        msresnet.models.model_entrypoint(n)  # unknown names fail before any timing
    result = run(args)
    out = args.out or RESULTS / ("profile_step_cuda.json" if args.device.startswith("cuda") else "profile_step.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
