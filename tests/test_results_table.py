"""Results as data: summary.csv is built from the run records, and the README's table is rendered from it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def summarize():
    return load_benchmark("summarize")


@pytest.fixture(scope="module")
def render():
    return load_benchmark("render_results")


def _record(protocol: str, row: str, seed: int, accuracy: list[float], *, depth8: bool = True, **job) -> dict:
    conditions = [0.5, 0.7071, 1.0, 1.4142, 2.0]
    model = ("resnet8" if row in ("resnet", "oracle") else "msresnet8") if depth8 else "resnet20"
    test = {"condition_name": "scale", "conditions": conditions, "accuracy": accuracy, "n_per_condition": 100,
            "train_condition": 1.0}  # fmt: skip
    return {
        "job": {
            "protocol": protocol,
            "row": row,
            "seed": seed,
            "quick": False,
            "oracle_condition": None,
            "full_model": False,
            "depth8": depth8,
            **job,
        },  # fmt: skip
        "config": {"model": model},
        "test": test,
        "val": {**test, "accuracy": [a - 0.01 for a in accuracy]},
        "train_seconds": 10.0,
        "train_images_per_s": 100.0 if row == "resnet" else 40.0,
        "git": "abc1234",
        "device": "cpu",
        "command": "python benchmarks/scale_bench.py --depth8",
    }


@pytest.fixture
def records(tmp_path: Path) -> Path:
    d = tmp_path / "scale"
    d.mkdir()
    recs = [_record("fmnist-ls", "resnet", s, [0.2, 0.5, 0.8 + 0.01 * s, 0.5, 0.3]) for s in range(3)]
    recs += [_record("fmnist-ls", "msresnet_conf_sd", s, [0.7, 0.7, 0.8, 0.7, 0.6 + 0.02 * s]) for s in range(3)]
    recs.append(_record("fmnist-ls", "oracle", 0, [0.85, 0.4, 0.2, 0.1, 0.1], oracle_condition=0.5))
    cal = _record("fmnist-ls", "msresnet_conf_sd", 3, [0.7, 0.7, 0.8, 0.7, 0.6])
    better = copy.deepcopy(cal["test"])
    better["accuracy"] = [0.75, 0.7, 0.8, 0.72, 0.7]
    cal["probe"] = {"kept": True, "test": better, "calibration": {"probe": [74.0, 69.0, 79.0, 71.0, 69.0]}}
    canon = _record("fmnist-ls", "canonical", 0, [0.8, 0.8, 0.8, 0.8, 0.7])
    canon["test"]["scale_error"] = {"conditions": canon["test"]["conditions"], "median_abs": [0.1] * 5,
                                    "p90_abs": [0.3] * 5, "median": [0.0] * 5, "unit": "octaves"}  # fmt: skip
    recs.append(canon)
    recs.append(cal)
    recs.append(_record("fmnist-ls", "resnet", 0, [0.1, 0.3, 0.6, 0.3, 0.1], quick=True))  # another budget
    for r in recs:
        j = r["job"]
        key = f"{j['quick']}__{j['protocol']}__{j['row']}{j.get('oracle_condition') or ''}__seed{j['seed']}"
        (d / f"{key}.json").write_text(json.dumps(r))
    return d


def test_summary_has_one_line_per_run_and_condition(summarize, records, tmp_path):
    lines = summarize.summarize(records, tmp_path / "no_train_cost.json")
    out = summarize.write_csv(lines, tmp_path / "summary.csv")
    df = pd.read_csv(out)
    assert {"protocol", "row", "model", "seed", "condition", "accuracy", "budget", "depth", "git", "command"} <= set(
        df.columns
    )
    # 9 depth-8 runs + 1 quick run, 5 conditions each, + the calibrated copy of one run
    assert len(df) == 11 * 5
    # rows of different budgets are kept apart by name (only the full budget's rows carry no prefix)
    ids = {"resnet", "msresnet_conf_sd", "oracle@0.5", "msresnet_conf_sd+calibrate", "canonical"}
    assert set(df.row) == {f"depth8/{i}" for i in ids} | {"quick/resnet"}
    assert set(df[df.row == "quick/resnet"].budget) == {"quick"} and set(df.row_id) == ids
    cal = df[df.row_id == "msresnet_conf_sd+calibrate"]
    assert list(cal.accuracy) == [75.0, 70.0, 80.0, 72.0, 70.0] and cal.calibrated.all()
    plain = df[df.row == "depth8/resnet"]
    assert plain.train_cost.eq(1.0).all() and df[df.row == "depth8/msresnet_conf_sd"].train_cost.eq(2.5).all()
    assert set(df.train_cost_source) == {"runs"}
    assert set(df.depth) == {8} and set(df.condition_name) == {"scale"}
    canon = df[df.row_id == "canonical"]
    assert canon.scale_error_median.eq(0.1).all() and canon.scale_error_p90.eq(0.3).all()
    assert df[df.row_id != "canonical"].scale_error_median.isna().all()


def test_readme_block_is_means_over_seeds_of_the_summary(summarize, render, records, tmp_path):
    out = summarize.write_csv(summarize.summarize(records, tmp_path / "no_train_cost.json"), tmp_path / "summary.csv")
    df = render.load(out)
    assert render.headline_budget(df) == "depth8"  # the most-trained budget with a plain and an msresnet row
    # the plain ResNet and the default (canonical) row decide the budget; a pyramid row only joins it
    assert render.headline_budget(df[~df.row_id.str.startswith("msresnet")]) == "depth8"
    assert render.headline_budget(df[df.row_id != "canonical"]) is None
    block = render.headline_block(df)
    plain = next(line for line in block.splitlines() if line.startswith("| plain ResNet |"))
    cells = [c.strip() for c in plain.strip("|").split("|")]
    assert cells[2] == "3" and cells[5] == "81.0"  # s=1: mean of 80, 81, 82
    assert cells[-3] == "46.2 ± 0.2"  # per-seed means 46, 46.2, 46.4 -> mean ± std over seeds
    assert cells[-2] == "20.0 ± 0.0" and cells[-1] == "1.0x*"  # * : the runs' throughputs
    table = next(part for part in block.split("\n\n") if part.startswith("| row |"))  # the results, not the choice
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == [
        "plain ResNet",
        "oracle: plain ResNet trained at 0.5",
        "msresnet pyramid (most confident level)",
        "msresnet canonical, previous design",
    ]  # a calibrated copy of a run is on the results page, not in the headline
    page = render.results_page(df)
    assert "Object-scale estimate" in page and "0.10 / 0.30" in page
    oracle = next(line for line in block.splitlines() if line.startswith("| oracle"))
    assert [c.strip() for c in oracle.strip("|").split("|")][3:8] == ["85.0", "", "", "", ""]
    # replacing the block leaves the rest of the README alone and is idempotent
    text = f"intro\n{render.BEGIN}\nold 12.3\n{render.END}\nrest\n"
    new = render.replace_block(text, block)
    assert new.startswith("intro\n") and new.endswith("rest\n") and "12.3" not in new
    assert render.replace_block(new, block) == new and render.readme_block(new) == block


def test_readme_results_table_matches_summary_csv(render):
    """The README's table is what the renderer makes of benchmarks/results/summary.csv, figure for figure."""
    summary = ROOT / "benchmarks" / "results" / "summary.csv"
    readme = (ROOT / "README.md").read_text()
    assert render.readme_block(readme) == render.headline_block(render.load(summary)), (
        "README results table is stale: run `python -m benchmarks.pipeline`"
    )


