"""One scan from start to end: data, models, sweeps, outputs (what ``msresnet scan`` runs)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from msresnet.errors import UserError
from msresnet.scan.data import ScanData, load_folder, load_protocol
from msresnet.scan.sources import ModelSource, PreprocessOverrides, load_source, wrapped_source
from msresnet.scan.sweep import DEFAULT_RESOLUTIONS, DEFAULT_SCALES, conditions_for, run_sweeps

__all__ = ["run_scan"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _assign_checkpoints(specs: Sequence[str], checkpoints: Sequence[str]) -> list[str | None]:
    """The i-th ``--checkpoint`` goes to the i-th ``timm:``/``torchvision:`` model."""
    hub = [i for i, s in enumerate(specs) if s.startswith(("timm:", "torchvision:"))]
    if len(checkpoints) > len(hub):
        raise UserError(f"{len(checkpoints)} --checkpoint file(s) for {len(hub)} timm:/torchvision: model(s)")
    out: list[str | None] = [None] * len(specs)
    for i, c in zip(hub, checkpoints, strict=False):
        out[i] = c
    return out


def run_scan(
    specs: Sequence[str],
    out: str | Path,
    *,
    data_dir: str | None = None,
    protocol: str | None = None,
    protocol_params: dict[str, Any] | None = None,
    checkpoints: Sequence[str] = (),
    wrap: Sequence[str] = (),
    given: PreprocessOverrides | None = None,
    image_size: int | None = None,
    limit: int | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    batch_size: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Path]:
    """Scan ``specs`` (MODEL arguments) on a folder or a protocol's test split and write the report into ``out``.

    Args:
        specs: model specs (:func:`msresnet.scan.sources.load_source`).
        out: output directory (created).
        data_dir: labelled ImageFolder tree (or, with ``protocol``, the protocol's data directory).
        protocol: a protocol name whose test split is scanned instead of a folder.
        protocol_params: the protocol's parameters.
        checkpoints: weights for the ``timm:``/``torchvision:`` models, in order.
        wrap: scale methods; each torch model is also scanned as ``msresnet.wrap(model, method)``.
        given: preprocessing given by the user (wins over the models' own).
        image_size: native square size folder images are cut to (default: their median shorter side).
        limit: class-stratified number of images (None: all).
        scales, resolutions: the sweeps' factors.
        batch_size: images per forward pass.
        device: where torch models run.
        progress: show a progress bar on a terminal.

    Returns:
        Paths of ``json``, ``csv``, ``markdown`` and ``html``.

    Raises:
        UserError: bad model spec, data, option or output directory.
    """
    from msresnet.engine.batches import eval_batch_size
    from msresnet.scan.report import write_outputs

    if not specs:
        raise UserError("scan needs at least one MODEL")
    if data_dir is None and protocol is None:
        raise UserError("give --data-dir DIR (a labelled image folder) or --protocol NAME")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if any(s <= 0 for s in (*scales, *resolutions)):
        raise UserError("scale and resolution factors must be > 0")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror or e}") from None
    given = given or PreprocessOverrides()
    ckpts = _assign_checkpoints(specs, checkpoints)
    if protocol:
        data: ScanData = load_protocol(protocol, data_dir, protocol_params)
    else:
        data = load_folder(data_dir, image_size=image_size)
    for s in data.skipped:
        _log(f"msresnet: warning: skipped {s}")
    data = data.limit(limit)
    stats = data.stats()
    models: list[ModelSource] = []
    for spec, ckpt in zip(specs, ckpts, strict=True):
        src = load_source(spec, num_classes=data.num_classes, in_chans=data.in_chans, data_stats=stats,
                          checkpoint=ckpt, given=given, device=device, class_names=data.class_names)  # fmt: skip
        models.append(src)
        for method in wrap:
            if src.module is not None:
                models.append(wrapped_source(src, method))
    labels = [m.label for m in models]
    for i, m in enumerate(models):  # labels name columns and figures: make them unique
        if labels.count(m.label) > 1:
            m.label = f"{m.label} #{i + 1}"
    conditions = conditions_for(data.size, scales, resolutions)
    bs = batch_size or max(eval_batch_size(device), 64 if torch.device(device).type == "cpu" else 0)
    interpolation = given.interpolation or "bilinear"
    _log(f"scanning {len(models)} model(s) on {len(data.labels)} images x {len(conditions)} conditions")
    swept = run_sweeps(models, data, conditions, batch_size=bs, device=device, interpolation=interpolation,
                       progress=progress)  # fmt: skip
    factors: dict[str, list[float]] = {}  # each sweep's factors, as the settings record them
    for c in conditions:
        factors.setdefault(c.sweep_name, []).append(c.factor)
    settings = {"device": str(device), "batch_size": bs, "interpolation": interpolation, "limit": limit,
                "scales": factors.get("scale", []), "resolutions": factors.get("resolution", []),
                "wrap": list(wrap)}  # fmt: skip
    return write_outputs(out, models, data, swept, settings, conditions)
