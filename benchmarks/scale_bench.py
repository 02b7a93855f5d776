"""Scale-generalisation benchmark: models x protocols x seeds, one training recipe per protocol.

Every run trains through the engine (``msresnet.engine.train``), evaluates the protocol's test sweep and a
*validation* sweep (held-out training images under the same scale / size changes — the only data used to choose
"the best msresnet"), and writes one JSON per run into ``benchmarks/results/scale/``. ``--render`` (also done at the
end of every run) turns the JSONs into ``docs/results-<budget>.md`` with tables (mean +- std over seeds), the
targets of the results issue with their measured values, and plots, then refreshes ``summary.csv`` and the pages
rendered from it (``benchmarks/summarize.py --render``).

    python benchmarks/scale_bench.py --quick              # reduced table, < 20 min on 2 CPU cores
    python benchmarks/scale_bench.py --device cuda --jobs 8   # the full table
    python benchmarks/scale_bench.py --render             # re-render docs/results-full.md from the stored JSONs
    python benchmarks/scale_bench.py --quick --full-models --protocols fmnist-ls   # depth-20 models, quick budget
    python benchmarks/scale_bench.py --depth8 --protocols fmnist-ls --rows resnet,msresnet_conf_sd,oracle --seeds 0
                                                   # full budget, depth-8 models (about 1.5 h on 2 CPU cores)

Runs already stored are skipped, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "bench"
RESULTS = ROOT / "benchmarks" / "results" / "scale"
DOCS = ROOT / "docs"
PROTOCOLS = ("fmnist-ls", "fmnist-scale", "fmnist-res")


@dataclass
class Job:
    """One training run: a row of the table on one protocol with one seed (or an oracle run)."""

    protocol: str
    row: str
    seed: int
    quick: bool
    oracle_condition: float | int | None = None
    full_model: bool = False  # with ``quick``: the row's own (full-depth) model instead of its ``quick_model``
    depth8: bool = False  # without ``quick``: the full recipe with the row's depth-8 ``quick_model`` (CPU-sized)

    @property
    def key(self) -> str:
        tag = f"__oracle{self.oracle_condition}" if self.oracle_condition is not None else ""
        budget = ("quick__" if self.quick else "") + ("fullmodel__" if self.full_model else "")
        budget += "depth8__" if self.depth8 else ""
        return f"{budget}{self.protocol}__{self.row}{tag}__seed{self.seed}"

    @property
    def small_model(self) -> bool:
        """Whether the run uses the depth-8 ``quick_model`` (the reduced table, or ``depth8``)."""
        return (self.quick and not self.full_model) or self.depth8


def load_plan() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    recipes = yaml.safe_load((CONFIGS / "recipes.yaml").read_text())
    rows = yaml.safe_load((CONFIGS / "rows.yaml").read_text())["rows"]
    return recipes, rows


def make_jobs(
    protocols: list[str],
    rows: list[dict],
    recipes: dict,
    seeds: list[int],
    quick: bool,
    explicit_seeds: bool = False,
    explicit_rows: bool = False,
    full_model: bool = False,
    depth8: bool = False,
    oracles: bool = True,
) -> list[Job]:
    """The runs to do. ``--quick`` takes the rows marked ``quick: true`` unless ``--rows`` names rows itself (then
    those rows run at the reduced budget with their ``quick_model``, or their own model with ``full_model``).
    ``depth8`` (without ``quick``): every row, or the ``--rows`` ones, on the full budget with its ``quick_model``.
    ``oracles``: also each protocol's oracle runs (the plain ResNet trained at a test condition)."""
    jobs = []
    use_recipe = quick and not explicit_seeds  # --quick takes the recipe's seeds unless --seeds says otherwise
    per_protocol = {p: (recipes[p]["quick"].get("seeds", seeds) if use_recipe else seeds) for p in protocols}
    for seed in sorted({s for v in per_protocol.values() for s in v}):
        for p in protocols:
            wanted = per_protocol[p]
            if seed not in wanted:
                continue
            for r in rows:
                if quick and not (explicit_rows or r.get("quick") is True or p in (r.get("quick") or ())):
                    continue
                jobs.append(Job(p, r["id"], seed, quick, full_model=full_model, depth8=depth8))
            for cond in recipes[p].get("oracle", []) if oracles else []:
                jobs.append(Job(p, "oracle", seed, quick, oracle_condition=cond, full_model=full_model, depth8=depth8))

    def cost(j: Job) -> float:
        return relative_cost(job_config(j, rows, recipes, "cpu", Path(".")))

    if quick:  # everything runs: longest first, so that parallel runs finish together
        return sorted(jobs, key=lambda j: -cost(j))
    # Seed 0 of everything first, then the fmnist-scale realizations the protocol needs (>= 3), then the other
    # seeds: a benchmark cut short by a time budget still covers every row once. Longest first within each group.
    return sorted(jobs, key=lambda j: (j.seed > 0, j.seed > 0 and j.protocol != "fmnist-scale", j.seed, -cost(j)))


