"""The same training under ``torchrun --nproc_per_node=2`` on CPU (gloo): DDP, sharded epochs, rank-0 files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from engine_fakes import base_config, fake_protocol
from msresnet.engine.batches import Normalizer, train_val_splits
from msresnet.engine.checkpoint import load_model, read_checkpoint_info
from msresnet.engine.config import TrainConfig
from msresnet.engine.distributed import DistContext
from msresnet.engine.train import validate


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "run"
    cfg_file = tmp_path / "cfg.yaml"
    n_train = 160  # 144 after the 10% validation hold-out: 72 per rank, 3 steps of 32 per epoch
    # si_weight > 0: the loss makes two forward passes per step, which DDP must see as one (TrainStep).
    cfg = base_config(out, protocol_params={"n_train": n_train}, batch_size=32, epochs=2, si_weight=0.5)
    cfg_file.write_text(yaml.safe_dump(cfg))
    script = Path(__file__).with_name("engine_fakes.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(script.parent)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(cfg_file),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 alone logs: one "done" line, not two
    assert proc.stderr.count("done: best val_acc") == 1, proc.stderr[-2000:]

    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    assert list(metrics["step"]) == [3, 6]  # each rank did 3 steps per epoch on its half of the images
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["provenance"]["world_size"] == 2
    assert read_checkpoint_info(out).step == 6

    # Validation during the 2-process run (sharded, counts all-reduced) equals one process on the final weights.
    model = load_model(out / "checkpoints" / "last.safetensors")
    protocol = fake_protocol(n_train=n_train)
    _, val = train_val_splits(protocol, TrainConfig().val_limit)
    norm = Normalizer(protocol.mean, protocol.std, torch.device("cpu"))
    val_loss, val_acc = validate(model, val, norm, 256, DistContext(), None)
    assert val_acc == pytest.approx(metrics["val_acc"].iloc[-1], abs=1e-9)
    assert val_loss == pytest.approx(metrics["val_loss"].iloc[-1], rel=1e-4)


@pytest.mark.parametrize(
    "text, peer",
    [
        ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1234", True),
        ("Application timeout caused pair closure", True),  # gloo, a SIGSTOPped peer during DDP's buffer broadcast
        ("Timed out waiting 5000ms for send operation to complete", True),
        ("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x2)", False),  # a bug in this rank stays a bug
    ],
)
def test_peer_failures_are_told_from_other_errors(text: str, peer: bool) -> None:
    from msresnet.engine.distributed import is_peer_failure

    assert is_peer_failure(RuntimeError(text)) is peer
    assert not is_peer_failure(ValueError(text))
