"""The object-scale estimate's error per test condition: what a model's ``estimate_scale`` says against the scale
each test image was made at, in octaves (``log2`` of the ratio).

The truth is each image's object size relative to the training objects': ``condition / train_condition`` for
protocols trained at one condition (an object scale for ``*-ls``, an image size for ``*-res``), and each image's own
recorded scale relative to the training scales' log-mean for protocols trained on a range (``fmnist-scale``,
``scale_range`` drawn uniformly). Protocols without either have no truth and no error record.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from msresnet.engine.batches import stratified_order

__all__ = ["ScaleErrors", "true_log2_scales"]


def _log_mean_uniform(lo: float, hi: float) -> float:
    """E[ln s] for s uniform on [lo, hi]."""
    if math.isclose(lo, hi):
        return math.log(lo)
    return (hi * math.log(hi) - hi - lo * math.log(lo) + lo) / (hi - lo)


def true_log2_scales(protocol: Any, condition: Any, dataset: Any, limit: int | None) -> torch.Tensor | None:
    """log2 of the true object scale (relative to training) of each image of ``dataset`` after ``limit``'s
    class-stratified subset (as :func:`msresnet.engine.batches.limit_split` takes it), or None if unknown."""
    n = len(dataset.labels)
    index = torch.arange(n)
    if limit is not None and limit < n:
        index = torch.sort(stratified_order(torch.as_tensor(dataset.labels, dtype=torch.long))[:limit]).values
    train = getattr(protocol, "train_condition", None)
    if train is not None:
        try:
            ratio = float(condition) / float(train)
        except (TypeError, ValueError):
            return None
        return torch.full((len(index),), math.log2(ratio)) if ratio > 0 else None
    scales = (getattr(dataset, "extras", None) or {}).get("scale")
    scale_range = (getattr(protocol, "params", None) or {}).get("scale_range")
    if scales is None or not scale_range:
        return None
    ref = _log_mean_uniform(float(scale_range[0]), float(scale_range[1]))
    return torch.log2(scales[index].double()).float() - ref / math.log(2.0)


class ScaleErrors:
    """Accumulates ``log2(estimate) - log2(truth)`` per condition and summarises it for a sweep record."""

    def __init__(self) -> None:
        self.conditions: list[Any] = []
        self.errors: list[torch.Tensor] = []

    def add(self, condition: Any, estimate: torch.Tensor, truth: torch.Tensor) -> None:
        err = torch.log2(estimate.detach().float().cpu().clamp_min(1e-12)) - truth.float()
        if self.conditions and self.conditions[-1] == condition:
            self.errors[-1] = torch.cat([self.errors[-1], err])
        else:
            self.conditions.append(condition)
            self.errors.append(err)

    def summary(self) -> dict[str, Any] | None:
        """``conditions``, ``median_abs`` and ``p90_abs`` of |error| and ``median`` (signed: the bias), octaves."""
        if not self.conditions:
            return None

        def q(t: torch.Tensor, p: float) -> float:
            return float(torch.quantile(t.double(), p))

        return {
            "conditions": list(self.conditions),
            "median_abs": [q(e.abs(), 0.5) for e in self.errors],
            "p90_abs": [q(e.abs(), 0.9) for e in self.errors],
            "median": [q(e, 0.5) for e in self.errors],
            "unit": "octaves",
        }
