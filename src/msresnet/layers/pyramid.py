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

__all__ = ["resize", "scaled_size", "center_crop", "ImagePyramid"]


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
        kept = [s for s in self.scales if min(scaled_size(size, s)) >= self.min_size]
        if not kept:
            kept = [min(self.scales, key=lambda s: abs(s - 1.0))]
        return kept

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, C, H, W]`` -> list of ``[B, C, h_i, w_i]``, finest first."""
        size = x.shape[-2:]
        shrink = 1.0
        if self.training and self.jitter > 0:
            shrink = 2.0 ** -float(torch.empty(()).uniform_(0.0, self.jitter))  # torch's RNG: seeded runs repeat
        levels = []
        for s in self.kept_scales(size):
            # a jittered level never falls below min_size (the coarsest kept level of a small input)
            y = resize(x, s if shrink == 1.0 else max(s * shrink, self.min_size / min(size)))
            if s > 1 and self.crop_upscaled:
                y = center_crop(y, size)
            levels.append(y)
        return levels
