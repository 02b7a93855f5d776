"""``--resume`` continues exactly: after any interruption the final weights and metrics equal an uninterrupted run.

Interruptions covered (deterministic CPU runs on the fake protocol, with random-rescale augmentation on so the
augmentation generator is part of what must be restored):

* a crash right after an epoch's checkpoint (what ``kill -9`` between epochs leaves),
* SIGINT in the middle of an epoch (graceful stop: checkpoint, exit code 130, mid-epoch resume),
* a kill in the middle of writing a checkpoint (a partial temp file; the previous state must be used),
* (slow) ``SIGKILL`` of a training subprocess at random moments, resumed until it finishes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from engine_fakes import base_config, install
from msresnet.engine import checkpoint as ckpt
from msresnet.engine.config import load_train_config
from msresnet.engine.signals import TrainingInterrupted
from msresnet.engine.train import train

RECIPE = {"protocol_params": {"n_train": 160}, "batch_size": 32, "epochs": 3, "rescale_aug": [0.7, 1.3]}
COMPARED = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]  # not the timings


class SimulatedKill(BaseException):
    """Stands for SIGKILL: nothing in the engine catches it, nothing is written after it."""


def assert_same_run(a: Path, b: Path) -> None:
    wa = load_file(str(a / "checkpoints" / "last.safetensors"))
    wb = load_file(str(b / "checkpoints" / "last.safetensors"))
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"weights differ: {diff[:3]}"
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    pd.testing.assert_frame_equal(ma[COMPARED], mb[COMPARED])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    with pytest.MonkeyPatch.context() as mp:
        install(mp)
        torch.set_num_threads(1)
        train(load_train_config(None, base_config(out, **RECIPE)))
    return out


def _cfg(out: Path, resume: bool = False):
    return load_train_config(None, base_config(out, **RECIPE, resume=resume))


def test_resume_after_crash_between_epochs(reference, tmp_path, monkeypatch):
    install(monkeypatch)
    out = tmp_path / "run"

    def crash(epoch, row):
        if epoch == 1:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        train(_cfg(out), on_epoch=crash)
    assert len(pd.read_csv(out / "metrics.csv")) == 1
    train(_cfg(out, resume=True))
    assert_same_run(reference, out)


def test_sigint_mid_epoch_then_resume(reference, tmp_path, monkeypatch):
    """SIGINT at step 7 (epoch 2, batch 2): checkpoint written, exit code 130, resume lands on identical weights."""
    install(monkeypatch)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background (nohup, CI)

    def interrupt(step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as e:
        train(_cfg(out), on_step=interrupt)
    assert e.value.code == 130
    state = ckpt.load_state(out / "checkpoints" / "last.state.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (1, 2, 7)
    assert signal.getsignal(signal.SIGINT) == before  # handlers restored
    train(_cfg(out, resume=True))
    assert_same_run(reference, out)


def test_kill_during_checkpoint_write_uses_previous_state(reference, tmp_path, monkeypatch):
    """Die half-way through writing epoch 2's state: the partial temp file is ignored, epoch 1's state is used."""
    install(monkeypatch)
    out = tmp_path / "run"
    real_write = ckpt.atomic_write_bytes
    seen = {"n": 0}

    def dying_write(path, data):
        if path.name == "last.state.pt":
            seen["n"] += 1
            if seen["n"] == 2:  # epoch 2's resume point
                with open(path.with_name(f".{path.name}.tmp-{os.getpid()}"), "wb") as fh:
                    fh.write(data[: len(data) // 2])
                raise SimulatedKill
        real_write(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", dying_write)
    with pytest.raises(SimulatedKill):
        train(_cfg(out))
    monkeypatch.setattr(ckpt, "atomic_write_bytes", real_write)
    assert list((out / "checkpoints").glob(".*tmp*"))  # the torn write is there ...
    assert ckpt.load_state(out / "checkpoints" / "last.state.pt")["epoch"] == 1  # ... and is not what loads
    train(_cfg(out, resume=True))
    assert not list((out / "checkpoints").glob(".*tmp*"))
    assert_same_run(reference, out)


def test_resume_of_finished_run_is_a_no_op(reference, tmp_path, monkeypatch):
    install(monkeypatch)
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = (out / "checkpoints" / "last.safetensors").read_bytes()
    train(_cfg(out, resume=True))
    assert (out / "checkpoints" / "last.safetensors").read_bytes() == before
    assert_same_run(reference, out)


def test_sigterm_stops_a_training_process_with_143(tmp_path):
    """SIGTERM to a training process: it writes a checkpoint at the end of the current step and exits 143."""
    out = tmp_path / "run"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(base_config(out, **{**RECIPE, "epochs": 50, "checkpoint_every": 1})))
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("engine_fakes.py")), str(cfg_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = out / "checkpoints" / "last.state.pt"
    while proc.poll() is None and not state.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by signal 15" in err
    saved = ckpt.load_state(state)
    assert saved["global_step"] >= 1 and saved["epoch"] < 50


def test_second_sigint_exits_at_once():
    """The first SIGINT asks for a graceful stop; a second one ends the process immediately (exit 130)."""
    code = (
        "import os, signal, time\n"
        "from msresnet.engine.signals import GracefulStop\n"
        "with GracefulStop() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert stop.requested\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr


@pytest.mark.slow
def test_chaos_sigkill_resume(tmp_path, monkeypatch):
    """SIGKILL a training subprocess at random moments (at least 5 kills), resume each time, compare at the end.

    Run with ``pytest -m slow -s tests/test_resume.py`` to see how many kills were survived.
    """
    recipe = {**RECIPE, "protocol_params": {"n_train": 640}, "checkpoint_every": 3}
    install(monkeypatch)
    torch.set_num_threads(1)
    reference = tmp_path / "ref"
    train(load_train_config(None, base_config(reference, **recipe)))

    out = tmp_path / "run"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(base_config(out, **recipe)))
    script = Path(__file__).with_name("engine_fakes.py")
    rng = random.Random(0)
    kill_points: list[int] = []
    state = out / "checkpoints" / "last.state.pt"
    for launch in range(60):
        args = [sys.executable, str(script), str(cfg_file)] + (["--resume"] if launch else [])
        before = state.stat().st_mtime_ns if state.exists() else 0
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if len(kill_points) < 8:
            # Wait until this process has made progress (a new checkpoint), then kill after a random delay:
            # somewhere in the following steps, sometimes in the middle of the next checkpoint write.
            while proc.poll() is None and (state.stat().st_mtime_ns if state.exists() else 0) == before:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kill_points.append(ckpt.load_state(state)["global_step"])
                continue
        if proc.wait() == 0:
            break
    distinct = sorted(set(kill_points))
    print(f"chaos: {len(kill_points)} SIGKILLs survived, resumed from steps {distinct}; final weights identical")
    assert len(distinct) >= 5, f"kills landed at too few distinct points: {kill_points}"
    assert_same_run(reference, out)
