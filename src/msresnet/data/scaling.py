"""Scale operations on batches of images: object rescale inside a fixed canvas, whole-image resize, and the random
versions used as training augmentation.

Every op takes float images ``[B, C, H, W]`` (or one image ``[C, H, W]``) with values in [0, 1] *before*
normalisation (the canvas is filled with ``fill``, 0 = the black background of Fashion-MNIST), and is vectorised:
per-sample sizes are handled by grouping the samples that share an output size, so a batch costs one interpolation
per distinct size, never one Python step per image. The same ops are wrapped as torchvision-v2 transforms at the end.

Resampling: ``F.interpolate`` with ``antialias=True`` (bilinear/bicubic), i.e. a proper low-pass filter when
shrinking (like PIL), so small objects are not aliased; the object size in pixels is ``round(size * scale)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2 import functional as TF

from msresnet.errors import UserError

__all__ = [
    "RandomDegrade",
    "RandomRescale",
    "RescaleInCanvas",
    "ResizeImages",
    "paste",
    "random_degrade",
    "random_rescale",
    "rescale_in_canvas",
    "resize_images",
]

_MODES = ("nearest", "bilinear", "bicubic", "area")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _check(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, bool]:
    if mode not in _MODES:
        raise UserError(f"interpolation mode must be one of {_MODES}, not {mode!r}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected images [B, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got {x.dtype}")
    return (x.unsqueeze(0), True) if x.ndim == 3 else (x, False)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)
    return F.interpolate(x, size=size, mode=mode)


def paste(obj: torch.Tensor, canvas: tuple[int, int], oy: torch.Tensor, ox: torch.Tensor, fill: float) -> torch.Tensor:
    """Place each object at its own top-left offset (negative or overhanging offsets crop) in one gather."""
    b, _, h, w = obj.shape
    dev = obj.device
    rows = torch.arange(canvas[0], device=dev)[None] - oy[:, None].to(dev)  # [B, H] source row of each canvas row
    cols = torch.arange(canvas[1], device=dev)[None] - ox[:, None].to(dev)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    bi = torch.arange(b, device=dev)[:, None, None]
    out = obj[bi, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]  # [B, H, W, C]
    out = out.permute(0, 3, 1, 2)
    return torch.where(inside[:, None], out, torch.full((), fill, dtype=obj.dtype, device=dev))


def _pad_reflect(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """``F.pad`` by ``(left, right, top, bottom)`` mirroring the image; negative amounts crop, and pads wider than the
    image are made in steps (each reflection may only be narrower than the image it mirrors)."""
    x = F.pad(x, tuple(min(0, p) for p in pads))
    todo = [max(0, p) for p in pads]
    while any(todo):
        h, w = x.shape[-2:]
        step = [min(todo[0], w - 1), min(todo[1], w - 1), min(todo[2], h - 1), min(todo[3], h - 1)]
        if not any(step):  # a 1-pixel image has nothing to mirror: repeat it
            return F.pad(x, tuple(todo), mode="replicate")
        x = F.pad(x, tuple(step), mode="reflect")
        todo = [t - s for t, s in zip(todo, step, strict=True)]
    return x


def _group_by_size(sizes: torch.Tensor) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """``[(size, sample indices)]`` for each distinct ``(h, w)`` row of ``sizes`` [B, 2]."""
    uniq, inverse = torch.unique(sizes, dim=0, return_inverse=True)
    return [((int(u[0]), int(u[1])), torch.nonzero(inverse == i).flatten()) for i, u in enumerate(uniq)]


def rescale_in_canvas(
    x: torch.Tensor,
    scale: float | torch.Tensor,
    canvas: int | Sequence[int] | None = None,
    *,
    mode: str = "bilinear",
    antialias: bool = True,
    placement: str = "center",
    fill: float | str = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Resize each image (the "object") by ``scale`` and place it in a ``canvas``-sized image.

    Args:
        x: float images ``[B, C, h, w]`` or ``[C, h, w]``.
        scale: one factor, or one per sample ``[B]``; the object becomes ``round(h*s) x round(w*s)`` pixels.
        canvas: output size (int or ``(H, W)``); default: the input size. Objects larger than it are cropped.
        mode: interpolation (``bilinear``, ``bicubic``, ``area``, ``nearest``).
        antialias: low-pass filter when shrinking (bilinear/bicubic).
        placement: ``"center"`` (floor-centred) or ``"random"`` (uniform offset, the object stays fully inside the
            canvas when it fits and covers it when it does not).
        fill: canvas value around the object, or ``"reflect"`` (``placement="center"`` only): the image mirrored
            about its edges, so that a shrunk scene is surrounded by more of itself rather than by a flat frame.
        generator: random source for ``placement="random"``.

    Returns:
        float images ``[B, C, H, W]`` (``[C, H, W]`` for one image).
    """
    if placement not in ("center", "random"):
        raise UserError(f"placement must be 'center' or 'random', not {placement!r}")
    if isinstance(fill, str) and (fill != "reflect" or placement != "center"):
        raise UserError(f"fill must be a number, or 'reflect' with placement='center'; got {fill!r}")
    x, single = _check(x, mode)
    b, c, h, w = x.shape
    hh, ww = _pair(canvas) if canvas is not None else (h, w)
    s = torch.as_tensor(scale, dtype=torch.float64).flatten()
    if s.numel() == 1:
        s = s.expand(b)
    if s.numel() != b:
        raise ValueError(f"got {s.numel()} scales for {b} images")
    if (s <= 0).any():
        raise UserError("scales must be > 0")
    sizes = torch.stack([torch.floor(h * s + 0.5), torch.floor(w * s + 0.5)], 1).long().clamp_min(1)
    out = x.new_full((b, c, hh, ww), 0.0 if isinstance(fill, str) else fill)
    for (oh, ow), idx in _group_by_size(sizes):
        obj = _resize(x[idx] if len(idx) < b else x, (oh, ow), mode, antialias)
        if placement == "center":
            top, left = (hh - oh) // 2, (ww - ow) // 2
            pads = (left, ww - ow - left, top, hh - oh - top)
            # F.pad with negative amounts crops, so one call handles both smaller and larger objects.
            placed = _pad_reflect(obj, pads) if isinstance(fill, str) else F.pad(obj, pads, value=fill)
        else:
            lo_y, hi_y = min(0, hh - oh), max(0, hh - oh)
            lo_x, hi_x = min(0, ww - ow), max(0, ww - ow)
            oy = torch.randint(lo_y, hi_y + 1, (len(idx),), generator=generator)
            ox = torch.randint(lo_x, hi_x + 1, (len(idx),), generator=generator)
            placed = paste(obj, (hh, ww), oy, ox, fill)
        if len(idx) == b:
            out = placed
        else:
            out[idx] = placed
    return out[0] if single else out


