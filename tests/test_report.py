"""Report and plots: tables, overlaid curves, self-contained HTML, runs without an eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from msresnet.errors import UserError
from msresnet.report import plot_comparison, plot_sweep, write_report
from msresnet.report.report import collect_runs, markdown_table, protocol_table

SCALES = [round(2 ** (k / 4), 4) for k in range(-4, 5)]


def _result(acc: list[float], protocol: str = "fmnist-ls") -> dict:
    train_acc = acc[SCALES.index(1.0)]
    return {
        "protocol": protocol,
        "condition_name": "scale",
        "conditions": SCALES,
        "accuracy": acc,
        "mean": sum(acc) / len(acc),
        "worst": min(acc),
        "retention": min(acc) / train_acc,
        "train_condition": 1.0,
        "n_per_condition": 100,
    }


def _run(tmp_path: Path, name: str, acc: list[float] | None, model: str = "resnet8") -> Path:
    run = tmp_path / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": model, "protocol": "fmnist-ls"}))
    if acc is not None:
        (run / "eval").mkdir()
        (run / "eval" / "fmnist-ls.json").write_text(json.dumps(_result(acc)))
    return run


FLAT = [0.8] * 9
PEAKED = [0.2, 0.3, 0.5, 0.7, 0.9, 0.7, 0.4, 0.2, 0.1]


def test_plot_sweep_writes_png(tmp_path: Path) -> None:
    out = plot_sweep(_result(PEAKED), tmp_path / "sub" / "sweep.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_sweep_sizes_and_labels(tmp_path: Path) -> None:
    res = {
        "protocol": "fmnist-res",
        "condition_name": "size",
        "conditions": [14, 21, 28, 42, 56, 84, 112],
        "accuracy": [10.0, 40.0, 90.0, 60.0, 30.0, 20.0, 10.0],  # percentages are accepted too
        "train_condition": 28,
    }
    assert plot_sweep(res, tmp_path / "res.png").exists()
    cat = {"protocol": "fmnist-scale", "condition_name": "scale", "conditions": ["all"], "accuracy": [0.9]}
    assert plot_sweep(cat, tmp_path / "cat.png").exists()


def test_plot_comparison_needs_results(tmp_path: Path) -> None:
    assert plot_comparison({"a": _result(FLAT), "b": _result(PEAKED)}, tmp_path / "c.png").exists()
    with pytest.raises(ValueError):
        plot_comparison({}, tmp_path / "d.png")


def test_write_report_tables_and_html(tmp_path: Path) -> None:
    a = _run(tmp_path, "plain", PEAKED, "resnet20")
    b = _run(tmp_path, "multi", FLAT, "msresnet20")
    c = _run(tmp_path, "unevaluated", None)
    written = write_report([a, b, c], tmp_path / "rep")
    md = written["markdown"].read_text()
    assert "| plain | resnet20 |" in md and "| multi | msresnet20 |" in md
    assert "s=0.5" in md and "s=2" in md and "retention" in md
    assert "0.111" in md  # retention of PEAKED = 0.1 / 0.9
    assert "unevaluated" in md and "no evaluation yet" in md
    html = written["html"].read_text()
    assert "data:image/png;base64," in html and "<style>" in html
    assert "src='http" not in html and 'src="http' not in html  # self-contained
    assert written["fmnist-ls"].exists()


def test_report_without_any_eval_is_user_error(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", None)
    with pytest.raises(UserError, match="none of the runs"):
        write_report([a], tmp_path / "rep")
    with pytest.raises(UserError, match="not found"):
        collect_runs([tmp_path / "missing"])


def test_duplicate_run_names_get_distinct_labels(tmp_path: Path) -> None:
    a = _run(tmp_path / "x", "run", FLAT)
    b = _run(tmp_path / "y", "run", PEAKED)
    runs, _ = collect_runs([a, b])
    assert len({r.label for r in runs}) == 2
    header, rows = protocol_table(runs, "fmnist-ls")
    assert len(rows) == 2 and len(header) == len(rows[0])
    assert markdown_table(header, rows).count("\n") == 3
