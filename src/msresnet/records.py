"""Evaluation results as typed records: what ``RUN/eval/<protocol>.json`` holds, and how it reads back.

:class:`SweepResult` is one scale sweep (accuracy at every test condition of a protocol, and its summary);
:class:`ScaleResult` is the per-scale diagnosis that may come with it (the accuracy of each pyramid level alone);
:class:`ConditionResult` is one condition of a sweep. ``to_dict`` gives the JSON layout the engine writes and the
report reads, ``from_dict`` reads it back (files written by older versions lack some keys; those read as None).

This module imports nothing else from the package, so the engine (which produces results) and the report and the
command line (which read them) depend on it rather than on each other.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["ConditionResult", "ScaleResult", "SweepResult", "data_key", "scale_labels"]


def _kwargs(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of ``cls`` (keys of other versions are ignored)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class ScaleResult:
    """The accuracy of every entry of a model's scale axis on its own, per test condition.

    Attributes:
        conditions: the test conditions, in sweep order.
        accuracy: per condition, one fraction per scale entry (finest first); shorter where the input size dropped
            levels.
        scales: per condition, the pyramid factors kept at that input size (None for models without a pyramid).
    """

    conditions: list[Any]
    accuracy: list[list[float]]
    scales: list[list[float] | None]

    def labels(self) -> list[str]:
        """Column names: ``"x0.5"`` per pyramid factor, ``"scale i"`` for models without a pyramid."""
        return scale_labels(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"conditions": list(self.conditions), "accuracy": list(self.accuracy), "scales": list(self.scales)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScaleResult:
        return cls(list(data["conditions"]), list(data["accuracy"]), list(data.get("scales") or []))


def scale_labels(per_scale: Mapping[str, Any]) -> list[str]:
    """Column names for a per-scale result (:class:`ScaleResult` as a dict): ``"x0.5"`` per pyramid factor (from
    the condition that kept the most levels), ``"scale i"`` for models without a pyramid."""
    n = max((len(a) for a in per_scale["accuracy"]), default=0)
    factors = next((f for f in per_scale.get("scales") or [] if f and len(f) == n), None)
    return [f"x{f:.2g}" for f in factors] if factors else [f"scale {i}" for i in range(n)]


@dataclass(frozen=True)
class ConditionResult:
    """One test condition of a sweep: the condition (object scale or image size), its accuracy and image count."""

    condition: Any
    accuracy: float
    images: int
    is_train: bool


@dataclass
class SweepResult:
    """Accuracy of one model at every test condition of one protocol.

    Attributes:
        protocol: protocol name.
        conditions: test conditions (object scales or image sizes), in sweep order.
        accuracy: fraction correct per condition.
        mean: mean accuracy over the conditions.
        worst: the lowest accuracy; ``worst_condition`` is where.
        retention: ``worst / accuracy_at_train`` (None when the protocol has no single training condition in the
            sweep).
        condition_name: ``"scale"`` or ``"size"``.
        train_condition: the condition matching the training data (None when it varies).
        accuracy_at_train: the accuracy there (None as for retention).
        n_per_condition: images per condition (a list when they differ).
        protocol_params: the protocol's resolved parameters.
        tta: whether predictions were averaged over rescalings.
        model: the model's registered name.
        checkpoint: the checkpoint file evaluated (None for an in-memory model).
        seconds: how long the sweep took.
        per_scale: the per-scale diagnosis, when asked for.
        scale_error: for a model that estimates object scale, the estimate's error per condition in octaves
            (``msresnet.engine.scale_error.ScaleErrors.summary()``), where the protocol knows each image's scale.
    """

    protocol: str
    conditions: list[Any]
    accuracy: list[float]
    mean: float
    worst: float
    worst_condition: Any = None
    retention: float | None = None
    condition_name: str = "condition"
    train_condition: Any = None
    accuracy_at_train: float | None = None
    n_per_condition: int | list[int] | None = None
    protocol_params: dict[str, Any] = field(default_factory=dict)
    tta: bool = False
    model: str | None = None
    checkpoint: str | None = None
    seconds: float | None = None
    per_scale: ScaleResult | None = None
    scale_error: dict[str, Any] | None = None

    @classmethod
    def from_accuracy(
        cls, protocol: str, conditions: list[Any], accuracy: list[float], train_condition: Any = None, **kw: Any
    ) -> SweepResult:
        """A sweep from its per-condition accuracies: mean, worst, retention and the training accuracy follow."""
        if not accuracy:
            raise ValueError("a sweep needs at least one condition")
        acc_train = None
        if train_condition is not None:
            acc_train = next((a for c, a in zip(conditions, accuracy, strict=True) if _same(c, train_condition)), None)
        worst_i = min(range(len(accuracy)), key=accuracy.__getitem__)
        return cls(
            protocol=protocol,
            conditions=list(conditions),
            accuracy=list(accuracy),
            mean=sum(accuracy) / len(accuracy),
            worst=accuracy[worst_i],
            worst_condition=conditions[worst_i],
            retention=(accuracy[worst_i] / acc_train) if acc_train else None,
            train_condition=train_condition,
            accuracy_at_train=acc_train,
            **kw,
        )

    def rows(self) -> list[ConditionResult]:
        """One record per condition, in sweep order."""
        n = self.n_per_condition
        counts = list(n) if isinstance(n, list) else [int(n or 0)] * len(self.conditions)
        return [
            ConditionResult(c, a, k, self.train_condition is not None and str(c) == str(self.train_condition))
            for c, a, k in zip(self.conditions, self.accuracy, counts, strict=True)
        ]

    @property
    def data_key(self) -> str:
        """The identity of the data this sweep measured (:func:`data_key`)."""
        return data_key(self.protocol, self.protocol_params)

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of ``RUN/eval/<protocol>.json`` (``scale_error`` and ``per_scale`` only when present)."""
        d = {name: getattr(self, name) for name in _JSON_ORDER}
        d["conditions"], d["accuracy"] = list(self.conditions), list(self.accuracy)
        d["protocol_params"] = dict(self.protocol_params)
        if self.scale_error is not None:
            d["scale_error"] = self.scale_error
        if self.per_scale is not None:
            d["per_scale"] = self.per_scale.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepResult:
        """Read :meth:`to_dict` output (or an older file). Raises KeyError/TypeError/ValueError when the sweep's own
        keys (``conditions``, ``accuracy``) are missing or malformed."""
        kw = _kwargs(cls, data)
        per_scale = kw.pop("per_scale", None)
        conditions, accuracy = list(data["conditions"]), [float(a) for a in data["accuracy"]]
        if len(conditions) != len(accuracy):
            raise ValueError(f"{len(conditions)} conditions but {len(accuracy)} accuracies")
        kw.update(protocol=str(data.get("protocol", "")), conditions=conditions, accuracy=accuracy)
        kw.setdefault("mean", sum(accuracy) / len(accuracy) if accuracy else math.nan)
        kw.setdefault("worst", min(accuracy, default=math.nan))
        kw["protocol_params"] = dict(kw.get("protocol_params") or {})
        return cls(**kw, per_scale=ScaleResult.from_dict(per_scale) if per_scale else None)


_JSON_ORDER = (
    "protocol",
    "protocol_params",
    "condition_name",
    "conditions",
    "accuracy",
    "mean",
    "worst",
    "worst_condition",
    "retention",
    "train_condition",
    "accuracy_at_train",
    "n_per_condition",
    "tta",
    "model",
    "checkpoint",
    "seconds",
)


def data_key(protocol: str, params: Mapping[str, Any] | None) -> str:
    """A short stable identity of the data a sweep measured: its protocol name and resolved parameters (for a
    folder, its absolute path and sweep). Two folders both named ``test`` get different keys; the same data
    evaluated again gets the same one."""
    text = json.dumps({"protocol": str(protocol), "params": dict(params or {})}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _same(a: Any, b: Any) -> bool:
    """Conditions compare as numbers where they are numbers (1 and 1.0 are the same scale)."""
    try:
        return math.isclose(float(a), float(b))
    except (TypeError, ValueError):
        return a == b
