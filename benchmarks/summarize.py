"""Benchmark records as one table: every run of ``benchmarks/scale_bench.py`` x every test condition.

Reads the run records in ``benchmarks/results/scale/*.json`` (one per run: the job, the resolved engine config, the
test sweep, the validation sweep, timings, git revision, command) and writes ``benchmarks/results/summary.csv``,
one line per run and test condition. That file is the only source of the published results: the README's table,
``docs/results.md`` and its plots are rendered from it by :mod:`benchmarks.render_results`, and
:mod:`benchmarks.pipeline` runs both steps.

    python -m benchmarks.summarize                    # rewrite benchmarks/results/summary.csv
    python -m benchmarks.pipeline                     # and re-render every page from it

Columns: ``protocol``; ``budget`` (``full``: the recipe's training budget with each row's own model; ``depth8``:
that budget with the row's depth-8 model; ``quick``: the reduced budget with depth-8 models; ``quick-depth20``:
the reduced budget with the row's own model); ``row`` (the table row: the row id of ``configs/bench/rows.yaml``,
``oracle@<condition>`` for an oracle, ``<id>+calibrate`` for a pyramid run as ``msresnet calibrate`` leaves it,
prefixed ``<budget>/`` outside the full budget, so that rows of different budgets are never averaged together);
``row_id``; ``label``; ``model``; ``depth``; ``seed`` (the fmnist-scale realization); ``condition`` (object scale,
image size or, on fmnist-scale, the centre of a scale bin to two decimals) and ``condition_name``; ``accuracy``
(%, on ``n_images`` test images); ``train_condition``; ``val_accuracy`` (the run's validation-sweep mean, %, the
only figure used to choose between rows); ``calibrated``; ``train_seconds``; ``test_seconds`` (the test sweep's
wall time); ``train_images_per_s`` and
``train_cost`` (time per training image relative to the plain ResNet of the same protocol and budget) and
``train_cost_source``: ``step`` where ``benchmarks/train_cost.py`` measured the row's training step beside the plain
ResNet's in one process (``results/train_cost.json``), ``runs`` where it is the ratio of the runs' own throughputs
(runs made at different times on a shared CPU: indicative); ``scale_error_median`` and ``scale_error_p90`` (scale-aware
models: the median and 90th percentile of the object-scale estimate's absolute error, octaves); ``params``;
``git``; ``device``; ``command``; ``record``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from benchmarks.layout import (
    BUDGETS,
    CALIBRATED,
    PUBLISHED,
    ROWS_FILE,
    SMALL_MODEL_BUDGETS,
    SUMMARY,
    TRAIN_COST,
    Budget,
)

RESULTS = PUBLISHED
COLUMNS = [
    "protocol", "budget", "row", "row_id", "label", "model", "depth", "seed", "condition", "condition_name",
    "accuracy", "n_images", "train_condition", "val_accuracy", "calibrated", "train_seconds", "test_seconds",
    "train_images_per_s", "train_cost", "train_cost_source", "scale_error_median", "scale_error_p90", "params",
    "git", "device", "command", "record",
]  # fmt: skip


def budget_of(job: dict[str, Any]) -> str:
    """The training budget a record was made with (see the module docstring)."""
    return Budget.of_job(job).value


def depth_of(model: str) -> int | None:
    """The ResNet depth in a registered model name (``msresnet20_lite`` -> 20), None if it names none."""
    m = re.search(r"resnet(\d+)", model)
    return int(m.group(1)) if m else None


def _labels() -> dict[str, str]:
    rows = yaml.safe_load(ROWS_FILE.read_text())["rows"] if ROWS_FILE.exists() else []
    return {r["id"]: r.get("label", r["id"]) for r in rows}


def _fmt_condition(c: Any) -> str:
    f = float(c)
    return str(int(f)) if f.is_integer() and abs(f) >= 2 else f"{f:g}"


def row_id_of(row: str, oracle_condition: Any = None) -> str:
    """The table's id of a job's row: the row id, or ``oracle@<condition>`` for an oracle."""
    return f"oracle@{_fmt_condition(oracle_condition)}" if row == "oracle" else row


def _lines_of(record: dict[str, Any], labels: dict[str, str], name: str) -> list[dict[str, Any]]:
    job, cfg, test = record["job"], record["config"], record["test"]
    budget = budget_of(job)
    base = row_id_of(job["row"], job.get("oracle_condition"))
    label = labels.get(base, base)
    if job["row"] == "oracle":
        cond = _fmt_condition(job["oracle_condition"])
        label = f"oracle: plain ResNet trained at {test['condition_name']} {cond}"
    val = record.get("val")
    variants = [(base, label, test, val["accuracy"] if val else None, False)]
    probe = record.get("probe")
    if probe and val:  # the run as `msresnet calibrate` leaves it: the probe's figures where validation kept it
        kept = bool(probe["kept"])
        p_val = [a / 100 for a in probe["calibration"]["probe"]] if kept else val["accuracy"]
        variants.append((f"{base}{CALIBRATED}", f"{label} + msresnet calibrate", probe["test"] if kept else test,
                         p_val, True))  # fmt: skip
    # fmnist-scale's test conditions are bins of each realization's own scale sample: their centres differ by
    # thousandths between realizations, so they are named by the centre to two decimals (the same bin in each)
    binned = job["protocol"] == "fmnist-scale"
    n = test["n_per_condition"]
    n = n if isinstance(n, list) else [n] * len(test["accuracy"])
    # a run stored by resuming an already finished training measured no training time
    resumed = "after a resume of the finished run" in str(record.get("command"))
    train_seconds = None if resumed else record.get("train_seconds")
    out = []
    for row_id, row_label, sweep, val_acc, calibrated in variants:
        row = row_id if budget == "full" else f"{budget}/{row_id}"
        errors = _scale_errors(sweep)
        val_mean = 100 * sum(val_acc) / len(val_acc) if val_acc else None
        for cond, acc, k in zip(sweep["conditions"], sweep["accuracy"], n, strict=True):
            out.append({
                "protocol": job["protocol"], "budget": budget, "row": row, "row_id": row_id, "label": row_label,
                "model": cfg["model"], "depth": depth_of(cfg["model"]), "seed": job["seed"],
                "condition": round(cond, 2) if binned else cond,
                "condition_name": "scale bin" if binned else sweep["condition_name"], "accuracy": round(100 * acc, 4),
                "n_images": k, "train_condition": sweep.get("train_condition"),
                "val_accuracy": None if val_mean is None else round(val_mean, 4), "calibrated": calibrated,
                "train_seconds": train_seconds, "test_seconds": sweep.get("seconds"),
                "train_images_per_s": record.get("train_images_per_s"),
                "train_cost": None, "train_cost_source": None,
                "scale_error_median": errors.get(float(cond), (None, None))[0],
                "scale_error_p90": errors.get(float(cond), (None, None))[1], "params": record.get("params"),
                "git": record.get("git"),
                "device": record.get("device"), "command": record.get("command"), "record": name,
            })  # fmt: skip
    return out


def _scale_errors(sweep: dict[str, Any]) -> dict[float, tuple[float, float]]:
    """Condition -> (median, 90th percentile) of the object-scale estimate's |error| in octaves, for scale-aware
    models whose sweep recorded it (``scale_error``); empty otherwise."""
    err = sweep.get("scale_error") or {}
    conds = err.get("conditions") or []
    return {float(c): (round(m, 4), round(p, 4)) for c, m, p in zip(conds, err["median_abs"], err["p90_abs"],
                                                                     strict=True)} if conds else {}  # fmt: skip


def _measured_costs(path: Path = TRAIN_COST) -> dict[tuple[str, str, bool], float]:
    """(protocol, row id, depth-8 model) -> the step-time ratio ``train_cost.py`` measured."""
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {(r["protocol"], r["row"], bool(r["small_model"])): float(r["ratio"]) for r in rows}


def _add_train_cost(lines: list[dict[str, Any]], measured: dict[tuple[str, str, bool], float]) -> None:
    """``train_cost``: the ratio ``train_cost.py`` measured where it has the row, else the plain ResNet's mean
    training throughput over this run's (same protocol and budget)."""
    for d in lines:
        key = (d["protocol"], d["row_id"].removesuffix(CALIBRATED), d["budget"] in SMALL_MODEL_BUDGETS)
        if key in measured:
            d["train_cost"], d["train_cost_source"] = measured[key], "step"
    plain: dict[tuple[str, str], list[float]] = {}
    seen = set()
    for d in lines:
        key = (d["protocol"], d["budget"], d["record"])
        if d["row_id"] == "resnet" and d["train_images_per_s"] and key not in seen:
            seen.add(key)
            plain.setdefault((d["protocol"], d["budget"]), []).append(d["train_images_per_s"])
    for d in lines:
        ref = plain.get((d["protocol"], d["budget"]))
        if ref and d["train_images_per_s"] and d["train_cost_source"] is None:
            d["train_cost"] = round((sum(ref) / len(ref)) / d["train_images_per_s"], 3)
            d["train_cost_source"] = "runs"


