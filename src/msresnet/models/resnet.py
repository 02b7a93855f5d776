"""The plain trunk: a 4-D ResNet whose block and stem are arguments (classes, the way timm passes layer types).

``ResNet(block, depths, widths, stem=ConvStem)`` covers the plain baselines (a CIFAR-style stem for small images,
:class:`~msresnet.models._stems.ImageNetStem` for large ones), Res2Net-style networks (a block class) and the
single-scale msresnet trunks (a :class:`~msresnet.models._stems.LiftingStem` whose scale axis is pooled right away).
It has timm's classifier contract: ``forward_features`` -> the unpooled last-stage map ``[B, C, H, W]``,
``forward_head`` -> global pooling, dropout, classifier ``fc``, and ``forward == forward_head(forward_features)``.
Scale machinery lives elsewhere: around a trunk (:mod:`msresnet.scale`, e.g. the image pyramid of ``msresnet*``)
or inside a trunk family of its own that carries a scale axis through its stages (:mod:`msresnet.models.sesn`,
:mod:`msresnet.models.dilated`), which overrides :meth:`ResNet._stage` and still presents 4-D features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from msresnet.errors import UserError
from msresnet.models._registry import make_cfg, register_model
from msresnet.models._stems import ConvStem, ImageNetStem
from msresnet.models.blocks import BasicBlock, Bottleneck, make_divisible

__all__ = ["ARCHS", "GLOBAL_POOLS", "BasicBlock", "Bottleneck", "ResNet", "build_trunk", "set_pretrained_cfg"]

GLOBAL_POOLS = ("avg", "max", "")


class ResNet(nn.Module):
    """Plain ResNet trunk (see the module docstring).

    Args:
        block: Block class (:mod:`msresnet.models.blocks`, Res2Net or SESN blocks), built as
            ``block(in_chs, planes, stride, **block_kwargs)``.
        depths: Blocks per stage.
        widths: Base channels per stage (before ``width`` and the block expansion).
        stem: Stem class, built as ``stem(in_chans, channels, **stem_kwargs)``; it has a ``stride``.
        num_classes: Classifier outputs; 0 for none (``forward`` returns the pooled features).
        in_chans: Input channels.
        width: Channel multiplier for every stage.
        channel_multiple: Channel counts are rounded to a multiple of this (Res2Net splits need it).
        drop_rate: Dropout before the classifier.
        global_pool: Spatial pooling of the head: ``"avg"``, ``"max"`` or ``""`` (none).
        stem_kwargs: Extra keyword arguments of the stem.
        block_kwargs: Extra keyword arguments of every block.
        min_input_size: Smallest input side the model is documented to accept.
        zero_init_last: Zero the last BN of every residual branch (each block starts as the identity).
    """

    def __init__(
        self,
        block: type[nn.Module],
        depths: Sequence[int],
        widths: Sequence[int],
        stem: type[nn.Module] = ConvStem,
        num_classes: int = 1000,
        in_chans: int = 3,
        width: float = 1.0,
        channel_multiple: int = 1,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        stem_kwargs: dict[str, Any] | None = None,
        block_kwargs: dict[str, Any] | None = None,
        min_input_size: int = 16,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(width, (int, float)) or width <= 0:
            raise UserError(f"width must be a positive number, got {width!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise UserError(f"drop_rate must be in [0, 1), got {drop_rate}")
        _check_pool(global_pool)
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.global_pool, self.min_input_size = global_pool, min_input_size
        chans = [make_divisible(w * width, channel_multiple) for w in widths]
        self.stem = stem(in_chans, chans[0], **(stem_kwargs or {}))
        reduction = self.stem.stride
        self.feature_info = [{"num_chs": chans[0], "reduction": reduction, "module": "stem"}]
        stages, in_chs = [], chans[0]
        for i, (depth, planes) in enumerate(zip(depths, chans, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(block(in_chs, planes, stride if j == 0 else 1, **(block_kwargs or {})))
                in_chs = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
            reduction *= stride
            self.feature_info.append({"num_chs": in_chs, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.ModuleList(stages)
        self.num_features = self.head_hidden_size = in_chs
        self.stride = reduction
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if zero_init_last and hasattr(m, "zero_init_last") and m is not self:
                m.zero_init_last()

    # ------------------------------------------------------------------------------------------- timm contract
    def get_classifier(self) -> nn.Module:
        """The final linear layer (or Identity)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (``num_classes=0``: none) and optionally the spatial pooling."""
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Not supported (the models are small); present for timm API compatibility."""
        if enable:
            raise NotImplementedError("gradient checkpointing is not implemented for msresnet models")

    # ----------------------------------------------------------------------------------------------- forward
    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i`` on ``x``; trunk families that carry a scale axis override this."""
        return self.stages[i](x)

    def _nchw(self, x: torch.Tensor) -> torch.Tensor:
        """An intermediate map as handed to detectors/segmenters (trunks with a scale axis reduce it here)."""
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The unpooled last-stage map ``[B, num_features, H / stride, W / stride]``."""
        x = self.stem(x)
        for i in range(len(self.stages)):
            x = self._stage(i, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global spatial pooling (none with ``global_pool=""``), dropout, classifier."""
        if self.global_pool == "max":
            x = x.amax((-2, -1))
        elif self.global_pool == "avg":
            x = x.mean((-2, -1))
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` (pooled features when ``num_classes == 0``)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm-style feature pyramid: the stem and stage outputs (NCHW) listed in ``feature_info``, and (unless
        ``intermediates_only``) the ``forward_features`` output. ``norm`` has nothing to apply (no final norm)."""
        from timm.models._features import feature_take_indices

        if output_fmt != "NCHW":
            raise UserError("only NCHW output is supported")
        take, last = feature_take_indices(len(self.feature_info), indices)
        n_stages = last if stop_early or intermediates_only else len(self.stages)
        x = self.stem(x)
        inter = [self._nchw(x)] if 0 in take else []
        for i in range(n_stages):
            x = self._stage(i, x)
            if i + 1 in take:
                inter.append(self._nchw(x))
        return inter if intermediates_only else (x, inter)


def _check_pool(global_pool: str) -> str:
    if global_pool not in GLOBAL_POOLS:
        raise UserError(f"global_pool must be 'avg', 'max' or '', got {global_pool!r}")
    return global_pool


# ------------------------------------------------------------------------------------------------ builders
ARCHS: dict[str, dict[str, Any]] = {
    "resnet8": {"block": BasicBlock, "depths": (1, 1, 1), "widths": (16, 32, 64)},
    "resnet14": {"block": BasicBlock, "depths": (2, 2, 2), "widths": (16, 32, 64)},
    "resnet20": {"block": BasicBlock, "depths": (3, 3, 3), "widths": (16, 32, 64)},
    "resnet32": {"block": BasicBlock, "depths": (5, 5, 5), "widths": (16, 32, 64)},
    "resnet56": {"block": BasicBlock, "depths": (9, 9, 9), "widths": (16, 32, 64)},
    "resnet18": {"block": BasicBlock, "depths": (2, 2, 2, 2), "widths": (64, 128, 256, 512), "stem": ImageNetStem},
    "resnet34": {"block": BasicBlock, "depths": (3, 4, 6, 3), "widths": (64, 128, 256, 512), "stem": ImageNetStem},
}
"""Backbone configurations by name; the msresnet and scale-channel networks build their trunks from these."""


def set_pretrained_cfg(model: ResNet, name: str) -> ResNet:
    """Attach a complete timm-style ``pretrained_cfg`` (and ``default_cfg``) derived from the built trunk."""
    in_chans = model.in_chans
    side = 224 if isinstance(model.stem, ImageNetStem) else 64
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if in_chans != 3:
        mean, std = (sum(mean) / 3,) * in_chans, (sum(std) / 3,) * in_chans
    model.pretrained_cfg = model.default_cfg = make_cfg(
        architecture=name,
        num_classes=model.num_classes,
        input_size=(in_chans, side, side),
        min_input_size=(in_chans, model.min_input_size, model.min_input_size),
        pool_size=(-(-side // model.stride), -(-side // model.stride)),
        mean=mean,
        std=std,
    )
    return model


def build_trunk(name: str, arch: dict[str, Any], cls: type[ResNet] = ResNet, **kwargs: Any) -> ResNet:
    """``cls(**arch, **kwargs)`` with its ``pretrained_cfg``; ``kwargs`` (user options) may not redefine the
    architecture the name fixes."""
    for fixed in ("block", "depths", "widths"):
        if fixed in kwargs:
            raise UserError(f"model {name!r}: {fixed!r} is fixed by the model name; pick another model")
    return set_pretrained_cfg(cls(**{**arch, **kwargs}), name)


def _plain(name: str, **kwargs: Any) -> ResNet:
    arch = ARCHS[name]
    defaults = {"min_input_size": 32} if arch.get("stem") is ImageNetStem else {}
    return build_trunk(name, arch, **{**defaults, **kwargs})


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
