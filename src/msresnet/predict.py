"""Classify image files of any size and mode with a trained checkpoint (``msresnet predict``).

Input policy (why): an image is prepared by the checkpoint's own :class:`~msresnet.preprocess.Preprocess`, the
geometry the model was trained with: a model trained on a folder of same-size images (or at native size) takes each
image **at its own size** -- every classifier ends in global pooling, and resizing would itself change the object
scale this library is about; a model trained on fitted images (``--input-size``, ``folder-res``) gets the same fit;
a model trained on a ``*-ls`` benchmark gets its object fitted and centred on the training canvas. At native size
two bounds apply: an image smaller than the model's ``min_input_size`` is enlarged (aspect kept) until it fits, and
one whose longer side exceeds ``max_side`` (default 1024 px) is shrunk (aspect kept, antialiased) to bound time and
memory. The image is converted to the checkpoint's channel mode (16-bit, palette, RGBA and CMYK handled by
:func:`msresnet.data.images.load_image`), scaled to [0, 1] and normalised with the checkpoint's mean/std.
Fashion-MNIST models saw light objects on a black background; photos of dark objects on white are out of their
distribution.

Bad files never stop a run: each is reported by name with the reason and the good ones are still classified.
:attr:`PredictResult.exit_code` is 0 when every image was classified, 1 when some failed and 2 when none could be.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from msresnet.errors import UserError

if TYPE_CHECKING:
    from msresnet.preprocess import Preprocess

__all__ = [
    "ImageFailure",
    "ImagePrediction",
    "PredictResult",
    "expand_inputs",
    "predict_files",
    "format_prediction",
    "format_text",
    "prepare_image",
    "prepare_unit",
]


@dataclass
class ImagePrediction:
    """Top-k classes for one image (probabilities from the softmax, highest first)."""

    path: str
    width: int
    height: int
    input_size: tuple[int, int]  # (H, W) actually fed to the model
    top: list[dict[str, Any]]
    object_scale: float | None = None  # scale-aware models: the object's size relative to the training objects


@dataclass
class ImageFailure:
    """An input that could not be classified, with the reason in words."""

    path: str
    reason: str


@dataclass
class PredictResult:
    """Predictions and failures of one ``predict`` call."""

    predictions: list[ImagePrediction] = field(default_factory=list)
    failures: list[ImageFailure] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # non-image files skipped while expanding directories

    @property
    def exit_code(self) -> int:
        """0: all classified; 1: some inputs failed; 2: nothing could be classified."""
        if not self.failures:
            return 0
        return 1 if self.predictions else 2

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: ``results`` (path, size, top-k) and ``errors`` (path, reason)."""
        return {
            "results": [asdict(p) | {"input_size": list(p.input_size)} for p in self.predictions],
            "errors": [asdict(f) for f in self.failures],
            "ignored": list(self.ignored),
        }


# The most pixels one image may be fed to a model with at its own size (``--max-side 0`` or a large ``--max-side``):
# a 7000 x 7000 photo would take gigabytes per activation map of even the smallest network.
MAX_INPUT_PIXELS = 2048 * 2048


