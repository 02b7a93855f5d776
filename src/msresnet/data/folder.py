"""Robust ``ImageFolder`` datasets: ``root/<class>/<image>`` trees where some files may be bad.

The file listing has torchvision's classes, order and extensions (``torchvision.datasets.ImageFolder``), walked by
:mod:`msresnet.data.walk` (directory symlinks never followed out of the tree or around a loop); images are read with
:func:`msresnet.data.images.load_image`. Files that are empty, not images, truncated or over the pixel limit are
skipped with one warning giving the count and the first few names with their reasons, or raise in ``strict`` mode.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from msresnet.data.datasets import ImageTensorDataset
from msresnet.data.images import DEFAULT_MAX_PIXELS, BadImageError, bomb_warnings_as_errors, load_image
from msresnet.data.walk import class_folders
from msresnet.errors import UserError

__all__ = ["BadImageWarning", "RobustImageFolder", "folder_fingerprint", "load_folder_tensors", "scan_image_folder"]

EXTENSIONS = tuple(sorted({*IMG_EXTENSIONS, ".gif", ".tif"}))


class BadImageWarning(UserWarning):
    """Some images of a folder were skipped."""


def scan_image_folder(root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """``([(path, class index)], class names)`` of an ImageFolder tree, in torchvision's order.

    Raises:
        UserError: the folder is missing or holds no class folder with image files.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist")
    classes, files = class_folders(root, keep=_is_image_name)
    if not classes:
        raise UserError(f"{root} has no class sub-folders (expected {root}/<class>/<image files>)")
    samples = [(str(f), i) for i, name in enumerate(classes) for f in files[name]]
    if not samples:
        raise UserError(f"{root} has no image files (extensions {', '.join(EXTENSIONS)}) in its class folders")
    return samples, classes


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def folder_fingerprint(samples: Sequence[tuple[str, int]]) -> str:
    """A hash of the file list with each file's size and modification time: changes when the folder changes.

    A file that cannot be stat'ed (a dangling symlink, a file removed meanwhile) enters as unreadable; the reader
    then skips and reports it like any other bad file.
    """
    h = hashlib.sha256()
    for path, target in samples:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError as e:
            stamp = f"unreadable:{e.errno}"
        h.update(f"{path}\0{target}\0{stamp}\n".encode())
    return h.hexdigest()[:16]


def _report_bad(bad: list[BadImageError], root: str | os.PathLike, total: int) -> None:
    if not bad:
        return
    first = "; ".join(f"{Path(e.path).name} ({e.reason})" for e in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    warnings.warn(f"skipped {len(bad)} of {total} images in {root}: {first}{more}", BadImageWarning, stacklevel=3)


def _fit(im: Image.Image, size: int | None) -> np.ndarray:
    if size is not None:
        # Shorter side to `size`, centre crop: the usual ImageNet-style eval geometry, aspect ratio preserved.
        im = ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def load_folder_tensors(
    samples: Sequence[tuple[str, int]],
    size: int | None,
    *,
    mode: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    strict: bool = False,
    root: str | os.PathLike = "",
    class_names: Sequence[str] | None = None,
    num_threads: int | None = None,
) -> ImageTensorDataset:
    """Decode images into one uint8 tensor ``[N, C, size, size]`` (shorter side to ``size``, centre crop; ``None``:
    every image at its own size, which must then be the same for all).

    Decoding runs in a small thread pool (PIL releases the GIL while decoding); bad files are skipped with a
    :class:`BadImageWarning`, or raise :class:`BadImageError` when ``strict``.
    """

    def one(item: tuple[str, int]) -> np.ndarray | BadImageError:
        try:
            return _fit(load_image(item[0], max_pixels=max_pixels, mode=mode), size)
        except BadImageError as e:
            return e

    threads = num_threads or min(4, os.cpu_count() or 1)
    with bomb_warnings_as_errors(), ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(one, samples, chunksize=16))
    bad = [r for r in results if isinstance(r, BadImageError)]
    if bad and strict:
        raise bad[0]
    _report_bad(bad, root, len(samples))
    keep = [(r, t) for r, (_, t) in zip(results, samples, strict=True) if not isinstance(r, BadImageError)]
    if not keep:
        raise UserError(f"no readable images in {root or 'the given files'}")
    images = torch.from_numpy(np.stack([r for r, _ in keep]))
    labels = torch.tensor([t for _, t in keep], dtype=torch.int64)
    return ImageTensorDataset(images, labels, class_names)


class RobustImageFolder(ImageFolder):
    """``torchvision.datasets.ImageFolder`` that reads with :func:`load_image` and drops bad files up front.

    Args:
        root: ``root/<class>/<image>`` tree.
        transform: applied to the PIL image, as in torchvision.
        target_transform: applied to the label.
        mode: ``"RGB"`` or ``"L"``.
        max_pixels: pixel limit per image.
        strict: raise on the first bad file instead of skipping.
        check: decode every file at construction to find bad ones (costs one full pass); without it a bad file
            raises :class:`BadImageError` when it is read.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        *,
        mode: str = "RGB",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        strict: bool = False,
        check: bool = True,
    ) -> None:
        self._listing = scan_image_folder(root)  # friendly errors for a missing or empty tree; walked once

        def loader(path: str) -> Image.Image:
            return load_image(path, max_pixels=max_pixels, mode=mode)

        super().__init__(
            str(root),
            transform=transform,
            target_transform=target_transform,
            loader=loader,
            is_valid_file=lambda p: p.lower().endswith(EXTENSIONS),
            allow_empty=True,
        )
        if check:
            bad, good = [], []
            with bomb_warnings_as_errors():
                for path, target in self.samples:
                    try:
                        loader(path)
                        good.append((path, target))
                    except BadImageError as e:
                        if strict:
                            raise
                        bad.append(e)
            _report_bad(bad, root, len(self.samples))
            self.samples = self.imgs = good
            self.targets = [t for _, t in good]

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        """The class folders, listed by :mod:`msresnet.data.walk` (no symlink loops, nothing outside the tree)."""
        classes = self._listing[1]
        return list(classes), {c: i for i, c in enumerate(classes)}

    def make_dataset(
        self, directory: str | os.PathLike, class_to_idx: dict[str, int], *args: Any, **kwargs: Any
    ) -> list[tuple[str, int]]:
        """``(path, class index)`` of every image file, listed by :mod:`msresnet.data.walk`."""
        return list(self._listing[0])
