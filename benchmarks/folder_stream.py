"""Streaming image folders: the training input pipeline against torchvision's ImageFolder + DataLoader, peak memory
of the process tree, and seconds to the first training step, for two folder sizes.

Usage::

    python -m benchmarks.folder_stream --make 50000 --root /tmp/folders   # generate the folders once (not in the repo)
    python -m benchmarks.folder_stream --root /tmp/folders --workers 2 --batches 30

``--make N`` writes ``ROOT/small`` (N/10 images) and ``ROOT/large`` (N images): RGB JPEGs of mixed sizes (32-96 px,
random aspect), 10 classes. For each folder, in this process and with the same workers, batch size and transforms
(``train_transform(64, rrc+flip)``: random-resized-crop to 64 px and a flip, from torchvision's transforms v2):

* images/s (steady state: after the first batch and the workers' prefetched ones) of msresnet's pipeline
  (:class:`~msresnet.data.stream.FileDataset` + its epoch sampler + DataLoader) and of
  ``torchvision.datasets.ImageFolder`` + ``DataLoader(shuffle=True)``, alternated A/B/A/B, median of the rounds;
* peak resident memory of the process tree (this process plus its loader workers: the sum of their RSS, and of
  their PSS, which counts shared library pages once; sampled every 20 ms) while each pipeline runs;
* for the small folder, the in-memory path (decode once into one tensor, then index slices) for comparison;
* seconds to the first training step of ``msresnet train --data-dir`` (a fresh process: imports, folder scan,
  model, loader workers, first batch) and that process tree's peak RSS.

Wall-clock figures on a shared machine: the load average is recorded next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "folder_stream.json"
SIZE = 64
PREFETCH = 4  # DataLoader prefetch_factor of both pipelines (msresnet.data.stream.make_loader's)


def make_folder(root: Path, n: int, seed: int) -> None:
    """``n`` RGB JPEGs of mixed sizes in ``root/<class>/``: a coloured disc on noise, 10 classes."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % 10
        w, h = (int(v) for v in rng.integers(32, 97, 2))
        im = Image.fromarray((rng.random((h, w, 3)) * 90).astype(np.uint8))
        r = min(w, h) // 3
        ImageDraw.Draw(im).ellipse((w // 2 - r, h // 2 - r, w // 2 + r, h // 2 + r), fill=(25 * c, 200, 250 - 25 * c))
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        im.save(d / f"{i:06d}.jpg", quality=90)


# ------------------------------------------------------------------------------------------------------ memory


def _tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` and its descendants, summed, from /proc. RSS counts the pages the loader workers share
    with their parent (torch's libraries) once per process; PSS divides shared pages among their users."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
        todo += children.get(p, [])
    return rss / 1024, pss / 1024


class PeakRSS:
    """Peaks of :func:`_tree_memory_mb` of this process while the ``with`` block runs (``peak``: RSS, ``peak_pss``)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self.peak_pss = _tree_memory_mb(os.getpid())
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            rss, pss = _tree_memory_mb(os.getpid())
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def _ours(root: Path, workers: int, batch: int):
    from msresnet.data.folder import scan_image_folder
    from msresnet.data.stream import EpochBatchSampler, FileDataset, make_loader, train_transform
    from msresnet.engine.batches import epoch_permutation

    files, _ = scan_image_folder(root)
    ds = FileDataset(files, "RGB", train_transform(SIZE, None, ("rrc", "flip")))
    sampler = EpochBatchSampler(len(files), batch, seed=0)
    sampler.set_epoch(epoch_permutation(len(files), 0, 0), 0)
    loader = make_loader(ds, batch_sampler=sampler, workers=workers)
    return ((b.images, b.labels) for b in loader)


def _torchvision(root: Path, workers: int, batch: int):
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from msresnet.data.stream import train_transform

    ds = ImageFolder(str(root), transform=train_transform(SIZE, None, ("rrc", "flip")))
    kw: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": PREFETCH} if workers else {}
    g = torch.Generator().manual_seed(0)
    return iter(DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, generator=g, **kw))


def _time(make, root: Path, workers: int, batch: int, batches: int) -> dict[str, float]:
    """images/s over ``batches`` batches in the steady state, and the tree's peak memory.

    The first batch (worker start-up) and the batches the workers may have queued by then (``prefetch_factor`` per
    worker) are consumed before the clock starts, so the rate is the decoding rate, not the speed of popping a queue.
    """
    with PeakRSS() as mem:
        it = make(root, workers, batch)
        t0 = time.perf_counter()
        next(it)
        first = time.perf_counter() - t0
        for _ in range(PREFETCH * max(1, workers)):
            next(it)
        t1, n = time.perf_counter(), 0
        for _ in range(batches):
            x, _ = next(it)
            n += x.shape[0]
        dt = time.perf_counter() - t1
        del it
    return {"images_per_s": n / dt, "first_batch_s": first, "peak_rss_mb": mem.peak, "peak_pss_mb": mem.peak_pss}


def memory_path(root: Path) -> dict[str, float]:
    """The in-memory path on the same folder: decode every image once into one uint8 tensor (shorter side to 64,
    centre crop; 4 threads), then batches are index slices of it."""
    import torch

    from msresnet.data.folder import load_folder_tensors, scan_image_folder

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        files, _ = scan_image_folder(root)
        ds = load_folder_tensors(files, SIZE, mode="RGB")
        decode = time.perf_counter() - t0
        t1, n = time.perf_counter(), 0
        for idx in torch.randperm(len(ds.labels)).split(128):
            n += ds.images[idx].float().div_(255).shape[0]
        slicing = n / (time.perf_counter() - t1)
    return {"decode_s": decode, "tensor_mb": ds.images.numel() / 2**20, "slices_per_s": slicing,
            "peak_rss_mb": mem.peak, "peak_pss_mb": mem.peak_pss}  # fmt: skip


def first_step(root: Path, workers: int, out: Path) -> dict[str, float]:
    """Run ``msresnet train --data-dir root`` in a fresh process until its first step; seconds and peak RSS."""
    code = f"""
import time, json, sys
t0 = time.perf_counter()
from benchmarks.folder_stream import PeakRSS
with PeakRSS() as mem:
    from msresnet.engine.config import load_train_config
    from msresnet.engine.train import train
    class Stop(BaseException): pass
    def hook(step):
        raise Stop
    cfg = load_train_config(None, dict(model="resnet8", data_root={str(root)!r}, out={str(out)!r}, epochs=1,
        batch_size=64, input_size={SIZE}, workers={workers}, device="cpu", threads=1, augment="rrc,flip"))
    t_imp = time.perf_counter() - t0
    try:
        train(cfg, on_step=hook)
    except Stop:
        pass
    t = time.perf_counter() - t0
print(json.dumps({{"first_step_s": t, "imports_s": t_imp, "peak_rss_mb": mem.peak, "peak_pss_mb": mem.peak_pss}}))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # run from the repository root: the benchmarks package is imported from there, as `python -m benchmarks...` does
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    if res.returncode:
        raise SystemExit(f"the training process failed: {res.stderr.strip().splitlines()[-1]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    ap.add_argument("--root", type=Path, required=True, help="folder holding small/ and large/ (not in the repo)")
    ap.add_argument("--make", type=int, default=0, help="generate large/ with N images and small/ with N/10, then exit")
    ap.add_argument("--workers", type=int, default=2, help="loader worker processes (both pipelines)")
    ap.add_argument("--batch-size", type=int, default=128, help="images per batch")
    ap.add_argument("--batches", type=int, default=40, help="timed batches per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="A/B rounds per folder (median)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON record")
    args = ap.parse_args()
    if args.make:
        make_folder(args.root / "small", args.make // 10, seed=1)
        make_folder(args.root / "large", args.make, seed=2)
        return
    import tempfile

    import torch

    torch.set_num_threads(1)
    record: dict[str, Any] = {
        "benchmark": "folder_stream", "workers": args.workers, "batch_size": args.batch_size,
        "timed_batches": args.batches, "transform": f"RandomResizedCrop({SIZE}) + RandomHorizontalFlip (v2)",
        "folders": {}, "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
        "platform": platform.platform(), "torch": torch.__version__, "python": platform.python_version(),
    }  # fmt: skip
    for name in ("small", "large"):
        root = args.root / name
        n = sum(1 for _ in root.rglob("*.jpg"))
        rows: dict[str, list[dict[str, float]]] = {"msresnet": [], "torchvision": []}
        for _ in range(args.rounds):
            for label, make in (("msresnet", _ours), ("torchvision", _torchvision)):
                rows[label].append(_time(make, root, args.workers, args.batch_size, args.batches))
        with tempfile.TemporaryDirectory() as tmp:
            fs = first_step(root, args.workers, Path(tmp) / "run")
        mem_path = memory_path(root) if name == "small" else None
        med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in rows.items()}
        pairs = zip(rows["msresnet"], rows["torchvision"], strict=True)
        ratios = [a["images_per_s"] / b["images_per_s"] for a, b in pairs]
        entry = {"images": n, "rounds": rows, "median": med, "ratio_median": statistics.median(ratios),
                 "train_first_step": fs, "memory_path": mem_path}  # fmt: skip
        record["folders"][name] = entry
        print(f"{name}: {n} images; msresnet {med['msresnet']['images_per_s']:.0f} img/s, torchvision "
              f"{med['torchvision']['images_per_s']:.0f} img/s, ratio {entry['ratio_median']:.2f}; peak RSS "
              f"{med['msresnet']['peak_rss_mb']:.0f} / {med['torchvision']['peak_rss_mb']:.0f} MB (PSS "
              f"{med['msresnet']['peak_pss_mb']:.0f} / {med['torchvision']['peak_pss_mb']:.0f}); train: first step "
              f"{fs['first_step_s']:.1f} s (imports {fs['imports_s']:.1f} s), peak RSS {fs['peak_rss_mb']:.0f} MB "
              f"(PSS {fs['peak_pss_mb']:.0f})",
              flush=True)  # fmt: skip
        if mem_path:
            m = mem_path
            print(f"  in-memory path: decode {m['decode_s']:.1f} s into {m['tensor_mb']:.0f} MB, then "
                  f"{m['slices_per_s']:.0f} img/s; peak RSS {m['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    record["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
