"""Streaming image folders: decode each image when its batch comes, in DataLoader worker processes.

A folder of real photos does not fit in memory decoded (100k images at 256 px are ~20 GB), so the ``folder``
protocol trains from its file list: a ``torch.utils.data.DataLoader`` whose workers read each file with
:func:`~msresnet.data.images.load_image` (the same reader as the in-memory path and ``predict``) and apply
``torchvision.transforms.v2``. Memory holds the file list and the batches in flight, whatever the folder's size.

Exact resume: the batch order of an epoch is :func:`~msresnet.engine.batches.epoch_permutation` of ``(seed, epoch)``
(the in-memory path's), and every image's augmentation draws from torch's generator seeded by ``(seed, epoch,
position in the epoch)`` inside whichever worker decodes it, so a resumed epoch (the sampler starts at the saved
batch) gets the same images with the same augmentation, whatever the number of workers. The sampler's state
(:meth:`EpochBatchSampler.state_dict`) is part of the training checkpoint.

A file that turns out unreadable is dropped from its batch and counted (:class:`~msresnet.data.folder.BadImageWarning`
at the end of the epoch); the other images of the batch train as usual.

Augmentations by name (:data:`AUGMENTATIONS`), each torchvision's own: ``rrc`` (``RandomResizedCrop``: a random
scale and aspect ratio, i.e. itself a scale augmentation), ``flip`` (``RandomHorizontalFlip``), ``trivialaugment``
(``TrivialAugmentWide``) or ``randaugment`` (``RandAugment``) per image in the workers, and ``mixup`` / ``cutmix``
(``MixUp`` / ``CutMix``, one of the two per batch when both are named) on whole batches in the training process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from msresnet.data.images import DEFAULT_MAX_PIXELS, BadImageError, install_bomb_filter, load_image
from msresnet.errors import UserError

__all__ = [
    "AUGMENTATIONS",
    "BATCH_AUGMENTATIONS",
    "EpochBatchSampler",
    "FileDataset",
    "StreamBatch",
    "batch_augmentation",
    "eval_transform",
    "make_loader",
    "parse_augment",
    "sample_seed",
    "train_transform",
]

IMAGE_AUGMENTATIONS = ("rrc", "flip", "trivialaugment", "randaugment")
BATCH_AUGMENTATIONS = ("mixup", "cutmix")
AUGMENTATIONS = IMAGE_AUGMENTATIONS + BATCH_AUGMENTATIONS
_ALIASES = {"random-resized-crop": "rrc", "hflip": "flip", "trivial": "trivialaugment", "ta": "trivialaugment"}

Files = Sequence[tuple[str, int]]


def parse_augment(text: str | None) -> tuple[str, ...]:
    """``"rrc,flip,mixup"`` -> the names, checked (aliases: ``random-resized-crop``, ``hflip``, ``trivial``).

    Raises:
        UserError: an unknown name, or both ``trivialaugment`` and ``randaugment``.
    """
    if not text or text.strip().lower() == "none":
        return ()
    names = tuple(_ALIASES.get(n.strip().lower(), n.strip().lower()) for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise UserError(f"unknown augmentation {unknown[0]!r}; choose from {', '.join(AUGMENTATIONS)}")
    if "trivialaugment" in names and "randaugment" in names:
        raise UserError("choose one of trivialaugment and randaugment")
    return names


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Seed of the augmentation of the image at ``position`` of epoch ``epoch`` (fits in 63 bits)."""
    return (seed * 1_000_003 + epoch * 7_919_773 + position * 104_729 + 54_321) % (2**63 - 1)


def _geometry(size: int | None) -> list[Any]:
    # shorter side to `size`, centre crop: the in-memory path's ImageOps.fit and the checkpoint's preprocessing
    return [] if size is None else [v2.Resize(size, antialias=True), v2.CenterCrop(size)]


def eval_transform(size: int | None) -> Callable[[Any], torch.Tensor]:
    """PIL image -> uint8 ``[C, size, size]`` (shorter side to ``size``, centre crop; None: as it is).

    The geometry runs on the PIL image (Pillow's antialiased resize, as the in-memory path's ``ImageOps.fit``; also
    faster than resizing a tensor), the conversion to a tensor comes last.
    """
    return v2.Compose([*_geometry(size), v2.ToImage()])


def train_transform(size: int | None, native: tuple[int, int] | None, augment: Sequence[str] = ()) -> Callable:
    """The per-image training transform: the eval geometry, or ``rrc``'s random crop to the same output size,
    then the named flips and policies (uint8 in, uint8 out).

    Args:
        size: the side images are fitted to (None: their own size, ``native`` ``(H, W)``).
        native: the images' shared ``(H, W)`` when ``size`` is None.
        augment: names from :data:`IMAGE_AUGMENTATIONS` (others are ignored here).
    """
    steps: list[Any] = []  # on the PIL image (see eval_transform), the tensor last
    if "rrc" in augment:
        steps.append(v2.RandomResizedCrop(size or tuple(native or (32, 32)), antialias=True))
    else:
        steps += _geometry(size)
    if "flip" in augment:
        steps.append(v2.RandomHorizontalFlip())
    if "trivialaugment" in augment:
        steps.append(v2.TrivialAugmentWide())
    if "randaugment" in augment:
        steps.append(v2.RandAugment())
    return v2.Compose([*steps, v2.ToImage()])


