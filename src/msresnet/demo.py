"""``msresnet demo``: the main job in one command, sized to fill its time budget on this machine.

Trains the plain ResNet (:data:`BASELINE`) and the multi-scale ResNet the demo shows (:data:`DEMO_MSRESNET`) on
``fmnist-ls`` (objects at scale 1 only), fits the object-scale probe of a model that has one, evaluates both across
the nine test scales 0.5 ... 2, writes ``OUT/report.html`` / ``report.md`` and prints the comparison table.

The plan comes from a throughput probe: a few training and evaluation batches of each model measure what an image
costs here, and the number of training images (then epochs, once the whole training split is used) is the largest
that fits the budget (default 15 minutes) after validation, calibration and the test sweep, whose size grows with the
budget alone. The demo prints the plan and its estimate, and at the end whether it finished early or late.

Re-running reuses finished runs: the plan made for a budget is kept in ``OUT/demo.plan.json``; a run is finished
when ``RUN/eval/fmnist-ls.json`` exists and ``RUN/demo.json`` holds the same plan, and a run interrupted during
training is resumed from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from msresnet.errors import UserError
from msresnet.models import DEFAULT_MSRESNET

__all__ = ["DEMO_MODELS", "DemoPlan", "ModelCost", "estimate_seconds", "measure_costs", "plan_for_budget", "run_demo"]

BASELINE = "resnet20"
#: The multi-scale model the demo compares with the plain ResNet: the project's default.
DEMO_MSRESNET = DEFAULT_MSRESNET
DEMO_MODELS: tuple[str, ...] = (BASELINE, DEMO_MSRESNET)
PROTOCOL = "fmnist-ls"
DEFAULT_BUDGET_MIN = 15.0
TRAIN_SPLIT = 55_000  # fmnist-ls training images (the rest of the 60k are its validation split)
TEST_SPLIT = 10_000
FILL = 0.9  # share of the remaining budget the plan spends: what the probe does not see (data movement, logging)
_EPOCHS = 2  # until the whole training split is used; then the budget buys epochs
_MAX_EPOCHS = 30
_BASE_TEST_LIMIT = 500  # test images per scale at the default budget
_N_SCALES = 9
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
class ModelCost:
    """Seconds per image of one model on this machine: a training step's share, an evaluation pass's share, and
    whether the model has an object-scale probe to calibrate after training."""

    train_s: float
    eval_s: float
    calibrate: bool = False


#: What :func:`plan_for_budget` assumes without a probe (the tests, a plan printed for another machine): the CPU
#: seconds per image the probe's steps took with two threads on the development machine, halved for two cores
#: (CPU time, since other jobs shared the machine and inflated the wall-clock time several times over). The
#: canonical model's costs are the plain ResNet's scaled by the ratios ``benchmarks/speed.py`` measures; it has no
#: object-scale probe to calibrate.
REFERENCE_COSTS: dict[str, ModelCost] = {
    BASELINE: ModelCost(train_s=0.058, eval_s=0.0068),
    "msresnet20": ModelCost(train_s=0.090, eval_s=0.024, calibrate=True),
    "msresnet20_canonical": ModelCost(train_s=0.060, eval_s=0.0076),
}
_PROBE_BATCH = 16  # per-image cost on CPU barely depends on the batch; a small one keeps the probe to seconds


@dataclass(frozen=True)
class DemoPlan:
    """What the demo trains and evaluates; equal plans mean reusable runs."""

    models: tuple[str, ...]
    protocol: str
    train_limit: int
    epochs: int
    test_limit: int
    train: tuple[tuple[str, Any], ...]
    calibrate: tuple[str, ...] = ()
    budget_minutes: float = DEFAULT_BUDGET_MIN

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"], d["calibrate"], d["train"] = list(self.models), list(self.calibrate), dict(self.train)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DemoPlan:
        return cls(
            tuple(d["models"]),
            str(d["protocol"]),
            int(d["train_limit"]),
            int(d["epochs"]),
            int(d["test_limit"]),
            tuple(sorted(dict(d["train"]).items())),
            tuple(d.get("calibrate", ())),
            float(d.get("budget_minutes", DEFAULT_BUDGET_MIN)),
        )

    def run_record(self, model: str) -> dict[str, Any]:
        """The part of the plan one run depends on (stored as ``RUN/demo.json``); the library version is part of
        it, since a release may change what a model name builds."""
        from msresnet import __version__

        d = self.to_json()
        del d["models"], d["calibrate"]
        d["model"] = model
        d["calibrate"] = model in self.calibrate
        d["msresnet_version"] = __version__
        return d

    def describe(self) -> str:
        cal = f"; fit {', '.join(self.calibrate)}'s object-scale probe" if self.calibrate else ""
        return (
            f"{', '.join(self.models)} on {self.protocol}: {self.train_limit} training images x {self.epochs} epochs, "
            f"sweep of {_N_SCALES} scales x {self.test_limit} test images{cal}"
        )


def _check_budget(budget_minutes: float) -> None:
    if not (budget_minutes > 0 and math.isfinite(budget_minutes)):
        raise UserError(f"--budget-minutes must be a positive number of minutes, got {budget_minutes}")


def _fixed_seconds(cost: ModelCost, epochs: int, test_limit: int) -> float:
    """A model's seconds besides its training steps: per-epoch validation, calibration, the test sweep."""
    val = int(_FIXED["val_limit"])
    calibration = _N_SCALES * val * cost.eval_s if cost.calibrate else 0.0
    return epochs * val * cost.eval_s + calibration + _N_SCALES * test_limit * cost.eval_s


