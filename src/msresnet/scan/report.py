"""A scan's outputs: ``scan.json`` (everything), ``scan.csv`` (one row per model x condition), ``report.md`` and a
self-contained ``report.html`` (figures embedded) built from the same blocks, with the PNG figures beside them.

``scan.json``: ``title``, ``data``, ``settings``, ``seconds``, and ``models`` (a list): per model its ``label``,
``spec``, ``kind``, ``weights``, ``random_init``, preprocessing, ``notes`` and ``sweeps`` -> ``scale`` /
``resolution`` -> ``summary`` (mean / worst accuracy, retention) and ``conditions`` (one dict per condition:
``accuracy``, ``mean_confidence``, ``ece``, ``per_class_accuracy`` and, for scale-aware models,
``scale_log2_error_median`` and ``estimated_scale_median``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msresnet.engine.checkpoint import atomic_write_bytes
from msresnet.report.render import render_html, render_markdown
from msresnet.scan import plots
from msresnet.scan.data import ScanData
from msresnet.scan.sources import ModelSource
from msresnet.scan.sweep import ECE_BINS, summarise

__all__ = ["scan_title", "write_outputs"]

_SWEEP_TEXT = {
    "scale": "Object scale: the object rescaled by s inside the unchanged canvas (s > 1 crops it, s < 1 surrounds it "
    "with background), as in fmnist-ls.",
    "resolution": "Resolution: the whole image resized, the same content at fewer or more pixels, as in fmnist-res.",
}
_CSV_COLUMNS = ("model", "sweep", "condition", "factor", "size", "n", "accuracy", "mean_confidence", "ece",
                "scale_log2_error_median", "estimated_scale_median")  # fmt: skip


def scan_title(models: Sequence[ModelSource]) -> str:
    """``Scale-robustness scan: A, B (random weights)``: random models and untrained wrappers are named as such."""
    names = [m.label + (" (random weights)" if m.random_init else " (untrained wrapper)" if m.untrained_wrapper
                        else "") for m in models]  # fmt: skip
    return "Scale-robustness scan: " + ", ".join(names)


def _pct(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * float(v):.1f}"


def _num(v: Any, fmt: str = ".3f") -> str:
    return "—" if v is None else format(float(v), fmt)


def _model_rows(models: Sequence[ModelSource]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "kind", "weights", "input", "normalisation", "notes"]
    rows = []
    for m in models:
        size = f"resized to {m.fixed_size[0]}x{m.fixed_size[1]}" if m.fixed_size else "each condition's own size"
        norm = "none (images in [0, 1])" if m.mean is None else f"mean {_fmt_t(m.mean)}, std {_fmt_t(m.std)}"
        rows.append([m.label, m.kind, m.weights, f"{m.in_chans} ch, {size}", norm, "; ".join(m.notes)])
    return header, rows


def _fmt_t(v: Sequence[float] | None) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v or ()) + ")"


def _blocks(payload: dict[str, Any], figures: dict[str, Any], models: Sequence[ModelSource]) -> list[tuple]:
    """The report as ``("h1"|"h2"|"p"|"table"|"img", ...)`` blocks, rendered to markdown and HTML alike."""
    d = payload["data"]
    per_s = payload["seconds"] / max(1, payload["forward_images"])
    out: list[tuple] = [("h1", payload["title"])]
    skipped = f"; {len(d['skipped'])} unreadable file(s) skipped (listed at the end)." if d["skipped"] else "."
    out.append(
        (
            "p",
            f"Data: {d['source']}: {d['images']} images, {len(d['classes'])} classes, {d['in_chans']} "
            f"channel(s), native size {d['native_size'][0]}x{d['native_size'][1]} px{skipped}",
        )
    )
    out.append(
        (
            "p",
            f"Scanned in {payload['seconds']:.1f} s ({payload['forward_images']} model-image evaluations, "
            f"{1000 * per_s:.2f} ms each, on {payload['settings']['device']}).",
        )
    )
    if any(m.random_init for m in models):
        out.append(("p", "Models marked 'random weights' had no checkpoint: their numbers show the pipeline, not a "
                         "trained model (nothing is ever downloaded)."))  # fmt: skip
    out.append(("h2", "Models"))
    out.append(("table", *_model_rows(models)))
    header = ["model"]
    for s in ("scale", "resolution"):
        header += [f"{s} mean", f"{s} worst", f"{s} retention"]
    rows = []
    for m in payload["models"]:
        row = [m["label"]]
        for s in ("scale", "resolution"):
            sm = m["sweeps"].get(s, {}).get("summary", {})
            row += [_pct(sm.get("mean_accuracy")), _pct(sm.get("worst_accuracy")), _num(sm.get("retention"))]
        rows.append(row)
    out += [
        ("h2", "Summary"),
        (
            "p",
            "Accuracy in %; retention = worst / accuracy at the native condition "
            "(1.0 = no loss anywhere in the sweep).",
        ),
        ("table", header, rows),
    ]
    for sweep in ("scale", "resolution"):
        conds = payload["models"][0]["sweeps"].get(sweep, {}).get("conditions", [])
        if not conds:
            continue
        out += [("h2", f"{sweep.capitalize()} sweep"), ("p", _SWEEP_TEXT[sweep]), ("img", figures[f"curves-{sweep}"],
                f"accuracy against {sweep}")]  # fmt: skip
        names = [c["condition"] for c in conds]
        for what, key, fmt in (("Accuracy (%)", "accuracy", _pct), ("Mean confidence (%)", "mean_confidence", _pct),
                               (f"Expected calibration error ({ECE_BINS} bins)", "ece", _num)):  # fmt: skip
            rows = [[m["label"], *[fmt(c[key]) for c in m["sweeps"][sweep]["conditions"]]] for m in payload["models"]]
            out += [("p", what), ("table", ["model", *names], rows)]
        aware = [m for m in payload["models"] if m["scale_aware"]]
        if aware:
            rows = [[m["label"], *[_num(c.get("scale_log2_error_median"), ".2f") for c in m["sweeps"][sweep]
                                   ["conditions"]]] for m in aware]  # fmt: skip
            out += [("p", "Estimated object scale: median |log2(estimated / true)| in octaves (0 = exact)"),
                    ("table", ["model", *names], rows)]  # fmt: skip
        out.append(("img", figures[f"examples-{sweep}"], f"example images of the {sweep} sweep"))
    if figures.get("scale-estimates"):
        out += [("h2", "Estimated against true object scale"), ("img", figures["scale-estimates"], "scale estimates")]
    out.append(("h2", "Per-class accuracy"))
    for m in payload["models"]:
        path, shown = figures[f"heatmap-{m['label']}"]
        if shown < len(d["classes"]):
            out.append(("p", f"{m['label']}: the {shown} classes with the lowest mean accuracy."))
        out.append(("img", path, f"per-class accuracy of {m['label']}"))
    if d["skipped"]:
        out += [("h2", "Skipped files"), ("p", "; ".join(d["skipped"]))]
    return out


def _csv(payload: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CSV_COLUMNS)
    for m in payload["models"]:
        for sweep, sw in m["sweeps"].items():
            for c in sw["conditions"]:
                w.writerow([m["label"], sweep, c["condition"], c["factor"], c["size"][0], c["n"],
                            *(f"{c[k]:.6f}" if c.get(k) is not None else "" for k in _CSV_COLUMNS[6:])])  # fmt: skip
    return buf.getvalue()


def write_outputs(out: Path, models: Sequence[ModelSource], data: ScanData, swept: dict[str, Any],
                  settings: dict[str, Any], conditions: Sequence[Any]) -> dict[str, Path]:  # fmt: skip
    """Write ``scan.json``, ``scan.csv``, ``report.md``, ``report.html`` and the figures into ``out``."""
    import msresnet

    payload: dict[str, Any] = {
        "title": scan_title(models), "msresnet_version": msresnet.__version__, "data": data.describe(),
        "settings": settings, "seconds": swept["seconds"], "forward_images": swept["images"] * len(conditions)
        * len(models), "models": [],
    }  # fmt: skip
    for m in models:
        sweeps = {s: {"summary": summarise(rows), "conditions": rows} for s, rows in swept["results"][m.label].items()}
        payload["models"].append({
            "label": m.label, "spec": m.spec, "kind": m.kind, "weights": m.weights, "random_init": m.random_init,
            "in_chans": m.in_chans, "fixed_input_size": list(m.fixed_size) if m.fixed_size else None,
            "mean": list(m.mean) if m.mean else None, "std": list(m.std) if m.std else None,
            "interpolation": m.interpolation, "notes": m.notes, "scale_aware": m.scale_aware,
            "untrained_wrapper": m.untrained_wrapper,
            "forward_seconds": swept["model_seconds"][m.label], "sweeps": sweeps,
        })  # fmt: skip
    fig_dir = out / "figures"
    figures: dict[str, Any] = {}
    results = {m["label"]: {s: v["conditions"] for s, v in m["sweeps"].items()} for m in payload["models"]}
    for sweep in ("scale", "resolution"):
        idx = [i for i, c in enumerate(conditions) if c.sweep_name == sweep]
        if not idx:
            continue
        figures[f"curves-{sweep}"] = plots.plot_curves(results, sweep, fig_dir / f"curves-{sweep}.png",
                                                       f"accuracy against {sweep}")  # fmt: skip
        figures[f"examples-{sweep}"] = plots.plot_examples(
            [swept["examples"][i] for i in idx], [conditions[i].label for i in idx], data.class_names,
            fig_dir / f"examples-{sweep}.png", f"{sweep} sweep: example images")  # fmt: skip
    for i, m in enumerate(payload["models"]):
        figures[f"heatmap-{m['label']}"] = plots.plot_heatmap(
            results[m["label"]], data.class_names, fig_dir / f"classes-{i}.png", f"{m['label']}: per-class accuracy"
        )
    figures["scale-estimates"] = plots.plot_scale_estimates(results, fig_dir / "scale-estimates.png")
    blocks = _blocks(payload, figures, models)
    written = {"json": out / "scan.json", "csv": out / "scan.csv", "markdown": out / "report.md",
               "html": out / "report.html"}  # fmt: skip
    atomic_write_bytes(written["json"], (json.dumps(payload, indent=1) + "\n").encode())
    atomic_write_bytes(written["csv"], _csv(payload).encode())
    atomic_write_bytes(written["markdown"], render_markdown(blocks, out).encode())
    atomic_write_bytes(written["html"], render_html(blocks).encode())
    return written