def batch_augmentation(augment: Sequence[str], num_classes: int) -> Callable | None:
    """MixUp and/or CutMix on a batch of float images with integer labels (labels come out as class
    probabilities); None when neither is named."""
    chosen = [
        v2.MixUp(num_classes=num_classes) if n == "mixup" else v2.CutMix(num_classes=num_classes)
        for n in augment
        if n in BATCH_AUGMENTATIONS
    ]
    if not chosen:
        return None
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)


class FileDataset(Dataset):
    """Images read from files when asked for: ``dataset[(index, seed)]`` -> ``(uint8 [C, H, W], label)``, or None
    for an unreadable file; with a seed, torch's generator is seeded first, so the transform's randomness depends
    on the seed alone (not on which worker decodes it).

    Args:
        files: ``(path, class index)`` pairs.
        mode: ``"L"`` or ``"RGB"``.
        transform: PIL image -> uint8 tensor.
        max_pixels: pixel limit per image.
    """

    def __init__(self, files: Files, mode: str, transform: Callable, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.files, self.mode, self.transform, self.max_pixels = list(files), mode, transform, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int] | tuple[None, str]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.files[index]
        try:
            im = load_image(path, max_pixels=self.max_pixels, mode=self.mode)
        except BadImageError as e:
            return None, f"{path} ({e.reason})"
        if seed is not None:  # the CPU generator alone (transforms v2 draw from it); torch.manual_seed costs more
            torch.random.default_generator.manual_seed(seed)
        return self.transform(im), label


@dataclass
class StreamBatch:
    """A collated batch: uint8 images ``[B, C, H, W]``, labels ``[B]``, and the files dropped as unreadable."""

    images: torch.Tensor
    labels: torch.Tensor
    bad: list[str]

    def pin_memory(self) -> StreamBatch:
        return StreamBatch(self.images.pin_memory(), self.labels.pin_memory(), self.bad)


def collate(items: list[tuple[Any, Any]]) -> StreamBatch:
    """Stack the readable images of a batch; list the unreadable ones."""
    good = [(x, y) for x, y in items if x is not None]
    bad = [y for x, y in items if x is None]
    if not good:
        return StreamBatch(torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad)
    images = torch.stack([x.as_subclass(torch.Tensor) for x, _ in good])
    return StreamBatch(images, torch.tensor([y for _, y in good], dtype=torch.long), bad)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, augmentation seed)`` of one epoch, from a given batch on (see the module docstring).

    :meth:`set_epoch` chooses the epoch's order and first batch before each pass; the DataLoader's workers only see
    the indices it yields, so one loader with persistent workers serves every epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.order = torch.arange(n)
        self.epoch = self.start = 0

    def set_epoch(self, order: torch.Tensor, epoch: int, start: int = 0) -> None:
        """Serve ``order`` (this rank's indices of epoch ``epoch``) from batch ``start`` on."""
        self.order, self.epoch, self.start = order, epoch, start

    def __len__(self) -> int:
        return max(0, -(-self.order.numel() // self.batch_size) - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order.tolist()
        for b in range(self.start * self.batch_size, len(order), self.batch_size):
            yield [
                (order[p], sample_seed(self.seed, self.epoch, p))
                for p in range(b, min(b + self.batch_size, len(order)))
            ]

    def state_dict(self, batch_in_epoch: int) -> dict[str, Any]:
        """What a checkpoint records: where the epoch stands and what the order derives from."""
        return {"epoch": self.epoch, "batch_in_epoch": batch_in_epoch, "n": self.n, "batch_size": self.batch_size,
                "seed": self.seed, "order": "epoch_permutation(n, seed, epoch)"}  # fmt: skip

    def check_state(self, state: dict[str, Any]) -> None:
        """Refuse to resume on a folder that changed size (the saved order would point at other images)."""
        if state.get("n", self.n) != self.n:
            raise UserError(f"cannot resume: the training folder had {state['n']} images at the checkpoint and has "
                            f"{self.n} now (use a new --out for the changed folder)")  # fmt: skip


def make_loader(
    dataset: Dataset, *, batch_sampler: Sampler | None = None, batch_size: int | None = None, workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:  # fmt: skip
    """A DataLoader over ``dataset`` with ``workers`` processes that stay alive between epochs."""
    kw: dict[str, Any] = {"collate_fn": collate, "num_workers": workers, "pin_memory": pin_memory,
                          "worker_init_fn": install_bomb_filter}  # fmt: skip
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kw)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kw)
