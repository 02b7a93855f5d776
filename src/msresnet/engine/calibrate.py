"""Calibrate a trained pyramid model's level choice: fit its object-scale probe, keep it where validation says so.

A pyramid msresnet (``scale_pool="confidence"``) classifies every pyramid level on its own and answers with each
image's most confident level. That trusts levels that show an object larger than anything seen in training, and
they are often confidently wrong. Its :class:`~msresnet.layers.ObjectScaleProbe` estimates the object's scale
instead (a ridge regression from a level's pooled features to the level's factor, fitted on validation images at
the training condition: no class labels, no other scale) and lets only the levels that show the object near the
size the trunk classifies best compete on confidence.

:func:`calibrate_model` fits the probe, then measures the run's validation sweep (:class:`ValidationSweep`: held-out
training images under the protocol's scale or size changes, never the test split) with and without it. With
``keep="auto"`` the probe stays only when it raises the sweep's mean accuracy without lowering its worst condition.
:func:`calibrate_checkpoint` does the same for a checkpoint file and rewrites it atomically, with the measurement in
its metadata (``scale_probe``).

The probe does not help every trunk (briefly trained ones can lose at the smallest scales), which is why the
keep rule asks the validation sweep; measured effects, as rows ``+ msresnet calibrate``, are in ``docs/results.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from msresnet.engine.checkpoint import CheckpointInfo, resolve_checkpoint, save_weights
from msresnet.engine.lock import hold_checkpoint
from msresnet.errors import UserError
from msresnet.evaluate.sweep import ValidationSweep, _condition_batches
from msresnet.layers import best_level_log2
from msresnet.layers.scale_probe import DEFAULT_BAND, ESTIMATE

KeepPolicy = Literal["auto", "always"]


class Levels(NamedTuple):
    """One condition's images, level by level: logits ``[N, S, K]``, pooled features ``[N, C, S]``, labels, and
    the pyramid factors of the ``S`` levels (an image's size decides which levels are kept)."""

    logits: torch.Tensor
    pooled: torch.Tensor
    labels: torch.Tensor
    factors: list[float]


@torch.no_grad()
def collect_levels(
    model: nn.Module,
    source: Any,
    info: CheckpointInfo | None = None,
    limit: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[Any, Levels]:
    """Every level's logits and pooled features and the labels, per condition of ``source`` (a protocol or a
    :class:`ValidationSweep`), one pass through the trunk per image; ``limit`` images per condition."""
    require_calibratable(model)
    out: dict[Any, Levels] = {}
    for condition, batches, _ in _condition_batches(source, info, limit, None, torch.device(device)):
        parts = [(model.pool_levels(x)[0].float().cpu(), y, x.shape[-2:]) for x, y in batches]
        pooled, labels = torch.cat([p for p, _, _ in parts]), torch.cat([y for _, y, _ in parts])
        factors = model.pyramid.kept_scales(parts[0][2])
        out[condition] = Levels(model.level_logits(pooled.to(device)).float().cpu(), pooled, labels, factors)
    return out


@dataclass
class Calibration:
    """What :func:`calibrate_model` measured and decided.

    Attributes:
        band: octaves around the best-classified size in which levels compete on confidence.
        best_factor: pyramid factor of the level that classified the training condition best.
        fit_images: validation images at the training condition the probe was fitted on.
        conditions: the validation sweep's conditions.
        confidence: validation accuracy (%) per condition with the most confident level.
        probe: validation accuracy (%) per condition with the fitted probe.
        kept: whether the model now selects levels with the probe.
        condition_name: what the conditions are (``"scale"`` or ``"size"``).
    """

    band: float
    best_factor: float
    fit_images: int
    conditions: list[Any] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    probe: list[float] = field(default_factory=list)
    kept: bool = False
    condition_name: str | None = None

    @property
    def confidence_mean(self) -> float:
        return sum(self.confidence) / len(self.confidence)

    @property
    def probe_mean(self) -> float:
        return sum(self.probe) / len(self.probe)

    @property
    def improves(self) -> bool:
        """Whether the probe raises the validation sweep's mean accuracy without lowering its worst condition: a
        scale-robust model must not buy a better average with a worse extreme (briefly trained trunks do exactly
        that at s = 0.5)."""
        return self.probe_mean > self.confidence_mean and min(self.probe) >= min(self.confidence)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (stored in the checkpoint's metadata); ``estimate`` names how the probe estimated object
        scale (:data:`~msresnet.layers.scale_probe.ESTIMATE`), so that records of another estimate can be told apart."""
        means = {"confidence_mean": self.confidence_mean, "probe_mean": self.probe_mean, "estimate": ESTIMATE}
        return {**asdict(self), **means, "confidence_worst": min(self.confidence), "probe_worst": min(self.probe)}


def require_calibratable(model: nn.Module, protocol: Any | None = None, name: str | None = None) -> None:
    """Raise a one-line UserError unless ``model`` (registered as ``name``) carries an object-scale probe and
    ``protocol`` (when given) trains at one condition that its sweep contains (the probe needs images at one known
    object size)."""
    if getattr(model, "scale_probe", None) is None:
        name = name or type(model).__name__
        raise UserError(
            f"{name} has no object-scale probe to calibrate: only pyramid models that select a level "
            "(scale_pool='confidence', e.g. msresnet20) choose between levels"
        )
    if protocol is not None and (protocol.train_condition is None or protocol.train_condition not in protocol.test):
        raise UserError(
            f"{protocol.name} has no single training condition in its sweep: the probe needs images at one known "
            "object size (train at one scale, e.g. fmnist-ls or fmnist-res)"
        )


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(-1) == labels).float().mean())


def _head_accuracies(model: nn.Module, levels: dict[Any, Levels]) -> Iterator[tuple[Any, float]]:
    """Validation accuracy per condition of the model's own head on stored pooled features (eval mode)."""
    device = next(model.parameters()).device
    for condition, lv in levels.items():
        yield condition, _accuracy(model.logits_from_levels(lv.pooled.to(device), lv.factors).float().cpu(), lv.labels)


@torch.no_grad()
def calibrate_model(
    model: nn.Module,
    protocol: Any,
    info: CheckpointInfo | None = None,
    *,
    band: float = DEFAULT_BAND,
    ridge: float = 1.0,
    val_limit: int | None = 1000,
    keep: KeepPolicy = "auto",
    device: str | torch.device = "cpu",
) -> Calibration:
    """Fit ``model.scale_probe`` on the protocol's validation images at its training condition and measure the
    validation sweep with and without it; ``keep="auto"`` keeps the probe only where it raises the sweep's
    mean accuracy without lowering its worst condition (:attr:`Calibration.improves`), ``"always"`` keeps it
    regardless. The model is left in eval mode.

    Raises:
        UserError: the model has no probe, or the protocol has no single training condition (a model trained on
            many object scales, ``fmnist-scale``, has no training size for the probe to measure against).
    """
    require_calibratable(model, protocol)
    if keep not in ("auto", "always"):
        raise UserError(f"keep must be 'auto' or 'always', got {keep!r}")
    sweep = ValidationSweep(protocol, val_limit)
    model.eval()
    levels = collect_levels(model, sweep, info, device=device)
    train = levels[sweep.train_condition]
    if len(train.factors) < 2:
        raise UserError(f"{protocol.name}: the training images are too small for two pyramid levels; nothing to choose")
    best_log2 = best_level_log2(train.logits, train.labels, train.factors)
    model.scale_probe.reset()
    confidence = dict(_head_accuracies(model, levels))
    model.scale_probe.fit(train.pooled.to(model.scale_probe.weight.device), train.factors, ridge, best_log2, band)
    probe = dict(_head_accuracies(model, levels))
    conditions = list(levels)
    result = Calibration(
        band=band,
        best_factor=2.0**best_log2,
        fit_images=len(train.labels),
        conditions=[c if isinstance(c, (int, float, str)) else str(c) for c in conditions],
        confidence=[round(confidence[c], 2) for c in conditions],
        probe=[round(probe[c], 2) for c in conditions],
        condition_name=protocol.condition_name,
    )
    result.kept = keep == "always" or result.improves
    if not result.kept:
        model.scale_probe.reset()
    return result


def calibrate_checkpoint(
    path: str | Path,
    *,
    band: float = DEFAULT_BAND,
    ridge: float = 1.0,
    val_limit: int | None = 1000,
    keep: KeepPolicy = "auto",
    device: str | torch.device = "cpu",
) -> tuple[Path, Calibration]:
    """:func:`calibrate_model` on a run directory (its ``best`` checkpoint) or ``.safetensors`` file, rewritten in
    place (atomically) with the probe and, in its metadata, the :class:`Calibration` record. Returns the file and
    the record."""
    from msresnet.data import build_protocol
    from msresnet.engine.checkpoint import load_checkpoint

    file = resolve_checkpoint(path)
    with hold_checkpoint(file, "calibrate"):
        loaded = load_checkpoint(file, device=device)
        model, info = loaded.model, loaded.info
        require_calibratable(model, name=loaded.name)
        if not info.protocol:
            raise UserError(f"{file} does not say which protocol it was trained on; nothing to calibrate against")
        protocol = build_protocol(info.protocol, root=info.data_root, **(info.protocol_params or {}))
        result = calibrate_model(
            model, protocol, info, band=band, ridge=ridge, val_limit=val_limit, keep=keep, device=device
        )
        info.scale_probe = result.to_dict()
        save_weights(file, model, info)
    return file, result


def remove_calibration(path: str | Path) -> Path:
    """Reset the probe of a checkpoint (back to the most confident level) and rewrite it atomically."""
    from msresnet.engine.checkpoint import load_checkpoint

    file = resolve_checkpoint(path)
    with hold_checkpoint(file, "calibrate --remove"):
        loaded = load_checkpoint(file)
        model, info = loaded.model, loaded.info
        require_calibratable(model, name=loaded.name)
        model.scale_probe.reset()
        info.scale_probe = None
        save_weights(file, model, info)
    return file


def format_calibration(result: Calibration) -> str:
    """A small table: validation accuracy per condition with each rule, the means, and the decision."""
    head = result.condition_name or "condition"
    width = max(len(head), len("worst"), *(len(_label(c)) for c in result.conditions))
    lines = [f"{head:<{width}}  most confident  with probe"]
    for c, a, b in zip(result.conditions, result.confidence, result.probe, strict=True):
        lines.append(f"{_label(c):<{width}}  {a:14.1f}  {b:10.1f}")
    lines.append(f"{'mean':<{width}}  {result.confidence_mean:14.1f}  {result.probe_mean:10.1f}")
    lines.append(f"{'worst':<{width}}  {min(result.confidence):14.1f}  {min(result.probe):10.1f}")
    verdict = "kept" if result.kept else "not kept (validation: no higher mean, or a lower worst condition)"
    lines.append(
        f"probe fitted on {result.fit_images} validation images at the training condition; best level factor "
        f"{result.best_factor:.3g}, band {result.band:g} octaves: {verdict}"
    )
    return "\n".join(lines)


def _label(condition: Any) -> str:
    return f"{condition:g}" if isinstance(condition, float) and not math.isnan(condition) else str(condition)
