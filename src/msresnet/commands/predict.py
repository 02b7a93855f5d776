"""``msresnet predict``: classify image files or folders with a trained checkpoint, and say which inputs failed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from msresnet.commands.common import PROG, info_value, resolve_device
from msresnet.errors import UserError

__all__ = ["predict_checkpoint", "print_predictions"]


def predict_checkpoint(
    checkpoint: Path,
    images: list[str],
    *,
    topk: int = 5,
    tta: bool = False,
    device: str | None = "auto",
    batch_size: int = 64,
    max_side: int | None = 1024,
    native_size: bool = False,
) -> Any:
    """Load ``checkpoint`` and classify ``images`` with its own preprocessing (``native_size``: its geometry
    dropped, every image at its own size); returns the ``predict_files`` result (predictions, failures, ignored
    files and the exit code).

    Raises:
        UserError: a batch size below 1, or a checkpoint that cannot be loaded.
    """
    from msresnet.engine.checkpoint import load_model
    from msresnet.predict import predict_files

    device = resolve_device(device)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    model = load_model(checkpoint, device=device).eval()
    info = model.checkpoint_info
    return predict_files(
        model,
        images,
        in_chans=int(info_value(info, "in_chans")),
        mean=info_value(info, "mean"),
        std=info_value(info, "std"),
        class_names=list(info_value(info, "class_names") or []),
        topk=topk,
        tta=tta,
        device=device,
        batch_size=batch_size,
        max_side=max_side or None,
        preprocess=_preprocess(model, native_size),
    )


def _preprocess(model: Any, native: bool) -> Any:
    """The checkpoint's preprocessing; with ``native`` its geometry is dropped (images at their own size)."""
    import dataclasses

    prep = getattr(model, "preprocess", None)
    return dataclasses.replace(prep, policy="native", size=None, canvas=None) if prep and native else prep


def print_predictions(result: Any, *, as_json: bool = False) -> None:
    """Predictions on stdout (text or JSON); failures, ignored files and the tally on stderr."""
    from msresnet.predict import format_text

    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    elif result.predictions:
        print(format_text(result))
    for f in result.failures:
        print(f"{PROG}: error: {f.path}: {f.reason}", file=sys.stderr)
    if result.ignored:
        print(f"{PROG}: note: ignored {len(result.ignored)} file(s) without an image extension", file=sys.stderr)
    if result.failures:
        n_ok, n_bad = len(result.predictions), len(result.failures)
        print(f"{PROG}: {n_ok} classified, {n_bad} failed", file=sys.stderr)