def test_summary_csv_is_up_to_date_with_the_records(summarize, tmp_path):
    """summary.csv holds exactly what the stored run records say (no hand edits, no missing run)."""
    fresh = summarize.write_csv(summarize.summarize(), tmp_path / "summary.csv")
    stored = ROOT / "benchmarks" / "results" / "summary.csv"
    assert fresh.read_text() == stored.read_text(), "summary.csv is stale: run `python -m benchmarks.pipeline`"


def test_no_hand_typed_figures_in_the_readme_outside_the_block():
    readme = (ROOT / "README.md").read_text()
    outside = readme
    for block in ("results", "demo", "default"):  # the generated blocks
        outside = re.sub(rf"<!-- {block}:begin -->.*?<!-- {block}:end -->", "", outside, flags=re.S)
    assert not re.findall(r"\d+(\.\d+)?\s?%", outside)
    assert not re.findall(r"(?<![\w.])\d{1,3}\.\d(?![\dx×])", outside)


def test_stored_records_choose_the_declared_default():
    """DEFAULT_MSRESNET is what the validation data choose (benchmarks/choose_default.py), not a hand-picked name."""
    from msresnet import DEFAULT_MSRESNET

    choose_default = load_benchmark("choose_default")
    choice = choose_default.choose(pd.read_csv(ROOT / "benchmarks" / "results" / "summary.csv"))
    assert choice is not None and choice.model == DEFAULT_MSRESNET, choice


