"""Render the published results from ``benchmarks/results/summary.csv`` (written by ``benchmarks/summarize.py``).

Writes ``docs/results.md`` (every protocol, budget and row: per-condition means over seeds, mean and worst
condition with their spread over seeds, validation score, training cost), its plots in ``docs/img/`` (accuracy
against condition per protocol with a band of one standard deviation over seeds; worst-condition accuracy against
training cost for every row) and the README's headline table between ``<!-- results:begin -->`` and
``<!-- results:end -->``. No figure is typed by hand: ``tests/test_results_table.py`` re-renders the README block
from the CSV and fails when they differ.

    python benchmarks/render_results.py           # after python benchmarks/summarize.py

Statistics (the same definitions as the results check): a cell is the mean over seeds of the accuracy at that
condition; *mean* and *worst* are taken over a run's conditions first (its mean, its lowest accuracy), then averaged
over seeds, ± the sample standard deviation over seeds where there are two or more.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))  # sibling scripts, also when this file is loaded by path
import choose_default  # noqa: E402
from choose_default import BUDGETS, HEADLINE_PROTOCOL  # noqa: E402  (one definition of the budgets' order)

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "benchmarks" / "results" / "summary.csv"
DOCS = ROOT / "docs"
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
DEMO_BEGIN, DEMO_END = "<!-- demo:begin -->", "<!-- demo:end -->"
DEFAULT_BEGIN, DEFAULT_END = "<!-- default:begin -->", "<!-- default:end -->"  # validation figures, not test ones
DEMO_RECORD = ROOT / "benchmarks" / "results" / "demo" / "fresh-clone.json"
BUDGET_TEXT = {
    "full": "the full training recipe with each row's own model",
    "depth8": "the full training recipe with the depth-8 models (`scale_bench.py --depth8`)",
    "quick-depth20": "the reduced training budget with each row's own model (`--quick --full-models`)",
    "quick": "the reduced training budget with the depth-8 models (`--quick`)",
}
# the rows the field compares (plain, plain + augmentation, oracles, the pyramid default as trained and calibrated);
# canonicalising rows are added by name
HEADLINE_ROWS = {
    "resnet": "plain ResNet",
    "resnet_aug": "plain ResNet + random rescale",
    "msresnet_conf_sd": "msresnet pyramid (most confident level)",
    "msresnet_conf_sd+calibrate": "msresnet pyramid + `msresnet calibrate`",
    "canonical": "msresnet canonical (estimate, resample once, classify)",
    "canonical_search": "msresnet canonical + local search",
}
PROTOCOL_TEXT = {
    "fmnist-ls": "Trained on objects at scale 1 in a 64-px canvas; tested with the object rescaled by s",
    "fmnist-res": "Trained on 28-px images; tested with the whole image resized to the given size (px)",
    "fmnist-scale": "Every image rescaled once by a random factor; accuracy per object-scale bin of the test set",
}


# ---------------------------------------------------------------------------------------------------- statistics


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
            "train_cost": g.groupby("seed").train_cost.first().mean(),
            "oracle_condition": _oracle_condition(first.row_id),
        })  # fmt: skip
    return pd.DataFrame(out)


def _oracle_condition(row_id: str) -> float | None:
    return float(row_id.split("@", 1)[1]) if row_id.startswith("oracle@") else None


def headline_budget(df: pd.DataFrame) -> str | None:
    """The budget the README shows: the most-trained one with the plain ResNet and the default msresnet's row (the
    comparison the table is for); other rows of that budget (pyramid, oracles) join it where they were run."""
    choice = choose_default.choose(df)
    default_row = choice.row_id if choice is not None else "canonical"
    d = df[df.protocol == HEADLINE_PROTOCOL]
    for budget in BUDGETS:
        ids = set(d[d.budget == budget].row_id)
        if {"resnet", default_row} <= ids:
            return budget
    return None


def default_lines(df: pd.DataFrame) -> list[str]:
    """The default msresnet and the validation scores it was chosen by (:mod:`choose_default`)."""
    choice = choose_default.choose(df)
    if choice is None:
        return []
    text = (
        f"**Default msresnet: `{choice.model}`** (row `{choice.row_id}`): the highest validation accuracy (%) of the "
        f"msresnet rows measured on every protocol at the `{choice.budget}` budget; test data play no part."
    )
    return [
        textwrap.fill(text, width=116, break_on_hyphens=False, break_long_words=False),
        "",
        *choose_default.describe(choice),
    ]


def _is_headline(row_id: str) -> bool:
    return row_id in HEADLINE_ROWS or row_id.startswith("oracle@") or "canonical" in row_id


def _headline_order(row_id: str) -> tuple[int, float]:
    """Plain rows, then the oracles by condition, then the msresnet rows."""
    if row_id.startswith("oracle@"):
        return (2, _oracle_condition(row_id) or 0.0)
    fixed = list(HEADLINE_ROWS)
    if row_id in fixed:
        i = fixed.index(row_id)
        return (i if i < 2 else i + 1, 0.0)
    return (len(fixed) + 1, 0.0)


# ---------------------------------------------------------------------------------------------------- formatting


def _f1(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _pm(m: float, s: float | None) -> str:
    return _f1(m) if s is None or math.isnan(s) else f"{m:.1f} ± {s:.1f}"


def _cost(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.1f}x"


def _cond_label(c: float, name: str) -> str:
    if name == "size":
        return f"{int(c)} px"
    return f"{c:.2f}".rstrip("0").rstrip(".") if name == "scale" else f"{c:g}"


def _conditions(d: pd.DataFrame) -> tuple[list[float], str]:
    return sorted(d.condition.unique()), str(d.condition_name.iloc[0])


def _row_label(r: pd.Series, name: str, short: bool) -> str:
    if r.oracle_condition is not None and not (
        isinstance(r.oracle_condition, float) and math.isnan(r.oracle_condition)
    ):
        return f"oracle: plain ResNet trained at {_cond_label(r.oracle_condition, name)}"
    if short and r.row_id in HEADLINE_ROWS:
        return HEADLINE_ROWS[r.row_id]
    return str(r.label)


def stats_table(stats: pd.DataFrame, conds: list[float], name: str, short: bool = False) -> list[str]:
    """A markdown table: one line per row of ``stats`` (one protocol and budget)."""
    cname = "s=" if name == "scale" else ""
    head = ["row", "model", "seeds", *[f"{cname}{_cond_label(c, name)}" for c in conds], "mean", "worst"]
    head += ["train cost"] if short else ["validation", "train cost"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in stats.iterrows():
        oracle = r.oracle_condition is not None and not math.isnan(r.oracle_condition)
        cells = [_row_label(r, name, short), f"`{r.model}`", str(r.seeds)]
        for c in conds:
            show = not oracle or not short or math.isclose(c, r.oracle_condition, rel_tol=1e-3)
            cells.append(_f1(r.cond_mean.get(c)) if show else "")
        cells += ["", ""] if oracle and short else [_pm(r["mean"], r.mean_std), _pm(r.worst, r.worst_std)]
        cells += [] if short else [_f1(r.val)]
        cells.append(_cost(r.train_cost))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def headline_block(df: pd.DataFrame) -> str:
    """The README's block between the markers (caption, table, plot), from the summary data alone."""
    budget = headline_budget(df)
    if budget is None:
        return "\nNo benchmark record is stored yet: run `python benchmarks/scale_bench.py --quick`.\n"
    d = df[(df.protocol == HEADLINE_PROTOCOL) & (df.budget == budget)]
    stats = row_stats(d)
    stats = stats[stats.row_id.map(_is_headline)]
    stats = stats.assign(_o=stats.row_id.map(_headline_order)).sort_values("_o").drop(columns="_o")
    conds, name = _conditions(d)
    depths = sorted({int(x) for x in stats.depth.dropna()})
    caption = (
        f"*{HEADLINE_PROTOCOL}, {BUDGET_TEXT[budget]}; depth {', '.join(map(str, depths))}. Test accuracy (%) at "
        "object scale s, mean over the seeds given; mean and worst over the scales, per seed, then mean ± std over "
        "seeds. An oracle is trained and tested at its scale. Train cost: time per training image relative to the "
        "plain ResNet (shared CPU, indicative).*"
    )
    caption = textwrap.fill(caption, width=116, break_on_hyphens=False, break_long_words=False)
    plot = f"![{HEADLINE_PROTOCOL} accuracy against object scale](docs/img/results-{HEADLINE_PROTOCOL}.png)"
    return "\n" + "\n".join([caption, "", *stats_table(stats, conds, name, short=True), "", plot]) + "\n"


