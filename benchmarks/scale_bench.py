"""Scale-generalisation benchmark: models x protocols x seeds, one training recipe per protocol.

Every run trains through the engine (``msresnet.engine.train``), evaluates the protocol's test sweep and a
*validation* sweep (held-out training images under the same scale / size changes — the only data used to choose
"the best msresnet"), and writes one JSON per run into ``benchmarks/results/scale/``. ``--render`` (also done at the
end of every run) publishes the records through :func:`benchmarks.pipeline.publish`: ``summary.csv``, the pages
rendered from it, and ``docs/results-<budget>.md`` with tables (mean +- std over seeds), the targets of the results
issue with their measured values, and plots.

    python -m benchmarks.scale_bench --quick              # reduced table, < 20 min on 2 CPU cores
    python -m benchmarks.scale_bench --device cuda --jobs 8   # the full table
    python -m benchmarks.scale_bench --render             # re-render docs/results-full.md from the stored JSONs
    python -m benchmarks.scale_bench --quick --full-models --protocols fmnist-ls   # depth-20 models, quick budget
    python -m benchmarks.scale_bench --depth8 --protocols fmnist-ls --rows resnet,msresnet_conf_sd,oracle --seeds 0
                                                   # full budget, depth-8 models

Runs already stored are skipped, and a run stopped mid-way continues from its last epoch checkpoint when it is
started again with the same configuration, so an interrupted benchmark continues where it stopped. The plan (which
runs, each run's configuration) is :mod:`benchmarks.bench_plan`; the pages are :mod:`benchmarks.pipeline`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from benchmarks.bench_plan import Job, job_config, load_plan, make_jobs
from benchmarks.layout import PROTOCOLS, PUBLISHED, ROOT, Budget
from benchmarks.pipeline import publish


def run_job(job: Job, cfg_overrides: dict[str, Any], test_limit: int | None, val_limit: int | None) -> dict:
    """Train, evaluate the test and validation sweeps, return the result record."""
    import pandas as pd
    import torch

    from msresnet.data import build_protocol
    from msresnet.engine.checkpoint import load_model, read_checkpoint_info
    from msresnet.engine.config import load_train_config, protocol_kwargs
    from msresnet.engine.train import train
    from msresnet.evaluate import ValidationSweep, evaluate_sweep
    from msresnet.scale.contracts import PerLevel

    cfg = load_train_config(None, cfg_overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # evaluation too, not only training
    # a resumed run: its earlier epochs count too (not the earlier process's set-up, nor the epoch it was stopped in)
    done = Path(cfg.out) / "metrics.csv"
    before = pd.read_csv(done) if cfg.resume and done.is_file() and done.stat().st_size else None
    t0 = time.perf_counter()
    run_dir = train(cfg)
    train_seconds = time.perf_counter() - t0 + (float(before["seconds"].sum()) if before is not None else 0.0)
    model = load_model(run_dir, device=cfg.device if cfg.device != "auto" else "cpu")
    info = read_checkpoint_info(run_dir)
    protocol = build_protocol(cfg.protocol, root=cfg.data_root, **protocol_kwargs(cfg))  # what it trained on
    dev = next(model.parameters()).device
    test = evaluate_sweep(model, protocol, info=info, test_limit=test_limit, device=dev, amp=cfg.amp)
    val = val_scales = None
    if job.row != "oracle" and protocol.val is not None:
        val_sweep = ValidationSweep(protocol, val_limit)
        # pyramid models: which level recognises the object at each condition
        per_scale = isinstance(model, PerLevel)
        val = evaluate_sweep(model, val_sweep, info=info, device=dev, amp=cfg.amp, per_scale=per_scale)
        val_scales = val.pop("per_scale", None)
    probe = None if job.quick else probe_record(model, protocol, info, test_limit, val_limit, cfg.amp)
    metrics = pd.read_csv(Path(run_dir) / "metrics.csv")
    return {
        "job": job.record(),
        "key": job.key,
        "config": {k: v for k, v in cfg.to_dict().items() if k != "resume"},  # what the run is, as config.yaml
        "params": sum(p.numel() for p in model.parameters()),
        "test": test,
        "val": val,
        "val_scales": val_scales,
        "probe": probe,
        "train_seconds": train_seconds,
        "resumed_after_epochs": len(before) if before is not None else None,
        "train_images_per_s": float(metrics["images_per_s"].median()) if "images_per_s" in metrics else None,
        "final_val_acc": float(metrics["val_acc"].iloc[-1]) if "val_acc" in metrics else None,
        "device": str(dev),
        "torch": torch.__version__,
        "git": git_revision(),
        "host": platform.node(),
    }


def probe_record(
    model: Any, protocol: Any, info: Any, test_limit: int | None, val_limit: int | None, amp: str | None = None
) -> dict | None:
    """For a pyramid model that selects a level, trained at one condition: fit its object-scale probe on the
    validation images at the training condition (``msresnet calibrate``), measure the test sweep with it, and
    record whether ``keep="auto"`` would keep it (validation sweep). The model is left uncalibrated."""
    from msresnet.engine.calibrate import calibrate_model
    from msresnet.evaluate import evaluate_sweep

    if getattr(model, "scale_probe", None) is None or protocol.train_condition is None:
        return None
    dev = next(model.parameters()).device
    cal = calibrate_model(model, protocol, info, val_limit=val_limit, keep="always", device=dev)
    test = evaluate_sweep(model, protocol, info=info, test_limit=test_limit, device=dev, amp=amp)
    model.scale_probe.reset()
    return {"calibration": cal.to_dict(), "kept": cal.improves, "test": test}


def calibrate_stored(
    jobs: list[Job], results: Path, runs: Path, test_limit: int | None, val_limits: dict[str, int]
) -> None:
    """Add the probe record to stored runs that lack one, or whose probe estimated object scale another way than
    the library does now (their checkpoints still in ``runs``)."""
    from msresnet.data import build_protocol
    from msresnet.engine.checkpoint import load_model
    from msresnet.layers.scale_probe import ESTIMATE

    for job in jobs:
        path = results / f"{job.key}.json"
        if not path.exists() or job.row == "oracle":
            continue
        record = json.loads(path.read_text())
        run_dir = runs / job.key
        current = (record.get("probe") or {}).get("calibration", {}).get("estimate") == ESTIMATE
        if current or not (run_dir / "checkpoints").is_dir():
            continue
        model = load_model(run_dir)
        info = model.checkpoint_info
        protocol = build_protocol(info.protocol, **(info.protocol_params or {}))
        limit = test_limit or record["test"].get("n_per_condition")
        probe = probe_record(model, protocol, info, limit, val_limits[job.protocol], record["config"].get("amp"))
        if probe is None:
            continue
        record["probe"] = probe
        write_json(path, record)
        cal = probe["calibration"]
        before, after = record["test"]["mean"] * 100, probe["test"]["mean"] * 100
        print(f"calibrated {job.key}: validation mean {cal['confidence_mean']:.1f} -> {cal['probe_mean']:.1f}, "
              f"test mean {before:.1f} -> {after:.1f}", flush=True)  # fmt: skip


def open_run_dir(spec_path: Path, cfg: dict[str, Any]) -> bool:
    """Whether the run can continue from its run directory: it has a checkpoint and was started with this same
    configuration (its spec in ``spec_path``). Otherwise the directory is cleared and the run starts over, so a
    benchmark stopped mid-run (a session's end, ``--deadline``) loses at most the epoch it was in."""
    run = Path(cfg["out"])
    try:
        before = json.loads(spec_path.read_text())["cfg"] if spec_path.is_file() else None
    except (OSError, ValueError, KeyError):
        before = None

    def same(a: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in json.loads(json.dumps(a)).items() if k != "resume"}

    if before is not None and same(before) == same(cfg) and (run / "checkpoints" / "last.state.pt").is_file():
        return True
    shutil.rmtree(run, ignore_errors=True)
    return False


def prepare(parts: set[tuple[str, str]]) -> None:
    """Generate (or load) every protocol's cached arrays once, before parallel runs would all do it at once."""
    from msresnet.data import build_protocol

    def build(part: tuple[str, str]) -> None:
        name, params = part
        p = build_protocol(name, **json.loads(params))
        print(f"prepared {name} {params} ({p.checksum[:12]})", flush=True)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(build, sorted(parts)))


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        # run records and rendered pages written by the benchmark itself do not make the code "dirty"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/results", ":!docs"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except OSError:
        return None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced table: quick rows, small budget, one seed")
    ap.add_argument("--full-models", action="store_true",
                    help="with --quick: each row's own (depth-20) model instead of its depth-8 quick_model; records "
                         "and page kept apart (docs/results-quick-fullmodel.md)")  # fmt: skip
    ap.add_argument("--depth8", action="store_true",
                    help="the full recipe's training budget with each row's depth-8 quick_model (sized for CPU); "
                         "records and page kept apart (docs/results-depth8.md)")  # fmt: skip
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--rows", default=None,
                    help="comma-separated row ids (default: all, oracles included); name `oracle` among them to "
                         "plan the protocol's oracle runs too, `oracle@C` for only the one at condition C")  # fmt: skip
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1,2; quick: 0)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=None,
                    help="runs in parallel (subprocesses); default: one per core (at most 8) on CPU with --quick, "
                         "else 1. On CPU the cores are split between them (2 one-thread runs do ~1.45x the work of "
                         "one 2-thread run here)")  # fmt: skip
    ap.add_argument("--amp", default=None, choices=["bf16", "fp16"])
    ap.add_argument("--time-budget", type=float, default=None, help="stop starting new runs after N seconds")
    ap.add_argument("--deadline", type=float, default=None, help="kill runs still going after N seconds")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML", help="override a recipe key in every run")
    ap.add_argument("--test-limit", type=int, default=None, help="test images per condition (default: recipe's)")
    ap.add_argument("--results-dir", default=None, help="where run records go (default: benchmarks/results/scale)")
    ap.add_argument("--render", action="store_true", help="only re-render docs/results*.md")
    ap.add_argument("--calibrate-stored", action="store_true",
                    help="add the object-scale probe's figures to stored runs of the plan that lack them or were "
                         "measured with an older probe estimate (their checkpoints must still be in --runs-dir), "
                         "then re-render")  # fmt: skip
    ap.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--run-job", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    results = PUBLISHED
    if args.results_dir:
        results = Path(args.results_dir).resolve()
        os.environ["MSRESNET_BENCH_RESULTS"] = str(results)  # the --run-job subprocesses write there too
    elif os.environ.get("MSRESNET_BENCH_RESULTS"):
        results = Path(os.environ["MSRESNET_BENCH_RESULTS"])
    sets = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    command = "python -m benchmarks.scale_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.run_job:
        spec = json.loads(Path(args.run_job).read_text())
        job = Job.from_record(spec["job"])
        result = run_job(job, spec["cfg"], spec["test_limit"], spec["val_limit"])
        result["command"] = spec.get("command")
        write_json(results / f"{job.key}.json", result)
        return 0
    if args.full_models and not args.quick:
        raise SystemExit("scale_bench: --full-models goes with --quick (the full table already uses the full models)")
    if args.depth8 and args.quick:
        raise SystemExit("scale_bench: --depth8 is the full recipe with the depth-8 models; --quick already uses them")
    budget = Budget.of(args.quick, args.full_models, args.depth8)
    if args.render:
        _print_written(publish(results, (budget,), command))
        return 0
    recipes, all_rows = load_plan()
    rows = all_rows
    wanted = set(args.rows.split(",")) if args.rows else None
    oracle_conditions = None
    if wanted is not None and any(w.startswith("oracle@") for w in wanted):
        try:
            oracle_conditions = {float(w.split("@", 1)[1]) for w in wanted if w.startswith("oracle@")}
        except ValueError:
            raise SystemExit("scale_bench: `oracle@C` needs a number C, e.g. oracle@0.5") from None
        wanted = {w for w in wanted if not w.startswith("oracle@")} | {"oracle"}
    if wanted is not None:
        unknown = wanted - {r["id"] for r in all_rows} - {"oracle"}
        if unknown:
            raise SystemExit(f"scale_bench: unknown row(s) {', '.join(sorted(unknown))} (see configs/bench/rows.yaml)")
        rows = [r for r in rows if r["id"] in wanted]
    # --quick: seed 0, except where the recipe's quick section lists seeds (fmnist-scale needs 3 realizations)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else ([0, 1, 2] if not args.quick else [0])
    protocols = [p for p in args.protocols.split(",") if p]
    jobs = make_jobs(protocols, rows, recipes, seeds, budget, bool(args.seeds), explicit_rows=bool(args.rows),
                     oracles=wanted is None or "oracle" in wanted, oracle_conditions=oracle_conditions)  # fmt: skip
    if args.calibrate_stored:
        val_limits = {p: recipes[p]["quick"].get("val_limit", 5000) if args.quick else 5000 for p in protocols}
        calibrate_stored(jobs, results, Path(args.runs_dir), args.test_limit, val_limits)
        _publish_if_published(results, budget, command)
        return 0
    todo = [j for j in jobs if not (results / f"{j.key}.json").exists()]
    print(f"{len(jobs)} runs planned, {len(jobs) - len(todo)} already stored, {len(todo)} to run", flush=True)
    t_start = time.perf_counter()
    runs = Path(args.runs_dir)
    prepare({(j.protocol, json.dumps(job_config(j, all_rows, recipes, "cpu", runs)["protocol_params"])) for j in todo})
    cores = os.cpu_count() or 1
    jobs_n = max(1, args.jobs or (min(cores, 8) if args.quick and args.device == "cpu" else 1))
    spec_dir = runs / "_specs"
    spec_dir.mkdir(parents=True, exist_ok=True)

    def launch(job: Job) -> str:
        if args.time_budget and time.perf_counter() - t_start > args.time_budget:
            return f"skipped (time budget) {job.key}"
        if (results / f"{job.key}.json").exists():  # stored meanwhile by another invocation (e.g. a shared oracle)
            return f"already stored {job.key}"
        quick = recipes[job.protocol]["quick"] if job.quick else {}
        cfg = job_config(job, all_rows, recipes, args.device, runs)
        if args.amp:
            cfg["amp"] = args.amp
        if args.device == "cpu" and jobs_n > 1:
            cfg["threads"] = max(1, cores // jobs_n)  # split the cores instead of oversubscribing them
        cfg.update(sets)
        spec_path = spec_dir / f"{job.key}.json"
        cfg["resume"] = open_run_dir(spec_path, cfg)
        spec = {"job": job.record(), "cfg": cfg, "test_limit": args.test_limit or quick.get("test_limit"),
                "val_limit": quick.get("val_limit", 5000), "command": command}  # fmt: skip
        spec_path.write_text(json.dumps(spec))
        t0 = time.perf_counter()
        log = runs / f"{job.key}.log"
        left = args.deadline - (time.perf_counter() - t_start) if args.deadline else None
        with open(log, "a" if cfg["resume"] else "w") as fh:
            try:
                cmd = [sys.executable, "-m", "benchmarks.scale_bench", "--run-job", str(spec_path)]
                rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, timeout=left).returncode
            except subprocess.TimeoutExpired:
                rc = "deadline"
        status = "ok" if rc == 0 else f"FAILED (rc {rc}, see {log})"
        how = " (resumed from its last checkpoint)" if cfg["resume"] else ""
        return f"{status} {job.key}{how} in {time.perf_counter() - t0:.0f}s"

    print(f"{jobs_n} run(s) at a time on {args.device}", flush=True)
    with ThreadPoolExecutor(max_workers=jobs_n) as pool:
        for msg in pool.map(launch, todo):
            print(msg, flush=True)
    wall = time.perf_counter() - t_start
    _publish_if_published(results, budget, command, wall)
    print(f"{wall / 60:.1f} min")
    return 0


def _publish_if_published(results: Path, budget: Budget, command: str, wall: float | None = None) -> None:
    """Re-render the pages after a run or a calibration, but only from the published records: an experiment's own
    ``--results-dir`` must not overwrite the pages with its partial records (``--render`` still renders any dir)."""
    if results.resolve() == PUBLISHED.resolve():
        _print_written(publish(results, (budget,), command, wall))
    else:
        print(f"records in {results}; the pages were not re-rendered (they read {PUBLISHED.relative_to(ROOT)})")


def _print_written(paths: list[Path]) -> None:
    for path in paths:
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    raise SystemExit(main())
