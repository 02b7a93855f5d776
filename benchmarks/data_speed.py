"""Data speed: protocol generation cold (empty cache) and warm (cached), and the training batch path's images/s.

Usage::

    python -m benchmarks.data_speed [--threads 1] [--protocols fmnist-ls fmnist-scale fmnist-res] [--out FILE]

Cold runs use a fresh temporary cache (``MSRESNET_CACHE``), so nothing from ``~/.cache`` is reused; warm runs build
the same protocol again in that cache and load every part from disk. Loader figures: the uint8-tensor batch path the
engine uses (index a permutation, ``float().div_(255)``), with and without the random-rescale augmentation, against a
plain ``DataLoader`` over ``dataset[i]`` for reference. Wall-clock figures on a shared machine: the load average at
the start is recorded next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "data_speed.json"


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _build_all(name: str, part: str) -> int:
    """Build ``name`` and touch its test conditions (``part="test"``) or train + val (``"train"``); images count."""
    from msresnet.data import build_protocol

    p = build_protocol(name)
    if part == "test":
        return sum(len(d) for d in p.test.values())
    return len(p.train) + len(p.val or [])


def bench_generation(names: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix="msresnet-bench-") as tmp:
            os.environ["MSRESNET_CACHE"] = tmp
            row: dict[str, float] = {}
            for part in ("test", "train"):
                cold, n = _timed(lambda name=name, part=part: _build_all(name, part))
                warm, _ = _timed(lambda name=name, part=part: _build_all(name, part))
                row[f"{part}_images"] = n
                row[f"{part}_cold_s"] = round(cold, 3)
                row[f"{part}_warm_s"] = round(warm, 3)
            row["cache_mb"] = round(sum(f.stat().st_size for f in Path(tmp).rglob("*.npz")) / 2**20, 1)
        out[name] = row
        print(f"{name:13s} " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    os.environ.pop("MSRESNET_CACHE", None)
    return out


def bench_loader(batch_size: int = 256, max_batches: int = 100) -> dict[str, float]:
    from torch.utils.data import DataLoader

    from msresnet.data import build_protocol
    from msresnet.data.scaling import random_rescale

    with tempfile.TemporaryDirectory(prefix="msresnet-bench-") as tmp:
        os.environ["MSRESNET_CACHE"] = tmp
        train = build_protocol("fmnist-ls", limit=batch_size * max_batches).train  # 64x64 canvas images
    os.environ.pop("MSRESNET_CACHE", None)
    g = torch.Generator().manual_seed(0)

    def run(aug: bool) -> float:
        n, t0 = 0, time.perf_counter()
        for x, _ in train.batches(batch_size, shuffle=True, generator=g):
            if aug:
                x = random_rescale(x, (0.5, 2.0), generator=g)
            n += len(x)
        return n / (time.perf_counter() - t0)

    def run_dataloader() -> float:
        n, t0 = 0, time.perf_counter()
        for x, _ in DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=0):
            n += len(x)
        return n / (time.perf_counter() - t0)

    out = {
        "images": len(train),
        "image_size": list(train.image_size),
        "batch_size": batch_size,
        "tensor_batches_img_s": round(run(False)),
        "tensor_batches_rescale_aug_img_s": round(run(True)),
        "dataloader_getitem_img_s": round(run_dataloader()),
    }
    print("loader        " + "  ".join(f"{k}={v}" for k, v in out.items()), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: a shared 2-core box)")
    ap.add_argument("--protocols", nargs="+", default=["fmnist-ls", "fmnist-scale", "fmnist-res"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from msresnet import __version__

    result = {
        "benchmark": "data_speed",
        "command": "python -m benchmarks.data_speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "msresnet": __version__,
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "platform": platform.platform(),
        "generation": bench_generation(args.protocols),
        "loader": bench_loader(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
