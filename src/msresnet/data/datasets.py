"""In-memory image datasets: the uint8 tensor dataset every protocol returns, CIFAR batches and sklearn digits.

Everything is held as one uint8 tensor ``[N, C, H, W]`` so training batches are a single index + ``float().div_(255)``
with no per-image Python work; that keeps 2 CPU cores busy with the model rather than with data loading.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from msresnet.errors import UserError

__all__ = ["ImageTensorDataset", "load_cifar", "load_digits_dataset", "stratified_split"]


class ImageTensorDataset(Dataset):
    """Images as a uint8 tensor ``[N, C, H, W]`` with int64 labels ``[N]``.

    ``dataset[i]`` gives ``(float32 image [C, H, W] in [0, 1], int label)`` for torchvision-style use; fast paths
    index :attr:`images` / :attr:`labels` directly (see :meth:`batches`).

    Args:
        images: uint8 tensor ``[N, C, H, W]``.
        labels: integer tensor ``[N]``.
        class_names: optional names, index = label.
        extras: optional per-image tensors carried through :meth:`subset` (e.g. the object scale of each image).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        class_names: Sequence[str] | None = None,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be [N={len(images)}], got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.class_names = list(class_names) if class_names is not None else None
        self.extras = dict(extras or {})

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255), int(self.labels[index])

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return f"ImageTensorDataset(n={len(self)}, chans={c}, size={h}x{w})"

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def subset(self, indices_or_limit: int | Sequence[int] | torch.Tensor | None) -> ImageTensorDataset:
        """A view on some images: an int keeps the first ``n`` (cheap, no copy), a sequence/tensor picks indices.

        ``None`` or a limit at or above the length returns ``self``.
        """
        if indices_or_limit is None:
            return self
        if isinstance(indices_or_limit, int):
            if indices_or_limit < 0:
                raise UserError(f"limit must be >= 0, got {indices_or_limit}")
            if indices_or_limit >= len(self):
                return self
            idx: slice | torch.Tensor = slice(0, indices_or_limit)
        else:
            idx = torch.as_tensor(indices_or_limit, dtype=torch.int64)
        return ImageTensorDataset(
            self.images[idx], self.labels[idx], self.class_names, {k: v[idx] for k, v in self.extras.items()}
        )

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(float images [B, C, H, W] in [0, 1], labels [B])`` straight from the tensors.

        The uint8 batch is moved to ``device`` before the float conversion: 4x less to copy to an accelerator.
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                x, y = self.images[start : start + batch_size], self.labels[start : start + batch_size]
            else:
                sel = order[start : start + batch_size]
                x, y = self.images[sel], self.labels[sel]
            yield x.to(device, non_blocking=True).float().div_(255), y.to(device, non_blocking=True)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the images in [0, 1] (computed in chunks to bound memory)."""
        c = self.images.shape[1]
        total = torch.zeros(c, dtype=torch.float64)
        total_sq = torch.zeros(c, dtype=torch.float64)
        count = 0
        for start in range(0, len(self), 8192):
            x = self.images[start : start + 8192].to(torch.float64).div_(255)
            total += x.sum(dim=(0, 2, 3))
            total_sq += x.square().sum(dim=(0, 2, 3))
            count += x.numel() // c
        if count == 0:
            return (0.0,) * c, (1.0,) * c
        mean = total / count
        std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
        return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def stratified_split(
    labels: torch.Tensor | np.ndarray, sizes: Sequence[int], generator: torch.Generator
) -> list[torch.Tensor]:
    """Split indices into parts of the given sizes, each with (as nearly as possible) the pool's class proportions.

    Parts are filled in order; each takes from every class its share of what is left (largest-remainder rounding, so
    the parts have exactly the requested sizes). Indices come from a per-class random permutation drawn from
    ``generator``, and each part is shuffled.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if sum(sizes) > len(labels):
        raise UserError(f"split sizes {list(sizes)} need {sum(sizes)} images, the pool has {len(labels)}")
    classes, counts = torch.unique(labels, return_counts=True)
    remaining = counts.clone()
    quotas = []
    for size in sizes:
        # Proportional to what is left of each class, so later parts can always be filled exactly.
        ideal = remaining.double() * size / max(int(remaining.sum()), 1)
        q = ideal.floor().long()
        # Hand the leftover images to the classes with the largest remainders (ties broken by class order); a class
        # with a fractional share always has an image left, so this never over-draws.
        left = size - int(q.sum())
        if left:
            order = torch.argsort(-(ideal - q.double()), stable=True)[:left]
            q[order] += 1
        remaining -= q
        quotas.append(q)
    quota = torch.stack(quotas)  # [parts, classes]
    parts: list[list[torch.Tensor]] = [[] for _ in sizes]
    for ci, cls in enumerate(classes.tolist()):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        start = 0
        for p in range(len(sizes)):
            q = int(quota[p, ci])
            parts[p].append(idx[start : start + q])
            start += q
    out = []
    for p in parts:
        cat = torch.cat(p) if p else torch.empty(0, dtype=torch.int64)
        out.append(cat[torch.randperm(len(cat), generator=generator)])
    return out


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles builtin containers and numpy arrays only: CIFAR's official batches are pickles, and a pickle can
    run arbitrary code, so every other global is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise UserError(f"{path}: not a CIFAR python batch ({e})") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a CIFAR python batch (holds a {type(obj).__name__})")
    return obj


