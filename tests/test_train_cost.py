"""benchmarks/train_cost.py: every row's training step timed beside the plain ResNet's, merged into one record."""

from __future__ import annotations

import json

import pytest

from conftest import load_benchmark
from engine_fakes import install


@pytest.fixture(scope="module")
def tc():
    return load_benchmark("train_cost")


def _run(tc, tmp_path, *argv: str) -> list[dict]:
    out = tmp_path / "train_cost.json"
    tc.main(["--protocols", "fmnist-res", "--repeats", "1", "--iters", "1", "--warmup", "0", "--depth8",
             "--threads", "1", "--summary", str(tmp_path / "none.csv"), "--out", str(out), *argv])  # fmt: skip
    return json.loads(out.read_text())["rows"]


def test_rows_are_timed_against_the_plain_resnet_and_merged(tc, tmp_path, monkeypatch):
    install(monkeypatch)  # the fake protocol's images instead of Fashion-MNIST
    rows = _run(tc, tmp_path, "--rows", "canonical,oracle@14")
    by_row = {r["row"]: r for r in rows}
    assert set(by_row) == {"resnet", "canonical", "oracle@14"}  # the baseline is always measured
    assert by_row["resnet"]["ratio"] == 1.0 and by_row["canonical"]["model"] == "msresnet8_canonical"
    assert all(r["small_model"] and r["step_s"] > 0 and r["batch"] == 128 for r in rows)  # the recipe's batch
    again = _run(
        tc, tmp_path, "--rows", "resnet", "--batch", "16"
    )  # a later measurement keeps the rows it did not redo
    assert {r["row"] for r in again} == {"resnet", "canonical", "oracle@14"}
    assert {r["row"]: r["batch"] for r in again} == {"resnet": 16, "canonical": 128, "oracle@14": 128}


def test_unknown_row_or_protocol_is_a_one_line_error(tc, tmp_path):
    with pytest.raises(SystemExit, match="unknown row"):
        _run(tc, tmp_path, "--rows", "resnet,nosuchrow")
    with pytest.raises(SystemExit, match="unknown row.*oracle@15"):  # not one of the recipe's oracles
        _run(tc, tmp_path, "--rows", "oracle@15")
    with pytest.raises(SystemExit, match="unknown protocol"):
        tc.main(["--protocols", "imagenet", "--out", str(tmp_path / "x.json")])
