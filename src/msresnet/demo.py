"""``msresnet demo``: the main job in one command, sized to fill its time budget on this machine.

Trains the plain ResNet and the multi-scale ResNet the demo shows (:mod:`msresnet.demo_plan` names both) on
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
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from msresnet.demo_plan import (
    DEFAULT_BUDGET_MIN,
    DEMO_MODELS,
    PROTOCOL,
    DemoPlan,
    ModelCost,
    check_budget,
    estimate_seconds,
    measure_costs,
    plan_for_budget,
)
from msresnet.errors import UserError

__all__ = ["DEMO_MODELS", "DemoPlan", "ModelCost", "estimate_seconds", "measure_costs", "plan_for_budget", "run_demo"]


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
    from msresnet.engine.train import train
    from msresnet.evaluate import evaluate_sweep, write_eval

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
    check_budget(budget_minutes)
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
