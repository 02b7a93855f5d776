"""The new code paths under fault (issue 22, items 3 and 4).

* SIGKILL in the middle of an epoch, then ``--resume``, ends bit-identical to an uninterrupted run for the scale
  models: the pyramid ``msresnet8``, the canonical models and a timm trunk inside each registered scale wrapper
  (those present when the suite runs).
* A model file that is not one (a text file named ``.onnx``, a foreign state dict, weights of another
  architecture) and a ``timm:`` name that does not exist are each one line and exit 2 where the project loads them
  (evaluate, predict, export, scan, train).
* (slow) a chaos loop: SIGKILL at random moments, each resume point checked against the uninterrupted run.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import msresnet
from engine_fakes import base_config, install
from fault_worker import timm_wrapped_models
from msresnet.cli import main
from msresnet.engine import state as state_module
from msresnet.engine.checkpoint import CheckpointInfo, load_state, plain_state_dict, save_weights
from msresnet.engine.config import load_train_config
from msresnet.engine.train import train
from msresnet.models import _registry

WORKER = Path(__file__).with_name("fault_worker.py")
# 144 training images, batch 32: 5 steps per epoch, 10 in all; a checkpoint every 2 steps
RECIPE = {"protocol_params": {"n_train": 160}, "batch_size": 32, "epochs": 2, "checkpoint_every": 2}
COMPARED = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]


def _canonical() -> list[str]:
    names = [n for n in msresnet.list_models() if "canonical" in n]
    return [min(names, key=lambda n: (len(n), n))] if names else []


def fault_models() -> list[str]:
    """The pyramid msresnet8, the smallest canonical model, and a timm trunk in each wrapper (where they exist)."""
    return ["msresnet8", *_canonical(), *sorted(timm_wrapped_models())]


def chaos_model() -> str:
    """The canonical model where one is registered, else the pyramid msresnet8."""
    return (_canonical() or ["msresnet8"])[0]


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake protocol and the timm-wrapped test models, for this test only; one thread, like the workers."""
    install(monkeypatch)
    for name, fn in timm_wrapped_models().items():
        monkeypatch.setitem(_registry._ENTRYPOINTS, name, fn)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_config(tmp_path: Path, out: Path, **cfg: Any) -> Path:
    file = tmp_path / f"{out.name}.yaml"
    file.write_text(yaml.safe_dump(base_config(out, **cfg)))
    return file


