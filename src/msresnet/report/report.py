"""The comparison report of several runs: ``report.md`` and a self-contained ``report.html``.

Each run contributes the sweeps already in ``RUN/eval/<protocol>.json`` (written by ``msresnet evaluate``); the
report never re-evaluates, so it is fast and shows exactly the numbers on disk. Runs are grouped by the data they
were measured on (:func:`~msresnet.records.data_key`: protocol and its parameters, a folder's absolute path): one
table (accuracy per condition, mean, worst, retention) and one overlaid plot per dataset, never two datasets in one
table even when their names agree (two folders called ``test``). A run without any eval is
named in the report and skipped; when no run has one the report is refused (``UserError``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from msresnet.errors import UserError
from msresnet.evaluate.condition import Kind
from msresnet.evaluate.runs import count_params
from msresnet.records import SweepResult
from msresnet.report.plots import accuracy_percent, condition_label, plot_comparison
from msresnet.report.render import html_page, html_table, markdown_table, png_img, render_html, render_markdown

__all__ = [
    "RunSummary",
    "collect_runs",
    "html_page",
    "html_table",
    "markdown_table",
    "png_img",
    "protocol_table",
    "write_report",
]


@dataclass
class RunSummary:
    """What the report knows about one run directory."""

    path: Path
    label: str
    model: str
    params: int | None
    evals: dict[str, SweepResult] = field(default_factory=dict)  # data key (records.data_key) -> its sweep


def _read_config(run_dir: Path) -> dict[str, Any]:
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return {}
    try:
        data = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{cfg_path}: not valid YAML ({exc.__class__.__name__})") from None
    return data if isinstance(data, dict) else {}


def _unique_labels(paths: Sequence[Path]) -> list[str]:
    """Short labels for the runs: the directory name, or more of the path when names clash."""
    labels = [p.name for p in paths]
    depth = 1
    while len(set(labels)) < len(labels) and depth < 6:
        depth += 1
        labels = ["/".join(p.parts[-depth:]) for p in paths]
    return labels


def collect_runs(run_dirs: Sequence[str | Path]) -> tuple[list[RunSummary], list[str]]:
    """Read the runs' configs and eval results.

    Returns:
        The runs with at least one eval, and one message per run skipped (no eval yet).

    Raises:
        UserError: a path that is not a directory, or no run has an eval.
    """
    if not run_dirs:
        raise UserError("report needs at least one run directory")
    paths = []
    for raw in run_dirs:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"run directory not found: {p}")
        if not p.is_dir():
            raise UserError(f"not a run directory: {p}")
        paths.append(p.resolve())
    runs: list[RunSummary] = []
    skipped: list[str] = []
    for path, label in zip(paths, _unique_labels(paths), strict=True):
        evals: dict[str, SweepResult] = {}
        for f in sorted((path / "eval").glob("*.json")):
            try:
                data = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                skipped.append(f"{label}: unreadable {f.name} ({exc.__class__.__name__})")
                continue
            if isinstance(data, dict) and "conditions" in data and "accuracy" in data:
                try:
                    result = SweepResult.from_dict({"protocol": f.stem, **data})
                except (KeyError, TypeError, ValueError) as exc:
                    skipped.append(f"{label}: malformed {f.name} ({exc.__class__.__name__})")
                    continue
                evals[result.data_key] = result
        if not evals:
            skipped.append(f"{label}: no evaluation yet (run `msresnet evaluate {path}`)")
            continue
        cfg = _read_config(path)
        model = str(cfg.get("model", "?"))
        runs.append(RunSummary(path, label, model, count_params(path), evals))
    if not runs:
        raise UserError("none of the runs has an evaluation: " + "; ".join(skipped))
    return runs, skipped


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _fmt_acc(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{accuracy_percent([v])[0]:.1f}" if v <= 1.0 else f"{float(v):.1f}"


def _fmt_cond(c: Any) -> str:
    try:
        x = float(c)
    except (TypeError, ValueError):
        return str(c)
    return f"{x:g}" if abs(x - round(x)) < 1e-9 else f"{x:.3g}"


def _ratio(v: Any) -> str:
    return "—" if v is None else f"{float(v):.3f}"


def protocol_table(runs: Sequence[RunSummary], protocol: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one dataset's table (conditions in the order of the first run, then any extra).
    ``protocol``: a data key of the runs' ``evals``, or a protocol name (its first dataset)."""
    protocol = _key_of(runs, protocol)
    conditions: list[Any] = []
    for run in runs:
        for c in run.evals[protocol].conditions:
            if _fmt_cond(c) not in [_fmt_cond(x) for x in conditions]:
                conditions.append(c)
    kind = Kind.of(next(r.evals[protocol] for r in runs).condition_name)
    header = ["run", "model", "params", *[kind.heading(_fmt_cond(c)) for c in conditions]]
    header += ["mean", "worst", "retention"]
    rows = []
    for run in runs:
        res = run.evals[protocol]
        by_cond = {_fmt_cond(c): a for c, a in zip(res.conditions, res.accuracy, strict=False)}
        cells = [_fmt_acc(by_cond.get(_fmt_cond(c))) for c in conditions]
        rows.append(
            [run.label, run.model, _fmt_params(run.params), *cells]
            + [_fmt_acc(res.mean), _fmt_acc(res.worst), _ratio(res.retention)]
        )
    return header, rows


