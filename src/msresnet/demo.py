"""``msresnet demo``: the main job in one command.

Trains the plain ResNet and the multi-scale ResNet named in :data:`DEMO_MODELS` on ``fmnist-ls`` (objects at
scale 1 only), evaluates both across the nine test scales 0.5 ... 2, writes ``OUT/report.html`` / ``report.md`` and
prints the comparison table. The default budget (15 minutes) is sized for 2 CPU cores; ``--budget`` scales the number
of training images linearly (the plan is a pure function of the budget, so a re-run recognises its own runs).

Re-running reuses finished runs: a run is finished when ``RUN/eval/fmnist-ls.json`` exists and ``RUN/demo.json``
holds the same plan. A run that was interrupted during training is resumed from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from msresnet.errors import UserError

__all__ = ["DEMO_MODELS", "DemoPlan", "estimate_seconds", "plan_for_budget", "run_demo"]

#: Plain baseline first, then the multi-scale model(s) to compare with it.
DEMO_MODELS: tuple[str, ...] = ("resnet20", "msresnet20")
PROTOCOL = "fmnist-ls"
DEFAULT_BUDGET_MIN = 15.0

# Recipe at the default budget, sized from measured per-image costs at 64x64 (batch 128), 2 CPU cores (torch
# 2.14): resnet20 ~117 ms/image to train and ~33 ms to evaluate, msresnet20 ~219 / ~74 ms, measured while the
# machine was shared (load ~9); an idle 2-core machine is several times faster. 4000 images x 2 epochs for both
# models plus a 9-scale sweep of 500 images per scale fits ~15 minutes there. Everything scales with --budget.
_BASE_TRAIN_LIMIT = 4000
_EPOCHS = 2
_BASE_TEST_LIMIT = 500  # per scale
_FIXED = {
    "batch_size": 64,  # more optimizer steps for the same compute: small budgets learn faster
    "optimizer": "adamw",
    "lr": 2e-3,
    "weight_decay": 0.05,
    "schedule": "onecycle",
    "seed": 0,
    "val_limit": 500,
}


@dataclass(frozen=True)
class DemoPlan:
    """What the demo trains and evaluates; equal plans mean reusable runs."""

    models: tuple[str, ...]
    protocol: str
    train_limit: int
    epochs: int
    test_limit: int
    train: tuple[tuple[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = list(self.models)
        d["train"] = dict(self.train)
        return d

    def run_record(self, model: str) -> dict[str, Any]:
        """The part of the plan one run depends on (stored as ``RUN/demo.json``); the library version is part of
        it, since a release may change what a model name builds (0.2.0 changed the msresnet head)."""
        from msresnet import __version__

        d = self.to_json()
        d.pop("models")
        d["model"] = model
        d["msresnet_version"] = __version__
        return d


def plan_for_budget(budget_minutes: float = DEFAULT_BUDGET_MIN) -> DemoPlan:
    """The demo's plan for a time budget in minutes (2-CPU-core reference machine).

    Training images and test images per scale grow linearly with the budget (training rounded to 500, between 500
    and the 55k training split; test rounded to 100, between 100 and the 10k test split); epochs stay fixed.
    """
    if not (budget_minutes > 0 and math.isfinite(budget_minutes)):
        raise UserError(f"--budget must be a positive number of minutes, got {budget_minutes}")
    ratio = budget_minutes / DEFAULT_BUDGET_MIN
    n_train = int(min(55_000, max(500, round(_BASE_TRAIN_LIMIT * ratio / 500) * 500)))
    n_test = int(min(10_000, max(100, round(_BASE_TEST_LIMIT * ratio / 100) * 100)))
    return DemoPlan(DEMO_MODELS, PROTOCOL, n_train, _EPOCHS, n_test, tuple(sorted(_FIXED.items())))


def _probe(model_name: str, device: str, batch_size: int, num_classes: int = 10) -> tuple[float, float]:
    """Seconds per training image and per evaluation image of ``model_name`` on this machine (a few batches)."""
    import msresnet

    torch.manual_seed(0)
    model = msresnet.create_model(model_name, num_classes=num_classes, in_chans=1).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 1, 64, 64, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    times = []
    for _ in range(3):  # the first step pays for allocation and kernel selection
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    train = min(times[1:]) / batch_size
    model.eval()
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        evaluate = (time.perf_counter() - t0) / batch_size
    return train, evaluate


def estimate_seconds(plan: DemoPlan, device: str, models: tuple[str, ...] | None = None) -> dict[str, float]:
    """Estimated seconds per model (training + per-epoch validation + the scale sweep), from a short probe."""
    bs = int(dict(plan.train)["batch_size"])
    val = int(dict(plan.train)["val_limit"])
    out = {}
    for name in models or plan.models:
        # a small probe batch keeps the estimate to seconds; per-image cost on CPU barely depends on it
        t_train, t_eval = _probe(name, device, min(bs, 32))
        out[name] = plan.epochs * (plan.train_limit * t_train + val * t_eval) + 9 * plan.test_limit * t_eval
    return out


def _finished(run_dir: Path, record: dict[str, Any]) -> bool:
    try:
        return (run_dir / "eval" / f"{PROTOCOL}.json").is_file() and json.loads(
            (run_dir / "demo.json").read_text()
        ) == record
    except (OSError, json.JSONDecodeError):
        return False


def _resumable(run_dir: Path, record: dict[str, Any]) -> bool:
    try:
        same = json.loads((run_dir / "demo.plan.json").read_text()) == record
    except (OSError, json.JSONDecodeError):
        return False
    return same and (run_dir / "checkpoints" / "last.state.pt").is_file()


def _train_and_evaluate(name: str, run_dir: Path, plan: DemoPlan, device: str, resume: bool) -> float:
    """Train one model, evaluate its sweep, mark the run finished; returns the seconds it took."""
    from msresnet.data import build_protocol
    from msresnet.engine.checkpoint import load_model, read_checkpoint_info
    from msresnet.engine.config import load_train_config
    from msresnet.engine.evaluate import evaluate_sweep, write_eval
    from msresnet.report.plots import plot_sweep

    record = plan.run_record(name)
    t0 = time.perf_counter()
    overrides = dict(plan.train) | {
        "model": name,
        "protocol": plan.protocol,
        "out": str(run_dir),
        "epochs": plan.epochs,
        "train_limit": plan.train_limit,
        "device": device,
        "resume": resume,
    }
    cfg = load_train_config(None, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "demo.plan.json").write_text(json.dumps(record, indent=2))
    from msresnet.engine.train import train

    train(cfg)
    info = read_checkpoint_info(run_dir)
    model = load_model(run_dir, device=device)
    protocol = build_protocol(plan.protocol, **dict(info.protocol_params or {}))
    with torch.no_grad():
        result = evaluate_sweep(model, protocol, info=info, test_limit=plan.test_limit, device=device)
    write_eval(run_dir, result)
    png = run_dir / "eval" / f"{plan.protocol}.png"
    if not png.exists():
        plot_sweep(result, png)
    seconds = time.perf_counter() - t0
    (run_dir / "demo.json").write_text(json.dumps(record, indent=2))
    return seconds


def _print_table(run_dirs: list[Path], times: dict[str, float | None]) -> None:
    from rich.console import Console
    from rich.table import Table

    from msresnet.report.report import collect_runs, protocol_table

    runs, _ = collect_runs(run_dirs)
    header, rows = protocol_table(runs, PROTOCOL)
    table = Table(title=f"{PROTOCOL}: accuracy (%) per test scale, trained at scale 1")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right")
    table.add_column("time", justify="right")
    for run, row in zip(runs, rows, strict=True):
        t = times.get(run.path.name)
        table.add_row(*row, "reused" if t is None else f"{t / 60:.1f} min")
    Console(width=200).print(table)


def run_demo(
    out: str | Path = "runs/demo",
    budget_minutes: float = DEFAULT_BUDGET_MIN,
    device: str = "auto",
    force: bool = False,
) -> dict[str, Path]:
    """Run the demo: train (or reuse), evaluate, report, print the table.

    Args:
        out: demo directory; runs go to ``OUT/<model>``, the report to ``OUT/report.{md,html}``.
        budget_minutes: time budget on the 2-core reference machine (scales the training set).
        device: ``auto``, ``cpu``, ``cuda`` ...
        force: retrain even when finished runs exist.

    Returns:
        The report's written paths (``markdown``, ``html``, ...).
    """
    from msresnet.report import write_report

    if device in ("auto", None):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = plan_for_budget(budget_minutes)
    out = Path(out)
    run_dirs = [out / name for name in plan.models]
    todo = [d for d in run_dirs if force or not _finished(d, plan.run_record(d.name))]
    print(
        f"msresnet demo: {', '.join(plan.models)} on {plan.protocol}, {plan.train_limit} training images x "
        f"{plan.epochs} epochs, sweep of 9 scales x {plan.test_limit} test images; device {device}"
    )
    if todo:
        est = estimate_seconds(plan, device, tuple(d.name for d in todo))
        parts = ", ".join(f"{k} ~{v / 60:.1f} min" for k, v in est.items())
        print(f"estimated time: ~{sum(est.values()) / 60:.1f} min ({parts}; plus data preparation on a first run)")
    times: dict[str, float | None] = {d.name: None for d in run_dirs}
    for run_dir in run_dirs:
        if run_dir not in todo:
            print(f"{run_dir.name}: finished run found in {run_dir}, reused")
            continue
        record = plan.run_record(run_dir.name)
        resume = not force and _resumable(run_dir, record)
        if run_dir.exists() and not resume:
            if not ((run_dir / "demo.plan.json").exists() or (run_dir / "config.yaml").exists()):
                raise UserError(f"{run_dir} exists and is not a demo run; choose another --out")
            shutil.rmtree(run_dir)  # a stale demo run with another plan: start it over
        print(f"{run_dir.name}: {'resuming' if resume else 'training'} in {run_dir}", flush=True)
        times[run_dir.name] = _train_and_evaluate(run_dir.name, run_dir, plan, device, resume)
        print(f"{run_dir.name}: done in {times[run_dir.name] / 60:.1f} min", flush=True)
    written = write_report(run_dirs, out)
    _print_table(run_dirs, times)
    print(f"report: {written['html']}")
    return written
