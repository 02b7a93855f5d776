"""The results issue's targets (``configs/bench/targets.yaml``) checked against the summary of the run records.

Each target names a ``check``: a function of the target's fields and the per-protocol summary that returns its
rows of (target text, measured value, met). :func:`targets_table` renders them for a budget's results page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from benchmarks.layout import ROOT, TARGETS_FILE

__all__ = ["CHECKS", "load_targets", "targets_table"]


def load_targets(path: Path = TARGETS_FILE) -> list[dict[str, Any]]:
    """The targets of the results issue (``configs/bench/targets.yaml``), in page order."""
    return list(yaml.safe_load(path.read_text())["targets"])


def targets_table(summary: dict[str, dict[str, Any]], targets: list[dict[str, Any]] | None = None) -> list[str]:
    """The targets table: each target of ``targets`` (default: the targets file) with its measured value."""
    lines = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for target in load_targets() if targets is None else targets:
        for text, measured, ok in CHECKS[target["check"]](target, summary):
            lines.append(f"| {text} | {measured} | {'yes' if ok else ('no' if ok is not None else '–')} |")
    return lines + [""]


Measured = list[tuple[str, str, bool | None]]  # (target text, measured value, met)


def _best(t: dict[str, Any], summary: dict[str, dict[str, Any]]) -> tuple[dict, dict] | None:
    """(protocol summary, figures of the target's row) of a target's protocol: the row named by ``of``, else the best
    msresnet on validation; None when it did not run there."""
    proto = summary.get(t["protocol"])
    row = t.get("of") or (proto["best"] if proto else None)
    return (proto, proto["rows"][row]) if proto and row in proto["rows"] else None


def _oracle_gap(t: dict[str, Any], summary: dict[str, dict[str, Any]]) -> Measured:
    found, out = _best(t, summary), []
    if found is None:
        return out
    proto, b = found
    conds = [float(c) for c in proto["conds"]]
    for c, oracle in proto["oracle"].items():
        if t["match"] == "nearest":
            i = min(range(len(conds)), key=lambda k: abs(conds[k] - float(c)))
        elif float(c) in conds:
            i = conds.index(float(c))
        else:
            continue
        gap = (oracle - b["per_cond"][i]) * 100
        measured = f"{b['per_cond'][i] * 100:.1f} vs oracle {oracle * 100:.1f}" + (
            f" (gap {gap:.1f})" if t["show_gap"] else ""
        )
        cond = float(c) if t["match"] == "nearest" else c
        out.append((t["text"].format(**{**t, "condition": cond}), measured, gap <= t["max_gap"]))
    return out


def _retention(t: dict[str, Any], summary: dict[str, dict[str, Any]]) -> Measured:
    found = _best(t, summary)
    if found is None:
        return []
    r = found[1]["retention"]
    return [(t["text"].format(**t), f"{r:.3f}" if r is not None else "–", r is not None and r >= t["min"])]


def _row_gap(t: dict[str, Any], summary: dict[str, dict[str, Any]]) -> Measured:
    found = _best(t, summary)
    if found is None or t["row"] not in found[0]["rows"]:
        return []
    (proto, b), other = found, found[0]["rows"][t["row"]]
    conds = [float(c) for c in proto["conds"]]
    i = min(range(len(conds)), key=lambda k: abs(conds[k] - float(t["condition"])))
    d = (other["per_cond"][i] - b["per_cond"][i]) * 100
    measured = f"{b['per_cond'][i] * 100:.1f} vs {other['per_cond'][i] * 100:.1f} (diff {d:.1f})"
    return [(t["text"].format(**t), measured, d <= t["max_gap"])]


def _errors(t: dict[str, Any], summary: dict[str, dict[str, Any]]) -> tuple[dict, dict[str, float]] | None:
    """(protocol summary, each row's mean error) of a target's protocol; None when its row did not run there."""
    found = _best(t, summary)
    return None if found is None else (found[0], {k: 1 - v["overall"] for k, v in found[0]["rows"].items()})


def _error_ratio(t: dict[str, Any], summary: dict[str, dict[str, Any]]) -> Measured:
    found = _errors(t, summary)
    if found is None:
        return []
    proto, err = found
    base = min(err.get(k, 1) for k in t["baselines"])
    e = err[proto["best"]]
    n, ran = proto["rows"][proto["best"]]["n"], [k for k in t["baselines"] if k in err]
    ok = e <= t["max_ratio"] * base and n >= t["min_realizations"] and len(ran) == len(t["baselines"])
    text = t["text"].format(**{**t, "n": n, "ran": ", ".join(ran)})
    return [(text, f"{e * 100:.2f}% vs {base * 100:.2f}% (ratio {e / base:.2f})", ok)]


def _below_rows(t: dict[str, Any], summary: dict[str, dict[str, Any]]) -> Measured:
    found = _errors(t, summary)
    if found is None:
        return []
    proto, err = found
    others = {k: err[k] for k in t["rows"] if k in err}
    if not others:
        return []
    e = err[proto["best"]]
    measured = ", ".join(f"{k} {v * 100:.2f}%" for k, v in others.items())
    return [(t["text"].format(**t), measured, all(e < v for v in others.values()))]


def _size_gap(t: dict[str, Any], summary: dict[str, dict[str, Any]]) -> Measured:
    """One size (``size``) or every size (``size: all``: the one furthest below) against the ``reference`` size."""
    found = _best(t, summary)
    if found is None:
        return []
    proto, b = found
    conds = [int(c) for c in proto["conds"]]
    if t["reference"] not in conds or (t["size"] != "all" and t["size"] not in conds):
        return []
    ref = b["per_cond"][conds.index(t["reference"])]
    size = min(conds, key=lambda c: b["per_cond"][conds.index(c)]) if t["size"] == "all" else t["size"]
    a = b["per_cond"][conds.index(size)]
    measured = f"{a * 100:.1f} at {size} px vs {ref * 100:.1f}"
    return [(t["text"].format(**t), measured, (ref - a) * 100 <= t["max_gap"])]


def _min_worst(t: dict[str, Any], summary: dict[str, dict[str, Any]]) -> Measured:
    """The row's worst condition (each condition's mean over seeds) at least ``min`` (%)."""
    found = _best(t, summary)
    if found is None:
        return []
    proto, b = found
    i = min(range(len(b["per_cond"])), key=lambda k: b["per_cond"][k])
    worst = b["per_cond"][i] * 100
    return [(t["text"].format(**t), f"{worst:.1f} at {float(proto['conds'][i]):g}", worst >= t["min"])]


def _mean_vs_row(t: dict[str, Any], summary: dict[str, dict[str, Any]]) -> Measured:
    """The row's mean over conditions at least another row's."""
    found = _best(t, summary)
    if found is None or t["row"] not in found[0]["rows"]:
        return []
    a, other = found[1]["overall"] * 100, found[0]["rows"][t["row"]]["overall"] * 100
    return [(t["text"].format(**t), f"{a:.1f} vs {other:.1f}", a >= other)]


def _speed(t: dict[str, Any], summary: dict[str, dict[str, Any]]) -> Measured:
    out: Measured = []
    reported: set[tuple] = set()  # a model measured in several speed files on the same device and batch: once
    for speed in sorted((ROOT / "benchmarks" / "results").glob(t.get("files", "speed*.json"))):
        d = json.loads(speed.read_text())
        where = f"{d.get('device')}, batch {d.get('batch')} (`{speed.name}`)"
        by = {(r["model"], r["size"]): r for r in d.get("rows", [])}
        for (model, size), r in sorted(by.items()):
            seen = (model, size, d.get("device"), d.get("batch"))
            if model not in t["models"] or seen in reported:
                continue
            reported.add(seen)
            tr, inf = 1 / r["ratio"]["train_time"], 1 / r["ratio"]["infer_time"]
            fields = {**t, "model": model, "size": size, "size2": size * 2, "where": where}
            out.append((t["text"].format(**fields), f"train {tr:.2f}x, inference {inf:.2f}x",
                        tr >= t["min_ratio"] and inf >= t["min_ratio"]))  # fmt: skip
            big = by.get((model, size * 2))
            if big and "growth_text" in t:
                growth = r["train_img_s"] / big["train_img_s"]
                out.append((t["growth_text"].format(**fields), f"{growth:.2f}x", growth <= t["max_growth"]))
    return out


CHECKS = {
    "oracle_gap": _oracle_gap,
    "retention": _retention,
    "row_gap": _row_gap,
    "error_ratio": _error_ratio,
    "below_rows": _below_rows,
    "size_gap": _size_gap,
    "min_worst": _min_worst,
    "mean_vs_row": _mean_vs_row,
    "speed": _speed,
}
