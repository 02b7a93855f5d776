"""The evaluation core: test conditions, the sweep that measures a model under them, and its typed result.

* :mod:`~msresnet.evaluate.condition`: :class:`Condition` (a :class:`Kind` of scale shift with its factor, and
  ``apply`` to produce its images) - the one place that switches on the kind of condition;
* :mod:`~msresnet.evaluate.sweep`: :func:`evaluate` (a model over a protocol's conditions ->
  :class:`~msresnet.records.SweepResult`), the validation sweep, test-time augmentation, :func:`write_eval`;
* :mod:`~msresnet.evaluate.folder`: any labelled image folder as such a protocol, through the model's own
  preprocessing.

``msresnet evaluate``, ``scan``, ``calibrate`` and ``predict``'s test-time paths all measure through here.
"""

from __future__ import annotations

from msresnet.evaluate.condition import Condition, Kind, border_fill
from msresnet.evaluate.sweep import (
    TTA_FACTORS,
    ValidationSweep,
    evaluate,
    evaluate_scales,
    evaluate_sweep,
    predict_probs,
    require_same_classes,
    write_eval,
)
from msresnet.records import ScaleResult, SweepResult

__all__ = [
    "TTA_FACTORS",
    "Condition",
    "Kind",
    "ScaleResult",
    "SweepResult",
    "ValidationSweep",
    "border_fill",
    "evaluate",
    "evaluate_scales",
    "evaluate_sweep",
    "predict_probs",
    "require_same_classes",
    "write_eval",
]
