"""Export a trained classifier to ONNX or a ``torch.export`` program (``.pt2``), verified against the eager model.

The exported graph **includes the preprocessing**: it takes raw images scaled to [0, 1] (``float32 [B, C, H, W]``)
and returns logits; the checkpoint's geometry (fit and canvas, :class:`msresnet.preprocess.Preprocess`) and its
normalisation are inside, so a deployment needs no copy of the training mean/std or sizes. Batch, height and width
are dynamic (any size at or above the model's ``min_input_size``).

Before an export is reported as done, the file is loaded back (onnxruntime for ONNX, ``torch.export.load`` for
``.pt2``) and run at three input sizes; its outputs must match the eager model within ``1e-3`` relative to the
logits' magnitude (``max|a - b| <= 1e-3 * max(1, max|eager|)``). A mismatch raises :class:`ExportMismatchError`
and the file is removed, so a bad export never looks like a good one.

Pyramid models drop pyramid levels that would fall below their minimum size; an exported graph has the level set of
the 64x64 example it was traced with, so it is exact for inputs at least that large (smaller inputs keep running but
may then differ from the eager model, which would drop the coarsest level).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from msresnet.errors import UserError

if TYPE_CHECKING:
    from msresnet.preprocess import Preprocess

__all__ = [
    "CHECK_SIZES",
    "ExportCheck",
    "ExportMismatchError",
    "ExportUnsupportedError",
    "NormalizedClassifier",
    "export_model",
    "export_onnx",
    "export_pt2",
]

#: (H, W) sizes at which an export is compared with the eager model: square, non-square, larger than training.
CHECK_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (48, 80), (96, 96))
RTOL = 1e-3


class ExportMismatchError(RuntimeError):
    """The exported model does not reproduce the eager model (the file has been removed)."""


class ExportUnsupportedError(ExportMismatchError):
    """``torch.export`` cannot capture the model (nothing was written); the message points to ONNX."""


@dataclass
class ExportCheck:
    """Parity of the exported model with the eager one at one input size."""

    size: tuple[int, int]
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


class NormalizedClassifier(nn.Module):
    """``model((x - mean) / std)``: the deployable form that takes [0, 1] images."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        from msresnet.preprocess import Normalize

        super().__init__()
        self.model = model
        self.normalize = Normalize(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def _check_sizes(min_side: int) -> list[tuple[int, int]]:
    """The check sizes, raised to the model's minimum where needed (duplicates dropped)."""
    sizes: list[tuple[int, int]] = []
    for h, w in CHECK_SIZES:
        s = (max(h, min_side), max(w, min_side))
        if s not in sizes:
            sizes.append(s)
    return sizes


def _inputs(in_chans: int, sizes: Sequence[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # batch 2 so a graph that baked in the batch size fails the check
    return [torch.rand(2, in_chans, h, w, generator=g) for h, w in sizes]


def _compare(reference: torch.Tensor, got: np.ndarray | torch.Tensor, size: tuple[int, int]) -> ExportCheck:
    got_t = torch.as_tensor(np.asarray(got)) if not isinstance(got, torch.Tensor) else got
    if got_t.shape != reference.shape:
        return ExportCheck(size, float("inf"), 0.0)
    diff = (got_t.float() - reference.float()).abs().max().item()
    tol = RTOL * max(1.0, reference.abs().max().item())
    return ExportCheck(size, diff if np.isfinite(diff) else float("inf"), tol)


def _finish(path: Path, checks: list[ExportCheck], what: str) -> list[ExportCheck]:
    bad = [c for c in checks if not c.ok]
    if bad:
        with contextlib.suppress(OSError):
            path.unlink()
        detail = ", ".join(
            f"{c.size[0]}x{c.size[1]}: max abs diff {c.max_abs_diff:.3g} > {c.tolerance:.3g}" for c in bad
        )
        raise ExportMismatchError(f"{what} export does not match the eager model ({detail}); {path} removed")
    return checks


def _prepare_out(out: str | Path) -> Path:
    path = Path(out)
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name")
    if not path.parent.exists():
        raise UserError(f"output directory does not exist: {path.parent}")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"output directory is not writable: {path.parent}")
    return path


def _register_resize_symbolics() -> None:
    """Teach the TorchScript-based ONNX exporter the two resizes our models use that it lacks.

    * ``interpolate(..., mode="bilinear", antialias=True)`` (pyramid levels): ONNX has it since opset 18 as
      ``Resize(mode=linear, antialias=1)``;
    * ``interpolate(..., mode="nearest-exact")`` (aligning scale levels): ``Resize(mode=nearest)`` with half-pixel
      coordinates and ``round_prefer_ceil``, i.e. ``src = floor((dst + 0.5) * in / out)``, PyTorch's definition.

    Both reuse the exporter's own ``Resize`` builder (dynamic output size) and adjust its attributes; the parity
    check then confirms that onnxruntime computes what PyTorch does.
    """
    try:
        from torch.onnx._internal.torchscript_exporter import symbolic_helper
    except ImportError:  # another torch layout: the export then fails loudly for these models only
        return
    linear = symbolic_helper._interpolate_helper("upsample_bilinear2d", 4, "linear")
    nearest = symbolic_helper._interpolate_helper("upsample_nearest2d", 4, "nearest")

    def antialiased(g, input, output_size, *args):  # noqa: ANN001, ANN202 - exporter callback signature
        out = linear(g, input, output_size, *args)
        out.node().i_("antialias", 1)
        out.node().i_("exclude_outside", 1)  # PyTorch renormalises the filter over in-image pixels
        return out

    def nearest_exact(g, input, output_size, *args):  # noqa: ANN001, ANN202
        out = nearest(g, input, output_size, *args)
        out.node().s_("coordinate_transformation_mode", "half_pixel")
        out.node().s_("nearest_mode", "round_prefer_ceil")
        return out

    torch.onnx.register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", antialiased, 18)
    torch.onnx.register_custom_op_symbolic("aten::_upsample_nearest_exact2d", nearest_exact, 18)


def export_onnx(
    model: nn.Module,
    out: str | Path,
    *,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    opset: int = 18,
    check: bool = True,
) -> list[ExportCheck]:
    """Export to ONNX with dynamic batch, height and width, then verify it with onnxruntime.

    Uses the TorchScript-based exporter (``dynamo=False``): it records the shape arithmetic of adaptive pooling and
    of the pyramid models' ``interpolate`` calls as graph ops, so sizes stay dynamic in every model family.

    Args:
        model: the eager classifier (normalised input).
        out: the ``.onnx`` file to write.
        in_chans, mean, std: from the checkpoint; normalisation goes into the graph.
        opset: ONNX opset version (18 or later for the antialiased resizing of the pyramid models).
        check: compare with the eager model at :data:`CHECK_SIZES` (the file is removed on mismatch).

    Returns:
        One :class:`ExportCheck` per size (empty when ``check`` is False).
    """
    path = _prepare_out(out)
    min_side = int(getattr(model, "min_input_size", 1) or 1)
    wrapped = NormalizedClassifier(model, mean, std).eval()
    h0 = max(64, min_side)
    example = torch.rand(2, in_chans, h0, h0)
    tmp = path.with_name(path.name + ".tmp")
    _register_resize_symbolics()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings are about shapes we verify below
        torch.onnx.export(
            wrapped,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    os.replace(tmp, path)
    if not check:
        return []
    try:
        import onnxruntime as ort
    except ImportError:
        path.unlink()
        raise UserError("onnxruntime is needed to verify the ONNX export: pip install 'msresnet[onnx]'") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sizes = _check_sizes(min_side)
    checks = []
    with torch.no_grad():
        for size, x in zip(sizes, _inputs(in_chans, sizes), strict=True):
            ref = wrapped(x)
            (got,) = sess.run(["logits"], {"images": x.numpy()})
            checks.append(_compare(ref, got, size))
    return _finish(path, checks, "ONNX")


def export_pt2(
    model: nn.Module,
    out: str | Path,
    *,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    check: bool = True,
) -> list[ExportCheck]:
    """Export with ``torch.export`` to a ``.pt2`` program (``torch.export.save``), batch, height and width left
    dynamic where the model allows (``Dim.AUTO``), then load it back (``torch.export.load``) and verify it at
    :data:`CHECK_SIZES`. A size the program cannot take (a shape it specialised on) fails the check like a wrong
    output does."""
    from torch.export import Dim

    path = _prepare_out(out)
    min_side = int(getattr(model, "min_input_size", 1) or 1)
    wrapped = NormalizedClassifier(model, mean, std).eval()
    h0 = max(64, min_side)
    dims = {"x": {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}}
    example = torch.rand(2, in_chans, h0, h0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped(example)  # eager first: Python-side constants read from buffers (a trained canvas) are current
        try:
            program = torch.export.export(wrapped, (example,), dynamic_shapes=dims)
        except Exception as exc:  # noqa: BLE001 - whatever torch.export refuses, one line and the way out
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ExportUnsupportedError(
                f"torch.export cannot capture {type(model).__name__} ({why}); export it with --format onnx"
            ) from None
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, str(tmp))
    os.replace(tmp, path)
    if not check:
        return []
    loaded = torch.export.load(str(path)).module()
    sizes = _check_sizes(min_side)
    checks = []
    with torch.no_grad():
        for size, x in zip(sizes, _inputs(in_chans, sizes), strict=True):
            try:
                got = loaded(x)
            except (RuntimeError, AssertionError, ValueError):  # the program's shape guards refuse this size
                checks.append(ExportCheck(size, float("inf"), 0.0))
                continue
            checks.append(_compare(wrapped(x), got, size))
    return _finish(path, checks, "torch.export")


def export_model(
    model: nn.Module,
    out: str | Path,
    *,
    format: str,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    opset: int = 18,
    check: bool = True,
    preprocess: Preprocess | None = None,
) -> list[ExportCheck]:
    """Export in ``format`` (``onnx`` or ``pt2``); see :func:`export_onnx` / :func:`export_pt2`.

    With ``preprocess`` (the checkpoint's, ``load_model(run).preprocess``) its geometry and normalisation go into the
    graph (``mean`` / ``std`` are then taken from it), so the file takes raw [0, 1] images of any size, exactly as
    ``predict`` prepares them.
    """
    model = model.float().cpu().eval()
    if preprocess is not None:
        model = preprocess.deployable(model).eval()
        in_chans, mean, std = preprocess.in_chans, (0.0,) * preprocess.in_chans, (1.0,) * preprocess.in_chans
    if format == "onnx":
        return export_onnx(model, out, in_chans=in_chans, mean=mean, std=std, opset=opset, check=check)
    if format == "pt2":
        return export_pt2(model, out, in_chans=in_chans, mean=mean, std=std, check=check)
    if format == "torchscript":
        raise UserError("TorchScript export was replaced by torch.export (deprecated in torch): use --format pt2")
    raise UserError(f"unknown export format {format!r}; choose onnx or pt2")
