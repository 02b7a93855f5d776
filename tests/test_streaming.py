"""Streamed image folders: loader workers, augmentation by name, EMA, and a resume that stays exact whatever the
number of workers (the sampler's state is in the checkpoint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from msresnet.data.folder import BadImageWarning
from msresnet.data.stream import EpochBatchSampler, FileDataset, parse_augment, train_transform
from msresnet.engine.checkpoint import load_state
from msresnet.engine.config import load_train_config
from msresnet.engine.train import train
from msresnet.errors import UserError

AUG = "rrc,flip,trivialaugment,mixup"


class SimulatedKill(BaseException):
    """Stands for SIGKILL: nothing in the engine catches it."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 16 RGB JPEGs of mixed sizes, a coloured square per class."""
    root = tmp_path_factory.mktemp("stream") / "data"
    rng = np.random.default_rng(0)
    for c in range(3):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(16):
            s = int(rng.integers(24, 41))
            a = (rng.random((s, s, 3)) * 60).astype(np.uint8)
            a[s // 4 : 3 * s // 4, s // 4 : 3 * s // 4, c] = 220
            Image.fromarray(a).save(d / f"{i}.jpg")
    return root


def _cfg(data: Path, out: Path, **over):
    base = {"model": "resnet8", "data_root": str(data), "out": str(out), "epochs": 2, "batch_size": 8,
            "device": "cpu", "deterministic": True, "threads": 1, "seed": 1, "input_size": 24, "augment": AUG,
            "ema_decay": 0.8, "workers": 2, "protocol_params": {"test_fraction": 0.1}}  # fmt: skip
    return load_train_config(None, {**base, **over})


def test_streamed_resume_is_exact_with_another_worker_count(folder: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    train(_cfg(folder, ref))
    out = tmp_path / "cut"

    def kill(step: int) -> None:
        if step == 7:  # mid second epoch (5 steps per epoch), right after a checkpoint
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        train(_cfg(folder, out, checkpoint_every=7), on_step=kill)
    saved = load_state(out / "checkpoints" / "last.state.pt")
    assert saved["sampler"]["batch_in_epoch"] == 2 and saved["sampler"]["n"] == saved["sampler"]["n"] > 0
    assert "ema" in saved
    train(_cfg(folder, out, checkpoint_every=7, resume=True, workers=0))
    wa, wb = (load_file(str(p / "checkpoints" / "last.safetensors")) for p in (ref, out))
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    cols = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(pd.read_csv(ref / "metrics.csv")[cols], pd.read_csv(out / "metrics.csv")[cols])


def test_ema_weights_are_the_saved_ones(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ema"
    train(_cfg(folder, out, epochs=1, augment=None, workers=0))
    state = load_state(out / "checkpoints" / "last.state.pt")
    saved = load_file(str(out / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(saved[k], state["ema"][k]) for k in saved)
    assert any(not torch.equal(state["model"][k], state["ema"][k]) for k in saved if saved[k].is_floating_point())


def test_per_image_seed_fixes_the_augmentation(folder: Path) -> None:
    files = [(str(p), 0) for p in sorted(folder.rglob("*.jpg"))[:2]]
    ds = FileDataset(files, "RGB", train_transform(24, None, parse_augment(AUG)))
    a, b, c = ds[(0, 5)][0], ds[(0, 5)][0], ds[(0, 6)][0]
    assert a.shape == (3, 24, 24) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_serves_the_epoch_from_a_batch_on() -> None:
    s = EpochBatchSampler(10, 4, seed=0)
    order = torch.randperm(10)
    s.set_epoch(order, epoch=3, start=1)
    batches = list(s)
    assert len(batches) == len(s) == 2 and [i for b in batches for i, _ in b] == order[4:].tolist()
    with pytest.raises(UserError, match="had 12 images"):
        s.check_state({"n": 12})


def test_unreadable_file_is_dropped_and_named(folder: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    files = sorted((data / "class0").glob("*.jpg"))
    files[3].write_bytes(files[3].read_bytes()[:200])  # truncated after the header: found only when decoded
    with pytest.warns(BadImageWarning):
        train(_cfg(data, tmp_path / "run", epochs=1, workers=0, augment=None, ema_decay=None))


def test_augment_names_are_checked_and_kept_off_benchmark_protocols(tmp_path: Path) -> None:
    assert parse_augment("random-resized-crop, hflip,cutmix") == ("rrc", "flip", "cutmix")
    with pytest.raises(UserError, match="unknown augmentation 'blur'"):
        parse_augment("flip,blur")
    with pytest.raises(UserError, match="one of trivialaugment and randaugment"):
        parse_augment("trivialaugment,randaugment")
    from msresnet.engine.streaming import uses_stream

    class Bench:
        name, files = "fmnist-ls", None

    with pytest.raises(UserError, match="applies to streamed image folders"):
        uses_stream(load_train_config(None, {"model": "resnet8", "out": "x", "augment": "flip"}), Bench())
    assert not uses_stream(load_train_config(None, {"model": "resnet8", "out": "x", "augment": "mixup"}), Bench())


def test_streamed_run_never_decodes_the_folder_up_front(folder: Path, tmp_path: Path, monkeypatch) -> None:
    """Neither the statistics nor the provenance checksum decode the folder: no cached part is written, and the
    run's config names the folder by its files."""
    import yaml

    cache = tmp_path / "cache"
    monkeypatch.setenv("MSRESNET_CACHE", str(cache))
    out = tmp_path / "run"
    train(_cfg(folder, out, epochs=1, workers=0, augment=None, ema_decay=None))
    assert not list(cache.rglob("*.npz"))
    prov = yaml.safe_load((out / "config.yaml").read_text())["provenance"]
    assert prov["protocol_checksum"].startswith("files:")