def relative_cost(cfg: dict[str, Any]) -> float:
    """A rough training cost of a run's engine config (for ordering runs only): images x input pixels x model
    factor, x 2 with the scale-invariance loss (a second view)."""
    pixels = 64 * 64 if cfg["protocol"] == "fmnist-ls" else 28 * 28
    model = cfg["model"]
    factors = {"sesn": 8.0, "scalechannel": 4.0, "canonical": 1.2, "msresnet": 3.0}  # first match counts
    factor = next((f for key, f in factors.items() if key in model), 1.0)
    loss = 2.0 if cfg.get("si_weight") else 1.0
    return float(cfg.get("train_limit") or 50_000) * cfg["epochs"] * pixels * factor * loss


def job_config(job: Job, rows: list[dict], recipes: dict, device: str, runs: Path) -> dict[str, Any]:
    """The engine overrides for ``job``: the protocol's recipe, then the row's changes."""
    recipe = recipes[job.protocol]
    cfg: dict[str, Any] = dict(recipe["train"])
    if job.quick:
        cfg.update({k: v for k, v in recipe["quick"].items() if k not in ("test_limit", "seeds")})
    params: dict[str, Any] = {}
    if job.protocol == "fmnist-scale":
        params["realization"] = job.seed
    if job.row == "oracle":
        model = "resnet8" if job.small_model else "resnet20"
        c = job.oracle_condition
        if job.protocol == "fmnist-ls":
            params["train_scales"] = [float(c), float(c)]
        else:
            params["train_size"] = int(c)
        cfg["degrade_aug"] = None  # the oracle sees sharp images at the test condition itself
    else:
        row = next(r for r in rows if r["id"] == job.row)
        model = row.get("quick_model", row["model"]) if job.small_model else row["model"]
        quick_kwargs = row.get("quick_kwargs", {}) if job.small_model else {}
        row_kwargs = (recipe.get("row_kwargs") or {}).get(job.row, {})  # the row's options on this protocol
        cfg["model_kwargs"] = {**row.get("model_kwargs", {}), **quick_kwargs, **row_kwargs}
        if row.get("rescale_aug"):
            cfg["rescale_aug"] = list(recipe["rescale_aug"])
        overrides = dict(row.get("overrides", {}))
        if overrides.get("si_weight") and recipe.get("si_view"):
            overrides.setdefault("si_view", recipe["si_view"])
        cfg.update(overrides)
    cfg.update(model=model, protocol=job.protocol, protocol_params=params, seed=job.seed, device=device,
               out=str(runs / job.key), log_every=10**9)  # fmt: skip
    return cfg


