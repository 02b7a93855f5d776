"""A tiny, learnable stand-in protocol for engine tests (a few hundred 1x32x32 images, built in milliseconds).

The engine only needs a protocol's interface (``train``/``val``/``test`` datasets with ``.images``/``.labels`` and
the metadata attributes), so its tests do not pay for building Fashion-MNIST canvases; one test in
``test_engine.py`` runs the real ``fmnist-ls`` end to end.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

MODEL = "resnet8"  # the smallest registered plain ResNet
NUM_CLASSES = 4
SIZE = 32


def _images(n: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k draws a bright bar at a class-specific row; ``scale`` stretches the bar (a toy scale shift)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    labels = labels[torch.randperm(n, generator=g)]
    x = torch.rand(n, 1, SIZE, SIZE, generator=g) * 60
    for k in range(NUM_CLASSES):
        row = 4 + 7 * k
        half = max(1, round(2 * scale))
        x[labels == k, :, max(0, row - half) : row + half, 4:28] += 170
    return x.clamp(0, 255).to(torch.uint8), labels


def _dataset(n: int, seed: int, scale: float = 1.0) -> SimpleNamespace:
    images, labels = _images(n, seed, scale)
    return SimpleNamespace(images=images, labels=labels)


def fake_protocol(name: str = "fake", root: str | None = None, *, n_train: int = 320, **params) -> SimpleNamespace:
    """A protocol object with the attributes the engine reads (see common interface in the design notes)."""
    return SimpleNamespace(
        name=name,
        params={"n_train": n_train, **params},
        checksum="fake-checksum",
        train=_dataset(n_train, 1),
        val=None,
        test={0.5: _dataset(48, 2, 0.5), 1.0: _dataset(48, 2, 1.0), 2.0: _dataset(48, 2, 2.0)},
        train_condition=1.0,
        condition_name="scale",
        num_classes=NUM_CLASSES,
        in_chans=1,
        class_names=[f"bar{k}" for k in range(NUM_CLASSES)],
        mean=(0.2,),
        std=(0.3,),
        input_size=(SIZE, SIZE),
    )


def install(monkeypatch) -> None:
    """Route ``msresnet.data.build_protocol`` to :func:`fake_protocol` for the test."""
    import msresnet.data

    monkeypatch.setattr(msresnet.data, "build_protocol", fake_protocol)


def base_config(out: Path, **over) -> dict:
    """A tiny deterministic CPU run: 320 images of 32x32, batch 64 -> 5 steps per epoch (4 after the 10% val)."""
    cfg = {
        "model": MODEL,
        "protocol": "fake",
        "out": str(out),
        "epochs": 2,
        "batch_size": 64,
        "lr": 3e-3,
        "seed": 0,
        "deterministic": True,
        "device": "cpu",
        "log_every": 1000,
    }
    cfg.update(over)
    return cfg


def main(argv: list[str]) -> int:
    """``python engine_fakes.py CONFIG.yaml``: train on the fake protocol (for subprocess and torchrun tests)."""
    import msresnet.data
    from msresnet.engine.config import load_train_config
    from msresnet.engine.train import train

    msresnet.data.build_protocol = fake_protocol
    torch.set_num_threads(1)
    train(load_train_config(argv[0], {"resume": len(argv) > 1 and argv[1] == "--resume"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
