"""Render the published results from ``benchmarks/results/summary.csv`` (written by ``benchmarks/summarize.py``).

Writes ``docs/results.md`` (every protocol, budget and row: per-condition means over seeds, mean and worst
condition with their spread over seeds, validation score, training cost), its plots in ``docs/img/`` (accuracy
against condition per protocol with a band of one standard deviation over seeds; worst-condition accuracy against
training cost for every row) and the README's headline table between ``<!-- results:begin -->`` and
``<!-- results:end -->``. No figure is typed by hand: ``tests/test_results_table.py`` re-renders the README block
from the CSV and fails when they differ.

    python -m benchmarks.render_results           # after python -m benchmarks.summarize

Statistics (the same definitions as the results check): a cell is the mean over seeds of the accuracy at that
condition; *mean* and *worst* are taken over a run's conditions first (its mean, its lowest accuracy), then averaged
over seeds, ± the sample standard deviation over seeds where there are two or more.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import textwrap
from pathlib import Path

import pandas as pd

from benchmarks import choose_default
from benchmarks.choose_default import HEADLINE_PROTOCOL
from benchmarks.layout import BUDGETS, DOCS, README, ROOT, SUMMARY
from benchmarks.results_plots import plot_cost, plot_protocol
from benchmarks.results_stats import (
    HEADLINE_ROWS,
    conditions,
    is_oracle,
    load,
    oracle_condition,
    row_label,
    row_stats,
)
from msresnet.evaluate.condition import Kind

#: the protocols whose tables the README shows: objects alone on a black canvas, and objects in scenes
README_PROTOCOLS = (HEADLINE_PROTOCOL, "fmnist-ls-scene")
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
COST_TEXT = (
    "measured side by side in one process (`benchmarks/train_cost.py`); a cost marked * is instead the ratio "
    "of the runs' own throughputs (runs made at different times on a shared CPU: indicative)"
)
PROTOCOL_TEXT = {
    "fmnist-ls": "Trained on objects at scale 1 in a 64-px canvas; tested with the object rescaled by s",
    "fmnist-ls-scene": "Coloured objects anywhere on textured backgrounds (dead leaves, 1/f noise) in a 64-px RGB "
    "canvas, trained at scale 1; tested with the object rescaled by s (bicubic) over a fresh background",
    "fmnist-res": "Trained on 28-px images; tested with the whole image resized to the given size (px)",
    "fmnist-scale": "Every image rescaled once by a random factor; accuracy per object-scale bin of the test set",
}


# ------------------------------------------------------------------------------------------------------ headline


def headline_budget(df: pd.DataFrame, protocol: str = HEADLINE_PROTOCOL) -> str | None:
    """The budget the README shows for ``protocol``: the most-trained one with the plain ResNet and the default
    msresnet's row (the comparison the table is for); other rows of that budget (pyramid, oracles) join it where they
    were run."""
    choice = choose_default.choose(df)
    d = df[df.protocol == protocol]
    for budget in BUDGETS:
        ids = set(d[d.budget == budget].row_id)
        # before any budget allows a choice, any canonicalising row stands for the default
        default = choice.row_id in ids if choice is not None else any("canonical" in i for i in ids)
        if "resnet" in ids and default:
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
    # calibrated copies of runs stay on the results page: the headline shows each model as trained
    if row_id.endswith("+calibrate"):
        return False
    return row_id in HEADLINE_ROWS or row_id.startswith("oracle@") or "canonical" in row_id


def _headline_order(row_id: str) -> tuple[int, float]:
    """Plain rows, then the oracles by condition, then the msresnet rows."""
    if row_id.startswith("oracle@"):
        return (2, oracle_condition(row_id) or 0.0)
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


def _cost(v: float | None, source: object = "step") -> str:
    """A training cost; ``*`` marks one taken from the runs' own throughputs rather than measured side by side."""
    return "–" if v is None or math.isnan(v) else f"{v:.1f}x" + ("" if source == "step" else "*")


