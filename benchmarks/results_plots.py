"""Figures of the published results: accuracy against condition per protocol (± one standard deviation over seeds)
and worst-condition accuracy against training cost, rendered from the summary table (:mod:`results_stats`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.results_stats import cond_label, conditions, is_oracle, row_label, row_stats


def plot_protocol(d: pd.DataFrame, out: Path) -> Path:
    """Accuracy against condition for every row of one protocol and budget: mean over seeds, a band of one
    standard deviation where a row has two or more seeds, oracles as stars at their own condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = row_stats(d)
    conds, name = conditions(d)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for _, r in stats.iterrows():
        if is_oracle(r):
            c = min(conds, key=lambda x: abs(x - r.oracle_condition))
            ax.plot([c], [r.cond_mean[c]], marker="*", ms=13, ls="", color="k")
            continue
        ys = [r.cond_mean[c] for c in conds]
        sd = [r.cond_std.get(c, float("nan")) for c in conds]
        bold = str(r.row_id).startswith("msresnet_conf_sd") or "canonical" in str(r.row_id)
        (line,) = ax.plot(conds, ys, marker="o", ms=3, lw=2.2 if bold else 1.1, label=row_label(r, name, True))
        if r.seeds >= 2:
            lo = [y - s for y, s in zip(ys, sd, strict=True)]
            hi = [y + s for y, s in zip(ys, sd, strict=True)]
            ax.fill_between(conds, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
    if name in ("scale", "size", "scale bin"):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conds, [cond_label(c, name) for c in conds])
        ax.minorticks_off()
    ax.set_xlabel(
        {"scale": "object scale s", "size": "test image size (px)", "scale bin": "object scale (bin centre)"}.get(
            name, name
        )
    )
    ax.set_ylabel("test accuracy (%)")
    proto, budget = d.protocol.iloc[0], d.budget.iloc[0]
    ax.set_title(f"{proto}, budget {budget} (band: ± 1 std over seeds; stars: oracles)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_cost(df: pd.DataFrame, budget: str, out: Path) -> Path:
    """Worst-condition accuracy against training cost relative to the plain ResNet, every row of ``budget``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = iter("os^Dvx")  # one shape per protocol: their rows often share a cost and an accuracy
    for proto, d in df[df.budget == budget].groupby("protocol"):
        stats = row_stats(d)
        stats = stats[stats.oracle_condition.isna() & stats.train_cost.notna()]
        pts = ax.scatter(stats.train_cost, stats.worst, s=24, marker=next(markers, "o"), label=proto, alpha=0.85)
        for _, r in stats.iterrows():
            star = "" if r.get("cost_source") == "step" else "*"  # * : from the runs' throughputs, not measured
            ax.annotate(f"{r.row_id}{star}", (r.train_cost, r.worst), fontsize=5.5, xytext=(3, 2),
                        textcoords="offset points", color=pts.get_facecolor()[0])  # fmt: skip
    ax.set_xscale("log", base=2)
    # quarter steps between the powers of two: the rows' costs mostly lie between 1x and 2x
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2, subs=(1.0, 1.25, 1.5, 1.75), numticks=40))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("training cost: step time / plain ResNet's, same protocol (*: from the runs' own throughputs)")
    ax.set_ylabel("worst-condition test accuracy (%)")
    ax.set_title(f"Accuracy against cost, budget {budget} (mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