def resize_images(
    x: torch.Tensor, size: int | Sequence[int], *, mode: str = "bilinear", antialias: bool = True
) -> torch.Tensor:
    """Resize whole images to ``size`` (int or ``(H, W)``): the resolution-shift operation."""
    x, single = _check(x, mode)
    out = _resize(x, _pair(size), mode, antialias)
    return out[0] if single else out


def sample_scales(
    n: int, scale_range: Sequence[float], *, log_uniform: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` scales in ``[lo, hi]``, uniform in log-scale (each octave equally likely) or linearly (float64)."""
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise UserError(f"scale range must satisfy 0 < lo <= hi, got ({lo}, {hi})")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if log_uniform:
        return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    return lo + u * (hi - lo)


def random_rescale(
    x: torch.Tensor,
    scale_range: Sequence[float],
    log_uniform: bool = True,
    generator: torch.Generator | None = None,
    *,
    mode: str = "bilinear",
    placement: str = "center",
    fill: float | str = 0.0,
) -> torch.Tensor:
    """Training augmentation: rescale each sample's object by its own random factor inside the same canvas
    (``fill``: as in :func:`rescale_in_canvas`)."""
    x4, single = _check(x, mode)
    s = sample_scales(len(x4), scale_range, log_uniform=log_uniform, generator=generator)
    out = rescale_in_canvas(x4, s, mode=mode, placement=placement, fill=fill, generator=generator)
    return out[0] if single else out


def random_degrade(
    x: torch.Tensor,
    factor_range: Sequence[float] = (0.5, 1.0),
    p: float = 0.5,
    generator: torch.Generator | None = None,
    *,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Detail-loss augmentation: with probability ``p`` a sample is shrunk by a factor in ``factor_range``
    (antialiased) and enlarged back to its size, as if it had been captured at a lower resolution."""
    x4, single = _check(x, mode)
    lo, hi = float(factor_range[0]), float(factor_range[1])
    if not 0 < lo <= hi <= 1:
        raise UserError(f"degrade factor range must satisfy 0 < lo <= hi <= 1, got ({lo}, {hi})")
    b, _, h, w = x4.shape
    chosen = torch.rand(b, generator=generator) < p
    f = lo + torch.rand(b, generator=generator, dtype=torch.float64) * (hi - lo)
    sizes = torch.stack([torch.floor(h * f + 0.5), torch.floor(w * f + 0.5)], 1).long().clamp_min(1)
    chosen &= (sizes[:, 0] < h) | (sizes[:, 1] < w)
    if not chosen.any():
        return x
    out = x4.clone()
    sel = torch.nonzero(chosen).flatten()
    for size, idx in _group_by_size(sizes[sel]):
        group = sel[idx]
        small = _resize(x4[group], size, mode, True)
        out[group] = _resize(small, (h, w), mode, False)
    return out[0] if single else out


class _BatchOpTransform(Transform):
    """torchvision-v2 wrapper: applies a batched float op to tensors, ``tv_tensors.Image`` and PIL images, keeping
    the input's type and dtype (uint8 in, uint8 out); labels and other entries of a sample pass through."""

    _transformed_types = (tv_tensors.Image, torch.Tensor, PIL.Image.Image)

    def _op(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        is_pil = isinstance(inpt, PIL.Image.Image)
        x = TF.pil_to_tensor(inpt) if is_pil else inpt
        dtype = x.dtype
        xf = x.float().div(255) if dtype == torch.uint8 else x.as_subclass(torch.Tensor)
        out = self._op(xf)
        if dtype == torch.uint8:
            out = out.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        if is_pil:
            return TF.to_pil_image(out)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class RescaleInCanvas(_BatchOpTransform):
    """Transform form of :func:`rescale_in_canvas` (fixed scale)."""

    def __init__(self, scale: float, canvas: int | Sequence[int] | None = None, *, mode: str = "bilinear",
                 antialias: bool = True, placement: str = "center", fill: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.scale, self.canvas, self.mode, self.antialias, self.placement, self.fill = (
            scale, canvas, mode, antialias, placement, fill)  # fmt: skip

    def _op(self, x: torch.Tensor) -> torch.Tensor:
        return rescale_in_canvas(x, self.scale, self.canvas, mode=self.mode, antialias=self.antialias,
                                 placement=self.placement, fill=self.fill)  # fmt: skip


class ResizeImages(_BatchOpTransform):
    """Transform form of :func:`resize_images`."""

    def __init__(self, size: int | Sequence[int], *, mode: str = "bilinear", antialias: bool = True) -> None:
        super().__init__()
        self.size, self.mode, self.antialias = size, mode, antialias

    def _op(self, x: torch.Tensor) -> torch.Tensor:
        return resize_images(x, self.size, mode=self.mode, antialias=self.antialias)


class RandomRescale(_BatchOpTransform):
    """Transform form of :func:`random_rescale` (global torch RNG)."""

    def __init__(self, scale_range: Sequence[float], log_uniform: bool = True, *, mode: str = "bilinear",
                 placement: str = "center", fill: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        sample_scales(1, scale_range)  # validate now, not at the first image
        self.scale_range, self.log_uniform, self.mode, self.placement, self.fill = (
            tuple(scale_range), log_uniform, mode, placement, fill)  # fmt: skip

    def _op(self, x: torch.Tensor) -> torch.Tensor:
        return random_rescale(x, self.scale_range, self.log_uniform, mode=self.mode, placement=self.placement,
                              fill=self.fill)  # fmt: skip


class RandomDegrade(_BatchOpTransform):
    """Transform form of :func:`random_degrade` (global torch RNG)."""

    def __init__(self, factor_range: Sequence[float] = (0.5, 1.0), p: float = 0.5, *, mode: str = "bilinear") -> None:
        super().__init__()
        self.factor_range, self.p, self.mode = tuple(factor_range), p, mode

    def _op(self, x: torch.Tensor) -> torch.Tensor:
        return random_degrade(x, self.factor_range, self.p, mode=self.mode)


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what PIL's convert("L") uses


def match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt images to the model's channel count: grey -> RGB by repetition, RGB -> grey by luma."""
    c = x.shape[1]
    if c == in_chans:
        return x
    if c == 1:
        return x.expand(-1, in_chans, -1, -1)
    if c == 3 and in_chans == 1:
        w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise UserError(f"images have {c} channels but the model expects {in_chans}")
