"""``msresnet export``: a checkpoint as ONNX or TorchScript, checked against the eager model at two input sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msresnet.commands.common import info_value

__all__ = ["export_checkpoint", "input_description"]


def export_checkpoint(
    checkpoint: Path, out: str | Path, *, format: str = "onnx", opset: int = 18, check: bool = True
) -> tuple[list[Any], Any]:
    """Export ``checkpoint`` to ``out`` (its preprocessing inside); returns the parity checks and the model.

    Raises:
        ExportMismatchError: the exported model's outputs differ from the eager model's beyond tolerance.
    """
    from msresnet.engine.checkpoint import load_model
    from msresnet.export import export_model

    model = load_model(checkpoint, device="cpu").eval()
    info = model.checkpoint_info
    checks = export_model(
        model,
        out,
        format=format,
        in_chans=int(info_value(info, "in_chans")),
        mean=info_value(info, "mean"),
        std=info_value(info, "std"),
        opset=opset,
        check=check,
        preprocess=getattr(model, "preprocess", None),
    )
    return checks, model


def input_description(model: Any) -> str:
    """What the model exported from a checkpoint takes as input, and the preprocessing it does inside."""
    prep = getattr(model, "preprocess", None)
    inside = f"; inside: {prep.describe()}, normalised" if prep is not None else ""
    return f"float32 [B, {info_value(model.checkpoint_info, 'in_chans')}, H, W] in [0, 1]{inside}"
