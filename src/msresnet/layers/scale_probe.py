"""Object-scale estimation from an image pyramid, self-supervised: which pyramid level shows the object at the size
the trunk knows best?

A pyramid model shows its shared trunk every training image at a few sizes (level ``k`` shrinks it by ``f_k``), so
the level index is a free label for *how large the object looks*: no object-size augmentation and no class labels
are needed. :class:`ObjectScaleProbe` is a ridge regression from a level's pooled features to ``log2 f_k``, fitted on
images at the training scale. On a test image whose object is ``s`` times the training size, level ``k`` shows it at
``s * f_k``, so every level gives an estimate ``probe(level k) - log2 f_k`` of ``log2 s``.

Those estimates are not equally good. A regression predicts best in the middle of the sizes it was fitted on and
shrinks towards that middle elsewhere, and a level that shows the object at a size never trained (a small object
shrunk further, a large one not shrunk enough) extrapolates. So the fit is first de-shrunk (the inverse regression
of prediction on truth at the training scale is folded into the weights), the median over the levels gives a first
estimate, and :data:`REFINE_STEPS` refinements then average the levels' estimates with Gaussian weights
(:data:`REFINE_SIGMA` octaves) on how far each level's apparent size lies from the middle of the trained sizes: the
levels that show *this* object where the probe is reliable decide (what this changed on validation sweeps:
``docs/results.md``). :func:`select_levels` then answers with the most confident level among those that show the
object within ``band`` octaves of the size the trunk classified best at the training scale - where the plain "most
confident level" trusts levels that show an object larger than anything in training, and is often confidently
wrong there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from msresnet.errors import UserError

DEFAULT_BAND = 0.6  # octaves; chosen on fmnist-ls validation data (benchmarks/level_selection.py --band)
# the refinement of the median estimate; 0.35 / 0.5 / 0.75 / 1.0 octaves and 1 / 3 steps compared on validation
# sweeps of seven runs (fmnist-ls and fmnist-res, reduced and full budgets): all within 0.1 point on the mean,
# 0.5 with 3 steps best on the worst condition
REFINE_SIGMA = 0.5
REFINE_STEPS = 3
# names the estimate a fit makes, for records that must say which one measured them (before: "median")
ESTIMATE = "median refined near the trained sizes"


def log2_factors(factors: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """``log2`` of pyramid factors, as a tensor with ``like``'s dtype and device."""
    return torch.tensor([math.log2(float(f)) for f in factors], dtype=like.dtype, device=like.device)


torch.fx.wrap("log2_factors")  # under torch.fx the factors of the kept pyramid levels are known when the graph runs


def best_level_log2(level_logits: torch.Tensor, labels: torch.Tensor, factors: Sequence[float]) -> float:
    """``log2`` of the factor of the level that classifies images at the training scale best (``level_logits
    [N, S, K]``, ``labels [N]``): the apparent size the trunk knows best, the centre of the probe's band."""
    per_level = (level_logits.argmax(-1) == labels[:, None]).float().mean(0)
    return math.log2(float(factors[int(per_level.argmax())]))


