"""Model-side image resizing: antialiased resize and an image pyramid.

The models and the scale-invariance loss resize with the same helper so "2x smaller" means the same thing
everywhere: bilinear interpolation with ``antialias=True`` when shrinking (a box-like prefilter, so a coarse pyramid
level is the image as a lower-resolution camera would have seen it, not an aliased subsample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.errors import UserError
from msresnet.layers._tracing import fx_tracing

__all__ = ["resize", "scaled_size", "center_crop", "ImagePyramid", "kept_scales"]


def _sym_round(v: torch.SymFloat) -> torch.SymInt:
    """Python's ``round`` (half to even) of a symbolic size in operations a ``torch.export`` program can store."""
    r = math.trunc(v + 0.5)
    return torch.sym_ite((r - v == 0.5) & (r % 2 == 1), r - 1, r)


def scaled_size(size: Sequence[int], factor: float) -> tuple[int, int]:
    """``(H, W)`` multiplied by ``factor`` and rounded, at least 1 pixel."""
    if isinstance(size[0], torch.Tensor):  # traced for ONNX export: keep the arithmetic in the graph (dynamic H, W)
        return tuple(torch.clamp(torch.round(s * factor), min=1).long() for s in size[:2])  # type: ignore[return-value]
    if isinstance(size[0], torch.SymInt):  # torch.export with dynamic sizes
        return tuple(torch.sym_max(1, _sym_round(s * factor)) for s in size[:2])  # type: ignore[return-value]
    return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))


def resize(
    x: torch.Tensor,
    size_or_factor: float | int | Sequence[int],
    antialias: bool = True,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resize a batch ``[B, C, H, W]``.

    Args:
        x: Images.
        size_or_factor: A float factor (``0.5`` halves H and W), an int size (square), or ``(H, W)``.
        antialias: Prefilter when shrinking (ignored by torch when enlarging).
        mode: ``"bilinear"`` or ``"bicubic"`` (antialias-capable modes) or ``"nearest"``.

    Returns:
        The resized batch; the input itself when the size does not change.
    """
    h, w = x.shape[-2:]
    if isinstance(size_or_factor, float):
        if size_or_factor <= 0:
            raise UserError(f"resize factor must be positive, got {size_or_factor}")
        size = scaled_size((h, w), size_or_factor)
    elif isinstance(size_or_factor, int):
        size = (size_or_factor, size_or_factor)
    else:
        # traced sizes (0-dim tensors, during export) stay tensors so the graph keeps them dynamic
        size = tuple(v if isinstance(v, torch.Tensor) else int(v) for v in size_or_factor[:2])  # type: ignore[assignment]
    if size == (h, w):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Central ``size = (H, W)`` window of ``x`` (no-op where ``x`` is already that small)."""
    h, w = x.shape[-2:]
    th, tw = min(size[0], h), min(size[1], w)
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top : top + th, left : left + tw]


def kept_scales(size: Sequence[int], scales: Sequence[float], min_size: int) -> list[float]:
    """The ``scales`` whose levels of an input of ``size = (H, W)`` are at least ``min_size``; the one closest to 1
    when none is."""
    kept = [s for s in scales if min(scaled_size(size, s)) >= min_size]
    return kept or [min(scales, key=lambda s: abs(s - 1.0))]


def _shrink(jitter: float, training: bool) -> float:
    """The jitter's common factor of one call (1 at evaluation); torch's RNG, so seeded runs repeat."""
    if training and jitter > 0:
        return 2.0 ** -float(torch.empty(()).uniform_(0.0, jitter))
    return 1.0


def _level(x: torch.Tensor, s: float, shrink: float, min_size: int, crop_upscaled: bool) -> torch.Tensor:
    size = x.shape[-2:]
    # a jittered level never falls below min_size (the coarsest kept level of a small input)
    y = resize(x, s if shrink == 1.0 else max(s * shrink, min_size / min(size)))
    if s > 1 and crop_upscaled:
        y = center_crop(y, size)
    return y


