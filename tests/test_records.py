"""Results records: the eval JSON layout round-trips, summaries follow from the accuracies, old files read."""

from __future__ import annotations

import json
import math

import pytest

from msresnet.records import ScaleResult, SweepResult, scale_labels


def _sweep() -> SweepResult:
    per = ScaleResult([0.5, 1.0, 2.0], [[0.5, 0.25], [0.75, 0.5], [0.5]], [[1.0, 0.5], [1.0, 0.5], [1.0]])
    return SweepResult.from_accuracy(
        "fmnist-ls", [0.5, 1.0, 2.0], [0.6, 0.9, 0.3], 1.0, condition_name="scale", n_per_condition=20, per_scale=per
    )


def test_summary_follows_from_the_accuracies() -> None:
    r = _sweep()
    assert r.mean == pytest.approx(0.6) and r.worst == 0.3 and r.worst_condition == 2.0
    assert r.accuracy_at_train == 0.9 and r.retention == pytest.approx(0.3 / 0.9)
    assert [row.is_train for row in r.rows()] == [False, True, False]
    assert SweepResult.from_accuracy("p", ["a", "b"], [0.5, 0.7]).retention is None  # no training condition


def test_json_round_trip() -> None:
    r = _sweep()
    d = json.loads(json.dumps(r.to_dict()))
    assert list(d)[:5] == ["protocol", "protocol_params", "condition_name", "conditions", "accuracy"]
    assert d["per_scale"]["scales"][2] == [1.0]
    assert SweepResult.from_dict(d) == r
    assert r.per_scale is not None and r.per_scale.labels() == ["x1", "x0.5"] == scale_labels(d["per_scale"])


def test_older_files_and_malformed_ones() -> None:
    old = SweepResult.from_dict({"protocol": "p", "conditions": [1, 2], "accuracy": [0.5, 0.7], "extra": 1})
    assert old.mean == pytest.approx(0.6) and old.worst == 0.5 and old.retention is None and old.per_scale is None
    assert math.isnan(SweepResult.from_dict({"conditions": [], "accuracy": []}).mean)
    with pytest.raises(ValueError):
        SweepResult.from_dict({"conditions": [1, 2], "accuracy": [0.5]})
    with pytest.raises(KeyError):
        SweepResult.from_dict({"conditions": [1]})
