"""demo: the plan is a pure function of the budget, and finished runs are reused without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from msresnet import demo
from msresnet.errors import UserError


def test_plan_scales_with_budget() -> None:
    base = demo.plan_for_budget()
    assert base == demo.plan_for_budget(demo.DEFAULT_BUDGET_MIN)  # deterministic: re-runs recognise their runs
    assert base.models == demo.DEMO_MODELS and base.protocol == "fmnist-ls"
    small, big = demo.plan_for_budget(1), demo.plan_for_budget(60)
    assert small.train_limit < base.train_limit < big.train_limit
    assert small.test_limit <= base.test_limit <= big.test_limit
    assert demo.plan_for_budget(10_000).train_limit == 55_000
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(UserError):
            demo.plan_for_budget(bad)


def _fake_finished_run(run: Path, plan: demo.DemoPlan, acc: float) -> None:
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": run.name, "protocol": "fmnist-ls"}))
    scales = [round(2 ** (k / 4), 4) for k in range(-4, 5)]
    result = {
        "protocol": "fmnist-ls",
        "condition_name": "scale",
        "conditions": scales,
        "accuracy": [acc] * 9,
        "mean": acc,
        "worst": acc,
        "retention": 1.0,
        "train_condition": 1.0,
        "n_per_condition": plan.test_limit,
    }
    (run / "eval" / "fmnist-ls.json").write_text(json.dumps(result))
    (run / "demo.json").write_text(json.dumps(plan.run_record(run.name)))


def test_finished_runs_are_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    plan = demo.plan_for_budget(2)
    for i, name in enumerate(plan.models):
        _fake_finished_run(tmp_path / name, plan, 0.5 + 0.1 * i)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(demo, "_train_and_evaluate", no_training)
    monkeypatch.setattr(demo, "estimate_seconds", no_training)
    written = demo.run_demo(out=tmp_path, budget_minutes=2, device="cpu")
    out = capsys.readouterr().out
    assert written["html"].is_file() and "reused" in out
    for name in plan.models:
        assert name in out
    # another budget is another plan: the runs are no longer "finished"
    assert not demo._finished(tmp_path / plan.models[0], demo.plan_for_budget(3).run_record(plan.models[0]))


def test_refuses_foreign_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = demo.plan_for_budget(1)
    (tmp_path / plan.models[0]).mkdir()
    (tmp_path / plan.models[0] / "precious.txt").write_text("user data")
    monkeypatch.setattr(demo, "estimate_seconds", lambda *a, **k: {n: 1.0 for n in plan.models})
    with pytest.raises(UserError, match="not a demo run"):
        demo.run_demo(out=tmp_path, budget_minutes=1, device="cpu")
    assert (tmp_path / plan.models[0] / "precious.txt").exists()