def _worker(cfg_file: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(cfg_file), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (``torch.equal`` calls two NaNs different; an unfitted probe holds one)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that differ (all of them when the key sets differ)."""
    if a.keys() != b.keys():
        return sorted(a.keys() ^ b.keys())
    return [k for k in a if not _bit_equal(a[k], b[k])]


def _assert_same_run(a: Path, b: Path) -> None:
    diff = _same_weights(*(load_file(str(r / "checkpoints" / "last.safetensors")) for r in (a, b)))
    assert not diff, f"weights differ: {diff[:3]}"
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    pd.testing.assert_frame_equal(ma[COMPARED], mb[COMPARED])


@pytest.mark.parametrize("model", fault_models())
def test_sigkill_mid_epoch_then_resume_is_bit_identical(model: str, tmp_path: Path, fake_engine: None) -> None:
    recipe = {**RECIPE, "model": model}
    reference = tmp_path / "reference"
    train(load_train_config(None, base_config(reference, **recipe)))

    out = tmp_path / "run"
    proc = _worker(_write_config(tmp_path, out, **recipe), "--kill-rank", "0", "--kill-step", "7")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert load_state(out / "checkpoints" / "last.state.pt")["global_step"] == 6  # mid-epoch 2

    train(load_train_config(None, base_config(out, **recipe, resume=True)))
    _assert_same_run(reference, out)


# --------------------------------------------------------------------------------------------------- bad inputs


def _bad_files(d: Path) -> dict[str, Path]:
    """A text file named .onnx, a state dict without msresnet metadata, resnet20 weights labelled resnet8."""
    d.mkdir()
    (d / "model.onnx").write_bytes(b"this is not an ONNX model\n")
    resnet20 = msresnet.create_model("resnet20", num_classes=10, in_chans=1)
    save_file(plain_state_dict(resnet20), str(d / "foreign.safetensors"))
    info = CheckpointInfo(model="resnet8", num_classes=10, in_chans=1, protocol="fmnist-ls", input_size=(56, 56))
    save_weights(d / "other-arch.safetensors", resnet20, info)
    return {"onnx": d / "model.onnx", "foreign": d / "foreign.safetensors", "other-arch": d / "other-arch.safetensors"}


@pytest.mark.parametrize("kind", ["onnx", "foreign", "other-arch"])
@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_bad_model_file_is_one_line(
    command: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    file = _bad_files(tmp_path / "files")[kind]
    image = tmp_path / "image.png"
    Image.new("L", (28, 28)).save(image)
    extra = {"evaluate": ["--test-limit", "10"], "predict": [str(image)], "export": ["--out", str(tmp_path / "m.onnx")]}
    assert main([command, str(file), *extra[command]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(file) in err


def test_unknown_timm_name_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--model", "timm:no_such_network", "--protocol", "fmnist-ls", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "timm:no_such_network" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["onnx", "timm-name", "other-arch"])
def test_scan_bad_model_is_one_line(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _bad_files(tmp_path / "files")
    source = {
        "onnx": [str(files["onnx"])],
        "timm-name": ["timm:no_such_network"],
        "other-arch": ["timm:test_resnet", "--checkpoint", str(files["foreign"])],  # resnet20 weights
    }[kind]
    argv = ["scan", *source, "--protocol", "fmnist-ls", "--limit", "20", "--out", str(tmp_path / "scan")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert (source[-1] if kind != "timm-name" else "no_such_network") in err


# --------------------------------------------------------------------------------------------------- chaos


def _reference_weights(out: Path, recipe: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[int, dict]:
    """Train uninterrupted and keep the weights of every checkpoint, by step (what each resume point must hold)."""
    seen: dict[int, dict] = {}
    save_state = state_module.save_state

    def spy(path: Path, state: dict[str, Any]) -> None:
        seen[state["global_step"]] = {k: v.clone() for k, v in state["model"].items()}
        save_state(path, state)

    with monkeypatch.context() as mp:
        mp.setattr(state_module, "save_state", spy)
        train(load_train_config(None, base_config(out, **recipe)))
    return seen


@pytest.mark.slow
def test_chaos_sigkill_scale_model(tmp_path: Path, fake_engine: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL a scale-model training at random moments (8 kills), resume each time; every resume point must hold
    the uninterrupted run's weights at that step, and the final weights must be identical.

    ``pytest -m slow -s tests/test_fault_models.py -k chaos`` prints the count.
    """
    model = chaos_model()
    recipe = {**RECIPE, "model": model, "protocol_params": {"n_train": 320}, "epochs": 3, "checkpoint_every": 1}
    reference = tmp_path / "reference"
    expected = _reference_weights(reference, recipe, monkeypatch)

    out = tmp_path / "run"
    cfg_file = _write_config(tmp_path, out, **recipe)
    state = out / "checkpoints" / "last.state.pt"
    rng = random.Random(22)
    kills, survived, points = 0, 0, []
    for launch in range(40):
        before = state.stat().st_mtime_ns if state.exists() else 0
        proc = _worker(cfg_file, *(["--resume"] if launch else []))
        if kills < 8:
            while proc.poll() is None and (state.stat().st_mtime_ns if state.exists() else 0) == before:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.0))  # somewhere in the next steps, sometimes inside a checkpoint write
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                kills += 1
                saved = load_state(state)
                step = saved["global_step"]
                survived += not _same_weights(saved["model"], expected[step])
                points.append(step)
                continue
        _, err = proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        break
    print(f"chaos ({model}): {survived}/{kills} SIGKILLs survived with identical weights, resume points {points}")
    assert kills >= 5, f"too few kills landed: {points}"
    assert survived == kills
    _assert_same_run(reference, out)
