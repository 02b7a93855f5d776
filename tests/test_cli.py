"""The command line end to end on a tiny budget, and the user-error contract (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import msresnet
from msresnet.cli import main

MODEL = min((n for n in msresnet.list_models() if n.startswith("msresnet")), key=len)


def _smallest(prefix: str) -> str:
    return min((n for n in msresnet.list_models() if n.startswith(prefix)), key=len)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_fmnist_root: Path) -> Iterator[dict[str, Path]]:
    """An isolated protocol cache and a tiny training run made through the CLI (1 epoch, 200 images)."""
    base = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSRESNET_CACHE", str(base / "cache"))
        run = base / "run"
        rc = main(
            ["train", "--model", MODEL, "--protocol", "fmnist-ls", "--data-dir", str(tiny_fmnist_root),
             "--protocol-params", "val_size=50", "--out", str(run), "--epochs", "1", "--train-limit", "128",
             "--batch-size", "32", "--seed", "0", "--device", "cpu"]
        )  # fmt: skip
        assert rc == 0
        yield {"base": base, "run": run, "data": tiny_fmnist_root}


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("msresnet: error: ") and "Traceback" not in err
    return lines[0]


def test_end_to_end(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run, base = env["run"], env["base"]
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.safetensors").is_file()
    capsys.readouterr()

    assert main(["evaluate", str(run), "--test-limit", "50", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "retention" in out
    result = json.loads((run / "eval" / "fmnist-ls.json").read_text())
    assert len(result["conditions"]) == 9 and {"worst", "retention", "mean"} <= result.keys()
    assert (run / "eval" / "fmnist-ls.csv").is_file() and (run / "eval" / "fmnist-ls.png").is_file()

    assert main(["report", str(run), "--out", str(base / "rep")]) == 0
    assert "data:image/png;base64," in (base / "rep" / "report.html").read_text()
    assert MODEL in (base / "rep" / "report.md").read_text()

    img = base / "x.png"
    Image.fromarray((np.random.default_rng(0).random((37, 53, 3)) * 255).astype("uint8")).save(img)
    capsys.readouterr()
    assert main(["predict", str(run), str(img), "--json", "--topk", "3", "--device", "cpu"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert len(pred["results"]) == 1 and len(pred["results"][0]["top"]) == 3
    assert pred["results"][0]["top"][0]["class"]  # class names come from the checkpoint

    onnx = base / "m.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(onnx)]) == 0
    assert capsys.readouterr().out.count(" ok") == 3
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    model = msresnet.load_model(run)
    import torch

    for hw in ((64, 64), (48, 80)):
        x = torch.rand(2, 1, *hw)
        (got,) = sess.run(None, {"images": x.numpy()})
        with torch.no_grad():  # the graph holds the checkpoint's preprocessing: raw images in
            ref = model(model.preprocess(x)).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(ref).max())))


def test_calibrate_fits_the_probe_that_the_model_then_uses(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import torch

    run = env["base"] / "calibrated"
    shutil.copytree(env["run"], run)
    before = msresnet.load_model(run)
    assert not before.scale_probe.is_fitted
    capsys.readouterr()
    assert main(["calibrate", str(run), "--val-limit", "40", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "most confident" in out and "with probe" in out and "wrote" in out
    record = msresnet.load_model(run).checkpoint_info.scale_probe
    assert len(record["conditions"]) == 9 and record["fit_images"] == 40
    improves = record["probe_mean"] > record["confidence_mean"] and record["probe_worst"] >= record["confidence_worst"]
    assert record["kept"] == improves  # auto: validation decides

    assert main(["calibrate", str(run), "--keep", "always", "--val-limit", "40", "--device", "cpu"]) == 0
    model = msresnet.load_model(run)
    assert model.scale_probe.is_fitted and model.checkpoint_info.scale_probe["kept"]
    x = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        pooled = model.pool_levels(x)[0]
        levels = model.level_logits(pooled)
        pick = model.scale_probe.select(levels, pooled, model.pyramid.kept_scales((64, 64)))
        torch.testing.assert_close(model(x), levels[torch.arange(4), pick])
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx", "--out", str(env["base"] / "cal.onnx")]) == 0
    assert capsys.readouterr().out.count(" ok") == 3  # the probe's selection exports (sort-based median)

    assert main(["calibrate", str(run), "--remove"]) == 0
    model = msresnet.load_model(run)
    assert not model.scale_probe.is_fitted and model.checkpoint_info.scale_probe is None


def test_calibrate_rejects_bad_settings(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--band", "0"], ["--val-limit", "3"]):
        assert main(["calibrate", str(env["run"]), *args]) == 2
        assert "--" in _one_error_line(capsys.readouterr().err)
    assert main(["calibrate", str(env["base"] / "nowhere")]) == 2
    assert "no such run" in _one_error_line(capsys.readouterr().err)


def test_train_can_calibrate_its_checkpoints(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--protocol", "fmnist-ls", "--data-dir", str(env["data"]), "--protocol-params", "val_size=50",
              "--epochs", "1", "--train-limit", "64", "--batch-size", "32", "--device", "cpu",
              "--calibrate-probe"]  # fmt: skip
    run = env["base"] / "run-calibrated"
    assert main(["train", "--model", MODEL, "--out", str(run), *common]) == 0
    assert "object-scale probe" in capsys.readouterr().err
    for kind in ("best", "last"):
        record = msresnet.load_model(run / "checkpoints" / f"{kind}.safetensors").checkpoint_info.scale_probe
        assert record is not None and record["fit_images"] == 50
    assert main(["train", "--model", "resnet8", "--out", str(env["base"] / "plain-cal"), *common]) == 2
    assert "no object-scale probe" in _one_error_line(capsys.readouterr().err)


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "resnet8", "--input-size", "32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (row,) = data["models"]
    assert row["name"] == "resnet8" and row["params"] > 0 and row["flops"] > 0
    assert main(["models", "resnet*", "--no-flops"]) == 0
    assert "resnet20" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert msresnet.__version__ in capsys.readouterr().out


@pytest.fixture(scope="module")
def bad_files(env: dict[str, Path]) -> dict[str, Path]:
    base = env["base"] / "bad"
    base.mkdir()
    unknown_key = base / "unknown.yaml"
    unknown_key.write_text(yaml.safe_dump({"model": "resnet8", "epoch": 3}))
    not_yaml = base / "broken.yaml"
    not_yaml.write_text("model: [resnet8\n")
    garbage = base / "garbage.safetensors"
    garbage.write_bytes(os.urandom(256))
    return {"unknown_key": unknown_key, "not_yaml": not_yaml, "garbage": garbage}


def test_evaluate_per_scale(env: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["evaluate", str(env["run"]), "--test-limit", "20", "--per-scale", "--out", str(tmp_path)]) == 0
    assert "each pyramid level alone" in capsys.readouterr().out
    result = json.loads((tmp_path / "eval" / "fmnist-ls.json").read_text())
    per = result["per_scale"]
    assert per["conditions"] == result["conditions"] and len(per["accuracy"]) == 9
    assert all(len(a) == len(f) for a, f in zip(per["accuracy"], per["scales"], strict=True))  # 64 px: 5 levels
    assert (tmp_path / "eval" / "fmnist-ls.png").is_file()


def _train(out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "resnet8", "--protocol", "fmnist-ls", "--out", str(out), "--device", "cpu", *extra]


ERROR_CASES = {
    "unknown model": (lambda e, b: ["train", "--model", "resnet2O", "--out", str(e["base"] / "e1")], "resnet20"),
    "unknown protocol": (
        lambda e, b: ["train", "--model", "resnet8", "--protocol", "fmnist-lss", "--out", str(e["base"] / "e2")],
        "fmnist-ls",
    ),  # fmt: skip
    "negative epochs": (lambda e, b: _train(e["base"] / "e3", "--epochs", "-3"), "epochs"),
    "epochs not a number": (lambda e, b: _train(e["base"] / "e4", "--epochs", "many"), "integer"),
    "zero lr": (lambda e, b: _train(e["base"] / "e5", "--lr", "0"), "lr"),
    "bad amp": (lambda e, b: _train(e["base"] / "e6", "--amp", "fp8"), "fp8"),
    "bad range": (lambda e, b: _train(e["base"] / "e7", "--rescale-aug", "2,0.5"), "rescale_aug"),
    "bad model kwarg": (lambda e, b: _train(e["base"] / "e8", "--model-kwargs", "width"), "KEY=VALUE"),
    "missing data dir": (lambda e, b: _train(e["base"] / "e9", "--data-dir", str(e["base"] / "nodata")), "nodata"),
    "folder protocol without data": (
        lambda e, b: ["train", "--model", "resnet8", "--protocol", "folder-ls", "--out", str(e["base"] / "e10")],
        "root",
    ),  # fmt: skip
    "missing config": (lambda e, b: ["train", "--config", str(e["base"] / "nope.yaml")], "nope.yaml"),
    "unknown config key": (
        lambda e, b: ["train", "--config", str(b["unknown_key"]), "--out", str(e["base"] / "e11")],
        "epochs",
    ),  # fmt: skip
    "broken yaml": (lambda e, b: ["train", "--config", str(b["not_yaml"]), "--out", str(e["base"] / "e12")], "YAML"),
    "existing run without resume": (lambda e, b: _train(e["run"]), "--resume"),
    "evaluate missing run": (lambda e, b: ["evaluate", str(e["base"] / "nope")], "nope"),
    "evaluate unknown protocol": (lambda e, b: ["evaluate", str(e["run"]), "--protocol", "mnist-xyz"], "mnist-xyz"),
    "evaluate bad test limit": (lambda e, b: ["evaluate", str(e["run"]), "--test-limit", "0"], "test-limit"),
    "garbage checkpoint": (lambda e, b: ["evaluate", str(b["garbage"])], "garbage.safetensors"),
    "report missing run": (lambda e, b: ["report", str(e["base"] / "nope"), "--out", str(e["base"] / "r")], "nope"),
    "predict garbage checkpoint": (lambda e, b: ["predict", str(b["garbage"]), str(b["garbage"])], "garbage"),
    "export bad format": (lambda e, b: ["export", str(e["run"]), "--format", "tflite", "--out", "m"], "tflite"),
    "export into missing dir": (
        lambda e, b: ["export", str(e["run"]), "--out", str(e["base"] / "no" / "m.onnx")],
        "does not exist",
    ),  # fmt: skip
    "unknown command": (lambda e, b: ["fly"], "fly"),
    "missing argument": (lambda e, b: ["predict"], "required"),
    "bad demo budget": (lambda e, b: ["demo", "--budget", "-1", "--out", str(e["base"] / "demo")], "budget"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_errors_exit_2_with_one_line(
    case: str, env: dict[str, Path], bad_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    make_argv, expected = ERROR_CASES[case]
    capsys.readouterr()
    rc = main(make_argv(env, bad_files))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert expected in _one_error_line(err)


def test_unknown_model_suggests(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["train", "--model", "msresnet2", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean" in _one_error_line(capsys.readouterr().err)


def test_predict_missing_image_exit_2(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(env["run"]), str(env["base"] / "missing.png")]) == 2
    err = capsys.readouterr().err
    assert "missing.png" in err and "Traceback" not in err


def test_subprocess_contract(tmp_path: Path) -> None:
    """The installed entry point behaves the same out of process: one line, exit 2, no traceback."""
    cmd = [sys.executable, "-m", "msresnet", "train", "--model", "no_such_model", "--out", str(tmp_path / "r")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert _one_error_line(proc.stderr)