def summarize(results_dir: Path = RESULTS, train_cost: Path = TRAIN_COST) -> list[dict[str, Any]]:
    """One dict per run and test condition, from every record in ``results_dir`` (training costs from
    ``train_cost`` where it has them), in a stable order."""
    labels = _labels()
    lines: list[dict[str, Any]] = []
    for f in sorted(Path(results_dir).glob("*.json")):
        lines += _lines_of(json.loads(f.read_text()), labels, f.name)
    _add_train_cost(lines, _measured_costs(train_cost))
    order = {b: i for i, b in enumerate(BUDGETS)}
    lines.sort(key=lambda d: (d["protocol"], order.get(d["budget"], 9), d["row"], d["seed"], float(d["condition"])))
    return lines


def write_csv(lines: list[dict[str, Any]], out: Path = SUMMARY) -> Path:
    """Write ``lines`` as CSV (floats as Python prints them, missing values empty)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for d in lines:
            w.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in d.items()})
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results-dir", default=str(RESULTS), help="run records (default: benchmarks/results/scale)")
    ap.add_argument("--out", default=str(SUMMARY), help="CSV to write (default: benchmarks/results/summary.csv)")
    args = ap.parse_args(argv)
    lines = summarize(Path(args.results_dir))
    out = write_csv(lines, Path(args.out))
    runs = len({d["record"] for d in lines})
    print(f"wrote {out} ({len(lines)} lines from {runs} run records)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
