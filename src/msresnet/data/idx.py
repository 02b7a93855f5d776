"""Fashion-MNIST and MNIST from their original IDX files (gzipped or not).

Files are looked for, in this order, in an explicit ``root``, under ``$MSRESNET_DATA``, in the user cache
(``~/.cache/msresnet/<dataset>``) and in Debian's ``dataset-fashion-mnist`` location
(``/usr/share/datasets/fashion-mnist``). When none has them they are downloaded from the dataset's official location
into the cache and checked against the published MD5; ``MSRESNET_OFFLINE=1`` forbids the download (the test-suite sets
it). An explicit ``root`` that lacks the files is an error rather than a silent fallback to other data.
"""

from __future__ import annotations

import gzip
import os
import shutil
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from msresnet.data._cache import atomic_write_bytes, cache_dir, file_md5
from msresnet.data.datasets import ImageTensorDataset
from msresnet.errors import UserError

__all__ = ["IDX_DATASETS", "find_idx_files", "load_idx_dataset", "read_idx"]

# IDX type codes -> numpy big-endian dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # fmt: skip


@dataclass(frozen=True)
class IdxDatasetInfo:
    """Where a dataset lives and how to recognise its files."""

    name: str
    url: str
    files: dict[str, tuple[str, str]]  # part -> (official file name, MD5 of the official .gz)
    class_names: tuple[str, ...]
    debian_dir: str | None = None
    debian_package: str | None = None


IDX_DATASETS: dict[str, IdxDatasetInfo] = {
    "fashion-mnist": IdxDatasetInfo(
        name="fashion-mnist",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files={
            "train-images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train-labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            "test-images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            "test-labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83fd310"),
        },
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),  # fmt: skip
        debian_dir="/usr/share/datasets/fashion-mnist",
        debian_package="dataset-fashion-mnist",
    ),
    "mnist": IdxDatasetInfo(
        name="mnist",
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files={
            "train-images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train-labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            "test-images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            "test-labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        },
        class_names=tuple(str(d) for d in range(10)),
    ),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or raw) into a native-endian numpy array.

    Raises:
        UserError: naming the file, when it is not gzip/IDX, is truncated, or its size disagrees with its header.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path}: truncated or corrupt gzip file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise UserError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[data[2]]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise UserError(f"{path}: wrong size: header says shape {shape} ({expected} bytes), "
                        f"file has {len(data) - header} bytes of data")  # fmt: skip
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # A writable native-endian copy: torch refuses to share read-only buffers without a warning.
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _candidate_dirs(info: IdxDatasetInfo) -> list[Path]:
    dirs = []
    if os.environ.get("MSRESNET_DATA"):
        base = Path(os.environ["MSRESNET_DATA"]).expanduser()
        dirs += [base / info.name, base]
    dirs.append(cache_dir() / info.name)
    if info.debian_dir:
        dirs.append(Path(info.debian_dir))
    return dirs


def _find_in(directory: Path, info: IdxDatasetInfo) -> dict[str, Path] | None:
    """The four files in ``directory`` (or its torchvision-style ``<Name>/raw`` subfolder), gzipped or not."""
    for d in (directory, directory / "raw", directory / "FashionMNIST" / "raw", directory / "MNIST" / "raw"):
        found = {}
        for part, (fname, _) in info.files.items():
            for cand in (d / fname, d / fname.removesuffix(".gz"), d / fname.replace("-idx", ".idx")):
                if cand.is_file():
                    found[part] = cand
                    break
        if len(found) == len(info.files):
            return found
    return None


def _missing_message(info: IdxDatasetInfo, looked: list[Path], why: str) -> str:
    names = ", ".join(f for f, _ in info.files.values())
    how = f"apt-get install {info.debian_package}, or " if info.debian_package else ""
    return (f"{info.name} not found ({why}; looked in {', '.join(map(str, looked))}): {how}download {names} from "
            f"{info.url} into {cache_dir() / info.name}, or set MSRESNET_DATA to a folder holding them")  # fmt: skip


def _download(info: IdxDatasetInfo, dest: Path, looked: list[Path]) -> dict[str, Path]:
    if os.environ.get("MSRESNET_OFFLINE", "").strip() not in ("", "0"):
        raise UserError(_missing_message(info, looked, "downloads disabled by MSRESNET_OFFLINE"))
    out = {}
    for part, (fname, md5) in info.files.items():
        target = dest / fname
        if not (target.is_file() and file_md5(target) == md5):
            try:
                with urllib.request.urlopen(info.url + fname, timeout=30) as resp:
                    atomic_write_bytes(target, lambda f, r=resp: shutil.copyfileobj(r, f))
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                raise UserError(_missing_message(info, looked, f"download failed: {e}")) from None
            got = file_md5(target)
            if got != md5:
                target.unlink(missing_ok=True)
                raise UserError(f"{info.url + fname}: downloaded file has MD5 {got}, expected {md5}")
        out[part] = target
    return out


def find_idx_files(dataset: str = "fashion-mnist", root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Locate (or download) a dataset's four IDX files; returns ``{"train-images": path, ...}``.

    Args:
        dataset: ``"fashion-mnist"`` or ``"mnist"``.
        root: a folder that must hold the files; skips the search order when given.
    """
    if dataset not in IDX_DATASETS:
        raise UserError(f"unknown IDX dataset {dataset!r}; choose from {sorted(IDX_DATASETS)}")
    info = IDX_DATASETS[dataset]
    if root is not None:
        root = Path(root).expanduser()
        found = _find_in(root, info)
        if found is None:
            raise UserError(_missing_message(info, [root], "not in the given data directory"))
        return found
    looked = _candidate_dirs(info)
    for d in looked:
        if (found := _find_in(d, info)) is not None:
            return found
    return _download(info, cache_dir() / info.name, looked)


def load_idx_arrays(
    dataset: str = "fashion-mnist", root: str | os.PathLike | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both splits as numpy arrays: ``{"train": (images [N,28,28] uint8, labels [N] int64), "test": ...}``."""
    files = find_idx_files(dataset, root)
    out = {}
    for split in ("train", "test"):
        images, labels = read_idx(files[f"{split}-images"]), read_idx(files[f"{split}-labels"])
        if images.ndim != 3 or images.dtype != np.uint8:
            raise UserError(f"{files[f'{split}-images']}: expected uint8 images [N, H, W], got {images.dtype} "
                            f"{images.shape}")  # fmt: skip
        if labels.ndim != 1:
            raise UserError(f"{files[f'{split}-labels']}: expected a 1-d label vector, got shape {labels.shape}")
        if len(images) != len(labels):
            raise UserError(f"{files[f'{split}-labels']}: {len(labels)} labels for {len(images)} images in "
                            f"{files[f'{split}-images']}")  # fmt: skip
        n_classes = len(IDX_DATASETS[dataset].class_names)
        if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            raise UserError(f"{files[f'{split}-labels']}: labels outside 0..{n_classes - 1}")
        out[split] = (images, labels.astype(np.int64))
    return out


def load_idx_dataset(
    dataset: str = "fashion-mnist", split: str = "train", root: str | os.PathLike | None = None
) -> ImageTensorDataset:
    """Fashion-MNIST or MNIST ``split`` (``"train"`` or ``"test"``) as an :class:`ImageTensorDataset` [N,1,28,28]."""
    if split not in ("train", "test"):
        raise UserError(f"split must be 'train' or 'test', not {split!r}")
    images, labels = load_idx_arrays(dataset, root)[split]
    return ImageTensorDataset(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels),
        class_names=list(IDX_DATASETS[dataset].class_names),
    )
