"""``msresnet calibrate``: fit (or remove) a pyramid model's object-scale probe in a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msresnet.commands.common import resolve_device
from msresnet.errors import UserError

__all__ = ["calibrate_command"]


def calibrate_command(
    checkpoint: Path, *, band: float, val_limit: int | None, keep: str = "auto", device: str | None = "auto"
) -> tuple[Path, Any]:
    """Check the options, then ``calibrate_checkpoint``; returns the file written and the calibration record.

    Raises:
        UserError: a band that is not positive, fewer than 10 validation images, or an uncalibratable model.
    """
    from msresnet.engine.calibrate import calibrate_checkpoint

    if not band > 0:
        raise UserError(f"--band must be > 0 octaves, got {band}")
    if val_limit is not None and val_limit < 10:
        raise UserError(f"--val-limit must be at least 10, got {val_limit}")
    return calibrate_checkpoint(checkpoint, band=band, val_limit=val_limit, keep=keep, device=resolve_device(device))