def test_readme_default_block_is_rendered_from_the_summary(render):
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- default:begin -->(.*?)<!-- default:end -->", readme, re.S)
    assert m and m.group(1) == render.default_block(render.load()) and "Default msresnet" in m.group(1)


def test_default_choice_ignores_test_accuracy(render):
    choose_default = load_benchmark("choose_default")
    rows = []
    for row_id, val, test in (("canonical", 80.0, 10.0), ("msresnet_conf_sd", 70.0, 99.0)):
        for proto in ("fmnist-ls", "fmnist-res"):
            rows.append({"protocol": proto, "budget": "depth8", "row_id": row_id, "seed": 0, "val_accuracy": val,
                         "accuracy": test})  # fmt: skip
    choice = choose_default.choose(pd.DataFrame(rows))
    assert choice.row_id == "canonical" and choice.model == "msresnet20_canonical"
    assert choice.scores["msresnet_conf_sd"] == {"fmnist-ls": 70.0, "fmnist-res": 70.0}


def test_readme_demo_block_is_the_stored_demo_record(render):
    """The demo output the README shows is rendered from benchmarks/results/demo/, not pasted by hand."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- demo:begin -->(.*?)<!-- demo:end -->", readme, re.S)
    assert m and m.group(1) == render.demo_block()
    record = json.loads(render.DEMO_RECORD.read_text())
    assert any("finished in" in line for line in record["output"]) and record["git"] in m.group(1)


def test_measured_step_costs_replace_the_runs_ratios(summarize, records, tmp_path):
    measured = tmp_path / "train_cost.json"
    rows = [
        {"protocol": "fmnist-ls", "row": "resnet", "small_model": True, "ratio": 1.0},
        {"protocol": "fmnist-ls", "row": "msresnet_conf_sd", "small_model": True, "ratio": 1.7},
        {"protocol": "fmnist-ls", "row": "canonical", "small_model": False, "ratio": 9.0},
    ]  # another budget
    measured.write_text(json.dumps({"rows": rows}))
    df = pd.DataFrame(summarize.summarize(records, measured))
    conf = df[df.row_id.str.startswith("msresnet_conf_sd")]  # the calibrated copy trained the same way
    assert conf.train_cost.eq(1.7).all() and set(conf.train_cost_source) == {"step"}
    canon = df[df.row == "depth8/canonical"]  # not measured at this budget: the runs' ratio stays
    assert set(canon.train_cost_source) == {"runs"} and not canon.train_cost.eq(9.0).any()
    quick = df[df.row == "quick/resnet"]  # the quick budget trains the same depth-8 step: the measured ratio holds
    assert quick.train_cost.eq(1.0).all() and set(quick.train_cost_source) == {"step"}


def test_readme_block_adds_the_scene_table_with_a_short_caption(summarize, render, records, tmp_path):
    for s in range(2):  # the scene protocol: the plain ResNet and a canonicalising row
        for row, acc in (("resnet", [0.3, 0.6, 0.9, 0.6, 0.4]), ("canonical", [0.8, 0.85, 0.88, 0.86, 0.8])):
            r = _record("fmnist-ls-scene", row, s, acc)
            (records / f"scene__{row}__seed{s}.json").write_text(json.dumps(r))
    out = summarize.write_csv(summarize.summarize(records, tmp_path / "no_train_cost.json"), tmp_path / "summary.csv")
    block = render.headline_block(render.load(out))
    parts = block.strip().split("\n\n")
    captions = [p for p in parts if p.startswith("*")]
    assert [c.split(":")[0] for c in captions] == ["*fmnist-ls", "*fmnist-ls-scene"]
    assert "oracle is trained" in captions[0] and captions[1].endswith("columns as above.*")
    assert "oracle is trained" not in captions[1]
    scene = parts[parts.index(captions[1]) + 1]
    assert "| plain ResNet | `resnet8` | 2 |" in scene and "88.0" in scene
    assert "docs/img/results-fmnist-ls-scene.png" in block
