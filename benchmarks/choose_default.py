"""Choose the default msresnet from the stored benchmark data, on validation data only.

The candidates are the msresnet rows of ``configs/bench/rows.yaml`` (group ``msresnet``) measured on every protocol
at the most-trained budget that has both a pyramid row and a canonicalising row on the headline protocol. A row's
score on a protocol is its validation accuracy averaged over the validation conditions and seeds (a calibrated
variant, ``ROW+calibrate``, counts for its row when it scores higher); the default is the candidate with the highest
mean score over the protocols. Test accuracies play no part.

``msresnet.DEFAULT_MSRESNET`` names the chosen row's model; ``tests/test_results_table.py`` fails when the stored
data choose another one. ``benchmarks/render_results.py`` prints the comparison in the README and the results page.

    python -m benchmarks.choose_default      # prints the comparison and the choice
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from benchmarks.layout import BUDGETS, CALIBRATED, ROWS_FILE, SUMMARY

HEADLINE_PROTOCOL = "fmnist-ls"


@dataclass(frozen=True)
class Choice:
    """The chosen row and the evidence: each candidate's validation score (%) per protocol."""

    row_id: str
    model: str  # the row's own (depth-20) model from the rows file: what DEFAULT_MSRESNET must name
    budget: str
    protocols: tuple[str, ...]
    scores: dict[str, dict[str, float]]  # row id -> protocol -> validation score
    #: rows measured on some protocols only: shown beside the choice, not eligible for it
    partial: dict[str, dict[str, float]] = field(default_factory=dict)

    def mean(self, row_id: str) -> float:
        return sum(self.scores[row_id].values()) / len(self.scores[row_id])


def _msresnet_rows(rows_file: Path = ROWS_FILE) -> dict[str, dict]:
    rows = yaml.safe_load(rows_file.read_text())["rows"]
    return {r["id"]: r for r in rows if r.get("group") == "msresnet"}


def _is_canonical(row_id: str) -> bool:
    return "canonical" in row_id


def _budget(df: pd.DataFrame, candidates: dict[str, dict]) -> str | None:
    d = df[df.protocol == HEADLINE_PROTOCOL]
    for budget in BUDGETS:
        ids = {i.removesuffix(CALIBRATED) for i in d[d.budget == budget].row_id} & set(candidates)
        if any(_is_canonical(i) for i in ids) and any(not _is_canonical(i) for i in ids):
            return budget
    return None


def choose(df: pd.DataFrame, rows_file: Path = ROWS_FILE) -> Choice | None:
    """The default msresnet by the rule of this module (None: no budget has both kinds of msresnet row yet)."""
    candidates = _msresnet_rows(rows_file)
    budget = _budget(df, candidates)
    if budget is None:
        return None
    d = df[(df.budget == budget) & df.val_accuracy.notna()]
    protocols = tuple(sorted(set(d.protocol)))
    scores: dict[str, dict[str, float]] = {}
    for (proto, row_id), g in d.groupby(["protocol", "row_id"]):
        base = str(row_id).removesuffix(CALIBRATED)
        if base not in candidates:
            continue
        score = float(g.groupby("seed").val_accuracy.first().mean())
        if not math.isnan(score):
            scores.setdefault(base, {})[proto] = max(score, scores.get(base, {}).get(proto, -math.inf))
    complete = {r: s for r, s in scores.items() if set(s) == set(protocols)}
    if not complete:
        return None
    best = max(complete, key=lambda r: (sum(complete[r].values()), r))
    partial = {r: s for r, s in scores.items() if r not in complete}
    return Choice(best, str(candidates[best]["model"]), budget, protocols, complete, partial)


def describe(choice: Choice) -> list[str]:
    """A markdown table of the candidates (best first) and the choice."""
    head = ["msresnet row", *choice.protocols, "mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row_id in sorted(choice.scores, key=lambda r: -choice.mean(r)):
        cells = [f"`{row_id}`", *(f"{choice.scores[row_id][p]:.1f}" for p in choice.protocols)]
        cells.append(f"{choice.mean(row_id):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    for row_id, got in sorted(choice.partial.items()):  # not measured everywhere: no mean, not a candidate
        scores = [f"{got[p]:.1f}" if p in got else "–" for p in choice.protocols]
        lines.append("| " + " | ".join([f"`{row_id}` (not run on every protocol)", *scores, "–"]) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", default=str(SUMMARY), help="summary CSV (default: benchmarks/results/summary.csv)")
    args = ap.parse_args(argv)
    choice = choose(pd.read_csv(args.summary))
    if choice is None:
        print("no budget has both a pyramid and a canonical msresnet row on every protocol yet")
        return 1
    print(f"validation accuracy (%), budget {choice.budget}:")
    print("\n".join(describe(choice)))
    print(f"default: {choice.model} (row {choice.row_id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