def plan_for_budget(
    budget_minutes: float = DEFAULT_BUDGET_MIN,
    costs: Mapping[str, ModelCost] | None = None,
    spent_seconds: float = 0.0,
) -> DemoPlan:
    """The demo's plan for a time budget in minutes, given what an image costs each model (:func:`measure_costs`;
    default :data:`REFERENCE_COSTS`) and the seconds already spent (data preparation, the probe).

    Test images per scale grow linearly with the budget (rounded to 100, between 100 and the 10k test split).
    Training images fill :data:`FILL` of the rest (rounded down to 500, between 500 and the 55k training split);
    a budget that covers the whole split several times over buys epochs instead. A pure function of its arguments.
    """
    _check_budget(budget_minutes)
    costs = costs or REFERENCE_COSTS
    # a model without reference costs (the demo switched to another one): the dearest known costs, and no probe to
    # fit unless a measurement says it has one
    fallback = ModelCost(max(c.train_s for c in costs.values()), max(c.eval_s for c in costs.values()))
    model_costs = {m: costs.get(m, fallback) for m in DEMO_MODELS}
    ratio = budget_minutes / DEFAULT_BUDGET_MIN
    n_test = int(min(TEST_SPLIT, max(100, round(_BASE_TEST_LIMIT * ratio / 100) * 100)))
    available = FILL * (budget_minutes * 60 - spent_seconds)
    per_image = sum(c.train_s for c in model_costs.values())  # one training image through every model
    train_time = available - sum(_fixed_seconds(c, _EPOCHS, n_test) for c in model_costs.values())
    n_train = int(min(TRAIN_SPLIT, max(500, math.floor(train_time / (_EPOCHS * per_image) / 500) * 500)))
    epochs = _EPOCHS
    if n_train == TRAIN_SPLIT:
        epochs = max(_EPOCHS, min(_MAX_EPOCHS, math.floor(train_time / (TRAIN_SPLIT * per_image))))
    calibrate = tuple(m for m, c in model_costs.items() if c.calibrate)
    return DemoPlan(
        DEMO_MODELS, PROTOCOL, n_train, epochs, n_test, tuple(sorted(_FIXED.items())), calibrate, budget_minutes
    )


