"""Plots of accuracy against the test condition (object scale or image size).

Scale sweeps are geometric (``s = 2**(k/4)``, sizes 14 ... 112 px), so the x axis is logarithmic in base 2: equal
steps in scale are equal distances on the plot, and a model that is scale-invariant draws a flat line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, work on machines without a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from msresnet.evaluate.condition import Kind  # noqa: E402
from msresnet.records import ScaleResult, SweepResult  # noqa: E402

Result = SweepResult | Mapping[str, Any]  # a record, or its JSON form (``evaluate_sweep``'s return value)

__all__ = ["as_record", "accuracy_percent", "condition_label", "plot_comparison", "plot_sweep"]


def accuracy_percent(values: list[float]) -> list[float]:
    """Accuracies as percentages.

    The engine stores fractions in [0, 1]; a list that already holds percentages (any value above 1) is kept, so
    plots and tables read the same either way.
    """
    vals = [float(v) for v in values]
    return vals if any(v > 1.0 for v in vals) else [100.0 * v for v in vals]


def as_record(result: Result) -> SweepResult:
    """``result`` as a :class:`~msresnet.records.SweepResult` (a dict is read with ``SweepResult.from_dict``)."""
    return result if isinstance(result, SweepResult) else SweepResult.from_dict(result)


def condition_label(result: Result) -> str:
    """Axis label for the result's condition: object scale or image size in pixels."""
    name = str(as_record(result).condition_name)
    return Kind.of(name).axis_label(name)


def _numeric(conditions: list[Any]) -> list[float] | None:
    """The conditions as positive floats, or None when they are labels (then the axis is categorical)."""
    try:
        xs = [float(c) for c in conditions]
    except (TypeError, ValueError):
        return None
    return xs if all(x > 0 and math.isfinite(x) for x in xs) else None


def _format_tick(x: float) -> str:
    return f"{x:g}" if abs(x - round(x)) < 1e-9 or x >= 10 else f"{x:.3g}"


def _draw(ax: Any, result: SweepResult, label: str | None, *, mark_train: bool) -> list[float] | None:
    """Draw one sweep on ``ax``; returns the numeric x values (None for a categorical axis)."""
    conditions = list(result.conditions)
    acc = accuracy_percent(list(result.accuracy))
    xs = _numeric(conditions)
    if xs is None:
        ax.plot([str(c) for c in conditions], acc, marker="o", label=label)
        return None
    ax.plot(xs, acc, marker="o", label=label)
    train = result.train_condition
    if mark_train and train is not None and _numeric([train]) is not None:
        ax.axvline(float(train), color="0.5", linestyle="--", linewidth=1)
        ax.annotate(
            "training", (float(train), 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=8, color="0.4"
        )
    return xs


def _finish(ax: Any, xs_all: list[float], result: SweepResult, title: str) -> None:
    if xs_all:
        ax.set_xscale("log", base=2)
        ticks = sorted(set(xs_all))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([_format_tick(t) for t in ticks])
    ax.set_xlabel(condition_label(result) + (" (log scale)" if xs_all else ""))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sweep(result: Result, path: str | Path, *, title: str | None = None) -> Path:
    """Plot one evaluation sweep (accuracy per condition) and mark the training condition.

    Args:
        result: an ``evaluate_sweep`` result (keys ``conditions``, ``accuracy``, ``condition_name``,
            ``train_condition``, ``protocol``); with ``per_scale`` (an ``evaluate_scales`` result) each pyramid
            level is drawn too.
        path: the PNG file to write (parent directories are created).
        title: plot title; defaults to the protocol name.

    Returns:
        The written path.
    """
    result = as_record(result)
    fig, ax = plt.subplots(figsize=(6, 4))
    per_scale = result.per_scale
    xs = _draw(ax, result, "pooled" if per_scale else None, mark_train=True)
    if per_scale and xs is not None:
        _draw_levels(ax, xs, per_scale)
    _finish(ax, xs or [], result, title or result.protocol)
    return _save(fig, path)


def _draw_levels(ax: Any, xs: list[float], per_scale: ScaleResult) -> None:
    """Thin dashed lines: each pyramid level alone (an ``evaluate_scales`` result), where the input keeps it."""
    for i, name in enumerate(per_scale.labels()):
        pts = [(x, a[i] * 100) for x, a in zip(xs, per_scale.accuracy, strict=True) if i < len(a)]
        label = f"level {name} alone" if name.startswith("x") else f"{name} alone"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", lw=1, marker=".", label=label)
    ax.legend(fontsize=7)


def plot_comparison(results: Mapping[str, Result], path: str | Path, *, title: str | None = None) -> Path:
    """Overlay several sweeps of the same protocol, one line per label.

    Args:
        results: label -> ``evaluate_sweep`` result; all should share the protocol's conditions.
        path: the PNG file to write.
        title: plot title; defaults to the first result's protocol name.

    Returns:
        The written path.
    """
    if not results:
        raise ValueError("plot_comparison needs at least one result")
    records = {label: as_record(r) for label, r in results.items()}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs_all: list[float] = []
    first = next(iter(records.values()))
    for i, (label, result) in enumerate(records.items()):
        xs = _draw(ax, result, label, mark_train=(i == 0))
        xs_all.extend(xs or [])
    ax.legend(fontsize=8)
    _finish(ax, xs_all, first, title or first.protocol)
    return _save(fig, path)
