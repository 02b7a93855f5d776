"""Dataset readers: IDX (good and malformed), lookup order and offline message, CIFAR batches, sklearn digits."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import IDX_NAMES, make_idx_dir, write_idx
from msresnet.data import (
    ImageTensorDataset,
    find_idx_files,
    load_cifar,
    load_digits_dataset,
    load_idx_dataset,
    read_idx,
)
from msresnet.errors import UserError


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", a, gz=gz)
    np.testing.assert_array_equal(read_idx(path), a)


def test_read_idx_big_endian_ints(tmp_path: Path) -> None:
    a = np.array([[1, -2], [70000, 3]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + np.array([2, 2], ">u4").tobytes() + a.tobytes())
    out = read_idx(path)
    assert out.dtype == np.int32 and out.dtype.byteorder in "=|<"
    np.testing.assert_array_equal(out, a.astype(np.int32))


def test_malformed_idx_files_name_the_file(tmp_path: Path) -> None:
    good = np.zeros((4, 3, 3), dtype=np.uint8)
    bad_magic = tmp_path / "magic.idx"
    bad_magic.write_bytes(b"\x08\x03\x00\x00" + bytes(20))
    truncated_gz = tmp_path / "trunc.gz"
    truncated_gz.write_bytes(gzip.compress(bytes(4) + bytes(100))[:-12])
    wrong_size = tmp_path / "size.idx"
    write_idx(wrong_size, good, gz=False)
    wrong_size.write_bytes(wrong_size.read_bytes()[:-5])
    empty = tmp_path / "empty.idx"
    empty.write_bytes(b"")
    for path, words in [(bad_magic, "magic"), (truncated_gz, "gzip"), (wrong_size, "wrong size"), (empty, "magic")]:
        with pytest.raises(UserError) as err:
            read_idx(path)
        assert str(path) in str(err.value) and words in str(err.value)


def test_tiny_idx_dataset(tiny_fmnist_root: Path) -> None:
    ds = load_idx_dataset("fashion-mnist", "train", root=tiny_fmnist_root)
    assert isinstance(ds, ImageTensorDataset) and len(ds) == 300
    assert ds.images.shape == (300, 1, 28, 28) and ds.images.dtype == torch.uint8
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1 and isinstance(y, int)
    assert ds.class_names[0] == "T-shirt/top"
    assert len(ds.subset(10)) == 10 and len(ds.subset([3, 4])) == 2


def test_label_count_mismatch(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "d", n_train=20, n_test=10)
    write_idx(root / IDX_NAMES["train-labels"], np.zeros(19, dtype=np.uint8))
    with pytest.raises(UserError, match="19 labels for 20 images"):
        load_idx_dataset("fashion-mnist", "train", root=root)


def test_real_fashion_mnist(real_fmnist_root: Path) -> None:
    test = load_idx_dataset("fashion-mnist", "test", root=real_fmnist_root)
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_lookup_order_and_offline_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir = make_idx_dir(tmp_path / "env" / "fashion-mnist", n_train=10, n_test=10)
    monkeypatch.setenv("MSRESNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MSRESNET_DATA", str(tmp_path / "env"))
    assert find_idx_files("fashion-mnist")["train-images"].parent == env_dir
    # Explicit root wins, and a root without the files is an error (no silent fallback to other data).
    with pytest.raises(UserError, match="not in the given data directory"):
        find_idx_files("fashion-mnist", root=tmp_path / "nowhere")
    # MNIST has no Debian location and nothing in env/cache here: offline -> one line naming URL and env var.
    monkeypatch.setenv("MSRESNET_DATA", str(tmp_path / "empty"))
    with pytest.raises(UserError) as err:
        find_idx_files("mnist")
    msg = str(err.value)
    assert "\n" not in msg and "MSRESNET_DATA" in msg and "https://" in msg and "MSRESNET_OFFLINE" in msg
    with pytest.raises(UserError, match="unknown IDX dataset"):
        find_idx_files("kmnist")


def test_offline_message_names_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from msresnet.data import idx

    info = idx.IDX_DATASETS["fashion-mnist"]
    msg = idx._missing_message(info, [tmp_path], "offline")
    assert "apt-get install dataset-fashion-mnist" in msg and info.url in msg and "MSRESNET_DATA" in msg


def _write_cifar(base: Path, n: int = 6) -> None:
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        batch["labels"] = [int(v) for v in batch["labels"]]
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))


def test_cifar_batches_and_restricted_unpickler(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py")
    train = load_cifar(tmp_path, 10, "train")
    assert train.images.shape == (30, 3, 32, 32) and train.class_names[3] == "c3"
    assert len(load_cifar(tmp_path / "cifar-10-batches-py", 10, "test")) == 6

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        load_cifar(tmp_path, 10, "test")
    with pytest.raises(UserError, match="not found"):
        load_cifar(tmp_path, 100, "train")


def test_digits() -> None:
    all_ = load_digits_dataset()
    assert all_.images.shape == (1797, 1, 8, 8) and int(all_.images.max()) == 255
    train, test = load_digits_dataset("train"), load_digits_dataset("test")
    assert len(train) + len(test) == 1797
    assert set(torch.unique(test.labels).tolist()) == set(range(10))


def test_download_verifies_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The download path, served from a local file:// mirror: files land in the cache and are checked by MD5."""
    from dataclasses import replace

    from msresnet.data import idx
    from msresnet.data._cache import file_md5

    mirror = make_idx_dir(tmp_path / "mirror", n_train=20, n_test=10)
    info = idx.IDX_DATASETS["mnist"]
    files = {part: (name, file_md5(mirror / name)) for part, (name, _) in info.files.items()}
    fake = replace(info, url=mirror.as_uri() + "/", files=files)
    monkeypatch.setitem(idx.IDX_DATASETS, "mnist", fake)
    monkeypatch.setenv("MSRESNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MSRESNET_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("MSRESNET_OFFLINE", "0")
    got = find_idx_files("mnist")
    assert got["train-images"] == tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz"
    assert len(load_idx_dataset("mnist", "test")) == 10
    bad = replace(fake, files={**files, "test-labels": (files["test-labels"][0], "0" * 32)})
    monkeypatch.setitem(idx.IDX_DATASETS, "mnist", bad)
    monkeypatch.setenv("MSRESNET_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(UserError, match="expected 0000"):
        find_idx_files("mnist")
    assert not (tmp_path / "cache2" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
