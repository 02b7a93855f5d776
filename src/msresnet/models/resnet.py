"""One generic ResNet: block, stem and scale machinery are arguments; every family in msresnet is built from it.

``ResNet(block, depths, widths, stem_type, ...)`` covers

* the plain baselines (CIFAR-style stem for small images, ImageNet stem for large ones);
* the scale machinery of ``msresnet*``: an antialiased image pyramid whose levels all run through the same trunk
  (``pyramid_scales``), a lifting :class:`~msresnet.layers.ScaleConv2d` stem (``stem_basis``, ``stem_scales``) whose
  scale axis is collapsed by a :class:`~msresnet.layers.ScalePool` right away (``stem_pool``) or after
  ``shared_stages`` stages whose weights are shared across the scale axis (scale ``i`` runs with dilation ``d_i``,
  as in TridentNet), and pooling over levels / scales after global spatial pooling (``scale_pool``);
* scale-channel networks (a pyramid that also enlarges, enlarged levels centre-cropped: ``crop_upscaled``);
* SESN-style networks (a block class that carries the scale axis, ``block.scale_axis = True``);
* Res2Net-style networks (a block class).

Tensor flow: ``forward_features`` returns the unpooled last-stage map, ``[B, C, H, W]`` for single-scale models and
``[B, C, S, H, W]`` for models with a scale axis (pyramid levels are resampled, nearest-neighbour, onto the grid of
the level closest to the input's own resolution, so ``H, W`` is always the input size divided by the stride).
Enlarging a coarse map by nearest neighbour keeps its spatial max exactly and its mean up to the uneven
replication of rows/columns when the size ratio is not an integer (a small, deterministic weighting of the
``"avg"`` pool of coarse levels); enlarged pyramid levels are centre-cropped by default, so no map is shrunk.
``forward_head`` pools space per level/scale (``global_pool``), then the scale axis (``scale_pool``), then applies
the classifier ``fc``. With ``global_pool=""`` it returns the map with the scale axis pooled per position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.errors import UserError
from msresnet.layers import POOL_MODES, ImagePyramid, ObjectScaleProbe, ScalePool, resize
from msresnet.models._registry import make_cfg, register_model
from msresnet.models._stems import ConvStem, LiftingStem

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "ConvStem", "LiftingStem", "build_resnet", "ARCHS"]


def conv_at(conv: nn.Conv2d, x: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Apply ``conv`` with its own weights at another dilation (padding grows with it, so the size is kept)."""
    if dilation == 1:
        return conv(x)
    pad = dilation * (conv.kernel_size[0] // 2)
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, pad, dilation, conv.groups)


def make_divisible(value: float, multiple: int = 1) -> int:
    """Round a (width-multiplied) channel count to a positive multiple of ``multiple``."""
    return max(multiple, int(value + multiple / 2) // multiple * multiple)


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34, CIFAR ResNets)."""

    expansion = 1
    scale_axis = False

    def __init__(self, in_chs: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_chs, planes, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor, dilation: int = 1) -> torch.Tensor:
        out = F.relu(self.bn1(conv_at(self.conv1, x, dilation)), inplace=True)
        out = self.bn2(conv_at(self.conv2, out, dilation))
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(out + short, inplace=True)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection."""

    expansion = 4
    scale_axis = False

    def __init__(self, in_chs: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.downsample = _shortcut(in_chs, out_chs, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor, dilation: int = 1) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(conv_at(self.conv2, out, dilation)), inplace=True)
        out = self.bn3(self.conv3(out))
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(out + short, inplace=True)


def _per_scale(fn: Any, x: torch.Tensor) -> torch.Tensor:
    """Apply a 4-D op to every scale of ``[B, C, S, H, W]`` in one call (scales folded into the batch)."""
    b, c, s, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * s, c, h, w))
    return y.view(b, s, *y.shape[1:]).transpose(1, 2)


