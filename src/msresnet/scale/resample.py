"""One batched, antialiased zoom with a factor and a centre per image: the canonicaliser's resampler.

``zoom(x, span, size, centre=c)`` resamples every image ``b`` of ``x`` into an output canvas of ``size`` pixels
showing the window of the input that is ``span[b]`` times the input's extent, centred at ``c[b]`` (default: the
input's centre; ``span`` 1: the whole input; 0.5: its central half, enlarged; 2: the input shrunk to half inside the
canvas, the rest filled as ``padding`` says: ``"auto"`` (per image: where the image's edge is flat, its edge
colour, so an object alone on a plain canvas stays alone on that canvas; where the edge is textured, the image
mirrored, so a shrunk scene continues its scene); ``"reflection"``; ``"border"`` replicates the edge pixels, streaks
that mark the shrink on any textured edge; ``"zeros"``). The zoom is isotropic in pixels whatever the two aspect
ratios: the input pixel step per output pixel is ``span * sqrt(H_in W_in / (H_out W_out))``.

Antialiasing is mipmapping: a cheap pyramid of 2x2 average pools of the input, sampled bilinearly by
``grid_sample`` at the level of detail that matches each image's pixel step, linearly blended between the two
nearest levels. Everything is tensor arithmetic on the input's shape, so the module traces to ONNX (GridSample,
AveragePool) with dynamic batch, height and width; eager calls skip the levels no image needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["FLAT_EDGE", "LEVELS", "PADDINGS", "flat_edge", "image_size", "pixel_step", "window_extent", "zoom"]

LEVELS = 4
"""Mip levels (full, 1/2, 1/4, 1/8): shrinking beyond 8x by one call is filtered as if by 8x."""


PADDINGS = ("auto", "reflection", "border", "zeros")

FLAT_EDGE = 0.1
"""``"auto"`` padding: an edge whose pixels vary by less than this standard deviation (in the input's units: a
normalised image's, about 1/40 of the raw range) is a plain canvas and is extended with its own colour."""


def _tracing() -> bool:
    """A graph is being recorded (ONNX, fx, ``torch.export``/``compile``): no Python decisions on tensor values."""
    return (
        torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
        or torch.compiler.is_compiling()
    )


def image_size(x: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` of ``x`` as a float tensor on the CPU (a traced shape under ONNX export and a symbolic one under
    ``torch.export``, so sizes stay dynamic)."""
    if torch.compiler.is_compiling():  # torch.export has no kernel for _shape_as_tensor; it records this symbolically
        return torch.tensor(x.shape[-2:], dtype=torch.float32)
    return torch._shape_as_tensor(x)[-2:].to(torch.float32)


def pixel_step(span: torch.Tensor, size_in: torch.Tensor, size_out: torch.Tensor) -> torch.Tensor:
    """Input pixels per output pixel ``[B]`` for a zoom of ``span`` from ``size_in`` to ``size_out`` (H, W)."""
    return span * (size_in.prod() / size_out.prod()).sqrt()


def window_extent(span: torch.Tensor, size_in: torch.Tensor, size_out: torch.Tensor) -> torch.Tensor:
    """``[B, 2]`` half-extent ``(x, y)`` of each zoom's window in the input's normalised coordinates (1: the whole
    input's axis)."""
    step = pixel_step(span, size_in, size_out).view(-1, 1)
    return step * torch.stack([size_out[1] / size_in[1], size_out[0] / size_in[0]]).view(1, 2)


def flat_edge(x: torch.Tensor, width: int = 2) -> torch.Tensor:
    """``[B]`` bool: the outermost ``width`` pixels of each image of ``x`` ``[B, C, H, W]`` are one colour (their
    standard deviation, the largest over channels, below :data:`FLAT_EDGE`)."""
    w = width  # (no Python arithmetic on the shape: the rows and columns overlap in an image under 2 * width)
    ring = torch.cat([x[..., :w, :].flatten(2), x[..., -w:, :].flatten(2), x[..., :, :w].flatten(2),
                      x[..., :, -w:].flatten(2)], dim=2)  # fmt: skip
    return ring.float().std(dim=2).amax(dim=1) < FLAT_EDGE


def _auto(x: torch.Tensor) -> tuple[str, torch.Tensor | None]:
    """``"auto"`` padding resolved for a batch: one padding mode when every image takes the same (eager), else
    ``"auto"`` with the per-image choice (``flat``: edge colour, else mirrored)."""
    flat = flat_edge(x)
    if not _tracing():
        if bool(flat.all()):
            return "border", None
        if not bool(flat.any()):
            return "reflection", None
    return "auto", flat


def _sample(level: torch.Tensor, grid: torch.Tensor, padding: str, flat: torch.Tensor | None) -> torch.Tensor:
    """``grid_sample`` with ``padding``; ``"auto"``: edge colour where ``flat``, mirrored elsewhere."""
    if padding != "auto":
        return F.grid_sample(level, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    assert flat is not None  # "auto" always comes with its per-image choice
    plain, mirrored = _sample(level, grid, "border", None), _sample(level, grid, "reflection", None)
    return torch.where(flat.view(-1, 1, 1, 1), plain, mirrored)


def _axis(n: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1] (``align_corners=False``) of an axis of ``n`` pixels."""
    if isinstance(n, int):
        idx = like.new_ones(n).cumsum(0) - 1  # arange in ``like``'s dtype and device, from a method fx can record
        return (2 * idx + 1) / n - 1
    # a dynamic length: a cumulative sum of ones along the input's own axis traces to ONNX without a Range op
    ones = torch.ones_like(like)
    idx = ones.cumsum(0) - 1
    return (2 * idx + 1) / n.to(like.dtype) - 1


def zoom(
    x: torch.Tensor,
    span: torch.Tensor,
    size: Sequence[int] | None = None,
    *,
    centre: torch.Tensor | None = None,
    padding: str = "border",
    levels: int = LEVELS,
) -> torch.Tensor:
    """Resample each image of ``x`` ``[B, C, H, W]`` by its own ``span[b]`` into a ``size`` canvas (see module).

    Args:
        x: images (any normalisation).
        span: ``[B]`` positive, the input extent shown by the canvas (> 1 shrinks the content, < 1 enlarges it).
        size: output ``(H, W)``; ``None``: the input's own size (dynamic under ONNX export).
        centre: ``[B, 2]`` window centres ``(x, y)`` in the input's normalised coordinates ([-1, 1] spans the
            input); ``None``: the input's centre.
        padding: what the canvas shows outside the input: ``"auto"``, ``"reflection"``, ``"border"`` or ``"zeros"``
            (see the module docstring).
        levels: mip levels used for antialiasing when shrinking.

    Returns:
        ``[B, C, H_out, W_out]``.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    padding, flat = _auto(x) if padding == "auto" else (padding, None)
    size_in = image_size(x)
    if size is None:
        ys, xs = _axis(size_in[0], x[0, 0, :, 0]), _axis(size_in[1], x[0, 0, 0, :])
        size_out = size_in
    else:
        h_out, w_out = int(size[0]), int(size[1])
        ys, xs = _axis(h_out, x), _axis(w_out, x)
        size_out = x.new_tensor([h_out, w_out], dtype=torch.float32)
    span = span.to(x.dtype).reshape(-1)
    step = pixel_step(span, size_in, size_out)  # [B]
    # normalised input coordinate of each output pixel: u_in = u_out * step * n_out / n_in, per axis
    sy = (step * size_out[0] / size_in[0]).view(-1, 1, 1)
    sx = (step * size_out[1] / size_in[1]).view(-1, 1, 1)
    gy = ys.view(1, -1, 1) * sy
    gx = xs.view(1, 1, -1) * sx
    if centre is not None:
        c = centre.to(x.dtype).reshape(-1, 2)
        gx, gy = gx + c[:, 0].view(-1, 1, 1), gy + c[:, 1].view(-1, 1, 1)
    grid = torch.stack([gx.expand(-1, gy.shape[1], -1), gy.expand(-1, -1, gx.shape[2])], dim=-1)
    lod = torch.log2(step.clamp_min(1.0)).clamp(max=float(levels - 1))  # [B] level of detail
    first, n_levels = 0, levels
    if not _tracing() and lod.numel():  # eager: sample only the levels some image needs
        lo, hi = torch.stack([lod.min(), lod.max()]).tolist()
        first, n_levels = int(math.floor(lo)), min(levels, int(math.ceil(hi)) + 1)
    out = None
    level = x
    for k in range(n_levels):
        if k:
            level = F.avg_pool2d(level, 2, ceil_mode=True, count_include_pad=False)
        if k < first:
            continue
        sampled = _sample(level, grid, padding, flat)
        if first == n_levels - 1:  # every image at this one level (e.g. a 2x shrink): no blending
            return sampled
        w = (1.0 - (lod - k).abs()).clamp_min(0.0).view(-1, 1, 1, 1)
        out = sampled * w if out is None else out + sampled * w
    return out