def every_level(
    x: torch.Tensor, scales: Sequence[float], min_size: int, crop_upscaled: bool, jitter: float, training: bool
) -> tuple[torch.Tensor, ...]:
    """The graph form of :meth:`ImagePyramid.forward` under ``torch.fx``: a level for *every* factor, so that the
    graph has a fixed number of trunk passes. The levels the eager pyramid keeps are exactly its levels; the others
    are placeholders (the input resized to at least ``min_size`` a side) that :func:`kept_levels` leaves out."""
    size = x.shape[-2:]
    shrink, kept = _shrink(jitter, training), kept_scales(size, scales, min_size)
    return tuple(
        _level(x, s, shrink, min_size, crop_upscaled)
        if s in kept
        else resize(x, tuple(max(n, min_size) for n in scaled_size(size, s)))
        for s in scales
    )


def kept_levels(x: torch.Tensor, scales: Sequence[float], min_size: int) -> tuple[torch.Tensor, list[float]]:
    """The positions in ``scales`` of the levels kept for ``x`` (a long tensor on ``x``'s device) and their factors:
    with :func:`every_level`, how a traced pyramid selects the eager pyramid's levels when the graph runs."""
    kept = kept_scales(x.shape[-2:], scales, min_size)
    index = [i for i, s in enumerate(scales) if s in kept]
    return torch.tensor(index, dtype=torch.long, device=x.device), kept


# under torch.fx both run when the graph runs, on the real input size (see msresnet.layers._tracing)
torch.fx.wrap("every_level")
torch.fx.wrap("kept_levels")


class ImagePyramid(nn.Module):
    """Return the input rescaled by each factor (finest first), dropping levels that would be too small.

    Args:
        scales: Resize factors; ``1`` is the input itself. Factors above 1 enlarge the image.
        min_size: Levels whose shorter side would fall below this are skipped (the trunk's stride makes them
            degenerate). The level closest to factor 1 is always kept so every input gives at least one level.
        crop_upscaled: Centre-crop enlarged levels back to the input size (the "foveated" scale channels of
            Jansson & Lindeberg: every channel sees a window of the same size, so cost stays bounded).
        jitter: Training only: every factor of a call is multiplied by one random ``2**-u``, ``u ~ U(0, jitter)``
            (in octaves; only ever shrinking). A fixed pyramid shows the shared trunk objects at a few exact sizes
            (28, 20, 14, 10, 7 px for a 28-px object and factors ``2**(-k/2)``), and a briefly trained CNN can be
            sharply tuned to them; the jitter fills the sizes in between, the way the levels of a test image whose
            object scale falls between two levels see it. Evaluation always uses the exact factors.
    """

    def __init__(
        self, scales: Sequence[float], min_size: int = 8, crop_upscaled: bool = True, jitter: float = 0.0
    ) -> None:
        super().__init__()
        scales = [float(s) for s in scales]
        if not scales or min(scales) <= 0:
            raise UserError(f"pyramid scales must be positive numbers, got {list(scales)}")
        if not 0.0 <= jitter <= 2.0:
            raise UserError(f"pyramid jitter is in octaves, between 0 and 2; got {jitter}")
        self.scales = sorted(scales, reverse=True)
        self.min_size, self.crop_upscaled, self.jitter = min_size, crop_upscaled, float(jitter)

    def extra_repr(self) -> str:
        jitter = f", jitter={self.jitter}" if self.jitter else ""
        return f"scales={[round(s, 4) for s in self.scales]}, min_size={self.min_size}{jitter}"

    def kept_scales(self, size: Sequence[int]) -> list[float]:
        """The factors that give levels at least ``min_size`` for an input of ``size = (H, W)``."""
        return kept_scales(size, self.scales, self.min_size)

    def kept(self, x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """Under ``torch.fx`` (where :meth:`forward` returns every level): which of them are ``x``'s levels, as
        positions and factors (:func:`kept_levels`)."""
        return kept_levels(x, tuple(self.scales), self.min_size)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, C, H, W]`` -> list of ``[B, C, h_i, w_i]``, finest first (under ``torch.fx``: a level for every
        factor, see :func:`every_level`)."""
        if fx_tracing():
            levels = every_level(x, tuple(self.scales), self.min_size, self.crop_upscaled, self.jitter, self.training)
            return [levels[i] for i in range(len(self.scales))]
        shrink = _shrink(self.jitter, self.training)
        return [_level(x, s, shrink, self.min_size, self.crop_upscaled) for s in self.kept_scales(x.shape[-2:])]
