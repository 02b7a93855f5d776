"""Any labelled image folder as an evaluation set for a trained model: ``msresnet evaluate RUN --data-dir DIR``.

:func:`build_folder_eval` reads ``DIR/<class>/<image>`` with the model's own preprocessing (the
:class:`~msresnet.preprocess.Preprocess` stored with its weights, the same one ``predict`` uses, so the two agree
image for image), maps the folder's class names onto the model's, and returns a protocol-like object that
:func:`msresnet.evaluate.evaluate` runs, with the usual report and plot:

* no sweep: one condition, the images as they are (key ``1.0``, the training scale);
* ``sweep="scale"``: every prepared image's content rescaled by ``2^(k/4), k = -4..4`` inside its own canvas
  (:func:`~msresnet.data.scaling.rescale_in_canvas`), the ``*-ls`` benchmark's operation. Around a shrunk image
  the canvas is filled with that image's own border colour (the per-channel mean of its outermost pixels,
  :func:`~msresnet.evaluate.condition.border_fill`), not black: a photo's surroundings continue in their own
  colour, whereas a black frame would be an artefact present at every ``s < 1`` and nowhere else, measured as if
  it were scale;
* ``sweep="resolution"``: every prepared image resized whole by ``0.5 ... 4`` (the ``*-res`` operation), keyed by
  the image size in pixels when all images share one square size, else by the factor. Conditions that would make an
  image smaller than the model's minimum input size are left out.

Images of different prepared sizes (a native-size model on a folder of mixed sizes) are kept in one group per size
(:class:`ImageGroups`), never padded or resized to a common size.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from msresnet.data.datasets import ImageTensorDataset
from msresnet.data.folder import BadImageWarning, scan_image_folder
from msresnet.data.images import BadImageError, bomb_warnings_as_errors
from msresnet.errors import UserError
from msresnet.evaluate.condition import Condition, Kind, border_fill
from msresnet.preprocess import Preprocess

__all__ = ["SWEEPS", "FolderEval", "ImageGroups", "border_fill", "build_folder_eval", "rescale_on_background"]

SWEEPS = ("scale", "resolution")
SCALES = [2 ** (k / 4) for k in range(-4, 5)]
RESIZE_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
FACTORS = {Kind.SCALE: SCALES, Kind.RESOLUTION: RESIZE_FACTORS}  # each sweep's factors
_CHUNK = 2048


class ImageGroups:
    """One evaluation condition made of several same-size groups (``groups``: list of ImageTensorDataset)."""

    def __init__(self, groups: Sequence[ImageTensorDataset]) -> None:
        self.groups = list(groups)

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)


class FolderEval:
    """Protocol-like evaluation set (the attributes :func:`~msresnet.evaluate.evaluate` reads)."""

    def __init__(self, name: str, params: dict[str, Any], condition_name: str, train_condition: Any,
                 test: dict[Any, ImageGroups], preprocess: Preprocess, class_names: list[str]) -> None:  # fmt: skip
        self.name, self.params, self.condition_name = name, params, condition_name
        self.train_condition, self.test = train_condition, test
        self.in_chans, self.mean, self.std = preprocess.in_chans, preprocess.mean, preprocess.std
        self.class_names, self.num_classes = class_names, len(class_names)
        self.input_size = preprocess.output_size


def rescale_on_background(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The folder scale sweep's operation: the object rescaled by ``scale`` in its canvas, surrounded by the
    image's own border colour (:meth:`~msresnet.evaluate.condition.Condition.apply` with ``fill="border"``)."""
    return Condition(Kind.SCALE, float(scale)).apply(x, fill="border")


def _map_groups(groups: list[ImageTensorDataset], fn) -> list[ImageTensorDataset]:
    out = []
    for g in groups:
        parts = []
        for start in range(0, len(g), _CHUNK):
            x = g.images[start : start + _CHUNK].float().div_(255)
            parts.append(fn(x).mul_(255).round_().clamp_(0, 255).to(torch.uint8))
        out.append(ImageTensorDataset(torch.cat(parts), g.labels, g.class_names))
    return out


