"""The training loop's data when a folder is streamed (``loader: stream``): file lists, loaders, validation.

The in-memory path (:mod:`msresnet.engine.batches`) slices batches out of one decoded tensor; this one hands the
same batch order (:func:`~msresnet.engine.batches.epoch_permutation`) to a DataLoader whose worker processes decode
the files (:mod:`msresnet.data.stream`). Limits (``train_limit``, ``val_limit``) choose the same class-stratified
subsets as the in-memory path, from the file lists.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from msresnet.data import stream
from msresnet.engine.batches import Normalizer, stratified_order
from msresnet.engine.config import TrainConfig
from msresnet.engine.distributed import DistContext
from msresnet.engine.step import autocast
from msresnet.errors import UserError

__all__ = ["StreamedData", "uses_stream"]

Files = list[tuple[str, int]]
STATS_SAMPLE = 512  # training images whose pixels give a streamed folder's mean and std (all of a smaller folder)


def uses_stream(cfg: TrainConfig, protocol: Any) -> bool:
    """Whether the run streams its images: ``loader`` when given, else for the ``folder`` protocol (a user's
    folder, of any size); the benchmark protocols are generated arrays and stay in memory.

    Raises:
        UserError: ``loader: stream`` for a protocol without a file list, or per-image augmentations in memory.
    """
    can = getattr(protocol, "files", None) is not None
    on = cfg.loader == "stream" or (cfg.loader is None and can)
    if on and not can:
        raise UserError(f"--loader stream needs an image folder (--data-dir); protocol {protocol.name!r} is "
                        "generated in memory")  # fmt: skip
    per_image = [n for n in stream.parse_augment(cfg.augment) if n in stream.IMAGE_AUGMENTATIONS]
    if per_image and not on:
        raise UserError(f"--augment {per_image[0]} applies to streamed image folders (--data-dir, --loader stream); "
                        "the benchmark protocols keep their own augmentation options")  # fmt: skip
    return on


def _limit(files: Files, n: int | None, mode: str) -> Files:
    """The in-memory path's :func:`~msresnet.engine.batches.limit_split` on a file list."""
    if n is None or n >= len(files):
        return files
    labels = torch.tensor([t for _, t in files], dtype=torch.long)
    index = stratified_order(labels)[:n] if mode == "stratified" else torch.arange(n)
    return [files[i] for i in torch.sort(index).values.tolist()]


def _sample_stats(files: Files, size: int | None, mode: str, seed: int) -> tuple[tuple[float, ...], ...]:
    """Mean and std of a seeded random :data:`STATS_SAMPLE` of the training images, fitted as for evaluation (the
    in-memory path computes them over every training image; a sample estimates them without decoding the folder)."""
    from msresnet.data.folder import load_folder_tensors

    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(files), generator=g)[:STATS_SAMPLE].sort().values.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable files are reported when training meets them
        return load_folder_tensors([files[i] for i in pick], size, mode=mode).channel_stats()


@dataclass
class StreamedData:
    """Loaders of a streamed folder run.

    Attributes:
        train: training files (after ``train_limit``).
        val: validation files (after ``val_limit``).
        sampler: the training batch sampler (its state goes into checkpoints).
        loader: the training DataLoader (persistent workers).
        val_loader: this rank's validation DataLoader.
        mix: MixUp/CutMix on batches, or None.
        mean: per-channel mean of the training images in [0, 1] (from :data:`STATS_SAMPLE` of them).
        std: their per-channel standard deviation.
        bad: unreadable training files met in the current epoch.
    """

    train: Files
    val: Files
    sampler: stream.EpochBatchSampler
    loader: DataLoader
    val_loader: DataLoader
    mix: Callable | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bad: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, protocol: Any, cfg: TrainConfig, ctx: DistContext, device: torch.device) -> StreamedData:
        """Loaders for ``protocol.files`` (see :func:`uses_stream`)."""
        p = protocol.params
        size = p.get("input_size")
        native = tuple(protocol.input_size)
        names = stream.parse_augment(cfg.augment)
        train = _limit(list(protocol.files["train"]), cfg.train_limit, cfg.limit_mode)
        val = _limit(list(protocol.files["val"] or []), cfg.val_limit, "stratified")
        pin = device.type == "cuda"
        workers = cfg.workers
        ds = stream.FileDataset(train, p["mode"], stream.train_transform(size, native, names), p.get("max_pixels"))
        sampler = stream.EpochBatchSampler(len(train), cfg.batch_size, cfg.seed)
        loader = stream.make_loader(ds, batch_sampler=sampler, workers=workers, pin_memory=pin)
        mine = [val[i] for i in ctx.shard_eval(len(val)).tolist()]
        val_ds = stream.FileDataset(mine, p["mode"], stream.eval_transform(size), p.get("max_pixels"))
        from msresnet.engine.batches import eval_batch_size

        val_loader = stream.make_loader(val_ds, batch_size=eval_batch_size(device), workers=min(workers, 1),
                                        pin_memory=pin)  # fmt: skip
        mix = stream.batch_augmentation(names, protocol.num_classes)
        mean, std = _sample_stats(train, size, p["mode"], cfg.seed)
        return cls(train, val, sampler, loader, val_loader, mix, mean, std)

    def epoch(self, order: torch.Tensor, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's uint8 batches and labels of ``epoch`` from batch ``start`` on (batches that lost every image
        to unreadable files are skipped)."""
        self.sampler.set_epoch(order, epoch, start)
        self.bad = []
        for b in self.loader:
            self.bad += b.bad
            if b.labels.numel():
                yield b.images, b.labels

    def report_bad(self, epoch: int) -> None:
        """One warning naming the unreadable files met in the epoch."""
        if self.bad:
            from msresnet.data.folder import BadImageWarning

            first = "; ".join(self.bad[:3]) + (f"; and {len(self.bad) - 3} more" if len(self.bad) > 3 else "")
            warnings.warn(f"epoch {epoch}: skipped {len(self.bad)} unreadable training images: {first}",
                          BadImageWarning, stacklevel=2)  # fmt: skip

    @torch.no_grad()
    def validate(self, model: nn.Module, norm: Normalizer, ctx: DistContext, amp: str | None) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on the validation files (sums reduced over ranks)."""
        was_training = model.training
        model.eval()
        loss_sum, correct, n = 0.0, 0.0, 0.0
        for b in self.val_loader:
            if not b.labels.numel():
                continue
            x = norm(norm.to_unit(b.images))
            y = b.labels.to(norm.device)
            with autocast(norm.device, amp):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += y.numel()
        loss_sum, correct, n = ctx.all_reduce_sum([loss_sum, correct, n])
        model.train(was_training)
        return loss_sum / max(1.0, n), correct / max(1.0, n)