def _key_of(runs: Sequence[RunSummary], name: str) -> str:
    """``name`` itself when it is a data key of the runs, else the key of the first sweep of protocol ``name``."""
    for run in runs:
        if name in run.evals:
            return name
    return next((k for run in runs for k, r in run.evals.items() if r.protocol == name), name)


def _first(runs: Sequence[RunSummary], key: str) -> SweepResult:
    """The first run's sweep of the dataset ``key``."""
    return next(r.evals[key] for r in runs if key in r.evals)


def _titles(runs: Sequence[RunSummary], keys: Sequence[str]) -> dict[str, str]:
    """Data key -> the section's title: the protocol's name, with the folder (or the key) where names clash."""
    first = {k: _first(runs, k) for k in keys}
    names = [first[k].protocol for k in keys]
    titles = {}
    for k in keys:
        res = first[k]
        if names.count(res.protocol) == 1:
            titles[k] = res.protocol
        else:
            root = res.protocol_params.get("root")
            titles[k] = f"{res.protocol} ({root})" if root else f"{res.protocol} [{k}]"
    return titles


_LEGEND = (
    "Accuracy in % per test condition; mean over conditions; worst = lowest; retention = worst / accuracy at the "
    "training condition (1.0 = no loss under the shift)."
)


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and one comparison PNG per protocol into ``out_dir``.

    Args:
        run_dirs: run directories (each with ``eval/<protocol>.json`` from ``msresnet evaluate``).
        out_dir: output directory (created).

    Returns:
        ``{"markdown": ..., "html": ..., "<protocol>": png path, ...}``.

    Raises:
        UserError: no run has an evaluation, or a path is not a directory.
    """
    runs, skipped = collect_runs(run_dirs)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create report directory {out}: {exc.strerror}") from None
    protocols: list[str] = []  # data keys, in the order the runs show them
    for run in runs:
        protocols += [p for p in run.evals if p not in protocols]
    titles = _titles(runs, protocols)
    # file names: the protocol's name, with the data key where two datasets share it
    stems = {k: titles[k] if titles[k] == _first(runs, k).protocol else f"{_first(runs, k).protocol}-{k}"
             for k in protocols}  # fmt: skip

    written: dict[str, Path] = {}
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    blocks: list[tuple] = [("h1", "msresnet report"), ("p", f"Generated {stamp} from {len(runs)} run(s)."),
                           ("p", _LEGEND)]  # fmt: skip
    for protocol in protocols:
        members = [r for r in runs if protocol in r.evals]
        header, rows = protocol_table(members, protocol)
        first = members[0].evals[protocol]
        title = titles[protocol]
        png = plot_comparison({r.label: r.evals[protocol] for r in members}, out / f"{stems[protocol]}.png",
                              title=title)  # fmt: skip
        written[stems[protocol]] = png
        what = condition_label(first)
        train = first.train_condition
        n = first.n_per_condition
        note = f"Condition: {what}; training condition: {_fmt_cond(train) if train is not None else 'n/a'}"
        note += f"; test images per condition: {n}." if n is not None else "."
        blocks += [
            ("h2", title),
            ("p", note),
            ("table", header, rows),
            ("img", png, f"{title}: accuracy against {what}"),
        ]
    if skipped:
        blocks += [("h2", "Skipped"), ("list", skipped)]
    blocks += [("h2", "Runs"), ("list", [f"{r.label}: {r.path}" for r in runs])]

    md_path = out / "report.md"
    md_path.write_text(render_markdown(blocks, out))
    html_path = out / "report.html"
    html_path.write_text(render_html(blocks))
    written["markdown"] = md_path
    written["html"] = html_path
    return written