def load_cifar(
    root: str | os.PathLike, variant: int = 10, split: str = "train", label_mode: str = "fine"
) -> ImageTensorDataset:
    """CIFAR-10 or CIFAR-100 from the official "python version" batch files.

    Args:
        root: the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or its parent.
        variant: 10 or 100.
        split: ``"train"`` or ``"test"``.
        label_mode: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
    """
    if variant not in (10, 100) or split not in ("train", "test") or label_mode not in ("fine", "coarse"):
        raise UserError(f"bad CIFAR options variant={variant} split={split!r} label_mode={label_mode!r}")
    root = Path(root).expanduser()
    sub = "cifar-10-batches-py" if variant == 10 else "cifar-100-python"
    base = root / sub if (root / sub).is_dir() else root
    if variant == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        files = [split]
        meta_file, label_key, names_key = "meta", f"{label_mode}_labels", f"{label_mode}_label_names"
    missing = [f for f in [*files, meta_file] if not (base / f).is_file()]
    if missing:
        raise UserError(f"CIFAR-{variant} files {missing} not found in {base} (extract the official python "
                        "version from https://www.cs.toronto.edu/~kriz/cifar.html there)")  # fmt: skip
    images, labels = [], []
    for f in files:
        batch = _load_pickle(base / f)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(batch[label_key], dtype=np.int64)
        except (KeyError, ValueError) as e:
            raise UserError(f"{base / f}: malformed CIFAR batch ({e})") from None
        if len(lab) != len(data):
            raise UserError(f"{base / f}: {len(lab)} labels for {len(data)} images")
        images.append(data)
        labels.append(lab)
    names = [str(n) for n in _load_pickle(base / meta_file).get(names_key, [])]
    return ImageTensorDataset(
        torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), names or None
    )


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels [1797, 64], labels) from scikit-learn's bundled CSV, read directly: importing ``sklearn.datasets``
    pulls in scipy and costs seconds, the file itself milliseconds."""
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is not None and csv.is_file():
        data = np.loadtxt(csv, delimiter=",")
        return data[:, :-1], data[:, -1]
    from sklearn.datasets import load_digits  # layout changed: use the public API

    d = load_digits()
    return d.data, d.target


def load_digits_dataset(split: str = "all", test_fraction: float = 0.25, seed: int = 0) -> ImageTensorDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download): the tiny dataset for smoke runs.

    Args:
        split: ``"all"``, ``"train"`` or ``"test"`` (stratified, by ``test_fraction`` and ``seed``).
    """
    pixels, target = _digits_arrays()
    # The bundled values are 0..16 intensity counts; stretch them to the usual 0..255 range.
    images = torch.from_numpy(np.round(pixels.reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8))
    labels = torch.from_numpy(target.astype(np.int64))
    ds = ImageTensorDataset(images, labels, [str(i) for i in range(10)])
    if split == "all":
        return ds
    if split not in ("train", "test"):
        raise UserError(f"split must be 'all', 'train' or 'test', not {split!r}")
    n_test = round(len(ds) * test_fraction)
    test_idx, train_idx = stratified_split(labels, [n_test, len(ds) - n_test], torch.Generator().manual_seed(seed))
    return ds.subset(train_idx if split == "train" else test_idx)
