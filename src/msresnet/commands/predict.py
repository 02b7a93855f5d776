"""``msresnet predict``: classify image files or folders with a trained checkpoint, and say which inputs failed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from msresnet.commands.common import PROG, info_value, resolve_device
from msresnet.errors import UserError

__all__ = ["predict_checkpoint", "print_predictions", "stream_prediction"]


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
    on_prediction: Any = None,
) -> Any:
    """Load ``checkpoint`` and classify ``images`` with its own preprocessing (``native_size``: its geometry
    dropped, every image at its own size); returns the ``predict_files`` result (predictions, failures, ignored
    files and the exit code). ``on_prediction`` is called with each prediction as soon as it is made.

    Raises:
        UserError: a batch size below 1, or a checkpoint that cannot be loaded.
    """
    from msresnet.engine.checkpoint import load_checkpoint
    from msresnet.predict import predict_files

    device = resolve_device(device)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    loaded = load_checkpoint(checkpoint, device=device)
    info = loaded.info
    return predict_files(
        loaded.model,
        images,
        in_chans=int(info_value(info, "in_chans")),
        mean=info_value(info, "mean"),
        std=info_value(info, "std"),
        class_names=loaded.class_names,
        topk=topk,
        tta=tta,
        device=device,
        batch_size=batch_size,
        max_side=max_side or None,
        preprocess=_preprocess(loaded.preprocess, native_size),
        on_prediction=on_prediction,
    )


def _preprocess(prep: Any, native: bool) -> Any:
    """The checkpoint's preprocessing; with ``native`` its geometry is dropped (images at their own size)."""
    import dataclasses

    return dataclasses.replace(prep, policy="native", size=None, canvas=None) if prep and native else prep


def stream_prediction(prediction: Any) -> None:
    """One image's lines on stdout, flushed at once (``predict`` prints as it goes, not at the end)."""
    from msresnet.predict import format_prediction

    print(format_prediction(prediction), flush=True)


def print_predictions(result: Any, *, as_json: bool = False, streamed: bool = False) -> None:
    """Predictions on stdout (text or JSON; none when ``streamed`` printed them already); failures, ignored files
    and the tally on stderr."""
    from msresnet.predict import format_text

    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    elif result.predictions and not streamed:
        print(format_text(result))
    for f in result.failures:
        print(f"{PROG}: error: {f.path}: {f.reason}", file=sys.stderr)
    if result.ignored:
        print(f"{PROG}: note: ignored {len(result.ignored)} file(s) without an image extension", file=sys.stderr)
    if result.failures:
        n_ok, n_bad = len(result.predictions), len(result.failures)
        print(f"{PROG}: {n_ok} classified, {n_bad} failed", file=sys.stderr)