def run_job(job: Job, cfg_overrides: dict[str, Any], test_limit: int | None, val_limit: int | None) -> dict:
    """Train, evaluate the test and validation sweeps, return the result record."""
    import pandas as pd
    import torch

    from msresnet.data import build_protocol
    from msresnet.engine.checkpoint import load_model, read_checkpoint_info
    from msresnet.engine.config import load_train_config
    from msresnet.engine.evaluate import ValidationSweep, evaluate_sweep
    from msresnet.engine.train import train

    cfg = load_train_config(None, cfg_overrides)
    if cfg.num_workers:
        torch.set_num_threads(cfg.num_workers)  # evaluation too, not only training
    t0 = time.perf_counter()
    run_dir = train(cfg)
    train_seconds = time.perf_counter() - t0
    model = load_model(run_dir, device=cfg.device if cfg.device != "auto" else "cpu")
    info = read_checkpoint_info(run_dir)
    protocol = build_protocol(cfg.protocol, **cfg.protocol_params)
    dev = next(model.parameters()).device
    test = evaluate_sweep(model, protocol, info=info, test_limit=test_limit, device=dev, amp=cfg.amp)
    val = val_scales = None
    if job.row != "oracle" and protocol.val is not None:
        val_sweep = ValidationSweep(protocol, val_limit)
        # pyramid models: which level recognises the object at each condition
        per_scale = callable(getattr(model, "forward_with_scales", None))
        val = evaluate_sweep(model, val_sweep, info=info, device=dev, amp=cfg.amp, per_scale=per_scale)
        val_scales = val.pop("per_scale", None)
    probe = None if job.quick else probe_record(model, protocol, info, test_limit, val_limit, cfg.amp)
    metrics = pd.read_csv(Path(run_dir) / "metrics.csv")
    return {
        "job": asdict(job),
        "key": job.key,
        "config": cfg.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "test": test,
        "val": val,
        "val_scales": val_scales,
        "probe": probe,
        "train_seconds": train_seconds,
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
    from msresnet.engine.evaluate import evaluate_sweep

    if getattr(model, "scale_probe", None) is None or protocol.train_condition is None:
        return None
    dev = next(model.parameters()).device
    cal = calibrate_model(model, protocol, info, val_limit=val_limit, keep="always", device=dev)
    test = evaluate_sweep(model, protocol, info=info, test_limit=test_limit, device=dev, amp=amp)
    model.scale_probe.reset()
    return {"calibration": cal.to_dict(), "kept": cal.improves, "test": test}


def calibrate_stored(jobs: list[Job], runs: Path, test_limit: int | None, val_limits: dict[str, int]) -> None:
    """Add the probe record to stored runs that lack one, or whose probe estimated object scale another way than
    the library does now (their checkpoints still in ``runs``)."""
    from msresnet.data import build_protocol
    from msresnet.engine.checkpoint import load_model
    from msresnet.layers.scale_probe import ESTIMATE

    for job in jobs:
        path = RESULTS / f"{job.key}.json"
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


# ---------------------------------------------------------------------------------------------------------- render


def _load_results(quick: bool, full_model: bool = False, depth8: bool = False) -> list[dict]:
    out = []
    for f in sorted(RESULTS.glob("*.json")):
        d = json.loads(f.read_text())
        job = d["job"]
        if (bool(job["quick"]), bool(job.get("full_model")), bool(job.get("depth8"))) == (quick, full_model, depth8):
            out.append(d)
    return out


def _overall(sweep: dict) -> float:
    """Accuracy over all test images (conditions weighted by their size)."""
    n = sweep["n_per_condition"]
    n = n if isinstance(n, list) else [n] * len(sweep["accuracy"])
    return sum(a * k for a, k in zip(sweep["accuracy"], n, strict=True)) / max(1, sum(n))


def _ms(values: list[float], pct: bool = True) -> str:
    if not values:
        return "–"
    f, nd = (100.0, 1) if pct else (1.0, 3)
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m * f:.{nd}f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m * f:.{nd}f} ± {sd * f:.{nd}f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _cond_label(c: Any, name: str) -> str:
    return f"{float(c):.2f}" if name == "scale" else str(c)


def _full_table_runs() -> int:
    """How many runs the full table plans (every row on every protocol, seeds 0-2, oracles included)."""
    recipes, rows = load_plan()
    return len(make_jobs(list(PROTOCOLS), rows, recipes, [0, 1, 2], False, False, explicit_rows=False))


def render(
    quick: bool, command: str, wall_seconds: float | None = None, full_model: bool = False, depth8: bool = False
) -> Path:
    """Write docs/results-full.md (``quick``: docs/results-quick.md; ``full_model``: docs/results-quick-fullmodel.md;
    ``depth8``: docs/results-depth8.md) from the stored JSONs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, rows = load_plan()
    results = _load_results(quick, full_model, depth8)
    labels = {r["id"]: r["label"] for r in rows}
    groups = {r["id"]: r.get("group", "") for r in rows}
    # which record set: names the plots (suffix), the page, and the flags that make it
    variant = [(quick, "quick", "--quick"), (full_model, "fullmodel", "--full-models"), (depth8, "depth8", "--depth8")]
    suffix = "".join(f"-{name}" for on, name, _ in variant if on)
    flags = "".join(f" {flag}" for on, _, flag in variant if on)
    img_dir = DOCS / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    revs = sorted({str(d.get("git")) for d in results})
    commands = Counter(d["command"] for d in results if d.get("command"))
    devices = sorted({d.get("device", "?") for d in results})
    lines = [
        f"# Scale-generalisation results{' (quick' if quick else ''}"
        + (", full-depth models)" if full_model else ")" if quick else "")
        + (" (full recipe, depth-8 models)" if depth8 else ""),
        "",
        "Generated by `benchmarks/scale_bench.py` from the run records in `benchmarks/results/scale/` — measured",
        "figures only. Accuracies in %, mean ± std over seeds (fmnist-scale: over realizations).",
        "",
        f"- rendered by: `{command}`",
        *[f"- runs made by `{c}`: {n}" for c, n in commands.items()],
        f"- git revision(s): {', '.join(revs) or '–'}; device(s): {', '.join(devices) or '–'}",
        f"- runs: {len(results)}"
        + (f"; wall time of the last invocation {wall_seconds / 60:.1f} min" if wall_seconds else ""),
        "- recipes: `configs/bench/recipes.yaml`; rows: `configs/bench/rows.yaml`.",
        "",
    ]
    quick_page = "results-quick.md"
    if depth8:
        lines += [
            "The **full recipe with the depth-8 models** (`--depth8`): the training budgets of",
            "`configs/bench/recipes.yaml` (not their `quick` sections) with each row's depth-8 `quick_model`: runs",
            "that 2 CPU cores train in about 30 (plain) to 100 (msresnet) minutes. It checks whether the reduced table",
            f"([{quick_page}]({quick_page})) changes with ten times the training data. Not the full table.",
            "",
        ]
    elif full_model:
        lines += [
            "The **reduced budget with each row's own model** (`--quick --full-models`): the depth-20 models of the",
            "full table trained on the `quick` budgets of `configs/bench/recipes.yaml`, seed 0. It checks whether",
            f"what the depth-8 reduced table ([{quick_page}]({quick_page})) shows holds at the real depth (a depth-8",
            "trunk sees at most 25 px, less than a training object of fmnist-ls). Not the full table either.",
            "",
        ]
    elif quick:
        lines += [
            "This is the **reduced table** (`--quick`): depth-8 models (`quick_model` in the rows file) trained on the",
            "`quick` budgets of `configs/bench/recipes.yaml` (each protocol's recipe line says which), seed 0 and",
            "fmnist-scale realizations 0-2 (the seeds column says how many ran). On CPU `--quick` runs one job per",
            "core with one thread each, so the train img/s column is per single-threaded job. Cost figures come from",
            "`benchmarks/speed.py` (targets below). Its absolute accuracies are far below what the full recipe",
            "reaches, and it is not the full table the targets are defined on: read it as the direction of each",
            "comparison. The full table is",
            f"`python benchmarks/scale_bench.py --device cuda --jobs 8` (every row, 3 seeds: {_full_table_runs()} runs",
            "of the depth-20 models; benchmarks/README.md says what it takes).",
            "",
        ]
        if _load_results(True, full_model=True):
            lines += ["The same budget with the full-depth models: [results-quick-fullmodel.md]"
                      "(results-quick-fullmodel.md).", ""]  # fmt: skip
        if _load_results(False, depth8=True):
            lines += ["The full training budget with these depth-8 models: [results-depth8.md](results-depth8.md).",
                      ""]  # fmt: skip
    summary: dict[str, dict[str, Any]] = {}
    for proto in PROTOCOLS:
        pres = [d for d in results if d["job"]["protocol"] == proto]
        if not pres:
            lines += [f"## {proto}", "", f"No run of this protocol is stored yet "
                      f"(`python benchmarks/scale_bench.py{flags} --protocols {proto}`).", ""]  # fmt: skip
            continue
        lines += [f"## {proto}", ""]
        by_row: dict[str, list[dict]] = {}
        oracles: dict[Any, list[dict]] = {}
        for d in pres:
            if d["job"]["row"] == "oracle":
                oracles.setdefault(d["job"]["oracle_condition"], []).append(d)
            else:
                by_row.setdefault(d["job"]["row"], []).append(d)
        order = []
        for rid in [r["id"] for r in rows if r["id"] in by_row]:
            order.append(rid)
            calibrated = [_calibrated(d) for d in by_row[rid]]
            if all(calibrated):
                kept = sum(d["probe"]["kept"] for d in by_row[rid])
                order.append(f"{rid}+probe")
                by_row[order[-1]] = calibrated
                label = labels.get(rid, rid)
                labels[order[-1]] = f"{label} + `msresnet calibrate` (probe kept: {kept}/{len(calibrated)})"
                groups[order[-1]] = groups.get(rid, "")
        first = pres[0]["test"]
        conds, cname = first["conditions"], first["condition_name"]
        recipe = next((d for d in pres if d["job"]["row"] != "oracle"), pres[0])["config"]
        lines.append(
            f"Recipe: {recipe['epochs']} epochs, {recipe.get('train_limit') or 'all'} training images, batch "
            f"{recipe['batch_size']}, {recipe['optimizer']} lr {recipe['lr']}, {recipe['schedule']}, degrade_aug "
            f"{recipe.get('degrade_aug')}. Test images per condition: {first['n_per_condition']}."
        )
        lines.append("")
        is_scale = proto == "fmnist-scale"
        head = ["row", "model", "params"]
        head += ["test acc", "test error"] if is_scale else [_cond_label(c, cname) for c in conds]
        head += ["mean", "worst", "retention", "val (selection)", "train img/s", "seeds"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        curves: dict[str, list[float]] = {}
        val_score: dict[str, float] = {}
        row_stats: dict[str, dict[str, Any]] = {}
        for rid in order:
            ds = by_row[rid]
            accs = [d["test"]["accuracy"] for d in ds]
            per_cond = [[a[i] for a in accs] for i in range(len(conds))]
            overall = [_overall(d["test"]) for d in ds]
            vals = [_mean(d["val"]["accuracy"]) for d in ds if d.get("val")]
            val_score[rid] = _mean(vals)
            rets = [d["test"]["retention"] for d in ds if d["test"].get("retention") is not None]
            cells = [labels.get(rid, rid), f"`{ds[0]['config']['model']}`", f"{ds[0]['params'] / 1e3:.0f}k"]
            if is_scale:
                cells += [_ms(overall), _ms([1 - o for o in overall])]
            else:
                cells += [_ms(v) for v in per_cond]
            cells += [_ms([d["test"]["mean"] for d in ds]), _ms([d["test"]["worst"] for d in ds]),
                      _ms(rets, pct=False) if rets else "–", _ms(vals),
                      f"{_mean([d['train_images_per_s'] or 0 for d in ds]):.0f}", str(len(ds))]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
            curves[labels.get(rid, rid)] = [_mean(v) for v in per_cond]
            row_stats[rid] = {"per_cond": [_mean(v) for v in per_cond], "overall": _mean(overall), "n": len(ds),
                              "retention": _mean(rets) if rets else None, "val": val_score[rid]}  # fmt: skip
        oracle_acc: dict[Any, float] = {}
        for c, ds in sorted(oracles.items(), key=lambda kv: float(kv[0])):
            idx = min(range(len(conds)), key=lambda i: abs(float(conds[i]) - float(c)))
            at = [d["test"]["accuracy"][idx] for d in ds]
            oracle_acc[c] = _mean(at)
            cells = [f"oracle: plain ResNet trained at {_cond_label(c, cname)}", f"`{ds[0]['config']['model']}`",
                     f"{ds[0]['params'] / 1e3:.0f}k"]  # fmt: skip
            cells += [_ms(at) if i == idx else "" for i in range(len(conds))]
            cells += ["", "", "", "", f"{_mean([d['train_images_per_s'] or 0 for d in ds]):.0f}", str(len(ds))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if any(r.endswith("+probe") for r in order):
            lines += [
                "Rows `+ msresnet calibrate`: the run above them after `msresnet calibrate` (object-scale probe fitted",
                "on validation images at the training condition, kept only where the validation sweep's mean rises and",
                "its worst condition does not fall; otherwise the same figures). Full and `--depth8` runs record this",
                "themselves; `--quick` runs get it from `scale_bench.py --quick --calibrate-stored`.",
                "",
            ]
        ms_rows = [r for r in order if groups.get(r) == "msresnet"]
        best = max(ms_rows, key=lambda r: val_score[r]) if ms_rows else None
        if best:
            lines += [f"Best msresnet on validation data: **{labels.get(best, best)}** "
                      f"(validation {val_score[best] * 100:.1f}%).", ""]  # fmt: skip
        summary[proto] = {"rows": row_stats, "oracle": oracle_acc, "best": best, "conds": conds}
        lines += _scale_diagnosis(by_row, [best, "msresnet"] if best else [], labels, cname)
        if not is_scale and curves:
            fig, ax = plt.subplots(figsize=(7, 4.2))
            xs = [float(c) for c in conds]
            for name, ys in curves.items():
                ax.plot(xs, [y * 100 for y in ys], marker="o", label=name, lw=2.2 if "msresnet" in name else 1.2)
            for c, a in oracle_acc.items():
                ax.plot([float(c)], [a * 100], marker="*", ms=12, ls="", color="k")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [_cond_label(c, cname) for c in conds])
            ax.set_xlabel("object scale" if cname == "scale" else "test image size (px)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{proto} (stars: oracle trained at that condition)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower center")
            fig.tight_layout()
            png = img_dir / f"{proto}{suffix}.png"
            fig.savefig(png, dpi=110)
            plt.close(fig)
            lines += [f"![{proto}](img/{png.name})", ""]
    lines += _targets(summary)
    # docs/results.md itself is the overview rendered from summary.csv (benchmarks/render_results.py)
    out = DOCS / f"results{suffix or '-full'}.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def refresh_summary() -> None:
    """Rewrite ``benchmarks/results/summary.csv`` and what is rendered from it (``docs/results.md``, its plots, the
    README table) when the records are the published ones (not a ``--results-dir`` elsewhere)."""
    if RESULTS.resolve() != (ROOT / "benchmarks" / "results" / "scale").resolve():
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import summarize

    summarize.main(["--render"])


def _calibrated(d: dict) -> dict | None:
    """The run as ``msresnet calibrate`` (``keep="auto"``) leaves it: with the probe's test and validation figures
    where validation kept it, else unchanged; None without a probe record."""
    probe = d.get("probe")
    if not probe or not d.get("val"):
        return None
    if not probe["kept"]:
        return d
    val = {**d["val"], "accuracy": [a / 100 for a in probe["calibration"]["probe"]]}
    return {**d, "test": probe["test"], "val": val}


def _scale_diagnosis(by_row: dict[str, list[dict]], row_ids: list[str], labels: dict, cname: str) -> list[str]:
    """Per row: the validation accuracy of each pyramid level alone at each condition (seed 0's run), next to the
    pooled decision - which level recognises the object, and how much the pooling loses against the best level."""
    from msresnet.engine.evaluate import scale_labels

    lines: list[str] = []
    for rid in dict.fromkeys(row_ids):
        d = next((d for d in by_row.get(rid, []) if d.get("val_scales")), None)
        if d is None or len(d["val"]["conditions"]) < 2:
            continue
        vs, pooled = d["val_scales"], d["val"]["accuracy"]
        head = [f"level {name}" if name.startswith("x") else name for name in scale_labels(vs)]
        n = len(head)
        lines += [f"Which pyramid level decides: **{labels.get(rid, rid)}** (`{d['config']['model']}`, "
                  f"seed {d['job']['seed']}), validation accuracy of each level alone (`evaluate_scales`) against "
                  "the pooled decision; levels too small for an input are dropped.", "",
                  "| " + " | ".join([cname, "pooled", *head, "best level"]) + " |",
                  "|" + "---|" * (n + 3)]  # fmt: skip
        for c, accs, p in zip(vs["conditions"], vs["accuracy"], pooled, strict=True):
            cells = [f"{a * 100:.1f}" for a in accs] + [""] * (n - len(accs))
            lines.append(f"| {_cond_label(c, cname)} | {p * 100:.1f} | " + " | ".join(cells)
                         + f" | {max(accs) * 100:.1f} |")  # fmt: skip
        lines.append("")
    return lines


def _targets(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The four targets of the results issue, each with its measured value."""
    lines = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]

    def row(text: str, measured: str, ok: bool | None) -> None:
        lines.append(f"| {text} | {measured} | {'yes' if ok else ('no' if ok is not None else '–')} |")

    ls = summary.get("fmnist-ls")
    if ls and ls["best"]:
        b, conds = ls["rows"][ls["best"]], [float(c) for c in ls["conds"]]
        plain = ls["rows"].get("resnet")
        for c, oracle in ls["oracle"].items():
            i = min(range(len(conds)), key=lambda k: abs(conds[k] - float(c)))
            gap = (oracle - b["per_cond"][i]) * 100
            row(f"fmnist-ls: best msresnet within 3 points of the oracle at s={float(c):g}",
                f"{b['per_cond'][i] * 100:.1f} vs oracle {oracle * 100:.1f} (gap {gap:.1f})", gap <= 3)  # fmt: skip
        r = b["retention"]
        row("fmnist-ls: retention (worst / s=1) >= 0.90", f"{r:.3f}" if r is not None else "–",
            r is not None and r >= 0.90)  # fmt: skip
        if plain:
            i1 = min(range(len(conds)), key=lambda k: abs(conds[k] - 1.0))
            d = (plain["per_cond"][i1] - b["per_cond"][i1]) * 100
            row(
                "fmnist-ls: accuracy at s=1 within 1 point of the plain ResNet",
                f"{b['per_cond'][i1] * 100:.1f} vs {plain['per_cond'][i1] * 100:.1f} (diff {d:.1f})",
                d <= 1,
            )
    sc = summary.get("fmnist-scale")
    if sc and sc["best"]:
        err = {k: 1 - v["overall"] for k, v in sc["rows"].items()}
        base = min(err.get("resnet", 1), err.get("resnet_aug", 1))
        e = err[sc["best"]]
        n, ran = sc["rows"][sc["best"]]["n"], [k for k in ("resnet", "resnet_aug") if k in err]
        row(f"fmnist-scale: msresnet error <= 0.85 x better of plain / plain + rescale (>= 3 realizations; here "
            f"{n}; baselines run: {', '.join(ran)})", f"{e * 100:.2f}% vs {base * 100:.2f}% (ratio {e / base:.2f})",
            e <= 0.85 * base and n >= 3 and len(ran) == 2)  # fmt: skip
        others = {k: err[k] for k in ("fovmax", "fovavg", "sesn") if k in err}
        if others:
            row(
                "fmnist-scale: below the scale-channel and SESN-style rows",
                ", ".join(f"{k} {v * 100:.2f}%" for k, v in others.items()),
                all(e < v for v in others.values()),
            )
    rs = summary.get("fmnist-res")
    if rs and rs["best"]:
        b, conds = rs["rows"][rs["best"]], [int(c) for c in rs["conds"]]
        if 56 in conds and 28 in conds:
            a56, a28 = b["per_cond"][conds.index(56)], b["per_cond"][conds.index(28)]
            row("fmnist-res: at 56 px within 1 point of 28 px", f"{a56 * 100:.1f} vs {a28 * 100:.1f}",
                (a28 - a56) * 100 <= 1)  # fmt: skip
        for c, oracle in rs["oracle"].items():
            if int(c) in conds:
                a = b["per_cond"][conds.index(int(c))]
                row(f"fmnist-res: at {c} px within 3 points of the oracle",
                    f"{a * 100:.1f} vs oracle {oracle * 100:.1f}", (oracle - a) * 100 <= 3)  # fmt: skip
    reported: set[tuple] = set()  # a model measured in several speed files on the same device and batch: once
    for speed in sorted((ROOT / "benchmarks" / "results").glob("speed*.json")):
        d = json.loads(speed.read_text())
        where = f"{d.get('device')}, batch {d.get('batch')} (`{speed.name}`)"
        by = {(r["model"], r["size"]): r for r in d.get("rows", [])}
        for (model, size), r in sorted(by.items()):
            seen = (model, size, d.get("device"), d.get("batch"))
            if model not in ("msresnet20", "msresnet20_lite") or seen in reported:
                continue
            reported.add(seen)
            tr, inf = 1 / r["ratio"]["train_time"], 1 / r["ratio"]["infer_time"]
            row(f"cost: `{model}` throughput >= 0.5x plain ResNet-20 at {size}px, {where}",
                f"train {tr:.2f}x, inference {inf:.2f}x", tr >= 0.5 and inf >= 0.5)  # fmt: skip
            big = by.get((model, size * 2))
            if big:
                growth = r["train_img_s"] / big["train_img_s"]
                row(f"cost: `{model}` time per image {size}->{size * 2}px grows no faster than pixels (4x), {where}",
                    f"{growth:.2f}x", growth <= 4.0)  # fmt: skip
    return lines + [""]


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
                         "plan the protocol's oracle runs too")  # fmt: skip
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
    global RESULTS
    if args.results_dir:
        RESULTS = Path(args.results_dir).resolve()
        os.environ["MSRESNET_BENCH_RESULTS"] = str(RESULTS)
    elif os.environ.get("MSRESNET_BENCH_RESULTS"):
        RESULTS = Path(os.environ["MSRESNET_BENCH_RESULTS"])
    sets = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    command = "python benchmarks/scale_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.run_job:
        spec = json.loads(Path(args.run_job).read_text())
        job = Job(**spec["job"])
        result = run_job(job, spec["cfg"], spec["test_limit"], spec["val_limit"])
        result["command"] = spec.get("command")
        write_json(RESULTS / f"{job.key}.json", result)
        return 0
    if args.render:
        print(render(args.quick, command, full_model=args.full_models, depth8=args.depth8))
        refresh_summary()
        return 0
    recipes, all_rows = load_plan()
    rows = all_rows
    wanted = set(args.rows.split(",")) if args.rows else None
    if wanted is not None:
        unknown = wanted - {r["id"] for r in all_rows} - {"oracle"}
        if unknown:
            raise SystemExit(f"scale_bench: unknown row(s) {', '.join(sorted(unknown))} (see configs/bench/rows.yaml)")
        rows = [r for r in rows if r["id"] in wanted]
    # --quick: seed 0, except where the recipe's quick section lists seeds (fmnist-scale needs 3 realizations)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else ([0, 1, 2] if not args.quick else [0])
    protocols = [p for p in args.protocols.split(",") if p]
    if args.full_models and not args.quick:
        raise SystemExit("scale_bench: --full-models goes with --quick (the full table already uses the full models)")
    if args.depth8 and args.quick:
        raise SystemExit("scale_bench: --depth8 is the full recipe with the depth-8 models; --quick already uses them")
    jobs = make_jobs(protocols, rows, recipes, seeds, args.quick, bool(args.seeds), explicit_rows=bool(args.rows),
                     full_model=args.full_models, depth8=args.depth8,
                     oracles=wanted is None or "oracle" in wanted)  # fmt: skip
    if args.calibrate_stored:
        val_limits = {p: recipes[p]["quick"].get("val_limit", 5000) if args.quick else 5000 for p in protocols}
        calibrate_stored(jobs, Path(args.runs_dir), args.test_limit, val_limits)
        print(render(args.quick, command, full_model=args.full_models, depth8=args.depth8))
        refresh_summary()
        return 0
    todo = [j for j in jobs if not (RESULTS / f"{j.key}.json").exists()]
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
        if (RESULTS / f"{job.key}.json").exists():  # stored meanwhile by another invocation (e.g. a shared oracle)
            return f"already stored {job.key}"
        quick = recipes[job.protocol]["quick"] if job.quick else {}
        cfg = job_config(job, all_rows, recipes, args.device, runs)
        if args.amp:
            cfg["amp"] = args.amp
        if args.device == "cpu" and jobs_n > 1:
            cfg["num_workers"] = max(1, cores // jobs_n)  # split the cores instead of oversubscribing them
        cfg.update(sets)
        shutil.rmtree(cfg["out"], ignore_errors=True)  # a run that did not store its result starts over
        spec = {"job": asdict(job), "cfg": cfg, "test_limit": args.test_limit or quick.get("test_limit"),
                "val_limit": quick.get("val_limit", 5000), "command": command}  # fmt: skip
        spec_path = spec_dir / f"{job.key}.json"
        spec_path.write_text(json.dumps(spec))
        t0 = time.perf_counter()
        log = runs / f"{job.key}.log"
        left = args.deadline - (time.perf_counter() - t_start) if args.deadline else None
        with open(log, "w") as fh:
            try:
                rc = subprocess.run([sys.executable, __file__, "--run-job", str(spec_path)], stdout=fh,
                                    stderr=subprocess.STDOUT, cwd=ROOT, timeout=left).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                rc = "deadline"
        status = "ok" if rc == 0 else f"FAILED (rc {rc}, see {log})"
        return f"{status} {job.key} in {time.perf_counter() - t0:.0f}s"

    print(f"{jobs_n} run(s) at a time on {args.device}", flush=True)
    with ThreadPoolExecutor(max_workers=jobs_n) as pool:
        for msg in pool.map(launch, todo):
            print(msg, flush=True)
    wall = time.perf_counter() - t_start
    out = render(args.quick, command, wall, full_model=args.full_models, depth8=args.depth8)
    print(f"wrote {out} ({wall / 60:.1f} min)")
    refresh_summary()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
