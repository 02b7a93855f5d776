"""One optimizer step: the batch, the model + loss as one module, forward/backward/clip, the non-finite guard.

:func:`train_step` is the whole step in one call and returns a :class:`StepResult`; what happens around it (learning
rate, reseeding, counters, checkpoints) belongs to the loop in :mod:`msresnet.engine.train`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.engine.batches import Normalizer, TensorSplit
from msresnet.engine.checkpoint import NonFiniteError
from msresnet.engine.config import TrainConfig
from msresnet.engine.distributed import DistContext
from msresnet.engine.progress import log
from msresnet.scale.contracts import auxiliary_loss

MAX_CONSECUTIVE_SKIPS = 50  # nan_policy="skip" still stops when the run has clearly diverged
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["MAX_CONSECUTIVE_SKIPS", "NonFiniteError", "NonFiniteGuard", "StepResult", "TrainStep", "train_step"]


class TrainStep(nn.Module):
    """Model + loss as one module, so one (DDP) forward call covers every pass the loss makes.

    The scale-invariance loss runs the model on two views before the backward pass; DDP expects exactly one forward
    per backward, so DDP wraps this module instead of the bare model. With ``criterion=None`` the loss is plain
    cross-entropy with label smoothing (one forward pass).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module | None, label_smoothing: float) -> None:
        super().__init__()
        self.model = model
        inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper sets attributes on itself
        if hasattr(inner, "attach_auxiliary_loss"):  # forward() adds the model's own loss itself, scaled with the rest
            inner.attach_auxiliary_loss = False
        self.criterion = criterion
        self.label_smoothing = label_smoothing

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the loss and the clean view's (detached) logits."""
        if self.criterion is None:
            logits = self.model(x)
            loss, logits = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing), logits.detach()
        else:
            loss, parts = self.criterion(self.model, x, y)
            logits = parts["logits"]
        extra = auxiliary_loss(self.model)  # a model's own training term (a scale estimator's), declared
        return (loss if extra is None else loss + extra), logits


def build_criterion(cfg: TrainConfig) -> nn.Module | None:
    """The scale-invariance loss when its weight is positive; None means plain cross-entropy (one forward pass)."""
    if cfg.si_weight <= 0 and cfg.si_feature_weight <= 0:
        return None
    from msresnet.losses import ScaleInvarianceLoss

    kwargs: dict[str, object] = {
        "weight": cfg.si_weight,
        "feature_weight": cfg.si_feature_weight,
        "label_smoothing": cfg.label_smoothing,
    }
    if cfg.si_scale_range is not None:
        kwargs["scale_range"] = cfg.si_scale_range
    if cfg.si_view == "degrade":
        from msresnet.data.scaling import random_degrade

        factors = tuple(cfg.degrade_aug or (0.5, 1.0))
        # torch's global generator: the training loop reseeds it every step, so resume stays exact
        kwargs["view_fn"] = lambda x: random_degrade(x, factors, p=1.0)
    return ScaleInvarianceLoss(**kwargs)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Channels-last layout for the 4-d tensors only (``model.to(memory_format=...)`` refuses the 5-d weights of
    multi-scale layers)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.ndim == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


def autocast(device: torch.device, amp: str | None) -> AbstractContextManager:
    """Autocast to the ``amp`` dtype (``bf16``/``fp16``), or nothing."""
    if amp is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Batch augmentation on images in [0, 1]: random object rescale, then random detail loss."""
    if cfg.rescale_aug is None and cfg.degrade_aug is None:
        return x
    from msresnet.data import scaling

    if cfg.rescale_aug is not None:
        fill = "reflect" if cfg.rescale_fill == "reflect" else 0.0
        x = scaling.random_rescale(x, cfg.rescale_aug, generator=gen, fill=fill)
    if cfg.degrade_aug is not None:
        x = scaling.random_degrade(x, cfg.degrade_aug, p=cfg.degrade_p, generator=gen)
    return x


def train_batch(
    split: TensorSplit, idx: torch.Tensor, norm: Normalizer, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's inputs on the device: augmented (drawing from ``gen``), normalised images and their labels."""
    return prepare_batch(split.images[idx], split.labels[idx], norm, cfg, gen)