def default_block(df: pd.DataFrame) -> str:
    """The README's block that names the default msresnet and the validation scores that chose it."""
    lines = default_lines(df)
    return "\n" + "\n".join(lines) + "\n" if lines else "\n"


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with the content between the markers replaced by ``block``."""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {begin} ... {end} block")
    return pattern.sub(lambda _: begin + block + end, text, count=1)


def demo_block(record: Path = DEMO_RECORD) -> str:
    """The README's demo block: the stored output of ``make demo`` from a fresh clone (a record, like the runs')."""
    if not record.exists():
        return "\n"
    d = json.loads(record.read_text())
    lead = (
        f"`make demo` from a fresh clone (`{d['git']}`, {d['date']}, {d['machine']}): installing took "
        f"{d['install_seconds'] / 60:.1f} min, the demo {d['demo_seconds'] / 60:.1f} min. Its output, shortened:"
    )
    lead = textwrap.fill(lead, width=116, break_on_hyphens=False, break_long_words=False)
    return "\n" + "\n".join([lead, "", "```text", *d["output"], "```"]) + "\n"


def readme_block(text: str) -> str:
    """The content between the results markers of ``text``."""
    m = re.search(re.escape(BEGIN) + r"(.*?)" + re.escape(END), text, re.S)
    if not m:
        raise ValueError("no results block")
    return m.group(1)


# --------------------------------------------------------------------------------------------------------- plots


def plot_protocol(d: pd.DataFrame, out: Path) -> Path:
    """Accuracy against condition for every row of one protocol and budget: mean over seeds, a band of one
    standard deviation where a row has two or more seeds, oracles as stars at their own condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = row_stats(d)
    conds, name = _conditions(d)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for _, r in stats.iterrows():
        if r.oracle_condition is not None and not math.isnan(r.oracle_condition):
            c = min(conds, key=lambda x: abs(x - r.oracle_condition))
            ax.plot([c], [r.cond_mean[c]], marker="*", ms=13, ls="", color="k")
            continue
        ys = [r.cond_mean[c] for c in conds]
        sd = [r.cond_std.get(c, float("nan")) for c in conds]
        bold = str(r.row_id).startswith("msresnet_conf_sd") or "canonical" in str(r.row_id)
        (line,) = ax.plot(conds, ys, marker="o", ms=3, lw=2.2 if bold else 1.1, label=_row_label(r, name, True))
        if r.seeds >= 2:
            lo = [y - s for y, s in zip(ys, sd, strict=True)]
            hi = [y + s for y, s in zip(ys, sd, strict=True)]
            ax.fill_between(conds, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
    if name in ("scale", "size", "scale bin"):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conds, [_cond_label(c, name) for c in conds])
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
    for proto, d in df[df.budget == budget].groupby("protocol"):
        stats = row_stats(d)
        stats = stats[stats.oracle_condition.isna() & stats.train_cost.notna()]
        pts = ax.scatter(stats.train_cost, stats.worst, s=22, label=proto)
        for _, r in stats.iterrows():
            ax.annotate(str(r.row_id), (r.train_cost, r.worst), fontsize=5.5, xytext=(3, 2),
                        textcoords="offset points", color=pts.get_facecolor()[0])  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel("training cost: time per training image / plain ResNet's (same protocol)")
    ax.set_ylabel("worst-condition test accuracy (%)")
    ax.set_title(f"Accuracy against cost, budget {budget} (mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------------------- page


def results_page(df: pd.DataFrame) -> str:
    """``docs/results.md``: the headline, then every protocol and budget with every row."""
    budget = headline_budget(df)
    runs = df.drop_duplicates("record")
    lines = [
        "# Results",
        "",
        "Generated by `benchmarks/render_results.py` from `benchmarks/results/summary.csv` (one line per run and",
        "test condition, written by `benchmarks/summarize.py` from the run records in `benchmarks/results/scale/`).",
        "Do not edit: `python benchmarks/summarize.py --render` rewrites this page, its plots and the README table.",
        "How to run the benchmarks, and how long they take: [benchmarks/README.md](../benchmarks/README.md).",
        "",
        f"- run records: {len(runs)}; lines in summary.csv: {len(df)}",
        f"- budgets stored: {', '.join(b for b in BUDGETS if b in set(df.budget))}",
        f"- git revisions: {', '.join(sorted(runs.git.dropna().astype(str).unique())) or '–'}",
        "",
        "Accuracies in %. A cell is the mean over seeds (fmnist-scale: realizations) at that condition; *mean* and",
        "*worst* are taken per run over its conditions, then averaged over seeds (± sample std over seeds where",
        "there are two or more). *validation*: the mean of the validation sweep (held-out training images under the",
        "same scale changes), the only figure used to choose between rows. *train cost*: time per training image",
        "relative to the plain ResNet of the same protocol and budget (runs shared a CPU with other jobs: indicative).",
        "Rows `+ msresnet calibrate` are the run above them after `msresnet calibrate` (the object-scale probe kept",
        "only where validation improves).",
        "*Retention* (the fmnist-ls figure of merit: worst-scale accuracy / accuracy at the training scale s = 1) is",
        "the *worst* column divided by the *s=1* column.",
        "",
    ]
    if "full" not in set(df.budget):
        lines += ["No record of the full training recipe with the depth-20 models is stored yet: the headline shows "
                  f"the most-trained budget that is, `{budget}`.", ""]  # fmt: skip
    if budget:
        lines += ["## Headline", "", headline_block(df).strip().replace("docs/img/", "img/"), ""]
        default = default_lines(df)
        if default:
            lines += ["## The default msresnet", "", *default, ""]
        lines += ["![accuracy against cost](img/results-cost.png)", ""]
    for proto in [p for p in ("fmnist-ls", "fmnist-res", "fmnist-scale") if p in set(df.protocol)] + sorted(
        set(df.protocol) - {"fmnist-ls", "fmnist-res", "fmnist-scale"}
    ):
        lines += [f"## {proto}", "", PROTOCOL_TEXT.get(proto, "") + ".", ""]
        for b in [b for b in BUDGETS if b in set(df[df.protocol == proto].budget)]:
            d = df[(df.protocol == proto) & (df.budget == b)]
            conds, name = _conditions(d)
            stats = row_stats(d)
            n = sorted(d.n_images.unique())
            lines += [f"### {proto}, {BUDGET_TEXT[b]}", "", f"Test images per condition: {', '.join(map(str, n))}.", ""]
            lines += stats_table(stats, conds, name)
            lines.append("")
            lines += estimator_table(d, conds, name)
            if b == budget:
                lines += [f"![{proto}](img/results-{proto}.png)", ""]
    lines += timing_table(runs)
    lines += ["## Commands that made the records", ""]
    for cmd, n in runs.command.fillna("(not recorded)").value_counts().items():
        lines.append(f"- `{cmd}`: {n}")
    lines += [
        "",
        "Per-level diagnoses and the issue targets with their measured values are on the pages that",
        "`benchmarks/scale_bench.py` renders per budget: [results-quick.md](results-quick.md),",
        "[results-quick-fullmodel.md](results-quick-fullmodel.md), [results-depth8.md](results-depth8.md).",
        "",
    ]
    return "\n".join(lines)


def estimator_table(d: pd.DataFrame, conds: list[float], name: str) -> list[str]:
    """For scale-aware rows that recorded it: the object-scale estimate's median |error| (octaves) per condition,
    median over seeds, with the 90th percentile beside it."""
    e = d.dropna(subset=["scale_error_median"])
    if e.empty:
        return []
    cname = "s=" if name == "scale" else ""
    head = ["row", "seeds", *[f"{cname}{_cond_label(c, name)}" for c in conds]]
    lines = ["Object-scale estimate: median / 90th percentile of |error| in octaves (median over seeds).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for _, g in e.groupby("row", sort=False):
        by_cond = g.groupby("condition")
        med, p90 = by_cond.scale_error_median.median(), by_cond.scale_error_p90.median()
        cells = [str(g.label.iloc[0]), str(g.seed.nunique())]
        cells += [f"{med[c]:.2f} / {p90[c]:.2f}" if c in med.index else "–" for c in conds]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def timing_table(runs: pd.DataFrame) -> list[str]:
    """Median training time per budget, protocol and model, from one line per run record."""
    lines = [
        "## How long the runs took",
        "",
        "Training wall time per run (median over the stored runs; evaluation not included), and the median",
        "training throughput. Runs often shared the 2 CPU cores with other jobs, so read them as orders of",
        "magnitude: [benchmarks/README.md](../benchmarks/README.md) says how to run each budget fast.",
        "",
        "| budget | protocol | model | runs | train minutes | train images/s | device |",
        "|---|---|---|---|---|---|---|",
    ]
    order = {b: i for i, b in enumerate(BUDGETS)}
    groups = runs.groupby(["budget", "protocol", "model"])
    for (budget, proto, model), g in sorted(groups, key=lambda kv: (order.get(kv[0][0], 9), kv[0][1], kv[0][2])):
        minutes = g.train_seconds.dropna().median() / 60
        ips = g.train_images_per_s.median()
        devices = ", ".join(sorted(g.device.dropna().astype(str).unique()))
        lines.append(f"| {budget} | {proto} | `{model}` | {len(g)} | {_f1(minutes)} | {ips:.0f} | {devices} |")
    return [*lines, ""]


def render(summary: Path = SUMMARY, docs: Path = DOCS, readme: Path = README) -> list[Path]:
    """Write the results page, its plots and the README block; return the files written."""
    df = load(summary)
    written = []
    budget = headline_budget(df)
    if budget:
        for proto in sorted(set(df.protocol)):
            d = df[(df.protocol == proto) & (df.budget == budget)]
            if len(d):
                written.append(plot_protocol(d, docs / "img" / f"results-{proto}.png"))
        written.append(plot_cost(df, budget, docs / "img" / "results-cost.png"))
    page = docs / "results.md"
    page.write_text(results_page(df))
    written.append(page)
    if readme.exists():
        text = replace_block(readme.read_text(), headline_block(df))
        if DEMO_BEGIN in text:
            text = replace_block(text, demo_block(), DEMO_BEGIN, DEMO_END)
        if DEFAULT_BEGIN in text:
            text = replace_block(text, default_block(df), DEFAULT_BEGIN, DEFAULT_END)
        readme.write_text(text)
        written.append(readme)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", default=str(SUMMARY), help="summary CSV (default: benchmarks/results/summary.csv)")
    args = ap.parse_args(argv)
    for path in render(Path(args.summary)):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