def _read(samples: list[tuple[str, int]], preprocess: Preprocess, min_side: int, max_side: int | None,
          max_pixels: int | None, strict: bool, root: Path, names: list[str]) -> list[ImageTensorDataset]:  # fmt: skip
    """Each image prepared as ``predict`` prepares it, grouped by prepared size; bad files skipped and reported."""
    from msresnet.predict import prepare_unit

    def one(item: tuple[str, int]) -> torch.Tensor | BadImageError:
        try:
            x, _ = prepare_unit(item[0], preprocess, min_side=min_side, max_side=max_side)
        except BadImageError as e:
            return e
        return x[0].mul_(255).round_().clamp_(0, 255).to(torch.uint8)

    with bomb_warnings_as_errors(), ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, samples, chunksize=16))
    bad = [r for r in results if isinstance(r, BadImageError)]
    if bad and strict:
        raise bad[0]
    if bad:
        first = "; ".join(f"{Path(e.path).name} ({e.reason})" for e in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        warnings.warn(f"skipped {len(bad)} of {len(samples)} images in {root}: {first}{more}", BadImageWarning, 3)
    by_size: dict[tuple[int, ...], list[tuple[torch.Tensor, int]]] = defaultdict(list)
    for r, (_, t) in zip(results, samples, strict=True):
        if not isinstance(r, BadImageError):
            by_size[tuple(r.shape)].append((r, t))
    if not by_size:
        raise UserError(f"no readable images in {root}")
    return [ImageTensorDataset(torch.stack([x for x, _ in items]), torch.tensor([t for _, t in items]), names)
            for _, items in sorted(by_size.items())]  # fmt: skip


def build_folder_eval(
    root: str | os.PathLike,
    preprocess: Preprocess,
    class_names: Sequence[str],
    *,
    sweep: str | None = None,
    min_side: int = 1,
    max_side: int | None = 1024,
    max_pixels: int | None = None,
    strict: bool = False,
) -> FolderEval:
    """Read the labelled folder ``root`` for a model with this preprocessing and these classes.

    Args:
        root: ``root/<class>/<image>``; every class must be one of the model's (a subset is fine).
        preprocess: the model's preprocessing (``load_model(run).preprocess``).
        class_names: the model's classes, index = output.
        sweep: None, ``"scale"`` or ``"resolution"`` (see the module docstring).
        min_side, max_side: ``predict``'s bounds on native-size inputs (the model's ``min_input_size`` and 1024).
        max_pixels, strict: as for the training folders.

    Raises:
        UserError: no class folders or images, classes the model does not know, unknown sweep.
    """
    if sweep is not None and sweep not in SWEEPS:
        raise UserError(f"--sweep must be one of {', '.join(SWEEPS)}, not {sweep!r}")
    if preprocess is None:
        raise UserError("this model takes neither 1 nor 3 channels: its images cannot be prepared from files")
    root = Path(root).expanduser()
    names = list(class_names)
    if not names:
        raise UserError("the checkpoint records no class names, so a labelled folder cannot be matched to it")
    samples, classes = scan_image_folder(root)
    unknown = [c for c in classes if c not in names]
    if unknown:
        known = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        raise UserError(f"{root} has classes the model does not know: {', '.join(unknown[:5])} (its classes: {known})")
    samples = [(path, names.index(classes[t])) for path, t in samples]
    groups = _read(samples, preprocess, min_side, max_side, max_pixels, strict, root, names)
    params = {"root": str(root.resolve()), "sweep": sweep, "preprocess": preprocess.to_dict()}
    name = root.resolve().name + (f"-{sweep}" if sweep else "")
    if sweep is None:
        return FolderEval(name, params, "scale", 1.0, {1.0: ImageGroups(groups)}, preprocess, names)
    shapes = {tuple(g.images.shape[-2:]) for g in groups}
    square = next(iter(shapes)) if len(shapes) == 1 and len(set(next(iter(shapes)))) == 1 else None
    smallest = min(min(s) for s in shapes)
    kind = Kind.of(sweep)
    conditions = Condition.sweep(kind, FACTORS[kind], square)
    conditions = [c for c in conditions if kind.fits(smallest, c.factor, min_side)]  # none below the model's minimum
    if not conditions:
        raise UserError(f"the images of {root} are too small for a resolution sweep (model minimum {min_side} px)")
    test = {c.key: ImageGroups(_map_groups(groups, lambda x, c=c: c.apply(x, fill="border"))) for c in conditions}
    train = next(c.key for c in conditions if c.factor == 1.0)
    return FolderEval(name, params, conditions[0].name, train, test, preprocess, names)
