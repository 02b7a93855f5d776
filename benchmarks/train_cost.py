"""Training cost of each benchmark row, measured in one process: the time of the row's training step relative to
the plain ResNet's on the same protocol.

The runs' own throughput (``train_images_per_s`` in a run record) comes from runs made hours apart on a shared
machine, some beside the test suite, so their ratios carry the machine's load. Here every row of a protocol takes
its training step as the engine takes it: the row's engine configuration from ``bench_plan.py``, a batch of the
protocol's real training images with the recipe's augmentation and batch size, the row's loss (the
scale-invariance loss's second view included), backward and the optimizer update, on every core as the runs use
them (the ratios depend on both: a pyramid's small levels gain less from a second thread or a bigger batch than a
plain trunk does). A timing averages ``--iters`` steps, because a row's steps differ by their random work (the
scale-invariance view's size changes the cost of its second pass fourfold over its range); the rows are interleaved
inside every repeat, so load drift hits them alike, and each row's time is its fastest repeat (other work on the
machine only ever adds time; the median is kept beside it). Run it on an
otherwise idle machine. ``summarize.py`` takes the ``train_cost`` column from this file where it has the row
(``train_cost_source`` = ``step``) and from the runs' throughput otherwise (``runs``).

    python -m benchmarks.train_cost                                # the full-budget rows stored in summary.csv
    python -m benchmarks.train_cost --protocols fmnist-ls --rows resnet,canonical --repeats 5
    python -m benchmarks.train_cost --depth8                       # the same rows with their depth-8 models
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_plan import Job, job_config, load_plan
from benchmarks.layout import CALIBRATED, PROTOCOLS, SUMMARY, Budget
from benchmarks.speed import git_revision
from benchmarks.summarize import row_id_of

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "train_cost.json"
BASELINE = "resnet"


class RowStep:
    """One row's training step, set up once: protocol data, model, loss, optimizer, as the engine builds them."""

    def __init__(self, job: Job, cfg: Any, protocol: Any, batch: int) -> None:
        from msresnet import create_model
        from msresnet.engine.batches import Normalizer, train_val_splits
        from msresnet.engine.distributed import DistContext
        from msresnet.engine.optim import build_optimizer
        from msresnet.engine.state import StepRandomness, seed_everything
        from msresnet.engine.step import TrainStep, build_criterion

        self.job, self.cfg, self.batch = job, cfg, batch
        self.split, _ = train_val_splits(protocol, cfg.val_limit)
        self.norm = Normalizer(tuple(protocol.mean), tuple(protocol.std), torch.device("cpu"))
        seed_everything(cfg.seed)
        model = create_model(cfg.model, num_classes=protocol.num_classes, in_chans=protocol.in_chans,
                             **cfg.model_kwargs)  # fmt: skip
        self.net = TrainStep(model.train(), build_criterion(cfg), cfg.label_smoothing)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(model, cfg)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.ctx = DistContext.from_env("cpu")
        self.rng = StepRandomness(cfg.seed, 0)
        self.step_no = 0

    def step(self) -> None:
        from msresnet.engine.step import train_batch, train_step

        self.rng.reseed(self.step_no)
        idx = torch.randint(0, len(self.split.labels), (self.batch,), generator=self.rng.augment)
        x, y = train_batch(self.split, idx, self.norm, self.cfg, self.rng.augment)
        train_step(self.net, x, y, self.optimizer, self.scaler, self.params, self.cfg, self.ctx)
        self.step_no += 1


def stored_rows(summary: Path, small_model: bool) -> dict[str, list[str]]:
    """Protocol -> the rows (ids as summary.csv names them, the calibrated variants folded into their run's row) the
    summary has at the full budget (``small_model``: at the depth-8 budget)."""
    import pandas as pd

    df = pd.read_csv(summary)
    df = df[df.budget == Budget.of(depth8=small_model).value]
    return {
        str(proto): sorted({str(r).removesuffix(CALIBRATED) for r in g.row_id}) for proto, g in df.groupby("protocol")
    }


def make_job(protocol: str, row: str, small_model: bool) -> Job:
    """The benchmark's job for ``row`` (``oracle@C`` for an oracle) at seed 0."""
    if row.startswith("oracle@"):
        cond = float(row.partition("@")[2])
        cond = int(cond) if protocol == "fmnist-res" else cond
        return Job(protocol, "oracle", 0, Budget.of(depth8=small_model), oracle_condition=cond)
    return Job(protocol, row, 0, Budget.of(depth8=small_model))