def _probe(model_name: str, device: str, batch_size: int, protocol: Any) -> ModelCost:
    """Seconds per training and per evaluation image of ``model_name`` here: two training steps (the first pays for
    allocation and kernel selection, the second is timed) and one timed evaluation pass."""
    import msresnet

    torch.manual_seed(0)
    shape = (protocol.in_chans, *protocol.input_size)
    model = msresnet.create_model(model_name, num_classes=protocol.num_classes, in_chans=shape[0]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, *shape, device=device)
    y = torch.randint(0, protocol.num_classes, (batch_size,), device=device)

    def timed(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    timed(step)
    train = timed(step)
    model.eval()
    with torch.no_grad():
        evaluate = timed(lambda: model(x))
    calibrate = getattr(model, "scale_probe", None) is not None and protocol.train_condition in protocol.test
    return ModelCost(train / batch_size, evaluate / batch_size, calibrate)


def measure_costs(device: str, protocol: Any, models: tuple[str, ...] = DEMO_MODELS) -> dict[str, ModelCost]:
    """The throughput probe: what a training and an evaluation image cost each model on this machine."""
    return {name: _probe(name, device, _PROBE_BATCH, protocol) for name in models}


def estimate_seconds(
    plan: DemoPlan, costs: Mapping[str, ModelCost], models: tuple[str, ...] | None = None
) -> dict[str, float]:
    """Estimated seconds per model under ``plan``: training, validation, calibration and the test sweep."""
    out = {}
    for name in models or plan.models:
        cost = costs.get(name) or max(costs.values(), key=lambda c: c.train_s)
        out[name] = plan.epochs * plan.train_limit * cost.train_s + _fixed_seconds(cost, plan.epochs, plan.test_limit)
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


def _stored_plan(out: Path, budget_minutes: float) -> DemoPlan | None:
    """The plan an earlier demo in ``out`` made for this budget (None: none, another budget, or unreadable)."""
    try:
        plan = DemoPlan.from_json(json.loads((out / "demo.plan.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return plan if plan.budget_minutes == budget_minutes and plan.models == DEMO_MODELS else None


def _train_and_evaluate(name: str, run_dir: Path, plan: DemoPlan, device: str, resume: bool) -> float:
    """Train one model, fit its probe if it has one, evaluate its sweep, mark the run finished; returns seconds."""
    from msresnet.data import build_protocol
    from msresnet.engine.checkpoint import load_model, read_checkpoint_info
    from msresnet.engine.config import load_train_config
    from msresnet.engine.evaluate import evaluate_sweep, write_eval
    from msresnet.engine.train import train

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
    train(cfg)
    if name in plan.calibrate:
        from msresnet.engine.calibrate import calibrate_checkpoint

        _, cal = calibrate_checkpoint(run_dir, val_limit=cfg.val_limit, device=device)
        verdict = "kept" if cal.kept else "not kept (validation did not improve)"
        print(f"{name}: object-scale probe fitted, {verdict}", flush=True)
    info = read_checkpoint_info(run_dir)
    model = load_model(run_dir, device=device)
    protocol = build_protocol(plan.protocol, **dict(info.protocol_params or {}))
    with torch.no_grad():
        result = evaluate_sweep(model, protocol, info=info, test_limit=plan.test_limit, device=device)
    write_eval(run_dir, result)  # json, csv and the png plot
    (run_dir / "demo.json").write_text(json.dumps(record, indent=2))
    seconds = time.perf_counter() - t0
    _seconds_file(run_dir).write_text(json.dumps({"seconds": seconds}))
    return seconds


def _seconds_file(run_dir: Path) -> Path:
    return run_dir / "demo.seconds.json"


def _print_table(run_dirs: list[Path], times: dict[str, float | None]) -> None:
    """The comparison table; a reused run shows the time its training and evaluation took when it was made."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from msresnet.report.report import collect_runs, protocol_table

    runs, _ = collect_runs(run_dirs)
    header, rows = protocol_table(runs, PROTOCOL)
    same = all(row[0] == row[1] for row in rows)  # run directories named after their models: one column is enough
    table = Table(title=f"{PROTOCOL}: accuracy (%) per test scale, trained at scale 1", box=box.SIMPLE_HEAD)
    for i, h in enumerate(header[1:] if same else header):
        table.add_column(h, justify="left" if i < (1 if same else 2) else "right")
    table.add_column("time", justify="right")
    for run, row in zip(runs, rows, strict=True):
        t, how = times.get(run.path.name), ""
        if t is None:
            try:
                t, how = float(json.loads(_seconds_file(run.path).read_text())["seconds"]), " (reused)"
            except (OSError, ValueError, KeyError, TypeError):
                how = "reused"
        cells = row[1:] if same else row
        table.add_row(*cells, how if t is None else f"{t / 60:.1f} min{how}")
    Console(width=160).print(table)


def _make_plan(out: Path, budget_minutes: float, device: str, started: float) -> tuple[DemoPlan, dict[str, ModelCost]]:
    """Prepare the data, run the throughput probe, size the plan to the budget and keep it in ``OUT``."""
    from msresnet.data import build_protocol

    protocol = build_protocol(PROTOCOL)
    prepared = time.perf_counter()
    print(f"data: {PROTOCOL} ready in {prepared - started:.0f} s", flush=True)
    costs = measure_costs(device, protocol)
    probe = ", ".join(f"{m} {c.train_s * 1e3:.1f} ms/image" for m, c in costs.items())
    print(f"throughput probe ({time.perf_counter() - prepared:.0f} s): training {probe}; plan sized to the budget")
    plan = plan_for_budget(budget_minutes, costs, spent_seconds=time.perf_counter() - started)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.plan.json").write_text(json.dumps(plan.to_json(), indent=2))
    return plan, costs


def _say_timing(seconds: float, budget_minutes: float) -> None:
    """Whether the demo kept to its budget, and by how much."""
    late = seconds - budget_minutes * 60
    how = f"{abs(late) / 60:.1f} min {'over' if late > 0 else 'early for'} its {budget_minutes:g}-min budget"
    print(f"finished in {seconds / 60:.1f} min, {how}")


def run_demo(
    out: str | Path = "runs/demo",
    budget_minutes: float = DEFAULT_BUDGET_MIN,
    device: str = "auto",
    force: bool = False,
) -> dict[str, Path]:
    """Run the demo: plan (or reuse the plan), train, calibrate, evaluate, report, print the table.

    Args:
        out: demo directory; runs go to ``OUT/<model>``, the report to ``OUT/report.{md,html}``.
        budget_minutes: the time the whole demo may take here; the plan is sized to fill it.
        device: ``auto``, ``cpu``, ``cuda`` ...
        force: plan anew and retrain even when finished runs exist.

    Returns:
        The report's written paths (``markdown``, ``html``, ...).
    """
    from msresnet.report import write_report

    started = time.perf_counter()
    _check_budget(budget_minutes)
    if device in ("auto", None):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(out)
    run_dirs = [out / name for name in DEMO_MODELS]
    for d in run_dirs:
        if d.exists() and not ((d / "demo.plan.json").exists() or (d / "config.yaml").exists()):
            raise UserError(f"{d} exists and is not a demo run; choose another --out")
    plan = None if force else _stored_plan(out, budget_minutes)
    if plan is not None:
        print(f"plan: the one made for this budget in {out / 'demo.plan.json'}")
    if plan is None and not force:
        reference = plan_for_budget(budget_minutes)  # runs made without a stored plan (an earlier release)
        plan = reference if all(_finished(d, reference.run_record(d.name)) for d in run_dirs) else None
    costs = None
    if plan is None:
        plan, costs = _make_plan(out, budget_minutes, device, started)
    todo = [d for d in run_dirs if force or not _finished(d, plan.run_record(d.name))]
    print(f"msresnet demo: {plan.describe()}; device {device}")
    if todo and costs is not None:
        est = estimate_seconds(plan, costs, tuple(d.name for d in todo))
        parts = ", ".join(f"{k} ~{v / 60:.1f} min" for k, v in est.items())
        total = (time.perf_counter() - started + sum(est.values())) / 60
        print(f"estimated time: ~{total:.1f} of {budget_minutes:g} min ({parts})", flush=True)
        if total > budget_minutes and plan.train_limit <= 500:
            print("note: even the smallest plan takes longer than the budget on this machine; it will finish late")
    times: dict[str, float | None] = {d.name: None for d in run_dirs}
    for run_dir in run_dirs:
        if run_dir not in todo:
            print(f"{run_dir.name}: finished run found in {run_dir}, reused")
            continue
        record = plan.run_record(run_dir.name)
        resume = not force and _resumable(run_dir, record)
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)  # a stale demo run with another plan: start it over
        print(f"{run_dir.name}: {'resuming' if resume else 'training'} in {run_dir}", flush=True)
        times[run_dir.name] = _train_and_evaluate(run_dir.name, run_dir, plan, device, resume)
        print(f"{run_dir.name}: done in {times[run_dir.name] / 60:.1f} min", flush=True)
    written = write_report(run_dirs, out)
    _print_table(run_dirs, times)
    print(f"report: {written['html']}")
    if todo:
        _say_timing(time.perf_counter() - started, budget_minutes)
    return written