def prepare_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    norm: Normalizer,
    cfg: TrainConfig,
    gen: torch.Generator,
    mix: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and labels -> the step's inputs on the device: augmented (drawing from ``gen``), mixed by
    ``mix`` (MixUp/CutMix, drawing from torch's generator; the labels become class probabilities), normalised."""
    x = augment(norm.to_unit(images), cfg, gen)
    y = labels.to(norm.device, non_blocking=True)
    if mix is not None:
        x, y = mix(x, y)
    x = norm(x)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


@dataclass(frozen=True)
class StepResult:
    """What one step did: its loss, gradient norm, correct predictions and images; ``skipped`` names what was
    non-finite when the update was not applied (None: applied)."""

    loss: float
    grad_norm: float
    correct: float
    images: int
    skipped: str | None = None


def train_step(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[nn.Parameter],
    cfg: TrainConfig,
    ctx: DistContext,
) -> StepResult:
    """Forward, backward, clip ``params``' gradients, and the optimizer update unless the loss or gradient is
    non-finite on any rank. A step skipped under ``nan_policy: skip`` leaves no trace: the buffers its forward pass
    updated (BatchNorm statistics of the bad batch) are restored too."""
    buffers = list(net.buffers()) if cfg.nan_policy == "skip" else []
    before = [b.detach().clone() for b in buffers]
    with autocast(x.device, cfg.amp):
        loss, logits = net(x, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
    # One device->host copy per step for everything the loop needs to know (each copy is a GPU sync).
    loss_v, norm_v, correct_v = torch.stack(
        [loss.detach().float(), grad_norm.detach().float(), (logits.argmax(1) == _hard(y)).sum().float()]
    ).tolist()
    # A NaN loss makes NaN gradients, and DDP's all-reduce spreads them to every rank. Under fp16 the scaler itself
    # skips inf-gradient steps (expected while it calibrates), so only the loss counts there.
    bad = not math.isfinite(loss_v) or (not scaler.is_enabled() and not math.isfinite(norm_v))
    if ctx.any_true(bad):
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, saved in zip(buffers, before, strict=True):
                b.copy_(saved)
        what = f"loss ({loss_v})" if not math.isfinite(loss_v) else f"gradient norm ({norm_v})"
        return StepResult(loss_v, norm_v, correct_v, y.shape[0], skipped=what)
    scaler.step(optimizer)
    scaler.update()
    return StepResult(loss_v, norm_v, correct_v, y.shape[0])


def _hard(y: torch.Tensor) -> torch.Tensor:
    """Class indices of labels that may be class probabilities (MixUp/CutMix): the dominant class."""
    return y.argmax(1) if y.ndim == 2 else y


class NonFiniteGuard:
    """``nan_policy``: stop at the first non-finite step, or skip it -- up to ``max_skips`` in a row.

    The bound makes ``skip`` safe on a diverged run, where every later step is non-finite too: the run stops instead
    of "finishing" without a single applied step. The training loop passes ``min(MAX_CONSECUTIVE_SKIPS, steps per
    epoch)``, so a whole epoch of skipped steps always stops it.

    Args:
        policy: ``"stop"`` or ``"skip"``.
        kept: says which checkpoint survives (called when stopping, so it names what is on disk then).
        verbose: log skipped steps (rank 0).
        max_skips: consecutive skipped steps that stop the run.
    """

    def __init__(
        self, policy: str, kept: Callable[[], str], verbose: bool, max_skips: int = MAX_CONSECUTIVE_SKIPS
    ) -> None:
        self.policy, self.kept, self.verbose = policy, kept, verbose
        self.max_skips = max(1, max_skips)
        self.consecutive = 0

    def check(self, result: StepResult, where: str) -> None:
        """Raise :class:`NonFiniteError` when the run must stop after ``result``; count and log a skip otherwise."""
        if result.skipped is None:
            self.consecutive = 0
            return
        if self.policy == "stop":
            raise NonFiniteError(
                f"non-finite {result.skipped} at {where}; stopped, {self.kept()} "
                "(start a new run with a lower learning rate, or set nan_policy: skip)"
            )
        self.consecutive += 1
        if self.verbose:
            log(f"warning: non-finite {result.skipped} at {where}: step skipped")
        if self.consecutive >= self.max_skips:
            raise NonFiniteError(
                f"{self.consecutive} consecutive non-finite steps up to {where}: the run diverged; stopped, "
                f"{self.kept()} (start a new run with a lower learning rate)"
            )