def _resize_5d(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resample ``[B, C, S, h, w]`` to ``size`` (max over space is unchanged when enlarging)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    b, c, s = x.shape[:3]
    return resize(x.flatten(1, 2), tuple(size), mode="nearest").view(b, c, s, *size)


GLOBAL_POOLS = ("avg", "max", "")
STEM_BASES = (None, "dilation", "hermite")


class ResNet(nn.Module):
    """Generic ResNet with optional scale machinery (see the module docstring).

    Args:
        block: Block class (``BasicBlock``, ``Bottleneck``, Res2Net or SESN blocks); ``block.scale_axis`` says
            whether it consumes ``[B, C, S, H, W]``.
        depths: Blocks per stage.
        widths: Base channels per stage (before ``width`` and the block expansion).
        stem_type: ``"cifar"`` (3x3 stride 1, no max-pool) or ``"imagenet"`` (7x7 stride 2 + max-pool).
        num_classes: Classifier outputs; 0 for none.
        in_chans: Input channels.
        width: Channel multiplier for every stage.
        channel_multiple: Channel counts are rounded to a multiple of this (Res2Net splits need it).
        drop_rate: Dropout before the classifier.
        global_pool: Spatial pooling per level/scale: ``"avg"`` or ``"max"``.
        pyramid_scales: Downscale (or, for scale-channel nets, also upscale) factors of the input pyramid; the
            trunk with the same weights runs on every level. ``(1,)``: no pyramid.
        pyramid_min_size: Pyramid levels with a shorter side below this are skipped.
        crop_upscaled: Centre-crop enlarged pyramid levels back to the input size.
        pyramid_jitter: Training-time random shrink of all pyramid factors, up to this many octaves
            (:class:`~msresnet.layers.ImagePyramid`).
        stem_basis: ``None`` (plain conv stem), ``"dilation"`` or ``"hermite"`` (lifting stem).
        stem_scales: Scales of the lifting stem.
        stem_pool: ScalePool mode collapsing the stem's scale axis (after ``shared_stages`` stages).
        shared_stages: Stages run per stem scale with shared weights (dilation ``d_i``) before ``stem_pool``; equal
            to the number of stages keeps the scale axis to the head.
        scale_pool: ScalePool mode over the pooled features of pyramid levels / scales, or ``"confidence"``:
            trained as ``"avg"``; at evaluation every level is classified on its own and each image takes the
            logits of its most confident level (largest top softmax probability). Averaging lets a level that sees
            an object larger than anything in training outvote the one level that sees it at a familiar size;
            selecting by confidence does not. With a pyramid, such models carry an object-scale probe
            (``scale_probe``) that calibration can fit to restrict the choice (``msresnet.engine.calibrate``).
        scale_dropout: Training-time scale dropout of ``scale_pool``.
        block_kwargs: Extra keyword arguments for every block.
        stem_kwargs: Extra keyword arguments for the lifting ScaleConv2d (e.g. ``sigma0``, ``order``).
        min_input_size: Smallest input side the model is documented to accept.
        zero_init_last: Zero the last BN of every residual branch (each block starts as the identity).
    """

    def __init__(
        self,
        block: type[nn.Module],
        depths: Sequence[int],
        widths: Sequence[int],
        stem_type: str = "cifar",
        num_classes: int = 1000,
        in_chans: int = 3,
        width: float = 1.0,
        channel_multiple: int = 1,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        pyramid_scales: Sequence[float] = (1.0,),
        pyramid_min_size: int = 8,
        crop_upscaled: bool = True,
        pyramid_jitter: float = 0.0,
        stem_basis: str | None = None,
        stem_scales: int = 1,
        stem_pool: str = "softmax",
        shared_stages: int = 0,
        scale_pool: str = "softmax",
        scale_dropout: float = 0.0,
        block_kwargs: dict[str, Any] | None = None,
        stem_kwargs: dict[str, Any] | None = None,
        min_input_size: int = 16,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        n_stages = len(depths)
        if stem_type not in ("cifar", "imagenet"):
            raise UserError(f"unknown stem_type {stem_type!r}; choose 'cifar' or 'imagenet'")
        if global_pool not in GLOBAL_POOLS:
            raise UserError(f"global_pool must be 'avg' or 'max', got {global_pool!r}")
        if stem_basis not in STEM_BASES:
            raise UserError(f"stem_basis must be None, 'dilation' or 'hermite', got {stem_basis!r}")
        if not isinstance(width, (int, float)) or width <= 0:
            raise UserError(f"width must be a positive number, got {width!r}")
        if not 0 <= shared_stages <= n_stages:
            raise UserError(f"shared_stages must be between 0 and {n_stages}, got {shared_stages}")
        if shared_stages and not stem_basis:
            raise UserError("shared_stages needs a lifting stem: set stem_basis='dilation' or 'hermite'")
        if stem_basis and int(stem_scales) < 1:
            raise UserError(f"stem_scales must be >= 1, got {stem_scales}")
        if scale_pool not in (*POOL_MODES, "confidence"):
            raise UserError(f"unknown scale_pool {scale_pool!r}; choose one of {', '.join(POOL_MODES)}, confidence")
        if not 0.0 <= drop_rate < 1.0:
            raise UserError(f"drop_rate must be in [0, 1), got {drop_rate}")
        block_scale_axis = bool(getattr(block, "scale_axis", False))
        if block_scale_axis and (not stem_basis or shared_stages != n_stages):
            raise ValueError("scale-axis blocks need a lifting stem that keeps the scale axis (shared_stages=all)")

        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.global_pool, self.shared_stages, self.min_input_size = global_pool, shared_stages, min_input_size
        self.block_scale_axis = block_scale_axis
        chans = [make_divisible(w * width, channel_multiple) for w in widths]
        stem_chs = chans[0]

        # --- stem (plain, or lifting with its scale axis pooled now or after the shared stages)
        if stem_basis:
            pool_now = stem_pool if shared_stages == 0 else None
            self.stem = LiftingStem(
                in_chans, stem_chs, stem_basis, int(stem_scales), pool_now, stem_type, **(stem_kwargs or {})
            )
            self.dilations = self.stem.dilations
        else:
            self.stem = ConvStem(in_chans, stem_chs, stem_type)
            self.dilations = [1]
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem_type == "imagenet" else nn.Identity()
        inner = 0 < shared_stages < n_stages and not block_scale_axis
        self.inner_pool = ScalePool(stem_pool, dim=2, channels=chans[shared_stages - 1]) if inner else None

        # --- stages
        stride0 = self.stem.stride
        reduction = stride0
        self.feature_info = [{"num_chs": stem_chs, "reduction": reduction, "module": "stem"}]
        stages, in_chs = [], stem_chs
        for i, (depth, planes) in enumerate(zip(depths, chans, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(block(in_chs, planes, stride if j == 0 else 1, **(block_kwargs or {})))
                in_chs = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
            reduction *= stride * (2 if i == 0 and stem_type == "imagenet" else 1)  # the stem max-pool
            self.feature_info.append({"num_chs": in_chs, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.ModuleList(stages)
        self.num_features = self.head_hidden_size = in_chs
        self.stride = reduction

        # --- scale axis at the head: pyramid levels and/or scales carried to the end
        scales = tuple(float(s) for s in pyramid_scales)
        multi = scales != (1.0,)
        self.pyramid = ImagePyramid(scales, pyramid_min_size, crop_upscaled, pyramid_jitter) if multi else None
        self.has_scale_axis = self.pyramid is not None or shared_stages == n_stages
        self.select_by_confidence = scale_pool == "confidence"
        pool_mode = "avg" if self.select_by_confidence else scale_pool
        self.scale_pool = (
            ScalePool(pool_mode, dim=2, channels=in_chs, scale_dropout=scale_dropout) if self.has_scale_axis else None
        )
        # level selection by estimated object scale: unfitted (the confidence rule) until calibrated after training
        probe = self.select_by_confidence and self.pyramid is not None
        self.scale_probe = ObjectScaleProbe(in_chs) if probe else None
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_last)

    # ----------------------------------------------------------------------------------------------------- init
    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last") and m is not self:
                    m.zero_init_last()

    # ------------------------------------------------------------------------------------------- timm contract
    def get_classifier(self) -> nn.Module:
        """The final linear layer (or Identity)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (``num_classes=0``: none) and optionally the spatial pooling."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise UserError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Not supported (the models are small); present for timm API compatibility."""
        if enable:
            raise NotImplementedError("gradient checkpointing is not implemented for msresnet models")

    # ----------------------------------------------------------------------------------------------- forward
    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor, dilation: int) -> torch.Tensor:
        for blk in stage:
            x = blk(x) if self.block_scale_axis else blk(x, dilation)
        return x

    def _to_nchw(self, x: torch.Tensor) -> torch.Tensor:
        # intermediate maps with a scale axis are handed to detectors/segmenters as their per-position max
        return x.amax(2) if x.dim() == 5 else x

    def _trunk(self, x: torch.Tensor, collect: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stem and stages on one image (pyramid level); returns the last map and, if asked, every level's map."""
        feats: list[torch.Tensor] = []
        x = self.stem(x)
        if collect:
            feats.append(self._to_nchw(x))
        x = _per_scale(self.maxpool, x) if x.dim() == 5 else self.maxpool(x)
        for i, stage in enumerate(self.stages):
            if x.dim() == 5 and not self.block_scale_axis:
                # shared weights across the scale axis: scale s runs the same stage at dilation d_s
                x = torch.stack([self._run_stage(stage, x[:, :, s], d) for s, d in enumerate(self.dilations)], 2)
            else:
                x = self._run_stage(stage, x, 1)
            if self.inner_pool is not None and i + 1 == self.shared_stages:
                x = self.inner_pool(x)
            if collect:
                feats.append(self._to_nchw(x))
        return x, feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled last-stage map: ``[B, C, H, W]``, or ``[B, C, S, H, W]`` for models with a scale axis."""
        if self.pyramid is None:
            out, _ = self._trunk(x)
            return out
        scales = self.pyramid.kept_scales(x.shape[-2:])
        outs = self._level_maps(x)
        ref = min(range(len(scales)), key=lambda i: abs(scales[i] - 1.0))
        grid = outs[ref].shape[-2:]
        return torch.cat([_resize_5d(o, grid) for o in outs], dim=2)

    def _level_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's last map of every pyramid level, ``[B, C, S_i, h_i, w_i]`` each, finest first."""
        outs = [self._trunk(level)[0] for level in self.pyramid(x)]
        return [o if o.dim() == 5 else o.unsqueeze(2) for o in outs]

    def _pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Spatially pooled features: ``[B, C, S]`` for models with a scale axis, else ``[B, C]``.

        Max pooling over a pyramid that only shrinks pools every level on its own grid: nearest-neighbour
        enlargement to the common grid (``forward_features``) only repeats values, so the maximum is the same,
        without the copies.
        """
        if self.pyramid is not None and self.global_pool == "max" and max(self.pyramid.scales) <= 1.0:
            return torch.cat([o.amax((-2, -1)) for o in self._level_maps(x)], dim=2)
        return self._pool_space(self.forward_features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Spatial pooling (per level/scale), scale pooling, dropout, classifier."""
        if not self.global_pool:
            return self.scale_pool(x) if x.dim() == 5 else x
        return self._head_pooled(self._pool_space(x), pre_logits)

    def _head_pooled(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``forward_head`` after the spatial pooling: scale pooling, dropout, classifier."""
        if x.dim() == 3 and self.select_by_confidence and not self.training and self.num_classes > 0:
            return self._most_confident_level(x, pre_logits)
        if x.dim() == 3:
            x = self.scale_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def _most_confident_level(self, pooled: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        """``scale_pool="confidence"`` at evaluation: per image, the level whose own prediction is most confident;
        once the object-scale probe is fitted (``msresnet calibrate``), the most confident among the levels that
        show the object near the size the trunk knows best (:meth:`ObjectScaleProbe.select`).

        Args:
            pooled: Spatially pooled features ``[B, C, S]``.
            pre_logits: Return the chosen level's features instead of its logits.
        """
        logits = self._level_logits(pooled)  # [B, S, K]: each level classified on its own
        n_levels = pooled.shape[2]
        if self.scale_probe is not None and self.scale_probe.is_fitted and n_levels > 1:
            # a small input drops the coarsest levels, so the kept ones are the first n_levels factors
            best = self.scale_probe.select(logits, pooled, self.pyramid.scales[:n_levels])
        else:
            best = logits.softmax(-1).amax(-1).argmax(1)  # [B]
        rows = torch.arange(pooled.shape[0], device=pooled.device)
        return self.head_drop(pooled.transpose(1, 2)[rows, best]) if pre_logits else logits[rows, best]

    def _level_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The classifier on every level's pooled features ``[B, C, S]`` on its own: ``[B, S, num_classes]``."""
        return self.fc(self.head_drop(pooled.transpose(1, 2)))

    def _pool_space(self, x: torch.Tensor) -> torch.Tensor:
        """Global spatial pooling (``global_pool``) over the last two axes."""
        return x.amax((-2, -1)) if self.global_pool == "max" else x.mean((-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` (pooled features when ``num_classes == 0``)."""
        if not self.global_pool:
            return self.forward_head(self.forward_features(x))
        return self._head_pooled(self._pooled_features(x))

    def forward_scales(self, x: torch.Tensor) -> torch.Tensor:
        """What each entry of the scale axis says on its own: logits ``[B, S, num_classes]``.

        The head without the scale pooling (spatial pooling, classifier) applied to every pyramid level / scale
        separately - the diagnosis of *which* scale carries a decision (e.g. whether a test object larger than
        anything seen in training is recognised at the coarse level that shrinks it back to the training size,
        and how much the other levels dilute that). Levels are ordered finest first, as
        ``self.pyramid.kept_scales(x.shape[-2:])`` lists them for pyramid models. With ``scale_pool="avg"`` the
        mean over ``S`` of these logits is exactly the model's output (the classifier is linear).

        Raises:
            UserError: the model has no scale axis at its head, or no spatial pooling.
        """
        return self.forward_with_scales(x)[1]

    def forward_with_scales(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's logits ``[B, num_classes]`` and :meth:`forward_scales`' ``[B, S, num_classes]`` from one
        pass through the trunk (an evaluation that reports both costs one forward, not two).

        Raises:
            UserError: the model has no scale axis at its head, or no spatial pooling.
        """
        if not self.has_scale_axis or not self.global_pool:
            raise UserError("forward_scales needs a model with a scale axis at its head and spatial pooling")
        pooled = self._pooled_features(x)  # [B, C, S]
        return self._head_pooled(pooled), self._level_logits(pooled)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm-style feature pyramid: the stem and stage outputs of the input at its own resolution (NCHW).

        Pyramid models return the maps of the full-resolution level (what a detector or segmenter expects);
        scale-axis maps are reduced by a per-position max over scales.
        """
        from timm.models._features import feature_take_indices

        if output_fmt != "NCHW":
            raise ValueError("only NCHW output is supported")
        take, _ = feature_take_indices(len(self.feature_info), indices)
        _, feats = self._trunk(x, collect=True)
        inter = [feats[i] for i in take]
        if intermediates_only:
            return inter
        return self.forward_features(x), inter


# ------------------------------------------------------------------------------------------------ builders
ARCHS: dict[str, dict[str, Any]] = {
    "resnet8": {"block": BasicBlock, "depths": (1, 1, 1), "widths": (16, 32, 64), "stem_type": "cifar"},
    "resnet14": {"block": BasicBlock, "depths": (2, 2, 2), "widths": (16, 32, 64), "stem_type": "cifar"},
    "resnet20": {"block": BasicBlock, "depths": (3, 3, 3), "widths": (16, 32, 64), "stem_type": "cifar"},
    "resnet32": {"block": BasicBlock, "depths": (5, 5, 5), "widths": (16, 32, 64), "stem_type": "cifar"},
    "resnet56": {"block": BasicBlock, "depths": (9, 9, 9), "widths": (16, 32, 64), "stem_type": "cifar"},
    "resnet18": {"block": BasicBlock, "depths": (2, 2, 2, 2), "widths": (64, 128, 256, 512), "stem_type": "imagenet"},
    "resnet34": {"block": BasicBlock, "depths": (3, 4, 6, 3), "widths": (64, 128, 256, 512), "stem_type": "imagenet"},
}
"""Backbone configurations by name; scale-channel networks wrap any of these (and the Res2Net ones)."""


def build_resnet(name: str, arch: dict[str, Any], defaults: dict[str, Any] | None = None, **kwargs: Any) -> ResNet:
    """Build ``ResNet(**arch, **defaults, **kwargs)`` and attach a complete timm-style ``pretrained_cfg``.

    ``defaults`` are the variant's settings; user ``kwargs`` override them.
    """
    opts = {**(defaults or {}), **kwargs}
    for fixed in ("block", "depths", "widths"):
        if fixed in opts:
            raise UserError(f"model {name!r}: {fixed!r} is fixed by the model name; pick another model")
    model = ResNet(**arch, **opts)
    in_chans = model.in_chans
    imagenet = arch.get("stem_type", "cifar") == "imagenet"
    side = 224 if imagenet else 64
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if in_chans != 3:
        mean, std = (sum(mean) / 3,) * in_chans, (sum(std) / 3,) * in_chans
    first_conv = "stem.conv" if "stem.conv.weight" in model.state_dict() else "stem.conv.weight"
    model.pretrained_cfg = make_cfg(
        architecture=name,
        num_classes=model.num_classes,
        input_size=(in_chans, side, side),
        min_input_size=(in_chans, model.min_input_size, model.min_input_size),
        pool_size=(side // model.stride, side // model.stride),
        mean=mean,
        std=std,
        first_conv=first_conv,
    )
    model.default_cfg = model.pretrained_cfg
    return model


def _plain(name: str, **kwargs: Any) -> ResNet:
    arch = ARCHS[name]
    defaults = {"min_input_size": 32} if arch["stem_type"] == "imagenet" else {}
    return build_resnet(name, arch, defaults, **kwargs)


@register_model
def resnet8(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """CIFAR-style ResNet-8 (1 block per stage, widths 16/32/64; min input 16 px)."""
    return _plain("resnet8", **kwargs)


@register_model
def resnet14(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """CIFAR-style ResNet-14 (2 blocks per stage; min input 16 px)."""
    return _plain("resnet14", **kwargs)


@register_model
def resnet20(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """CIFAR-style ResNet-20 (3 blocks per stage; min input 16 px)."""
    return _plain("resnet20", **kwargs)


@register_model
def resnet32(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """CIFAR-style ResNet-32 (5 blocks per stage; min input 16 px)."""
    return _plain("resnet32", **kwargs)


@register_model
def resnet56(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """CIFAR-style ResNet-56 (9 blocks per stage; min input 16 px)."""
    return _plain("resnet56", **kwargs)


@register_model
def resnet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ImageNet-style ResNet-18 (7x7/2 stem + max-pool, stride 32; min input 32 px)."""
    return _plain("resnet18", **kwargs)


@register_model
def resnet34(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ImageNet-style ResNet-34 (stride 32; min input 32 px)."""
    return _plain("resnet34", **kwargs)
