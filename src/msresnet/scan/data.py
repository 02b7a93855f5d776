"""The labelled images a scan sweeps: a user's ImageFolder tree or a protocol's test split, as one uint8 tensor.

A folder is read with the project's robust reader (bad files are skipped and named), each image cut to a square of
``image_size`` pixels (shorter side, centre crop): that square is the native condition (object scale 1, resolution
1x) every sweep starts from. Without ``image_size`` it is the median shorter side of the folder's images. A folder
whose images are all grayscale is read as one channel, any colour image makes it RGB.

A protocol contributes its test images at its training condition (``fmnist-ls``: the objects at s = 1 in the 64 px
canvas, ``fmnist-res``: the native 28 px images), or all its test images where there is no single training
condition (``fmnist-scale``).
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from msresnet.errors import UserError

__all__ = ["ScanData", "load_folder", "load_protocol"]

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass
class ScanData:
    """Images (uint8 ``[N, C, S, S]``), labels and what the report says about where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str
    skipped: list[str] = field(default_factory=list)  # "file (reason)" of each bad file left out
    total_files: int = 0

    @property
    def in_chans(self) -> int:
        """Channels of the images (1 or 3)."""
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the native condition."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        """Number of classes (folders, or the protocol's classes)."""
        return len(self.class_names)

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std in [0, 1]."""
        from msresnet.data import ImageTensorDataset

        return ImageTensorDataset(self.images, self.labels).channel_stats()

    def limit(self, n: int | None) -> ScanData:
        """A class-stratified subset of ``n`` images (all of them for None or ``n >= len``)."""
        from msresnet.engine.batches import TensorSplit, limit_split

        if n is None or n >= len(self.labels):
            return self
        split = limit_split(TensorSplit(self.images, self.labels), n, "stratified")
        return ScanData(split.images, split.labels, self.class_names, self.source, self.skipped, self.total_files)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "source": self.source, "images": int(len(self.labels)), "classes": self.class_names,
            "in_chans": self.in_chans, "native_size": list(self.size), "skipped": list(self.skipped),
            "files": self.total_files,
        }  # fmt: skip


def _folder_mode(samples: list[tuple[str, int]]) -> str:
    """``"L"`` when every readable image is grayscale (header only, nothing decoded), else ``"RGB"``."""
    from PIL import Image

    for path, _ in samples:
        try:
            with Image.open(path) as im:
                if im.mode not in _GREY_MODES:
                    return "RGB"
        except Exception:  # noqa: BLE001 - an unreadable file is the decoder's to report, by name
            continue
    return "L"


def _median_side(samples: list[tuple[str, int]]) -> int:
    from PIL import Image

    sides = []
    for path, _ in samples:
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
        except Exception:  # noqa: BLE001 - reported when decoded
            continue
    if not sides:
        raise UserError("no readable images in the folder")
    return max(1, int(statistics.median(sides)))


def load_folder(root: str | Path, image_size: int | None = None, max_pixels: int | None = None) -> ScanData:
    """Read a labelled ``root/<class>/<image>`` tree (bad files skipped, each named in :attr:`ScanData.skipped`).

    Raises:
        UserError: missing folder, no class folders or images, nothing readable.
    """
    from msresnet.data.folder import BadImageWarning, load_folder_tensors, scan_image_folder
    from msresnet.data.images import DEFAULT_MAX_PIXELS, BadImageError, load_image

    samples, classes = scan_image_folder(root)
    mode = _folder_mode(samples)
    size = image_size or _median_side(samples)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BadImageWarning)
        ds = load_folder_tensors(samples, size, mode=mode, root=root, class_names=classes,
                                 max_pixels=max_pixels or DEFAULT_MAX_PIXELS)  # fmt: skip
    skipped: list[str] = []
    if any(issubclass(w.category, BadImageWarning) for w in caught) or len(ds) < len(samples):
        kept = len(ds)
        for path, _ in samples:  # name every bad file (the warning names the first five only)
            if len(skipped) == len(samples) - kept:
                break
            try:
                load_image(path, mode=mode, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
            except BadImageError as e:
                skipped.append(f"{Path(path).relative_to(root)} ({e.reason})")
    return ScanData(ds.images, ds.labels, list(classes), f"folder {root}", skipped, len(samples))


def load_protocol(name: str, data_dir: str | None = None, params: dict[str, Any] | None = None) -> ScanData:
    """A protocol's test images at its training condition (all test images when it has none)."""
    from msresnet.data import build_protocol

    proto = build_protocol(name, root=data_dir, **(params or {}))
    keys = list(proto.test_keys)
    train = proto.train_condition
    if train is not None and any(_same(k, train) for k in keys):
        key = next(k for k in keys if _same(k, train))
        ds = proto.test[key]
        what = f"protocol {name} test split at its training {proto.condition_name} {key}"
    else:
        parts = [proto.test[k] for k in keys]
        ds = type(parts[0])(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
        what = f"protocol {name} test split (all {len(keys)} conditions)"
    names = list(proto.class_names) or [str(i) for i in range(proto.num_classes)]
    return ScanData(ds.images, ds.labels, names, what, [], len(ds))


def _same(a: Any, b: Any) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-6
    except (TypeError, ValueError):
        return a == b