def measure(
    protocol: str, rows: list[str], plan: tuple[dict, list[dict]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Fastest step time of every row of one protocol over the repeats, interleaved, and its ratio to the first
    row's."""
    from msresnet.data import build_protocol
    from msresnet.engine.config import load_train_config, protocol_kwargs

    recipes, all_rows = plan
    steps, built = [], {}
    for row in rows:
        job = make_job(protocol, row, args.depth8)
        assert row_id_of(job.row, job.oracle_condition) == row, row
        cfg = load_train_config(None, {**job_config(job, all_rows, recipes, "cpu", Path("/tmp")), "threads": 0})
        key = json.dumps(protocol_kwargs(cfg), sort_keys=True, default=str)
        if key not in built:
            built[key] = build_protocol(cfg.protocol, root=cfg.data_root, **protocol_kwargs(cfg))
        steps.append((row, RowStep(job, cfg, built[key], args.batch or cfg.batch_size)))
    for _ in range(args.warmup):
        for _, s in steps:
            s.step()
    times: dict[str, list[float]] = {row: [] for row, _ in steps}
    for _ in range(args.repeats):
        for row, s in steps:
            t0 = time.perf_counter()
            for _ in range(args.iters):
                s.step()
            times[row].append((time.perf_counter() - t0) / args.iters)
    base = min(times[rows[0]])
    out = []
    for row, s in steps:
        step_s = min(times[row])
        out.append({
            "protocol": protocol, "row": row, "model": s.cfg.model, "small_model": args.depth8,
            "step_s": round(step_s, 5), "median_step_s": round(statistics.median(times[row]), 5),
            "images_per_s": round(s.batch / step_s, 2), "ratio": round(step_s / base, 3),
            "batch": s.batch, "threads": torch.get_num_threads(), "repeats": args.repeats, "iters": args.iters,
            "git": git_revision(),
        })  # fmt: skip
        print(f"{protocol:13s} {row:24s} {s.cfg.model:30s} {s.batch / step_s:8.1f} img/s  x{step_s / base:5.2f}",
              flush=True)  # fmt: skip
    return out


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with the rows ``new`` measured again replaced (each ratio is to a baseline timed beside it, in the
    same invocation, so rows from different invocations stay comparable)."""
    key = lambda r: (r["protocol"], r["row"], r["small_model"])  # noqa: E731
    redone = {key(r) for r in new}
    return sorted([r for r in old if key(r) not in redone] + new, key=key)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocols", type=lambda s: s.split(","), default=None, help="default: those in summary.csv")
    p.add_argument("--rows", type=lambda s: s.split(","), default=None,
                   help="row ids (oracle@C for an oracle); default: the rows summary.csv has; the plain ResNet "
                        "always comes first, as the baseline")  # fmt: skip
    p.add_argument("--depth8", action="store_true", help="the rows' depth-8 models (the depth8 budget)")
    p.add_argument("--batch", type=int, default=None, help="default: the recipe's, as the runs train")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--iters",
        type=int,
        default=10,
        help="steps averaged per timing (enough for the rows' random per-step work to average out)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default, every core, as the benchmark runs use them)",
    )
    p.add_argument("--summary", type=Path, default=SUMMARY)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stored = stored_rows(args.summary, args.depth8) if args.summary.exists() else {}
    protocols = args.protocols or sorted(stored)
    unknown = [x for x in protocols if x not in PROTOCOLS]
    if unknown or not protocols:
        raise SystemExit(f"unknown protocol(s): {', '.join(unknown)}" if unknown else "no protocol to measure")
    recipes, plan_rows = load_plan()
    rows_file = {r["id"] for r in plan_rows}
    results = []
    for proto in protocols:
        rows = args.rows or stored.get(proto, [])
        rows = [BASELINE, *[r for r in rows if r != BASELINE]]
        oracles = {row_id_of("oracle", c) for c in recipes[proto].get("oracle", [])}
        bad = [r for r in rows if r not in rows_file | oracles]
        if bad:
            raise SystemExit(f"unknown row(s): {', '.join(bad)}")
        results += measure(proto, rows, (recipes, plan_rows), args)
    old = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    record = {
        "benchmark": "train_cost",
        "git_revision": git_revision(),
        "torch": torch.__version__,
        "rows": merge(old, results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
