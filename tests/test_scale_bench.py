"""The scale benchmark's plan: which runs --quick makes and what each run is configured with (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from benchmarks.layout import Budget

from conftest import load_benchmark
from msresnet.engine.config import load_train_config
from msresnet.models import create_model


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("scale_bench")


@pytest.fixture(scope="module")
def pages():
    return load_benchmark("pipeline")


@pytest.fixture(scope="module")
def targets():
    return load_benchmark("targets")


def test_quick_plan_covers_every_protocol_with_oracles_and_three_realizations(bench):
    recipes, rows = bench.load_plan()
    jobs = bench.make_jobs(list(bench.PROTOCOLS), rows, recipes, [0], budget=Budget.QUICK)
    keys = {j.key for j in jobs}
    assert "quick__fmnist-ls__oracle__oracle0.5__seed0" in keys and "quick__fmnist-ls__oracle__oracle2.0__seed0" in keys
    assert "quick__fmnist-res__oracle__oracle14__seed0" in keys
    scale_seeds = {j.seed for j in jobs if j.protocol == "fmnist-scale"}
    assert scale_seeds == {0, 1, 2}
    assert {j.row for j in jobs} == {"resnet", "resnet_aug", "msresnet_conf_sd", "oracle"}  # the library default
    # a row marked `quick: [protocols]` runs at the reduced budget on those protocols only
    assert {j.protocol for j in jobs if j.row == "resnet_aug"} == {"fmnist-scale"}
    assert jobs[0].key == "quick__fmnist-ls__msresnet_conf_sd__seed0"  # longest first: parallel runs end together


def test_full_plan_runs_seed_zero_of_everything_first(bench):
    recipes, rows = bench.load_plan()
    jobs = bench.make_jobs(list(bench.PROTOCOLS), rows, recipes, [0, 1, 2], budget=Budget.FULL)
    assert len({j.row for j in jobs}) == len(rows) + 1  # every row and the oracles
    first = jobs[: sum(j.seed == 0 for j in jobs)]
    assert all(j.seed == 0 for j in first)  # a run cut short by its time budget still covers every row once
    sesn, resnet = (next(i for i, j in enumerate(first) if j.row == r) for r in ("sesn", "resnet"))
    assert sesn < resnet  # within a group the longest runs start first, so that parallel runs end together


def test_quick_with_named_rows_runs_those_rows(bench):
    recipes, rows = bench.load_plan()
    wanted = [r for r in rows if r["id"] in ("msresnet_sd", "msresnet_max")]
    jobs = bench.make_jobs(["fmnist-ls"], wanted, recipes, [0], budget=Budget.QUICK, explicit_rows=True)
    assert {j.row for j in jobs} == {"msresnet_sd", "msresnet_max", "oracle"}


ROWS_FILE = Path(__file__).resolve().parents[1] / "configs" / "bench" / "rows.yaml"
QUICK_ROWS = [r["id"] for r in yaml.safe_load(ROWS_FILE.read_text())["rows"] if "quick_model" in r]


@pytest.mark.parametrize("row", QUICK_ROWS)
def test_quick_job_configs_are_valid_and_build(bench, row, tmp_path):
    recipes, rows = bench.load_plan()
    job = bench.Job("fmnist-ls", row, 0, Budget.QUICK)
    cfg = load_train_config(None, bench.job_config(job, rows, recipes, "cpu", tmp_path))
    assert cfg.epochs == recipes["fmnist-ls"]["quick"]["epochs"]
    assert (cfg.rescale_aug is not None) == (row == "resnet_aug")  # object-size augmentation only in its row
    assert cfg.degrade_aug is not None  # the detail-loss augmentation every row gets
    model = create_model(cfg.model, num_classes=10, in_chans=1, **cfg.model_kwargs)
    assert sum(p.numel() for p in model.parameters()) < 200_000  # depth 8


def test_oracle_trains_sharp_at_its_condition(bench, tmp_path):
    recipes, rows = bench.load_plan()
    cfg = bench.job_config(bench.Job("fmnist-ls", "oracle", 0, Budget.QUICK, 0.5), rows, recipes, "cpu", tmp_path)
    assert cfg["protocol_params"] == {"train_scales": [0.5, 0.5]} and cfg["degrade_aug"] is None
    cfg = bench.job_config(bench.Job("fmnist-res", "oracle", 0, Budget.FULL, 14), rows, recipes, "cpu", tmp_path)
    assert cfg["protocol_params"] == {"train_size": 14} and cfg["model"] == "resnet20"


def test_full_models_at_the_quick_budget_are_kept_apart(bench, tmp_path):
    recipes, rows = bench.load_plan()
    jobs = bench.make_jobs(["fmnist-ls"], rows, recipes, [0], budget=Budget.QUICK_DEPTH20)  # the quick rows
    assert all(j.key.startswith("quick__fullmodel__fmnist-ls__") for j in jobs)  # never mistaken for a quick run
    by_row = {j.row: bench.job_config(j, rows, recipes, "cpu", tmp_path) for j in jobs if j.row != "oracle"}
    assert by_row["msresnet_conf_sd"]["model"] == "msresnet20" and by_row["msresnet_conf_sd"]["epochs"] == 4
    lite = bench.job_config(bench.Job("fmnist-ls", "msresnet_lite_avg_sd", 0, Budget.QUICK_DEPTH20), rows, recipes,
                            "cpu", tmp_path)  # fmt: skip
    assert lite["model"] == "msresnet20_lite" and "pyramid_scales" not in lite["model_kwargs"]  # no quick_kwargs
    assert all(bench.job_config(j, rows, recipes, "cpu", tmp_path)["model"] == "resnet20"
               for j in jobs if j.row == "oracle")  # fmt: skip


def test_depth8_runs_the_full_budget_with_the_small_models_kept_apart(bench, tmp_path):
    recipes, rows = bench.load_plan()
    wanted = [r for r in rows if r["id"] in ("resnet", "msresnet_lite_avg_sd")]
    jobs = bench.make_jobs(["fmnist-ls"], wanted, recipes, [0], budget=Budget.DEPTH8, explicit_rows=True)
    assert {j.row for j in jobs} == {"resnet", "msresnet_lite_avg_sd", "oracle"}
    assert all(j.key.startswith("depth8__fmnist-ls__") for j in jobs)  # never mistaken for a full-table run
    full = recipes["fmnist-ls"]["train"]
    for j in jobs:
        cfg = bench.job_config(j, rows, recipes, "cpu", tmp_path)
        assert (cfg["epochs"], cfg["train_limit"]) == (full["epochs"], full["train_limit"])  # not the quick budget
        assert cfg["model"] in ("resnet8", "msresnet8")
    lite = bench.job_config(next(j for j in jobs if j.row == "msresnet_lite_avg_sd"), rows, recipes, "cpu", tmp_path)
    assert lite["model_kwargs"]["pyramid_scales"] == [1.0, 0.5, 0.25]  # the depth-8 form's quick_kwargs


def test_probe_record_calibrates_measures_and_leaves_the_model_as_it_was(bench, pages, tiny_fmnist_root, tmp_cache):
    import torch

    from msresnet.data import build_protocol

    torch.manual_seed(0)
    model = create_model("msresnet8", num_classes=10, in_chans=1, width=0.25).eval()
    protocol = build_protocol("fmnist-ls", root=tiny_fmnist_root, val_size=40)
    record = bench.probe_record(model, protocol, None, test_limit=20, val_limit=30)
    cal = record["calibration"]
    assert len(cal["conditions"]) == len(record["test"]["conditions"]) == 9 and cal["fit_images"] == 30
    improves = cal["probe_mean"] > cal["confidence_mean"] and cal["probe_worst"] >= cal["confidence_worst"]
    assert record["kept"] == improves
    assert not model.scale_probe.is_fitted  # the stored run's own figures stay those of the uncalibrated model
    scale = build_protocol("fmnist-scale", root=tiny_fmnist_root, train_size=100, val_size=20, test_size=150)
    assert bench.probe_record(model, scale, None, 20, 30) is None  # no single training condition
    assert bench.probe_record(create_model("resnet8", num_classes=10, in_chans=1), protocol, None, 20, 30) is None
    # the rendered row: the probe's figures where validation kept it, the run's own otherwise
    run = {"test": {"mean": 0.5}, "val": {"accuracy": [0.5] * 9}, "probe": record}
    shown = pages._calibrated(run)
    assert shown["test"] is (record["test"] if record["kept"] else run["test"])
    assert pages._calibrated({**run, "probe": None}) is None


def test_render_adds_the_calibrated_row_and_may_choose_it_on_validation(pages, tmp_path):
    import json
    import shutil

    stored = pages.PUBLISHED / "depth8__fmnist-res__msresnet_conf_sd__seed0.json"
    if not stored.exists():
        pytest.skip("the stored depth-8 fmnist-res record is not in this checkout")
    results, docs = tmp_path / "results", tmp_path / "docs"
    results.mkdir()
    record = json.loads(stored.read_text())
    n = len(record["test"]["conditions"])
    better = {**record["test"], "accuracy": [0.99] * n, "mean": 0.99, "worst": 0.99, "retention": 1.0}
    record["probe"] = {"kept": True, "test": better, "calibration": {"probe": [99.0] * n}}
    (results / stored.name).write_text(json.dumps(record))
    shutil.copy(stored.parent / "depth8__fmnist-res__resnet__seed0.json", results)
    page = pages.render(Budget.DEPTH8, "test", results, docs=docs).read_text()
    calibrated = next(line for line in page.splitlines() if "+ `msresnet calibrate` (probe kept: 1/1)" in line)
    assert "99.0" in calibrated
    assert "Best msresnet on validation data: **" in page
    assert "calibrate` (probe kept: 1/1)** (validation 99.0%)" in page


def test_oracle_runs_only_when_asked(bench):
    recipes, rows = bench.load_plan()
    wanted = [r for r in rows if r["id"] == "resnet"]
    full = Budget.FULL
    without = bench.make_jobs(["fmnist-ls"], wanted, recipes, [0], budget=full, explicit_rows=True, oracles=False)
    assert [j.row for j in without] == ["resnet"]
    with_oracles = bench.make_jobs(["fmnist-ls"], wanted, recipes, [0], budget=Budget.FULL, explicit_rows=True)
    assert sorted(j.oracle_condition for j in with_oracles if j.row == "oracle") == [0.5, 2.0]
    one = bench.make_jobs(["fmnist-ls"], [], recipes, [1, 2], budget=full, explicit_rows=True, oracle_conditions=[0.5])
    assert [(j.oracle_condition, j.seed) for j in one] == [(0.5, 1), (0.5, 2)]


def test_oracle_at_a_bad_condition_is_a_one_line_error(bench):
    with pytest.raises(SystemExit, match="oracle@C"):
        bench.main(["--rows", "oracle@half", "--protocols", "fmnist-ls"])


def test_unknown_row_is_a_one_line_error(bench):
    with pytest.raises(SystemExit, match="unknown row"):
        bench.main(["--rows", "no_such_row", "--protocols", "fmnist-ls"])


def test_a_stopped_run_resumes_only_with_the_same_config_and_a_checkpoint(bench, tmp_path):
    import json

    run = tmp_path / "run"
    spec = tmp_path / "spec.json"
    cfg = {"model": "resnet8", "epochs": 5, "model_kwargs": {"width": 0.5}, "out": str(run)}

    def stopped_run(with_checkpoint: bool = True) -> None:
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        if with_checkpoint:
            (run / "checkpoints" / "last.state.pt").write_bytes(b"state")

    stopped_run()
    assert bench.open_run_dir(spec, dict(cfg)) is False and not run.exists()  # no spec: not this benchmark's run
    stopped_run()
    spec.write_text(json.dumps({"cfg": {**cfg, "resume": False}}))
    assert bench.open_run_dir(spec, dict(cfg)) is True and (run / "checkpoints" / "last.state.pt").is_file()
    assert bench.open_run_dir(spec, {**cfg, "epochs": 6}) is False and not run.exists()  # another recipe
    stopped_run(with_checkpoint=False)
    assert bench.open_run_dir(spec, dict(cfg)) is False and not run.exists()  # stopped before its first checkpoint
    spec.write_text("{not json")
    stopped_run()
    assert bench.open_run_dir(spec, dict(cfg)) is False and not run.exists()


def test_run_job_resumes_a_stopped_run_and_counts_its_earlier_epochs(bench, tiny_fmnist_root, tmp_cache, tmp_path):
    import pandas as pd

    from msresnet.engine.config import load_train_config
    from msresnet.engine.train import train

    cfg = {"model": "resnet8", "model_kwargs": {"width": 0.25}, "protocol": "fmnist-ls",
           "data_root": str(tiny_fmnist_root), "protocol_params": {"val_size": 40}, "epochs": 1, "batch_size": 32,
           "train_limit": 64, "val_limit": 20, "device": "cpu", "threads": 0, "out": str(tmp_path / "run"),
           "log_every": 10**9}  # fmt: skip
    train(load_train_config(None, cfg))  # the earlier process, stopped after its last epoch's checkpoint
    earlier = float(pd.read_csv(tmp_path / "run" / "metrics.csv")["seconds"].sum())
    job = bench.Job("fmnist-ls", "resnet", 0, budget=Budget.FULL)
    record = bench.run_job(job, {**cfg, "resume": True}, test_limit=10, val_limit=10)
    assert record["resumed_after_epochs"] == 1 and record["train_seconds"] >= earlier
    assert "resume" not in record["config"] and len(record["test"]["accuracy"]) == 9


def test_targets_of_a_named_row(targets):
    """Targets with ``of`` read that row, not the best msresnet; every size, the worst scale and means compare."""
    rows = {
        "canonical_loc": {"per_cond": [0.80, 0.86, 0.88], "overall": 0.846, "n": 3, "retention": 0.91, "val": 80.0},
        "other": {"per_cond": [0.99, 0.99, 0.99], "overall": 0.99, "n": 3, "retention": 1.0, "val": 99.0},
        "resnet": {"per_cond": [0.70, 0.87, 0.80], "overall": 0.79, "n": 3, "retention": 0.8, "val": 70.0},
    }
    summary = {"p": {"rows": rows, "oracle": {}, "best": "other", "conds": ["14", "21", "28"]}}
    checks = targets.CHECKS
    gap = {"protocol": "p", "of": "canonical_loc", "size": "all", "reference": 28, "max_gap": 3, "text": "t"}
    assert checks["size_gap"](gap, summary) == [("t", "80.0 at 14 px vs 88.0", False)]
    assert checks["size_gap"]({**gap, "max_gap": 8}, summary)[0][2] is True
    assert checks["size_gap"]({**gap, "of": None}, summary)[0][2] is True  # the best row: flat
    worst = {"protocol": "p", "of": "canonical_loc", "min": 84, "text": "w"}
    assert checks["min_worst"](worst, summary) == [("w", "80.0 at 14", False)]
    vs = {"protocol": "p", "of": "canonical_loc", "row": "resnet", "text": "m"}
    assert checks["mean_vs_row"](vs, summary) == [("m", "84.6 vs 79.0", True)]
    assert checks["retention"]({"protocol": "p", "of": "canonical_loc", "min": 0.9, "text": "r"}, summary)[0][2]
    assert checks["min_worst"]({**worst, "of": "absent"}, summary) == []  # a row that did not run: no line


def test_an_experiment_results_dir_leaves_the_published_pages_alone(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MSRESNET_BENCH_RESULTS", str(tmp_path))  # main() sets it; restored after the test
    (tmp_path / "fmnist-ls__resnet__seed0.json").write_text("{}")  # already stored: nothing to run
    published = []
    monkeypatch.setattr(bench, "publish", lambda *a, **k: published.append(a) or [])
    argv = ["--rows", "resnet", "--protocols", "fmnist-ls", "--seeds", "0", "--runs-dir", str(tmp_path / "runs")]
    assert bench.main([*argv, "--results-dir", str(tmp_path)]) == 0
    assert published == [] and "not re-rendered" in capsys.readouterr().out


def test_calibrating_an_experiments_records_leaves_the_published_pages_alone(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MSRESNET_BENCH_RESULTS", str(tmp_path))
    published, calibrated = [], []
    monkeypatch.setattr(bench, "publish", lambda *a, **k: published.append(a) or [])
    monkeypatch.setattr(bench, "calibrate_stored", lambda jobs, results, *a: calibrated.append(results))
    argv = ["--rows", "resnet", "--protocols", "fmnist-ls", "--seeds", "0", "--runs-dir", str(tmp_path / "runs")]
    assert bench.main([*argv, "--results-dir", str(tmp_path), "--calibrate-stored"]) == 0
    assert calibrated == [tmp_path.resolve()] and published == [] and "not re-rendered" in capsys.readouterr().out
