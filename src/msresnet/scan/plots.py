"""The scan's figures: accuracy curves with every model overlaid (the report's own :func:`plot_comparison`), a
per-class heat map per model, example images per condition, and estimated against true object scale."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from msresnet.evaluate.condition import Kind
from msresnet.report.plots import plot_comparison, plt

__all__ = ["plot_curves", "plot_examples", "plot_heatmap", "plot_scale_estimates"]

MAX_HEATMAP_CLASSES = 40


def _curve(rows: Sequence[Mapping[str, Any]], sweep: str) -> dict[str, Any]:
    """A sweep in ``evaluate_sweep``'s shape, as :func:`plot_comparison` draws it."""
    points = [Kind.of(sweep).curve_point(r["factor"], r["size"]) for r in rows]
    name = points[0][1].value if points else sweep
    return {"conditions": [x for x, _ in points], "accuracy": [r["accuracy"] for r in rows], "condition_name": name}


def plot_curves(results: Mapping[str, Mapping[str, Any]], sweep: str, path: Path, title: str) -> Path:
    """Accuracy against the sweep's condition, one line per model."""
    return plot_comparison({label: _curve(per[sweep], sweep) for label, per in results.items()}, path, title=title)


def plot_heatmap(per: Mapping[str, Sequence[Mapping[str, Any]]], class_names: Sequence[str], path: Path,
                 title: str) -> tuple[Path, int]:  # fmt: skip
    """Per-class accuracy (rows: classes, columns: conditions), one panel per sweep.

    With more than :data:`MAX_HEATMAP_CLASSES` classes only the lowest-accuracy ones (mean over all conditions) are
    shown. Returns the path and the number of classes shown.
    """
    sweeps = [s for s in ("scale", "resolution") if s in per]
    mat = {s: torch.tensor([[r["per_class_accuracy"].get(c) if r["per_class_accuracy"].get(c) is not None
                             else float("nan") for r in per[s]] for c in class_names]) for s in sweeps}  # fmt: skip
    keep = list(range(len(class_names)))
    if len(keep) > MAX_HEATMAP_CLASSES:
        mean = torch.cat([mat[s] for s in sweeps], 1).nan_to_num(1.0).mean(1)
        keep = sorted(mean.argsort()[:MAX_HEATMAP_CLASSES].tolist())
    names = [class_names[i] for i in keep]
    widths = [len(per[s]) for s in sweeps]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(2.2 + 0.55 * sum(widths), 1.4 + 0.28 * len(keep)),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)  # fmt: skip
    im = None
    for ax, s in zip(axes[0], sweeps, strict=True):
        m = mat[s][keep] * 100
        im = ax.imshow(m.numpy(), vmin=0, vmax=100, cmap="viridis", aspect="auto")
        labels = [Kind.of(s).tick(r["factor"], r["size"]) for r in per[s]]
        ax.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 12 else 0, fontsize=7)
        ax.set_xlabel(Kind.of(s).axis_label())
        ax.set_yticks(range(len(names)), names if s == sweeps[0] else [""] * len(names), fontsize=7)
        if len(keep) <= 20 and len(labels) <= 12:
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    v = float(m[i, j])
                    if v == v:
                        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6,
                                color="white" if v < 55 else "black")  # fmt: skip
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), label="accuracy (%)", fraction=0.03)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path), len(keep)


def plot_examples(examples: Sequence[tuple[torch.Tensor, torch.Tensor]], labels: Sequence[str],
                  class_names: Sequence[str], path: Path, title: str) -> Path:  # fmt: skip
    """A grid: one row per condition, the same few images in each (shown at one display size, so lower resolutions
    look blurred and smaller objects look small)."""
    rows = len(examples)
    cols = max((len(e[0]) for e in examples), default=1)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols + 1.2, 1.1 * rows + 0.4), squeeze=False)
    for r, ((imgs, ys), name) in enumerate(zip(examples, labels, strict=True)):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(imgs):
                ax.axis("off")
                continue
            a = imgs[c].permute(1, 2, 0).numpy()
            ax.imshow(a[..., 0] if a.shape[-1] == 1 else a, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if r == 0:
                ax.set_title(class_names[int(ys[c])] if int(ys[c]) < len(class_names) else str(int(ys[c])), fontsize=7)
        axes[r][0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_scale_estimates(results: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    """Median estimated object scale against the true one, per scale-aware model and sweep (log-log); None when no
    model estimates scale."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    drawn = False
    lo, hi = float("inf"), 0.0
    for label, per in results.items():
        for sweep, rows in per.items():
            pts = [(r["true_scale"], r["estimated_scale_median"]) for r in rows if r.get("estimated_scale_median")]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{label} ({sweep})")
            lo, hi = min(lo, *[min(p) for p in pts]), max(hi, *[max(p) for p in pts])
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([lo, hi], [lo, hi], color="0.6", ls="--", lw=1, label="exact")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("true object scale")
    ax.set_ylabel("median estimated object scale")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
