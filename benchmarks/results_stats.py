"""The summary table as the results renderers read it: per-row statistics over seeds, condition and row labels.

Shared by :mod:`render_results` (tables, README blocks) and :mod:`results_plots` (figures), so both state the same
figures the same way.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.layout import SUMMARY
from msresnet.evaluate.condition import Kind

# the rows the field compares (plain, plain + augmentation, oracles, the pyramid default as trained and calibrated);
# canonicalising rows are added by name
HEADLINE_ROWS = {
    "resnet": "plain ResNet",
    "resnet_aug": "plain ResNet + random rescale",
    "msresnet_conf_sd": "msresnet pyramid (most confident level)",
    "msresnet_conf_sd+calibrate": "msresnet pyramid + `msresnet calibrate`",
    "canonical_loc": "msresnet canonical (default)",
    "canonical": "msresnet canonical, previous design",
    "canonical_search": "msresnet canonical + local search",
}


def load(summary: Path = SUMMARY) -> pd.DataFrame:
    """The summary table, with ``row`` and ``condition`` as the renderers expect them."""
    df = pd.read_csv(summary)
    df["row"] = df["row"].astype(str)
    return df


def row_stats(df: pd.DataFrame) -> pd.DataFrame:
    """One line per (protocol, budget, row): seeds, per-condition means/stds, mean and worst over seeds."""
    out = []
    for (proto, budget, row), g in df.groupby(["protocol", "budget", "row"], sort=False):
        per_seed = g.groupby("seed").accuracy
        means, worsts = per_seed.mean(), per_seed.min()
        cond = g.groupby("condition").accuracy
        first = g.iloc[0]
        out.append({
            "protocol": proto, "budget": budget, "row": row, "row_id": first.row_id, "label": first.label,
            "model": first.model, "depth": first.depth, "seeds": int(g.seed.nunique()),
            "cond_mean": cond.mean().to_dict(), "cond_std": cond.std().to_dict(),
            "mean": means.mean(), "mean_std": means.std(), "worst": worsts.mean(), "worst_std": worsts.std(),
            "val": g.groupby("seed").val_accuracy.first().mean(),
            "train_cost": g.groupby("seed").train_cost.first().mean(), "cost_source": first.train_cost_source,
            "oracle_condition": oracle_condition(first.row_id),
        })  # fmt: skip
    return pd.DataFrame(out)


def oracle_condition(row_id: str) -> float | None:
    return float(row_id.split("@", 1)[1]) if row_id.startswith("oracle@") else None


def is_oracle(r: pd.Series) -> bool:
    """Whether a :func:`row_stats` line is an oracle (pandas stores the other rows' condition as None or NaN)."""
    return bool(pd.notna(r.oracle_condition))


def cond_label(c: float, name: str) -> str:
    """A condition as the results tables write it (:meth:`msresnet.evaluate.Kind.short`)."""
    return Kind.of(name).short(c)


def conditions(d: pd.DataFrame) -> tuple[list[float], str]:
    return sorted(d.condition.unique()), str(d.condition_name.iloc[0])


def row_label(r: pd.Series, name: str, short: bool) -> str:
    if is_oracle(r):
        return f"oracle: plain ResNet trained at {cond_label(r.oracle_condition, name)}"
    if short and r.row_id in HEADLINE_ROWS:
        return HEADLINE_ROWS[r.row_id]
    return str(r.label)
