"""Test conditions: what a scale shift does to an image, and how its value is named. The one place that switches on
the kind of condition.

A protocol, a folder sweep and a scan all measure a model under conditions of a few kinds (:class:`Kind`): the
object rescaled inside the unchanged canvas (``scale``, the ``*-ls`` protocols), the whole image resized to a size
in pixels (``size``, the ``*-res`` protocols) or by a factor (``resolution``, scans and folders of mixed sizes), or
a bin of object scales drawn per image (``scale bin``, ``fmnist-scale``: nothing to apply, the data come that way).
A :class:`Condition` is one such kind with its value and knows how to produce its images (:meth:`Condition.apply`);
:class:`Kind` says how a value of that kind is written in tables, plot axes and file names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import torch

__all__ = ["Condition", "Fill", "Kind", "border_fill"]

Fill = Literal["zero", "border"]


class Kind(str, Enum):
    """The kind of a test condition (its value is the protocol's ``condition_name``)."""

    SCALE = "scale"  # object rescaled by the factor inside the unchanged canvas
    SIZE = "size"  # whole image resized to this many pixels (square)
    RESOLUTION = "resolution"  # whole image resized by the factor
    RESIZE_FACTOR = "resize factor"  # a folder of mixed sizes resized by the factor (a resolution sweep)
    SCALE_BIN = "scale bin"  # a bin of per-image object scales (the data come rescaled)
    OTHER = "condition"  # anything else: named, never applied

    @classmethod
    def of(cls, name: Any) -> Kind:
        """The kind a protocol's ``condition_name`` (or a scan's sweep name) stands for."""
        if isinstance(name, Kind):
            return name
        try:
            return cls(str(name))
        except ValueError:
            return cls.OTHER

    def fits(self, smallest: int, factor: float, min_side: int) -> bool:
        """Whether a condition of this kind keeps images of shorter side ``smallest`` at or above ``min_side``
        pixels (a scale condition keeps every image's size; a resize scales it by ``factor``)."""
        return not self.resamples_whole_image or round(smallest * factor) >= min_side

    @property
    def resamples_whole_image(self) -> bool:
        """Whether the condition resizes the whole image (rather than the object inside its canvas)."""
        return self in (Kind.SIZE, Kind.RESOLUTION, Kind.RESIZE_FACTOR)

    def axis_label(self, name: str | None = None, *, test: bool = False) -> str:
        """The plot axis: ``object scale``, ``image size (px)`` (``test image size (px)`` with ``test``), else the
        condition's own name."""
        if self is Kind.SCALE:
            return "object scale"
        if self in (Kind.SIZE, Kind.RESOLUTION):
            return "test image size (px)" if test else "image size (px)"
        return str(name if name is not None else self.value)

    def heading(self, value: str) -> str:
        """A table column for a formatted value: ``s=0.5``, ``28px``, else the value."""
        return f"s={value}" if self is Kind.SCALE else f"{value}px" if self is Kind.SIZE else value

    def short(self, value: Any) -> str:
        """A compact value: a scale to two decimals without trailing zeros, a size as ``28 px``, else ``%g``."""
        if self is Kind.SIZE:
            return f"{int(value)} px"
        if self is Kind.SCALE:
            return f"{value:.2f}".rstrip("0").rstrip(".")
        return f"{value:g}"

    def column(self, value: Any) -> str:
        """A results table's column: ``s=`` and the :meth:`short` value for a scale, the :meth:`short` value
        otherwise (``28 px``)."""
        return f"s={self.short(value)}" if self is Kind.SCALE else self.short(value)

    def fixed(self, value: Any) -> str:
        """A value in fixed columns: a scale to two decimals, anything else as it is written."""
        return f"{float(value):.2f}" if self is Kind.SCALE else str(value)

    def tick(self, factor: float, size: tuple[int, int] | None) -> str:
        """A scan heat map's column: the factor of a scale condition, the image side of a resampled one."""
        return f"{factor:.2g}" if self is Kind.SCALE else f"{size[0] if size else factor}"

    def scan_label(self, factor: float, size: tuple[int, int] | None) -> str:
        """A scan condition's name: ``s=0.71``, or ``2x (128 px)``."""
        if self is Kind.SCALE:
            return f"s={factor:.3g}"
        return f"{factor:g}x ({size[0] if size else '?'} px)"

    def curve_point(self, factor: float, size: tuple[int, int] | None) -> tuple[float, Kind]:
        """Where a scan condition sits on an accuracy plot: the scale factor, or the image side in pixels."""
        return (factor, Kind.SCALE) if self is Kind.SCALE else (float(size[0]) if size else factor, Kind.SIZE)


def border_fill(x: torch.Tensor) -> torch.Tensor:
    """Each image's background colour as seen at its edge: the per-channel mean of its outermost ring of pixels,
    ``[B, C, 1, 1]`` for images ``[B, C, H, W]``."""
    ring = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    return ring.mean(-1, keepdim=True)[..., None]


@dataclass(frozen=True)
class Condition:
    """One test condition: its kind, its factor (object scale relative to the images given, or resize factor) and
    the image size it produces (None: the input's own size, or each image's own factor-scaled size).

    Attributes:
        kind: what the condition does (:class:`Kind`).
        factor: the object scale (``SCALE``) or the resize factor; 1.0 leaves the images as they are.
        size: ``(H, W)`` of the output for a whole-image resize to one size; None otherwise.
    """

    kind: Kind
    factor: float
    size: tuple[int, int] | None = None

    @property
    def sweep_name(self) -> str:
        """The kind's name (``scale``, ``resolution``, ...), as scan results group conditions."""
        return self.kind.value

    @property
    def label(self) -> str:
        """``s=0.71`` or ``2x (128 px)``."""
        return self.kind.scan_label(self.factor, self.size)

    def apply(self, x: torch.Tensor, mode: str = "bilinear", fill: Fill = "zero") -> torch.Tensor:
        """The condition's images from images ``[B, C, H, W]`` in [0, 1].

        Args:
            x: float images in [0, 1].
            mode: interpolation (``bilinear``, ``bicubic``, ...), antialiased when shrinking.
            fill: what surrounds a shrunk object: ``zero`` (black, as the ``*-ls`` protocols build their canvases)
                or ``border``: each image's own border colour (:func:`border_fill`), for photos, whose
                surroundings continue in their own colour; a black frame would be an artefact present at every
                ``s < 1`` and nowhere else, measured as if it were scale. Resampling is linear with weights that
                sum to one, so resampling ``x - fill`` on a zero canvas and adding ``fill`` back leaves the
                image's own pixels as with a black canvas.

        Raises:
            ValueError: a kind that cannot be applied (``scale bin``, other).
        """
        from msresnet.data.scaling import rescale_in_canvas, resize_images

        if self.kind is Kind.SCALE:
            if self.factor == 1.0:
                return x
            if fill == "border":
                f = border_fill(x)
                return rescale_in_canvas(x - f, self.factor, mode=mode).add_(f).clamp_(0, 1)
            return rescale_in_canvas(x, self.factor, mode=mode)
        if self.kind.resamples_whole_image:
            if self.size is not None:
                return resize_images(x, self.size, mode=mode)
            h, w = x.shape[-2:]
            return resize_images(x, (max(1, round(h * self.factor)), max(1, round(w * self.factor))), mode=mode)
        raise ValueError(f"a {self.kind.value!r} condition cannot be applied to images")

    @property
    def key(self) -> float | int:
        """The condition's value in a sweep's results: the scale factor, the image side in pixels for a resize to
        one size, else the resize factor."""
        if self.kind.resamples_whole_image and self.size is not None:
            return int(self.size[0])
        return round(float(self.factor), 4)

    @property
    def name(self) -> str:
        """The sweep's ``condition_name`` for this condition: ``scale``, ``size`` (a resize to one size) or
        ``resize factor`` (each image resized by the factor)."""
        if self.kind.resamples_whole_image:
            return Kind.SIZE.value if self.size is not None else Kind.RESIZE_FACTOR.value
        return self.kind.value

    @classmethod
    def sweep(cls, kind: Kind | str, factors: Sequence[float], native: tuple[int, int] | None) -> list[Condition]:
        """The conditions of a sweep of ``kind`` (``scale`` or ``resolution``) over ``factors``, for images of size
        ``native`` (None: images of several sizes, each resized by the factor)."""
        kind = Kind.of(kind)
        if kind is Kind.SCALE:
            return [cls(kind, float(f), native) for f in factors]
        if not kind.resamples_whole_image:
            raise ValueError(f"no sweep of {kind.value!r} conditions")
        h, w = native or (0, 0)
        return [cls(Kind.RESOLUTION, float(f), (max(1, round(h * f)), max(1, round(w * f))) if native else None)
                for f in factors]  # fmt: skip

    @classmethod
    def of_protocol(cls, name: str, value: Any, train_condition: Any) -> Condition:
        """A protocol's test condition ``value`` as applied to images made at its ``train_condition``: the relative
        object scale for a scale protocol, the square size in pixels for a size protocol."""
        kind = Kind.of(name)
        if kind is Kind.SCALE:
            return cls(kind, float(value) / float(train_condition))
        return cls(kind, 1.0, (int(value), int(value)))