def _image_suffixes() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def expand_inputs(args: Sequence[str | Path]) -> tuple[list[Path], list[ImageFailure], list[str]]:
    """Turn the command-line arguments into image files.

    A file is taken as given (whatever its extension, so a mislabelled file gets a clear reason later). A directory
    expands recursively to the files with an image extension known to Pillow, sorted; other files in it are
    returned as ``ignored``. Hidden files are skipped.

    Returns:
        (files to try, failures for unusable arguments, ignored paths)
    """
    from msresnet.data.walk import walk_files

    suffixes = _image_suffixes()
    files: list[Path] = []
    failures: list[ImageFailure] = []
    ignored: list[str] = []
    for raw in args:
        p = Path(raw)
        if p.is_dir():
            found = []
            for f in sorted(walk_files(p, skip_hidden=True)):  # no symlink loops, nothing outside the folder
                if not f.is_file():
                    continue
                (found if f.suffix.lower() in suffixes else ignored).append(f)  # type: ignore[arg-type]
            if not found:
                failures.append(ImageFailure(str(p), "directory holds no image files"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif p.exists():
            failures.append(ImageFailure(str(p), "not a regular file"))
        else:
            failures.append(ImageFailure(str(p), "no such file or directory"))
    return files, failures, [str(x) for x in ignored]


def _fit_size(h: int, w: int, min_side: int, max_side: int | None) -> tuple[int, int]:
    """Size after the input policy: enlarge to ``min_side``, shrink to ``max_side`` (aspect ratio kept)."""
    scale = 1.0
    if min(h, w) < min_side:
        scale = min_side / min(h, w)
    if max_side and max(h, w) * scale > max_side:
        scale = max_side / max(h, w)
    if scale == 1.0:
        return h, w
    return max(min_side, round(h * scale)), max(min_side, round(w * scale))


def _native_preprocess(in_chans: int | None, mean: Sequence[float] | None, std: Sequence[float] | None) -> Preprocess:
    """A native-size :class:`Preprocess` from bare statistics (callers that pass no preprocessing object)."""
    from msresnet.preprocess import Preprocess

    if in_chans not in (1, 3):
        raise UserError(f"predict supports checkpoints with 1 or 3 input channels, not {in_chans}")
    if mean is None or std is None:
        raise UserError("predict needs the checkpoint's preprocessing (or its mean and std)")
    return Preprocess(mode="L" if in_chans == 1 else "RGB", mean=tuple(mean), std=tuple(std))


def prepare_unit(
    path: str | Path, preprocess: Preprocess, *, min_side: int = 1, max_side: int | None = 1024
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Load one image file and apply ``preprocess``'s geometry: float ``[1, C, H, W]`` in [0, 1], not normalised.

    At native size the ``min_side`` / ``max_side`` bounds of the input policy apply (antialiased bilinear resize,
    the same op as the resolution sweeps).

    Returns:
        (tensor, original (width, height))

    Raises:
        BadImageError: the file is not a usable image (the reason is in the message).
    """
    from msresnet.data.images import BadImageError
    from msresnet.data.scaling import resize_images

    img = preprocess.load(path)
    width, height = img.size
    size = _fit_size(height, width, min_side, max_side) if preprocess.policy == "native" else None
    if size is not None and size[0] * size[1] > MAX_INPUT_PIXELS:
        raise BadImageError(
            path,
            f"{size[1]}x{size[0]} px is over the {MAX_INPUT_PIXELS:,} pixels one model input may have "
            "(let --max-side shrink it)",
        )
    x = preprocess.to_unit(img).unsqueeze(0)
    if size is not None and size != (height, width):
        x = resize_images(x, size)
    return x, (width, height)


def prepare_image(
    path: str | Path,
    *,
    in_chans: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    min_side: int = 1,
    max_side: int | None = 1024,
    preprocess: Preprocess | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Load one image file and turn it into a normalised float tensor ``[1, C, H, W]``.

    ``preprocess`` (the checkpoint's, ``load_model(run).preprocess``) gives the geometry and statistics; without
    it the image is used at native size with ``in_chans`` / ``mean`` / ``std``.

    Returns:
        (tensor, original (width, height))

    Raises:
        BadImageError: the file is not a usable image (the reason is in the message).
    """
    prep = preprocess or _native_preprocess(in_chans, mean, std)
    x, wh = prepare_unit(path, prep, min_side=min_side, max_side=max_side)
    return prep.normalize(x), wh


def _topk(probs: torch.Tensor, k: int, class_names: Sequence[str]) -> list[list[dict[str, Any]]]:
    k = min(k, probs.shape[-1])
    values, indices = probs.topk(k, dim=-1)
    out = []
    for vals, idxs in zip(values.tolist(), indices.tolist(), strict=True):
        out.append(
            [
                {
                    "rank": r + 1,
                    "index": i,
                    "class": class_names[i] if i < len(class_names) else str(i),
                    "prob": round(v, 6),
                }
                for r, (v, i) in enumerate(zip(vals, idxs, strict=True))
            ]
        )
    return out


def predict_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    *,
    in_chans: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str],
    topk: int = 5,
    tta: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    max_side: int | None = 1024,
    preprocess: Preprocess | None = None,
    on_prediction: Callable[[ImagePrediction], None] | None = None,
) -> PredictResult:
    """Classify image files and directories of images.

    Files are taken ``batch_size`` at a time in input order; within such a window images of the same prepared size
    are batched together and other sizes run one size at a time, so any mix of sizes works and each window's
    predictions are out (``on_prediction``, in input order) before the next window is read.

    Args:
        model: a classifier in eval mode (normalised input, logits out).
        inputs: files and directories (expanded by :func:`expand_inputs`).
        in_chans, mean, std, class_names: from the checkpoint (``in_chans`` / ``mean`` / ``std`` only without
            ``preprocess``).
        topk: classes reported per image.
        tta: average the softmax over whole-image rescalings by ``2**-0.5, 1, 2**0.5``, as ``evaluate --tta``
            does (:func:`msresnet.evaluate.predict_probs`).
        device: where the model runs.
        batch_size: images per forward pass.
        max_side: longest side fed to the model at native size (larger images are shrunk); None keeps every image
            as is.
        preprocess: the checkpoint's preprocessing (``load_checkpoint(run).preprocess``); without it, native size.
        on_prediction: called with each prediction as soon as its window is done (streaming output).

    Returns:
        The predictions (input order) and failures.
    """
    if topk < 1:
        raise UserError(f"--topk must be at least 1, got {topk}")
    files, failures, ignored = expand_inputs(list(inputs))
    result = PredictResult(failures=failures, ignored=ignored)
    min_side = int(getattr(model, "min_input_size", 1) or 1)
    if max_side is not None and max_side < min_side:
        raise UserError(f"--max-side {max_side} is below the model's minimum input size {min_side}")
    prep = preprocess or _native_preprocess(in_chans, mean, std)
    model.eval()
    for start in range(0, len(files), batch_size):
        window = _predict_window(model, files[start : start + batch_size], start, prep, min_side, max_side, topk, tta,
                                 device, class_names, result.failures)  # fmt: skip
        for p in window:
            result.predictions.append(p)
            if on_prediction is not None:
                on_prediction(p)
    return result


def _predict_window(
    model: nn.Module,
    files: list[Path],
    offset: int,
    prep: Preprocess,
    min_side: int,
    max_side: int | None,
    topk: int,
    tta: bool,
    device: str | torch.device,
    class_names: Sequence[str],
    failures: list[ImageFailure],
) -> list[ImagePrediction]:
    """The predictions of one window of files (input order); unreadable files and non-finite scores go to
    ``failures``."""
    from msresnet.data.images import BadImageError
    from msresnet.evaluate import predict_probs
    from msresnet.scan.sources import estimate_object_scale

    prepared: dict[tuple[int, ...], list[tuple[int, Path, torch.Tensor, tuple[int, int]]]] = defaultdict(list)
    for order, path in enumerate(files, start=offset):
        try:
            x, wh = prepare_image(path, min_side=min_side, max_side=max_side, preprocess=prep)
        except BadImageError as exc:
            failures.append(ImageFailure(str(path), getattr(exc, "reason", None) or str(exc)))
            continue
        except (OSError, UserError) as exc:  # permission denied, a file that vanished, ...
            reason = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
            failures.append(ImageFailure(str(path), reason))
            continue
        prepared[tuple(x.shape[1:])].append((order, path, x, wh))
    preds: list[tuple[int, ImagePrediction]] = []
    for shape, chunk in prepared.items():
        batch = torch.cat([x for _, _, x, _ in chunk]).to(device)
        probs = predict_probs(model, batch, tta=tta).cpu()
        if not torch.isfinite(probs).all():
            for _, path, _, _ in chunk:
                failures.append(ImageFailure(str(path), "the model produced non-finite scores"))
            continue
        est = estimate_object_scale(model, batch)  # None unless the model has estimate_scale
        tops = _topk(probs, topk, class_names)
        for i, ((order, path, _, (w, h)), top) in enumerate(zip(chunk, tops, strict=True)):
            scale = round(float(est[i]), 4) if est is not None and i < len(est) else None
            preds.append((order, ImagePrediction(str(path), w, h, (int(shape[-2]), int(shape[-1])), top, scale)))
    return [p for _, p in sorted(preds, key=lambda t: t[0])]


def format_prediction(p: ImagePrediction) -> str:
    """One image's block: path and size, then its top-k classes with percentages."""
    size = f"{p.width}x{p.height}"
    if (p.input_size[1], p.input_size[0]) != (p.width, p.height):
        size += f" -> {p.input_size[1]}x{p.input_size[0]}"
    lines = [f"{p.path} ({size})" + (f"  object x{p.object_scale:.2g}" if p.object_scale else "")]
    width = max(len(t["class"]) for t in p.top)
    for t in p.top:
        pct = 100.0 * t["prob"]
        lines.append(f"  {t['rank']}. {t['class']:<{width}}  {pct:6.2f}%" if math.isfinite(pct) else "")
    return "\n".join(lines)


def format_text(result: PredictResult) -> str:
    """Human-readable predictions: one block per image, top-k classes with percentages."""
    return "\n".join(format_prediction(p) for p in result.predictions)