class ObjectScaleProbe(nn.Module):
    """Linear map from a level's pooled features ``[C]`` to ``log2`` of the object's apparent size at that level,
    relative to a training object shown at factor 1 (fitted by :meth:`fit`, stored in buffers), the middle of the
    trained sizes (``centre_log2``, where the refinement trusts the levels most), and the selection rule's two
    settings: ``best_log2`` (the apparent size the trunk classified best at the training scale) and ``band``
    (octaves around it). An unfitted probe (:attr:`is_fitted` False) is what a model without calibration carries; a
    checkpoint written before the probe existed loads into it unchanged, and one fitted before the refinement existed
    (no ``centre_log2``) keeps the median estimate it was calibrated with."""

    # buffers whose NaN is a marker, not divergence (the checkpoint finiteness rule skips them)
    nonfinite_buffers = ("centre_log2",)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.register_buffer("weight", torch.zeros(channels))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("best_log2", torch.zeros(()))
        self.register_buffer("band", torch.tensor(DEFAULT_BAND))
        self.register_buffer("centre_log2", torch.tensor(math.nan))  # NaN: median estimate only (older fits)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # Python flags beside the buffers: the forward branches on them without a data-dependent (untraceable) bool
        self.is_fitted = False
        self.refines = False

    @staticmethod
    def _features(pooled: torch.Tensor) -> torch.Tensor:
        """``[N, C, S]`` pooled (non-negative, heavy-tailed) features -> ``[N, S, C]`` on a log scale."""
        return torch.log1p(pooled.clamp_min(0)).transpose(1, 2)

    @torch.no_grad()
    def fit(
        self,
        pooled: torch.Tensor,
        factors: Sequence[float],
        ridge: float = 1.0,
        best_log2: float = 0.0,
        band: float = DEFAULT_BAND,
    ) -> ObjectScaleProbe:
        """Fit on pooled features ``[N, C, S]`` of images at the training scale, level ``k`` made with
        ``factors[k]``; ``ridge`` is the penalty on standardised features; ``best_log2`` and ``band`` are stored
        for :meth:`select`. Returns ``self``."""
        n, c, s = pooled.shape
        if s != len(factors) or s < 2:
            raise UserError(f"the probe needs >= 2 levels, one factor each; got {s} levels, {len(factors)} factors")
        if c != self.weight.numel():
            raise UserError(f"the probe was built for {self.weight.numel()} channels; the features have {c}")
        if not band > 0:
            raise UserError(f"the probe's band must be > 0 octaves, got {band}")
        x = self._features(pooled.double()).reshape(-1, c)
        log2_f = log2_factors(factors, x)
        target = log2_f.repeat(n)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        design = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        gram = design.T @ design + ridge * torch.eye(c + 1, dtype=x.dtype)
        gram[-1, -1] -= ridge  # the intercept is not penalised
        coef = torch.linalg.solve(gram, design.T @ target)
        # de-shrink: a regression's predictions lean towards the middle of the targets (slope < 1 of prediction
        # against truth); folding the inverse of that line into the weights makes them unbiased at the training scale
        pred = design @ coef
        slope = float(((pred - pred.mean()) * (target - target.mean())).sum() / (target - target.mean()).square().sum())
        if slope > 0.1:
            coef[:-1] /= slope
            coef[-1] = (coef[-1] - (pred.mean() - slope * target.mean())) / slope
        self.mean.copy_(mean), self.std.copy_(std), self.weight.copy_(coef[:-1]), self.bias.copy_(coef[-1])
        self.best_log2.fill_(best_log2), self.band.fill_(band)
        self.centre_log2.fill_(float(log2_f.mean()))
        self.fitted.fill_(True)
        self.is_fitted = self.refines = True
        return self

    def reset(self) -> ObjectScaleProbe:
        """Forget the fit (the model goes back to its uncalibrated level choice). Returns ``self``."""
        self.fitted.fill_(False)
        self.is_fitted = self.refines = False
        return self

    def _load_from_state_dict(
        self, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        if prefix + "fitted" not in state_dict:
            # weights from before the probe existed (or from a model without one): the probe loads unfitted
            self.reset()
            state_dict = {**state_dict, **self.state_dict(prefix=prefix)}
        elif prefix + "centre_log2" not in state_dict:
            # fitted before the refinement existed: keep the median estimate that calibration measured
            state_dict = {**state_dict, prefix + "centre_log2": torch.tensor(math.nan)}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_fitted = bool(self.fitted)
        self.refines = not bool(torch.isnan(self.centre_log2))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Predicted ``log2`` apparent object size per level: ``[N, C, S] -> [N, S]``."""
        if not self.is_fitted:
            raise UserError("the object-scale probe is not fitted yet (fit it on images at the training scale)")
        z = (self._features(pooled) - self.mean.to(pooled.dtype)) / self.std.to(pooled.dtype)
        return z @ self.weight.to(pooled.dtype) + self.bias.to(pooled.dtype)

    def object_scale(self, pooled: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
        """``log2`` of each image's object scale relative to training (``[N]``): the (lower) median over levels of
        ``prediction - log2 factor`` (taken by sorting, so that ONNX export needs no median operator), refined
        :data:`REFINE_STEPS` times by the levels whose apparent size lies near the middle of the trained sizes."""
        log2_f = log2_factors(factors, pooled)
        per_level = self(pooled) - log2_f
        scale = per_level.sort(dim=1).values[:, (per_level.shape[1] - 1) // 2]
        if not self.refines:
            return scale
        centre = self.centre_log2.to(pooled.dtype)
        for _ in range(REFINE_STEPS):
            distance = (scale[:, None] + log2_f - centre) / REFINE_SIGMA
            weights = (-0.5 * distance.square()).softmax(dim=1)  # Gaussian weights, normalised without underflow
            scale = (weights * per_level).sum(dim=1)
        return scale

    def apparent_sizes(self, pooled: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
        """``log2`` of the object's size at every level relative to training (``[N, S]``), from the one per-image
        scale estimate: what :func:`select_levels` compares with the best-classified size."""
        return self.object_scale(pooled, factors)[:, None] + log2_factors(factors, pooled)

    def select(self, level_logits: torch.Tensor, pooled: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
        """Each image's chosen level (``[N]`` indices) by :func:`select_levels` with the stored settings."""
        apparent = self.apparent_sizes(pooled, factors)
        return select_levels(level_logits, apparent, self.best_log2.to(apparent.dtype), self.band.to(apparent.dtype))


def select_levels(
    level_logits: torch.Tensor,
    apparent_log2: torch.Tensor,
    best_log2: float | torch.Tensor,
    band: float | torch.Tensor = DEFAULT_BAND,
) -> torch.Tensor:
    """Each image's most confident level among those showing the object within ``band`` octaves of ``best_log2``
    (the apparent size the trunk classified best at the training scale); the nearest level where none is inside
    the band. ``level_logits [N, S, K]``, ``apparent_log2 [N, S]`` -> level indices ``[N]``."""
    distance = (apparent_log2 - best_log2).abs()
    confidence = level_logits.softmax(-1).amax(-1)
    inside = distance <= band
    # confidences are > 0, so any level inside the band beats every level outside it; among those, the nearest
    score = torch.where(inside, confidence, -distance)
    return score.argmax(1)
