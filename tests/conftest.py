"""Shared test fixtures: tiny generated datasets, the real Fashion-MNIST when installed, an isolated cache.

Tests never download: ``MSRESNET_OFFLINE=1`` is set for the whole session.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

os.environ["MSRESNET_OFFLINE"] = "1"

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``gz``; returns the path written."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    path = Path(str(path) + ".gz") if gz and not str(path).endswith(".gz") else Path(path)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def load_benchmark(name: str) -> ModuleType:
    """The module ``benchmarks.<name>`` (the repository root is on the test path: ``pythonpath`` in pyproject)."""
    return importlib.import_module(f"benchmarks.{name}")


def make_fake_images(n: int, seed: int, size: int = 28, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST-like images: a bright rectangle on black whose shape depends on the class (learnable, with a
    known bounding box), labels cycling over the classes so every class is equally frequent."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % num_classes).astype(np.uint8)
    rng.shuffle(labels)
    images = np.zeros((n, size, size), dtype=np.uint8)
    for i, c in enumerate(labels):
        h = 8 + (int(c) * 2) % 16 + int(rng.integers(0, 3))
        w = 22 - (int(c) * 3) % 14 - int(rng.integers(0, 3))
        top, left = (size - h) // 2, (size - w) // 2
        images[i, top : top + h, left : left + w] = rng.integers(150, 256)
    return images, labels


def make_idx_dir(directory: Path, n_train: int = 300, n_test: int = 100, *, gz: bool = True) -> Path:
    """A Fashion-MNIST-shaped IDX folder with ``n_train`` / ``n_test`` fake images."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = make_fake_images(n, seed)
        write_idx(directory / IDX_NAMES[f"{split}-images"], images, gz=gz)
        write_idx(directory / IDX_NAMES[f"{split}-labels"], labels, gz=gz)
    return directory


@pytest.fixture(scope="session")
def tiny_fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated Fashion-MNIST-shaped IDX folder: 300 train / 100 test images of 28x28, 10 balanced classes."""
    return make_idx_dir(tmp_path_factory.mktemp("tiny-fmnist"))


@pytest.fixture(scope="session")
def fmnist_root(tiny_fmnist_root: Path) -> Path:
    """The real Fashion-MNIST folder when installed (Debian's dataset-fashion-mnist), else the tiny generated one."""
    if all((DEBIAN_FMNIST / f"{name}.gz").is_file() for name in IDX_NAMES.values()):
        return DEBIAN_FMNIST
    return tiny_fmnist_root


@pytest.fixture(scope="session")
def real_fmnist_root() -> Path:
    """The real Fashion-MNIST folder; skips the test when it is not installed."""
    if not all((DEBIAN_FMNIST / f"{name}.gz").is_file() for name in IDX_NAMES.values()):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return DEBIAN_FMNIST


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty msresnet cache directory for this test (generated protocols go there, not to ~/.cache)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MSRESNET_CACHE", str(cache))
    return cache


def make_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 6,
                      size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Path:  # fmt: skip
    """An ImageFolder tree ``root/<class>/<i>.png`` of small valid images (class-dependent colour + noise)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
            a[..., ci % 3] += 150
            im = Image.fromarray(a)
            (im if mode == "RGB" else im.convert(mode)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A small valid ImageFolder tree: 3 classes x 6 RGB PNG images of 40x30."""
    return make_image_folder(tmp_path / "folder")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: the box's 2 cores are shared by several test runs, and more
    threads than cores stall each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