def stats_table(stats: pd.DataFrame, conds: list[float], name: str, short: bool = False) -> list[str]:
    """A markdown table: one line per row of ``stats`` (one protocol and budget)."""
    head = ["row", "model", "seeds", *[Kind.of(name).column(c) for c in conds], "mean", "worst"]
    head += ["train cost"] if short else ["validation", "train cost"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in stats.iterrows():
        oracle = is_oracle(r)
        cells = [row_label(r, name, short), f"`{r.model}`", str(r.seeds)]
        for c in conds:
            show = not oracle or not short or math.isclose(c, r.oracle_condition, rel_tol=1e-3)
            cells.append(_f1(r.cond_mean.get(c)) if show else "")
        cells += ["", ""] if oracle and short else [_pm(r["mean"], r.mean_std), _pm(r.worst, r.worst_std)]
        cells += [] if short else [_f1(r.val)]
        cells.append(_cost(r.train_cost, r.get("cost_source")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def headline_block(df: pd.DataFrame) -> str:
    """The README's block between the markers (per headline protocol: caption, table, plot), from the summary data
    alone."""
    parts: list[str] = []
    for protocol in README_PROTOCOLS:
        part = _headline_part(df, protocol, short=bool(parts))  # later captions skip the column notes
        parts += [part] if part else []
    if not parts:
        return "\nNo benchmark record is stored yet: run `python -m benchmarks.scale_bench --quick`.\n"
    return "\n" + "\n\n".join(parts) + "\n"


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def _upper(text: str) -> str:
    return text[:1].upper() + text[1:]


def _headline_part(df: pd.DataFrame, protocol: str, short: bool = False) -> str | None:
    budget = headline_budget(df, protocol)
    if budget is None:
        return None
    d = df[(df.protocol == protocol) & (df.budget == budget)]
    stats = row_stats(d)
    stats = stats[stats.row_id.map(_is_headline)]
    stats = stats.assign(_o=stats.row_id.map(_headline_order)).sort_values("_o").drop(columns="_o")
    conds, name = conditions(d)
    depths = sorted({int(x) for x in stats.depth.dropna()})
    depth = ", ".join(map(str, depths))
    head = f"*{protocol}: {_lower(PROTOCOL_TEXT[protocol])}. {_upper(BUDGET_TEXT[budget])}, depth {depth}"
    notes = (
        "; columns as above.*"
        if short
        else ": test accuracy (%) at object scale s, mean over the seeds given; mean and worst over the scales as mean "
        "± std over seeds; an oracle is trained and tested at its scale; train cost relative to the plain ResNet's "
        "(* : from the runs' own throughputs, indicative).*"
    )
    caption = textwrap.fill(head + notes, width=116, break_on_hyphens=False, break_long_words=False)
    plot = f"![{protocol} accuracy against object scale](docs/img/results-{protocol}.png)"
    return "\n".join([caption, "", *stats_table(stats, conds, name, short=True), "", plot])


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
        "Do not edit: `python -m benchmarks.pipeline` rewrites this page, its plots and the README table.",
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
        *textwrap.wrap(f"relative to the plain ResNet of the same protocol, {COST_TEXT}.", 110),
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
    order = ("fmnist-ls", "fmnist-ls-scene", "fmnist-res", "fmnist-scale")
    for proto in [p for p in order if p in set(df.protocol)] + sorted(set(df.protocol) - set(order)):
        lines += [f"## {proto}", "", PROTOCOL_TEXT.get(proto, "") + ".", ""]
        for b in [b for b in BUDGETS if b in set(df[df.protocol == proto].budget)]:
            d = df[(df.protocol == proto) & (df.budget == b)]
            conds, name = conditions(d)
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
    head = ["row", "seeds", *[Kind.of(name).column(c) for c in conds]]
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
    """Median training time per budget, protocol and model, and each budget's total compute, from one line per run
    record."""
    lines = [
        "## How long the runs took",
        "",
        "Training wall time per run (median over the stored runs; evaluation not included), the median training",
        "throughput and the test sweep's wall time. Runs often shared the 2 CPU cores with other jobs, so read them as",
        "orders of magnitude: [benchmarks/README.md](../benchmarks/README.md) says how to run each budget fast.",
        "",
        "| budget | protocol | model | runs | train minutes | train images/s | test minutes | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {b: i for i, b in enumerate(BUDGETS)}
    groups = runs.groupby(["budget", "protocol", "model"])
    for (budget, proto, model), g in sorted(groups, key=lambda kv: (order.get(kv[0][0], 9), kv[0][1], kv[0][2])):
        minutes = g.train_seconds.dropna().median() / 60
        ips = g.train_images_per_s.median()
        test = g.test_seconds.dropna().median() / 60
        devices = ", ".join(sorted(g.device.dropna().astype(str).unique()))
        lines.append(f"| {budget} | {proto} | `{model}` | {len(g)} | {_f1(minutes)} | {ips:.0f} | {_f1(test)} | "
                     f"{devices} |")  # fmt: skip
    lines += ["", "Total compute of the stored runs (runs whose time was not recorded count as zero):", ""]
    for budget, g in sorted(runs.groupby("budget"), key=lambda kv: order.get(kv[0], 9)):
        train_h = g.train_seconds.fillna(0).sum() / 3600
        test_h = g.test_seconds.fillna(0).sum() / 3600
        lines.append(f"- {budget}: {len(g)} runs, {train_h:.1f} h training + {test_h:.1f} h testing")
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
