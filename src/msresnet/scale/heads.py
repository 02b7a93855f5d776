"""Level heads of the image pyramid: how each image's per-level features become one, chosen by name.

A head sees the trunk's pooled pre-logits features of every pyramid level, ``pooled [B, D, S]`` (finest level
first), and answers with **convex level weights** ``[B, D, S]`` or ``[B, 1, S]`` (per image, per channel or for all
channels); the combined features are ``(weights * pooled).sum(2)`` and the trunk's classifier maps them to logits.
Stating every head as weights is what lets the pyramid build a 4-D feature map from the same rule
(:class:`~msresnet.scale.pyramid.PyramidClassifier`).

* ``avg``: the plain average; ``max``: per channel, the level with the largest feature (one-hot weights);
* ``softmax``: the scale-aware activation ``softmax_s(beta * f_s)`` per channel, learnable temperature ``beta``
  (``beta -> inf``: max, ``beta -> 0``: average);
* ``attention``: SK-style: a small shared MLP scores each level's features per channel, softmaxed over levels;
* ``confidence``: trained as the average; at evaluation every level is classified on its own and each image takes
  its most confident level (largest top softmax probability), or, once its :class:`~msresnet.layers.ObjectScaleProbe`
  is fitted (``msresnet calibrate``), the most confident among the levels that show the object near the size the
  trunk knows best. Averaging lets a level that sees an object larger than anything in training outvote the one
  level that sees it at a familiar size; selecting does not.

Scale dropout (training only, every head): with probability ``scale_dropout`` a sample keeps only a random
contiguous window of levels, so every level learns to carry the decision alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from msresnet.errors import UserError
from msresnet.layers import ObjectScaleProbe
from msresnet.layers.scale_pool import training_keep_mask

__all__ = ["LEVEL_HEADS", "LevelHead", "make_level_head"]

Classify = Callable[[torch.Tensor], torch.Tensor] | None
"""Maps ``pooled [B, D, S]`` to per-level logits ``[B, S, K]``; None where the model has no classifier."""

LEVEL_HEADS: dict[str, type[LevelHead]] = {}


def _register(name: str) -> Callable[[type[LevelHead]], type[LevelHead]]:
    def deco(cls: type[LevelHead]) -> type[LevelHead]:
        LEVEL_HEADS[name] = cls
        cls.name = name
        return cls

    return deco


def make_level_head(name: str, channels: int, scale_dropout: float = 0.0) -> LevelHead:
    """The level head registered as ``name`` for ``channels``-wide features.

    Raises:
        UserError: unknown name, or a scale dropout outside [0, 1].
    """
    if name not in LEVEL_HEADS:
        raise UserError(f"unknown level head (scale_pool) {name!r}; choose one of {', '.join(LEVEL_HEADS)}")
    if not 0.0 <= scale_dropout <= 1.0:
        raise UserError(f"scale_dropout must be in [0, 1], got {scale_dropout}")
    return LEVEL_HEADS[name](channels, scale_dropout)


def _one_hot(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One-hot weights along dim 2 from ``index [B, D|1]`` (``like``'s dtype and level count)."""
    zeros = torch.zeros_like(like[:, : index.shape[1]])  # [B, D|1, S], sized by tensor ops (fx-traceable)
    return zeros.scatter_(2, index.unsqueeze(2), 1.0)


class LevelHead(nn.Module):
    """Base class: convex level weights from ``pooled [B, D, S]`` (see the module docstring)."""

    name = ""

    def __init__(self, channels: int, scale_dropout: float = 0.0) -> None:
        super().__init__()
        self.scale_dropout = float(scale_dropout)

    def extra_repr(self) -> str:
        return f"scale_dropout={self.scale_dropout}"

    def weights(self, pooled: torch.Tensor, classify: Classify, factors: Sequence[float]) -> torch.Tensor:
        """Level weights ``[B, D|1, S]`` summing to 1 over ``S``; ``factors`` are the levels' pyramid factors."""
        keep = training_keep_mask(pooled, 2, self.scale_dropout, self.training)
        return self._weights(pooled, keep, classify, factors)

    def _weights(
        self, pooled: torch.Tensor, keep: torch.Tensor | None, classify: Classify, factors: Sequence[float]
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pooled: torch.Tensor, classify: Classify, factors: Sequence[float]) -> torch.Tensor:
        """The combined features ``[B, D]``."""
        return (self.weights(pooled, classify, factors) * pooled).sum(2)


def _masked_softmax(logits: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return (logits if keep is None else logits.masked_fill(~keep, float("-inf"))).softmax(2)


@_register("avg")
class AvgHead(LevelHead):
    """The average over (kept) levels."""

    def _weights(self, pooled: Tensor, keep: Tensor | None, classify: Classify, factors: Sequence[float]) -> Tensor:
        if keep is None:
            return torch.full_like(pooled[:, :1], 1.0 / pooled.shape[2])
        m = keep.to(pooled.dtype)
        return m / m.sum(2, keepdim=True)


@_register("max")
class MaxHead(LevelHead):
    """Per channel, the (kept) level with the largest feature."""

    def _weights(self, pooled: Tensor, keep: Tensor | None, classify: Classify, factors: Sequence[float]) -> Tensor:
        scores = pooled if keep is None else pooled.masked_fill(~keep, float("-inf"))
        return _one_hot(scores.argmax(2), pooled)


@_register("softmax")
class SoftmaxHead(LevelHead):
    """The scale-aware activation over levels, ``softmax_s(beta * f_s)`` per channel (learnable ``beta``)."""

    def __init__(self, channels: int, scale_dropout: float = 0.0, beta: float = 1.0) -> None:
        super().__init__(channels, scale_dropout)
        self.beta = nn.Parameter(torch.tensor(float(beta)))

    def _weights(self, pooled: Tensor, keep: Tensor | None, classify: Classify, factors: Sequence[float]) -> Tensor:
        return _masked_softmax(self.beta * pooled, keep)


@_register("attention")
class AttentionHead(LevelHead):
    """SK-style attention: a shared MLP scores each level's features per channel; softmax over levels."""

    def __init__(self, channels: int, scale_dropout: float = 0.0, reduction: int = 4) -> None:
        super().__init__(channels, scale_dropout)
        hidden = max(channels // reduction, 4)
        self.attn = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def _weights(self, pooled: Tensor, keep: Tensor | None, classify: Classify, factors: Sequence[float]) -> Tensor:
        return _masked_softmax(self.attn(pooled.transpose(1, 2)).transpose(1, 2), keep)


@_register("confidence")
class ConfidenceHead(AvgHead):
    """Trained as the average; evaluated by each image's most confident level, restricted by the object-scale
    probe (``self.probe``) once calibration has fitted it."""

    def __init__(self, channels: int, scale_dropout: float = 0.0) -> None:
        super().__init__(channels, scale_dropout)
        self.probe = ObjectScaleProbe(channels)

    def _weights(self, pooled: Tensor, keep: Tensor | None, classify: Classify, factors: Sequence[float]) -> Tensor:
        if self.training or classify is None:
            return super()._weights(pooled, keep, classify, factors)
        logits = classify(pooled)  # [B, S, K]: each level classified on its own
        if self.probe.is_fitted:  # (one level: the probe picks it too)
            best = self.probe.select(logits, pooled, factors)
        else:
            best = logits.softmax(-1).amax(-1).argmax(1)
        return _one_hot(best[:, None], pooled)
