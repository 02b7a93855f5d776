"""What a scale-aware model declares, as ``typing.Protocol``s: the engine, the evaluation core and the scan ask for
these capabilities by type instead of probing attribute names one by one.

* :class:`ScaleEstimator`: ``estimate_scale(x)`` -> each image's object scale relative to training (the canonical
  wrapper's estimator, a pyramid's fitted probe);
* :class:`PerLevel`: ``forward_scales(x)`` (logits of every level / scale entry alone) and
  ``forward_with_scales(x)`` (the pooled logits and those, from one trunk pass);
* :class:`TrainingLoss`: ``auxiliary_loss()`` -> the model's own training term for the last forward pass (or None),
  added to the task loss by the engine.

This module imports nothing from the package, so every layer can depend on it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["PerLevel", "ScaleEstimator", "TrainingLoss", "auxiliary_loss", "scale_estimator"]


@runtime_checkable
class ScaleEstimator(Protocol):
    """A model that estimates each image's object scale (relative to its training images)."""

    def estimate_scale(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class PerLevel(Protocol):
    """A model with a scale axis whose entries can be read one by one (a pyramid's levels)."""

    def forward_scales(self, x: Tensor) -> Tensor: ...

    def forward_with_scales(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class TrainingLoss(Protocol):
    """A model that adds its own term to the training loss (a scale estimator's self-supervised loss)."""

    def auxiliary_loss(self) -> Tensor | None: ...


def scale_estimator(model: Any) -> ScaleEstimator | None:
    """``model`` as a :class:`ScaleEstimator`, or None when it estimates no scale (or cannot yet: a pyramid whose
    object-scale probe is not fitted declares the method but refuses it with AttributeError)."""
    if not isinstance(model, ScaleEstimator):
        return None
    try:
        return model if callable(model.estimate_scale) else None
    except AttributeError:
        return None


def auxiliary_loss(model: Any) -> Tensor | None:
    """The model's own training term for its last forward pass (:class:`TrainingLoss`), None when it has none."""
    return model.auxiliary_loss() if isinstance(model, TrainingLoss) else None
