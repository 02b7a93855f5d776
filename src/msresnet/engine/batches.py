"""Batches straight from in-memory uint8 tensors: splits, limits, epoch permutations, normalisation.

Protocol datasets hold all images as one ``uint8 [N, C, H, W]`` tensor, so a batch is an index into it: no
DataLoader, no per-image Python work, and the batch order is a pure function of ``(seed, epoch)`` — which is what
makes resuming exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

# The carved validation set does not depend on the run's seed: runs with different seeds compare on the same images.
VAL_SPLIT_SEED = 0
VAL_FRACTION = 0.1


@dataclass
class TensorSplit:
    """Images (uint8 ``[N, C, H, W]``) and labels (int64 ``[N]``) of one split."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    @classmethod
    def of(cls, dataset) -> TensorSplit:
        """View a protocol dataset (anything with ``.images`` and ``.labels``) as a split."""
        return cls(dataset.images, torch.as_tensor(dataset.labels, dtype=torch.long))

    def take(self, index: torch.Tensor) -> TensorSplit:
        """The images at ``index`` (a copy)."""
        return TensorSplit(self.images[index], self.labels[index])


def eval_batch_size(device: str | torch.device) -> int:
    """Images per inference batch: small on CPU, where the activations of big batches fall out of the caches and
    each image costs more, large on accelerators."""
    return 32 if torch.device(device).type == "cpu" else 256


def stratified_order(labels: torch.Tensor) -> torch.Tensor:
    """Indices ordered round-robin over classes (1st of each class, then 2nd, ...), stable within a class.

    The first N of this order is a class-balanced subset made of each class's first images.
    """
    n = labels.numel()
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    # Rank of each image within its class: position minus the position where its class starts.
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank_in_class = torch.empty(n, dtype=torch.long)
    rank_in_class[order] = torch.arange(n) - starts
    key = rank_in_class * (int(labels.max()) + 1 if n else 1) + labels
    return torch.argsort(key, stable=True)


def limit_split(split: TensorSplit, n: int | None, mode: str = "stratified") -> TensorSplit:
    """The first ``n`` images, or a class-stratified ``n`` (``mode="stratified"``); all of them when ``n`` is None."""
    if n is None or n >= len(split):
        return split
    index = stratified_order(split.labels)[:n] if mode == "stratified" else torch.arange(n)
    return split.take(torch.sort(index).values)


def train_val_splits(protocol, val_limit: int | None = None) -> tuple[TensorSplit, TensorSplit]:
    """The training split and the per-epoch validation split of a protocol.

    ``protocol.val`` is used when the protocol has one; otherwise a fixed 10% of the training images (chosen by a
    generator with a constant seed, so every run on the protocol holds out the same images) becomes validation and
    is removed from training. ``val_limit`` then keeps a class-stratified subset to bound validation time.
    """
    train = TensorSplit.of(protocol.train)
    if getattr(protocol, "val", None) is not None:
        val = TensorSplit.of(protocol.val)
    else:
        g = torch.Generator().manual_seed(VAL_SPLIT_SEED)
        perm = torch.randperm(len(train), generator=g)
        n_val = max(1, int(round(VAL_FRACTION * len(train))))
        val = train.take(torch.sort(perm[:n_val]).values)
        train = train.take(torch.sort(perm[n_val:]).values)
    return train, limit_split(val, val_limit, "stratified")


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The batch order of one epoch: a permutation drawn from a generator seeded by ``seed + epoch``.

    Depending only on ``(seed, epoch)`` lets a resumed run rebuild the exact order without saved state.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def iter_batches(order: torch.Tensor, batch_size: int, start: int = 0) -> Iterator[torch.Tensor]:
    """Consecutive index batches of ``order`` from batch number ``start`` on (the last one may be short)."""
    for i in range(start * batch_size, order.numel(), batch_size):
        yield order[i : i + batch_size]


def num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch (the last, short batch included)."""
    return -(-n // batch_size)


class Normalizer:
    """uint8 images to normalised float32 on the device: ``(x / 255 - mean) / std`` per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        from msresnet.preprocess import Normalize

        self.normalize = Normalize(mean, std).to(device)  # the package's one normaliser
        self.mean, self.std = self.normalize.mean, self.normalize.std
        self.device = device

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` to float in [0, 1] on the device (augmentations work in this range)."""
        return images.to(self.device, non_blocking=True).float().div_(255)

    def __call__(self, unit: torch.Tensor) -> torch.Tensor:
        """Normalise images already in [0, 1]."""
        return self.normalize(unit)
