"""``msresnet export``: a checkpoint as ONNX or TorchScript, checked against the eager model at two input sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msresnet.commands.common import info_value

__all__ = ["export_checkpoint", "input_description"]


def export_checkpoint(
    checkpoint: Path, out: str | Path, *, format: str = "onnx", opset: int = 18, check: bool = True
) -> tuple[list[Any], Any]:
    """Export ``checkpoint`` to ``out`` (its preprocessing inside); returns the parity checks and the loaded
    checkpoint.

    Raises:
        ExportMismatchError: the exported model's outputs differ from the eager model's beyond tolerance.
    """
    from msresnet.engine.checkpoint import load_checkpoint
    from msresnet.export import export_model

    loaded = load_checkpoint(checkpoint, device="cpu")
    info = loaded.info
    checks = export_model(
        loaded.model,
        out,
        format=format,
        in_chans=int(info_value(info, "in_chans")),
        mean=info_value(info, "mean"),
        std=info_value(info, "std"),
        opset=opset,
        check=check,
        preprocess=loaded.preprocess,
    )
    return checks, loaded


def input_description(loaded: Any) -> str:
    """What the model exported from a checkpoint (a :class:`~msresnet.engine.checkpoint.LoadedCheckpoint`) takes
    as input, and the preprocessing it does inside."""
    prep = loaded.preprocess
    inside = f"; inside: {prep.describe()}, normalised" if prep is not None else ""
    return f"float32 [B, {info_value(loaded.info, 'in_chans')}, H, W] in [0, 1]{inside}"
