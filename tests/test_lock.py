"""One writer per run directory (issue 22, item 1): the ``RUN/.lock`` flock taken by train, resume and calibrate."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engine_fakes import base_config
from msresnet.cli import main
from msresnet.engine import lock
from msresnet.engine.lock import RunLocked, acquire, hold_checkpoint, hold_run, release

HOLDER = (
    "import sys, time\n"
    "from msresnet.engine.lock import acquire\n"
    "acquire(sys.argv[1], 'train')\n"
    "print('held', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path: Path):
    """Another process holding ``tmp_path/run``'s lock (killed with SIGKILL at teardown)."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield run, proc
    proc.kill()
    proc.wait()


def _env() -> dict[str, str]:
    src = Path(__file__).resolve().parents[1] / "src"
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(Path(__file__).parent)])}


def test_second_writer_is_refused_with_holder_pid_and_host(holder) -> None:
    run, proc = holder
    with pytest.raises(RunLocked) as err:
        acquire(run)
    msg = str(err.value)
    assert f"process {proc.pid} on host {socket.gethostname()}" in msg
    assert "\n" not in msg


def test_sigkill_of_the_holder_leaves_no_stale_lock(holder) -> None:
    run, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / ".lock").exists()  # the file stays; the kernel dropped the lock with the process
    with hold_run(run):
        pass


def test_lock_is_reentrant_and_released(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with hold_run(run, "train"):
        with hold_checkpoint(run / "checkpoints" / "best.safetensors", "calibrate"):
            pass  # train calibrating its own checkpoints at the end
        assert lock._held, "still held by the outer block"
    assert not lock._held
    assert (run / ".lock").read_text() == "", "a released lock names no holder"
    release(run)  # releasing what is not held is a no-op
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from msresnet.engine.lock import acquire; acquire(sys.argv[1])", str(run)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr


def test_loose_checkpoint_needs_no_lock(tmp_path: Path) -> None:
    with hold_checkpoint(tmp_path / "model.safetensors", "calibrate") as run:
        assert run is None
    assert not (tmp_path / ".lock").exists()


def _one_line_error(capsys: pytest.CaptureFixture[str], pid: int) -> None:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert f"process {pid}" in err, err


@pytest.mark.parametrize("resume", [False, True], ids=["train", "resume"])
def test_train_refused_while_run_is_held(holder, capsys: pytest.CaptureFixture[str], resume: bool) -> None:
    run, proc = holder
    argv = ["train", "--model", "resnet8", "--protocol", "fmnist-ls", "--out", str(run)]
    assert main(argv + (["--resume"] if resume else [])) == 2
    _one_line_error(capsys, proc.pid)
    assert not (run / "metrics.csv").exists(), "the refused writer wrote nothing"


def test_calibrate_refused_while_run_is_held(holder, capsys: pytest.CaptureFixture[str]) -> None:
    run, proc = holder
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.safetensors").write_bytes(b"being trained")
    assert main(["calibrate", str(run)]) == 2
    _one_line_error(capsys, proc.pid)
    assert main(["calibrate", str(run), "--remove"]) == 2
    _one_line_error(capsys, proc.pid)


def test_torchrun_refused_on_every_rank(tmp_path: Path) -> None:
    """Rank 0 finds the run held: both ranks stop at once (no rank left waiting on a collective)."""
    out = tmp_path / "run"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(base_config(out, protocol_params={"n_train": 160}, batch_size=32)))
    script = Path(__file__).with_name("engine_fakes.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    with hold_run(out):
        t0 = time.monotonic()
        proc = subprocess.run(
            [*cmd, str(cfg_file)], env={**_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
        )
        elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert f"being written by process {os.getpid()}" in proc.stderr, proc.stderr[-2000:]
    assert "rank 0 could not take the writer lock" in proc.stderr, proc.stderr[-2000:]
    assert not (out / "metrics.csv").exists()
    print(f"torchrun refused in {elapsed:.1f}s")
