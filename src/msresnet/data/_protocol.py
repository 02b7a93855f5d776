"""The built protocol object every protocol builder returns, where a protocol's generated arrays are cached, and the
helpers every builder shares.

Kept apart from :mod:`msresnet.data.protocols` (the registry and the fmnist builders) so that builders in other
modules (:mod:`msresnet.data.imagefolder`, :mod:`msresnet.data.folder_protocols`) use it without importing the
registry that imports them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from msresnet.data._cache import cache_dir, stable_hash
from msresnet.data._store import LazyConditionMap, PartStore
from msresnet.data.datasets import ImageTensorDataset

__all__ = ["PROTOCOL_VERSION", "Protocol", "map_u8", "scale_key", "store_dir"]

PROTOCOL_VERSION = 1


@dataclass
class Protocol:
    """A named, parameterised benchmark: train / val / test datasets and the facts that identify them.

    ``train``, ``val`` and each test condition are generated on first access and cached on disk. Attributes follow
    the shared interface: ``name``, ``params`` (fully resolved, JSON-able), ``checksum``, ``train``, ``val``, ``test``
    (ordered ``condition -> dataset``), ``train_condition``, ``condition_name`` (``"scale"`` or ``"size"``),
    ``num_classes``, ``in_chans``, ``class_names``, ``mean``, ``std``, ``input_size``.
    """

    name: str
    params: dict[str, Any]
    condition_name: str
    train_condition: float | int | None
    num_classes: int
    in_chans: int
    class_names: list[str]
    input_size: tuple[int, int]
    store: PartStore = field(repr=False)
    test_keys: list[Any] = field(repr=False)
    test_loader: Callable[[Any], ImageTensorDataset] = field(repr=False)
    root: str | None = None
    has_val: bool = True
    #: the validation images under each test condition, where the protocol makes them itself (scenes: a fresh
    #: background per image); ``None``: :class:`~msresnet.engine.evaluate.ValidationSweep` derives them from ``val``
    val_loader: Callable[[Any], ImageTensorDataset] | None = field(default=None, repr=False)
    _test: LazyConditionMap | None = field(default=None, init=False, repr=False)

    @property
    def cache_path(self) -> Path:
        """Folder holding this protocol's generated arrays."""
        return self.store.directory

    @property
    def train(self) -> ImageTensorDataset:
        """Training images (uint8 ``[N, C, H, W]``)."""
        return self.store.get("train")

    @property
    def val(self) -> ImageTensorDataset | None:
        """Held-out validation images from the training distribution (choose models on these, never on test)."""
        return self.store.get("val") if self.has_val else None

    @property
    def test(self) -> LazyConditionMap:
        """Ordered ``condition -> dataset``; each condition is generated (or loaded) on first access."""
        if self._test is None:
            self._test = LazyConditionMap(self.test_keys, self.test_loader)
        return self._test

    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        meta = self.store.read_meta()
        if "mean" not in meta or meta.get("train_checksum") != self.store.checksum("train"):
            mean, std = self.train.channel_stats()
            self.store.write_meta(mean=mean, std=std, train_checksum=self.store.checksum("train"))
            return mean, std
        return tuple(meta["mean"]), tuple(meta["std"])

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the training images in [0, 1]."""
        return self._stats()[0]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation of the training images in [0, 1]."""
        return self._stats()[1]

    @property
    def part_checksums(self) -> dict[str, str]:
        """SHA-256 of every generated part (generates the parts not yet cached)."""
        return {part: self.store.checksum(part) for part in self.store.generators}

    @property
    def checksum(self) -> str:
        """One SHA-256 over the protocol name, version and every part's checksum: equal checksums = equal data."""
        h = hashlib.sha256(f"{self.name}|v{PROTOCOL_VERSION}".encode())
        for part, digest in self.part_checksums.items():
            h.update(f"|{part}:{digest}".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (no data is generated)."""
        return {
            "name": self.name, "params": self.params, "condition_name": self.condition_name,
            "conditions": list(self.test_keys), "train_condition": self.train_condition,
            "num_classes": self.num_classes, "in_chans": self.in_chans, "input_size": list(self.input_size),
            "cache_path": str(self.cache_path),
        }  # fmt: skip


def store_dir(name: str, params: dict[str, Any], source: str) -> Path:
    """The cache directory of one protocol build: keyed by its resolved parameters, source and version."""
    key = stable_hash({"params": params, "source": source, "version": PROTOCOL_VERSION})
    return cache_dir() / "protocols" / f"{name}-{key}-v{PROTOCOL_VERSION}"


_CHUNK = 4096  # images per interpolation call: bounds peak memory, keeps each call large enough to be efficient


def map_u8(images: torch.Tensor, fn: Callable[[torch.Tensor, slice], torch.Tensor]) -> torch.Tensor:
    """Apply a float op to uint8 images chunk by chunk: ``fn(float chunk in [0,1], slice) -> float chunk``."""
    out = []
    for start in range(0, len(images), _CHUNK):
        sl = slice(start, start + _CHUNK)
        y = fn(images[sl].float().div_(255), sl)
        out.append(y.mul_(255).round_().clamp_(0, 255).to(torch.uint8))
    if not out:
        return images
    return torch.cat(out)


def scale_key(s: float) -> float:
    """A test condition's key: the scale rounded to 4 decimals (0.5946), stable across float noise."""
    return round(float(s), 4)
