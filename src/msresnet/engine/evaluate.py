"""Where the scale-sweep evaluation used to live; it is now the evaluation core, :mod:`msresnet.evaluate`.

Kept so that code importing ``msresnet.engine.evaluate`` keeps working; new code imports :mod:`msresnet.evaluate`.
"""

from __future__ import annotations

from msresnet.evaluate.sweep import (
    TTA_FACTORS,
    ValidationSweep,
    evaluate,
    evaluate_scales,
    evaluate_sweep,
    match_channels,
    predict_probs,
    require_same_classes,
    scale_labels,
    write_eval,
)

__all__ = [
    "TTA_FACTORS",
    "ValidationSweep",
    "evaluate",
    "evaluate_scales",
    "evaluate_sweep",
    "match_channels",
    "predict_probs",
    "require_same_classes",
    "scale_labels",
    "write_eval",
]
