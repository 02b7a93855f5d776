"""Rank failures of a 2-process CPU (gloo) job (issue 22, item 2): no hang, one line, exact resume, same world only.

Two launch modes: under ``torchrun`` (what users run: its agent also stops the survivors) and by hand, with the
rendezvous variables set by the test and no agent, so only the process group's own error or timeout can stop the
surviving rank.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from engine_fakes import base_config, install
from msresnet.engine.checkpoint import load_state
from msresnet.engine.config import load_train_config
from msresnet.engine.train import train
from msresnet.errors import UserError

WORKER = Path(__file__).with_name("fault_worker.py")
# 288 train images: 144 per rank, 5 steps of 32 per epoch, 2 epochs; a checkpoint every 2 steps
RECIPE = {"protocol_params": {"n_train": 320}, "batch_size": 32, "epochs": 2, "checkpoint_every": 2}


def _env(**extra: str) -> dict[str, str]:
    src = Path(__file__).resolve().parents[1] / "src"
    path = os.pathsep.join([str(src), str(Path(__file__).parent)])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def _config(tmp_path: Path, out: Path, **over) -> Path:
    cfg_file = tmp_path / f"{out.name}.yaml"
    cfg_file.write_text(yaml.safe_dump(base_config(out, **{**RECIPE, **over})))
    return cfg_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(cfg_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER)]
    return subprocess.run([*cmd, str(cfg_file), *args], env=_env(), capture_output=True, text=True, timeout=300)


def _by_hand(cfg_file: Path, *args: str) -> list[subprocess.Popen[str]]:
    """Both ranks started without torchrun (nothing but the process group connects them)."""
    rdv = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(cfg_file), *args],
            env=_env(**rdv, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("msresnet: error:")]


@pytest.mark.parametrize("dead", [0, 1], ids=["writer-dies", "other-rank-dies"])
def test_survivor_exits_when_a_rank_is_killed(tmp_path: Path, dead: int) -> None:
    """SIGKILL of one rank mid-epoch: the other notices at its next collective, prints one line and exits 2."""
    procs = _by_hand(_config(tmp_path, tmp_path / "run"), "--kill-rank", str(dead), "--kill-step", "3")
    outs = [p.communicate(timeout=300) for p in procs]
    alive = 1 - dead
    assert procs[dead].returncode == -signal.SIGKILL
    out, err = outs[alive]
    assert procs[alive].returncode == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = _error_lines(err)
    assert len(lines) == 1 and "another rank died or stopped answering" in lines[0], err[-2000:]
    killed_at = float(outs[dead][0].split(" at ")[-1])
    exited_at = float(out.split(" at ")[-1])
    print(f"rank {alive} exited {exited_at - killed_at:.2f}s after rank {dead} was killed")


def test_hung_rank_times_out(tmp_path: Path) -> None:
    """A rank that stops answering (SIGSTOP) ends its peer after ``dist_timeout`` seconds instead of never."""
    procs = _by_hand(_config(tmp_path, tmp_path / "run", dist_timeout=5.0))
    state = tmp_path / "run" / "checkpoints" / "last.state.pt"
    try:
        while procs[0].poll() is None and not state.exists():
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = procs[0].communicate(timeout=300)
        waited = time.monotonic() - stopped
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 2, err[-2000:]
    lines = _error_lines(err)
    assert len(lines) == 1 and "stopped answering" in lines[0], err[-2000:]
    assert "Traceback" not in err
    print(f"rank 0 exited {waited:.1f}s after rank 1 hung (dist_timeout 5)")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def test_torchrun_kill_then_resume_is_exact(tmp_path: Path) -> None:
    """A rank SIGKILLed mid-epoch under torchrun: the job ends, a 1-process resume is refused, and a 2-process
    resume from rank 0's last checkpoint ends with the weights of an uninterrupted 2-process run."""
    ref = _torchrun(_config(tmp_path, tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "run"
    cfg_file = _config(tmp_path, out)
    killed = _torchrun(cfg_file, "--kill-rank", "1", "--kill-step", "7")  # epoch 2, between two checkpoints
    assert killed.returncode != 0
    assert load_state(out / "checkpoints" / "last.state.pt")["global_step"] == 6

    alone = subprocess.run(
        [sys.executable, str(WORKER), str(cfg_file), "--resume"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode == 2
    lines = _error_lines(alone.stderr)
    assert len(lines) == 1 and "trained with 2" in lines[0], alone.stderr[-2000:]

    resumed = _torchrun(cfg_file, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "step 6" in resumed.stderr
    a, b = _weights(tmp_path / "ref"), _weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_resume_with_another_world_size_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The world size recorded at the first launch decides: a 1-process resume of a '2-process' run is refused."""
    install(monkeypatch)
    out = tmp_path / "run"
    train(load_train_config(None, base_config(out, **{**RECIPE, "epochs": 1})))
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["provenance"]["world_size"] == 1
    config["provenance"]["world_size"] = 2
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match="with 1 process.*trained with 2"):
        train(load_train_config(None, base_config(out, **{**RECIPE, "epochs": 2, "resume": True})))
