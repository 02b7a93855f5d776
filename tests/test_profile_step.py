"""benchmarks/profile_step.py: one record per model and mode, with the layout copies and op counts it promises."""

from __future__ import annotations

import json

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def prof():
    return load_benchmark("profile_step")


def test_profiles_every_model_and_mode_with_copies_and_ratios(prof, tmp_path):
    out = tmp_path / "p.json"
    prof.main(["--quick", "--models", "resnet8,msresnet8", "--modes", "fp32,fp32-cl", "--top", "3", "--out", str(out)])
    rec = json.loads(out.read_text())
    assert [(r["model"], r["mode"]) for r in rec["rows"]] == [
        ("resnet8", "fp32"), ("msresnet8", "fp32"), ("resnet8", "fp32-cl"), ("msresnet8", "fp32-cl")]  # fmt: skip
    for r in rec["rows"]:
        assert r["images_per_s"] > 0 and len(r["top"]) == 3 and r["ops_per_step"] > 0
    assert rec["rows"][0]["time_ratio"] == 1.0
    # the multi-scale model runs more ops per step than the plain trunk
    assert rec["rows"][1]["ops_per_step"] > rec["rows"][0]["ops_per_step"]


def test_unknown_mode_is_a_one_line_error(prof):
    with pytest.raises(SystemExit, match="unknown mode 'fp64'"):
        prof.main(["--quick", "--modes", "fp64"])


def test_si_view_steps_with_the_autotuner_on_and_off(prof, tmp_path):
    out = tmp_path / "p.json"
    prof.main(["--quick", "--models", "resnet8", "--modes", "fp32", "--si-view", "--autotune", "on,off", "--top", "2",
               "--out", str(out)])  # fmt: skip
    rec = json.loads(out.read_text())
    assert rec["si_view"] is True
    assert [(r["model"], r["autotune"]) for r in rec["rows"]] == [("resnet8", True), ("resnet8", False)]
    assert all(r["time_ratio"] == 1.0 and r["images_per_s"] > 0 for r in rec["rows"])


def test_bad_autotune_list_is_a_usage_error(prof, capsys):
    with pytest.raises(SystemExit) as e:
        prof.main(["--quick", "--autotune", "on,maybe"])
    assert e.value.code == 2 and "on / off" in capsys.readouterr().err
