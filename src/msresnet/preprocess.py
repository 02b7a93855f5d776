"""The preprocessing stored with a model's weights: raw image in, model-ready tensor out.

Like torchvision's ``Weights.transforms()``: a :class:`Preprocess` is rebuilt from a checkpoint's metadata
(:func:`preprocess_from_info`) and turns an image of the kind the model was trained on into exactly the input it saw
during training. It is what ``evaluate --data-dir``, ``predict``, ``export`` (baked into the ONNX graph) and
``msresnet.load_model(run).preprocess`` all use, so the four can never disagree about geometry.

Three geometry policies:

``native``
    the image is used at its own size (every classifier here ends in global pooling).
``resize``
    shorter side to ``size`` and centre crop to ``size x size`` (the ImageNet-style eval geometry), used when a
    folder's images do not share one size, or by ``folder-res``.
``canvas``
    the image is first fitted to ``size x size`` like ``resize`` (the *object*), then centred on a ``canvas``
    background of value ``fill``: the training geometry of the ``*-ls`` benchmark protocols, whose training images
    are small objects in a larger canvas.

On a PIL image the fit is PIL's antialiased bilinear ``ImageOps.fit`` on 8-bit pixels, the operation that made the
training images, so the result is identical to what training saw. Float tensors (and the exported graph) use the
equivalent torch operations (centre square crop, antialiased bilinear resize, padding), equal up to interpolation
rounding.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from msresnet._info import info_value as _get
from msresnet.errors import UserError

__all__ = [
    "POLICIES",
    "Normalize",
    "Preprocess",
    "PreprocessedClassifier",
    "normalize",
    "preprocess_from_info",
    "protocol_geometry",
]

POLICIES = ("native", "resize", "canvas")
IDX_SIDE = 28  # Fashion-MNIST / MNIST images, the source of every fmnist-* protocol


@dataclass(frozen=True)
class Preprocess:
    """Raw image -> normalised ``float32 [C, H, W]`` tensor, as the model was trained.

    Attributes:
        mode: ``"L"`` (grayscale, 1 channel) or ``"RGB"`` (3 channels).
        mean: per-channel mean of the training images in [0, 1].
        std: per-channel standard deviation.
        policy: ``"native"``, ``"resize"`` or ``"canvas"`` (see the module docstring).
        size: the fitted square side for ``resize`` / ``canvas``.
        canvas: ``(H, W)`` of the canvas for ``canvas``.
        fill: canvas background in [0, 1].
        input_size: ``(H, W)`` of the training images (for information; a native-policy model takes any size).
    """

    mode: str = "L"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    policy: str = "native"
    size: int | None = None
    canvas: tuple[int, int] | None = None
    fill: float = 0.0
    input_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("L", "RGB"):
            raise UserError(f"preprocessing mode must be 'L' or 'RGB', not {self.mode!r}")
        if self.policy not in POLICIES:
            raise UserError(f"preprocessing policy must be one of {POLICIES}, not {self.policy!r}")
        if self.policy != "native" and not self.size:
            raise UserError(f"preprocessing policy {self.policy!r} needs a size")
        if self.policy == "canvas" and not self.canvas:
            raise UserError("preprocessing policy 'canvas' needs a canvas size")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise UserError(f"mean/std have {len(self.mean)}/{len(self.std)} values for {self.in_chans} channel(s)")
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Every size within ``1..MAX_SIDE`` px and finite statistics: a preprocessing read from a checkpoint's
        metadata must not be able to ask for a 100000 x 100000 canvas or divide by zero."""
        from msresnet.data.images import MAX_SIDE

        if self.canvas is not None and len(self.canvas) != 2:
            raise UserError(f"preprocessing canvas must be (H, W), not {self.canvas!r}")
        if self.input_size is not None and len(self.input_size) != 2:
            raise UserError(f"preprocessing input_size must be (H, W), not {self.input_size!r}")
        sides = {"size": [self.size] if self.size is not None else [], "canvas": self.canvas or (),
                 "input_size": self.input_size or ()}  # fmt: skip
        for name, values in sides.items():
            for v in values:
                if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 1 <= v <= MAX_SIDE:
                    raise UserError(f"preprocessing {name} {v!r} is not a side of 1 to {MAX_SIDE} px")
        stats = [*self.mean, *self.std, self.fill]
        if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in stats) or min(self.std) <= 0:
            raise UserError("preprocessing mean/std/fill must be finite numbers with std > 0")

    # ------------------------------------------------------------------------------------------------ description

    @property
    def in_chans(self) -> int:
        """Channels of the model input."""
        return 1 if self.mode == "L" else 3

    @property
    def output_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of every preprocessed image, or None when it is the image's own size (``native``)."""
        if self.policy == "canvas":
            return (int(self.canvas[0]), int(self.canvas[1]))  # type: ignore[index]
        if self.policy == "resize":
            return (int(self.size), int(self.size))  # type: ignore[arg-type]
        return None

    def describe(self) -> str:
        """One line for logs: channel mode and geometry."""
        chans = "grayscale" if self.mode == "L" else "RGB"
        if self.policy == "native":
            at = f" (trained at {self.input_size[0]}x{self.input_size[1]})" if self.input_size else ""
            return f"{chans}, images at their own size{at}"
        fit = f"shorter side to {self.size} px + centre crop {self.size}x{self.size}"
        if self.policy == "resize":
            return f"{chans}, {fit}"
        h, w = self.output_size  # type: ignore[misc]
        return f"{chans}, {fit}, centred on a {h}x{w} canvas"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the checkpoint metadata)."""
        d = asdict(self)
        for k in ("mean", "std", "canvas", "input_size"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict` (unknown keys, from other versions, are ignored)."""
        kw = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("mean", "std", "canvas", "input_size"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    # ---------------------------------------------------------------------------------------------- PIL geometry

    def load(self, path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
        """Read an image file robustly (:func:`msresnet.data.images.load_image`) in this channel mode."""
        from msresnet.data.images import DEFAULT_MAX_PIXELS, load_image

        return load_image(path, mode=self.mode, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)

    def geometry(self, im: Image.Image) -> Image.Image:
        """The 8-bit image after channel conversion and the geometry policy (no normalisation)."""
        from msresnet.data.images import convert_mode

        im = convert_mode(im, self.mode)
        if self.policy == "native":
            return im
        size = int(self.size)  # type: ignore[arg-type]
        if im.size != (size, size):
            im = ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR)
        if self.policy == "resize":
            return im
        h, w = self.output_size  # type: ignore[misc]
        fill = round(self.fill * 255)
        base = Image.new(self.mode, (w, h), fill if self.mode == "L" else (fill,) * 3)
        # floor-centred, as rescale_in_canvas places the protocols' objects (negative offsets crop)
        base.paste(im, ((w - size) // 2, (h - size) // 2))
        return base

    # ------------------------------------------------------------------------------------------- tensor geometry

    def geometry_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The torch form of :meth:`geometry` on float images ``[B, C, H, W]`` in [0, 1] (traceable for export)."""
        if self.policy == "native":
            return x
        size = int(self.size)  # type: ignore[arg-type]
        h, w = x.shape[-2], x.shape[-1]
        if torch.compiler.is_compiling():  # torch.export: symbolic sizes (torch.as_tensor would fix them)
            side = torch.sym_min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
        else:  # eager, and ONNX, which records the sizes as tensors
            side = torch.minimum(torch.as_tensor(h), torch.as_tensor(w))
            top, left = (torch.as_tensor(h) - side) // 2, (torch.as_tensor(w) - side) // 2
        # index_select, not slicing: a slice of symbolic bounds makes torch.export assume an orientation (H <= W)
        rows = torch.arange(side, device=x.device) + top
        cols = torch.arange(side, device=x.device) + left
        x = x.index_select(-2, rows).index_select(-1, cols)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if self.policy == "resize":
            return x
        ch, cw = self.output_size  # type: ignore[misc]
        top_pad, left_pad = (ch - size) // 2, (cw - size) // 2
        return F.pad(x, (left_pad, cw - size - left_pad, top_pad, ch - size - top_pad), value=float(self.fill))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel for ``[C, H, W]`` or ``[B, C, H, W]`` images in [0, 1]."""
        return normalize(x, self.mean, self.std)

    def to_unit(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        """Geometry only: float ``[C, H, W]`` (``[B, C, H, W]`` for a float batch) in [0, 1].

        A PIL image or a uint8 ``[C, H, W]`` tensor goes through the exact 8-bit path of training; a float tensor
        (``[C, H, W]`` or ``[B, C, H, W]`` in [0, 1]) through the torch operations.
        """
        from torchvision.transforms.functional import pil_to_tensor, to_pil_image

        if isinstance(img, torch.Tensor) and img.dtype == torch.uint8:
            if img.ndim != 3:
                raise UserError(f"expected a uint8 image [C, H, W], got shape {tuple(img.shape)}")
            img = to_pil_image(img)
        if isinstance(img, Image.Image):
            return pil_to_tensor(self.geometry(img)).float().div_(255)
        if not isinstance(img, torch.Tensor) or not img.is_floating_point() or img.ndim not in (3, 4):
            raise UserError("preprocess takes a PIL image, a uint8 [C, H, W] or a float [(B,) C, H, W] tensor")
        from msresnet.data.scaling import match_channels

        x = img.unsqueeze(0) if img.ndim == 3 else img
        x = self.geometry_tensor(match_channels(x.float(), self.in_chans))
        return x[0] if img.ndim == 3 else x

    def __call__(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        """The model-ready tensor: :meth:`to_unit` then :meth:`normalize`."""
        return self.normalize(self.to_unit(img))

    def deployable(self, model: nn.Module) -> PreprocessedClassifier:
        """``model`` with this preprocessing in front: raw [0, 1] images of any size in, logits out."""
        return PreprocessedClassifier(model, self)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The one normaliser: ``(x - mean) / std`` per channel, for ``[C, H, W]`` or ``[B, C, H, W]`` images in
    [0, 1] (float32 statistics on the images' device)."""
    shape = (-1, 1, 1)
    m = torch.tensor(tuple(mean), dtype=torch.float32, device=x.device).view(shape)
    s = torch.tensor(tuple(std), dtype=torch.float32, device=x.device).view(shape)
    return (x - m) / s


class Normalize(nn.Module):
    """:func:`normalize` as a module, its statistics as buffers (they move with the model and trace as constants):
    what the training batches, the exported classifiers and the scan all normalise with."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PreprocessedClassifier(nn.Module):
    """Raw ``float [B, C, H, W]`` images in [0, 1] -> geometry -> normalisation -> the classifier (for export)."""

    def __init__(self, model: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.normalize = Normalize(preprocess.mean, preprocess.std)
        # a fixed output geometry accepts any input size; a native one keeps the model's minimum
        fixed = preprocess.output_size is not None
        self.min_input_size = 1 if fixed else int(getattr(model, "min_input_size", 1) or 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(self.preprocess.geometry_tensor(x)))


# --------------------------------------------------------------------------------------------------- from metadata


def protocol_geometry(protocol: str | None, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The geometry (``policy``, ``size``, ``canvas``) that turns a raw image of the kind a protocol is built from
    into that protocol's training input.

    ``fmnist-ls``: the 28-px image centred on the canvas; ``folder-ls``: the folder image fitted to ``image_size``
    and centred on the canvas; ``folder-res`` (and ``fmnist-res`` trained at another size): fitted to the training
    size; ``folder``: what the folder's data decided (recorded in its parameters); anything else: native.
    """
    p = dict(params or {})
    if protocol == "fmnist-ls":
        c = int(p.get("canvas") or 64)
        return {"policy": "canvas", "size": IDX_SIDE, "canvas": (c, c)}
    if protocol == "folder-ls" and p.get("canvas"):
        c = int(p["canvas"])
        return {"policy": "canvas", "size": int(p.get("image_size") or 32), "canvas": (c, c)}
    if protocol == "folder-res":
        return {"policy": "resize", "size": int(p.get("image_size") or 32), "canvas": None}
    if protocol == "fmnist-res" and int(p.get("train_size") or IDX_SIDE) != IDX_SIDE:
        return {"policy": "resize", "size": int(p["train_size"]), "canvas": None}
    if protocol == "folder" and p.get("input_size"):
        return {"policy": "resize", "size": int(p["input_size"]), "canvas": None}
    return {"policy": "native", "size": None, "canvas": None}


def preprocess_from_info(info: Any) -> Preprocess:
    """The :class:`Preprocess` of a checkpoint: its stored record, else derived from the protocol it was trained
    on (checkpoints written before the record existed).

    Raises:
        UserError: the model takes neither 1 nor 3 channels.
    """
    stored = _get(info, "preprocess")
    if stored:
        return Preprocess.from_dict(stored)
    in_chans = int(_get(info, "in_chans", 1))
    if in_chans not in (1, 3):
        raise UserError(f"images can be prepared for models with 1 or 3 input channels, not {in_chans}")
    mean = tuple(float(v) for v in (_get(info, "mean") or (0.0,) * in_chans))
    std = tuple(float(v) for v in (_get(info, "std") or (1.0,) * in_chans))
    size = _get(info, "input_size")
    geometry = protocol_geometry(_get(info, "protocol"), _get(info, "protocol_params"))
    return Preprocess(mode="L" if in_chans == 1 else "RGB", mean=mean, std=std,
                      input_size=tuple(size) if size else None, **geometry)  # fmt: skip


def preprocess_for_protocol(protocol: Any, mean: Sequence[float], std: Sequence[float]) -> Preprocess:
    """The :class:`Preprocess` of a model trained on ``protocol`` (a built protocol) with these statistics."""
    geometry = protocol_geometry(protocol.name, protocol.params)
    return Preprocess(mode="L" if protocol.in_chans == 1 else "RGB", mean=tuple(mean), std=tuple(std),
                      input_size=tuple(protocol.input_size), **geometry)  # fmt: skip
