"""Stems of the trunks, passed to :class:`~msresnet.models.resnet.ResNet` as classes (the way timm passes layer
types): a plain convolution, the ImageNet-style convolution + max-pool, or a lifting scale convolution.

Every stem is built as ``stem(in_chans, out_chs, **stem_kwargs)`` and says how much it downsamples (``stride``),
which the trunk's ``feature_info`` and ``pool_size`` are computed from.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.layers import ScaleConv2d, ScalePool

__all__ = ["ConvStem", "ImageNetStem", "LiftingStem"]


class ConvStem(nn.Module):
    """Plain stem: ``kernel_size`` convolution (3x3 / stride 1 for small images), BN, ReLU."""

    def __init__(self, in_chans: int, out_chs: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(in_chans, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class ImageNetStem(ConvStem):
    """ImageNet-style stem: 7x7 / stride 2 convolution, BN, ReLU, then a 3x3 / stride 2 max-pool (stride 4)."""

    def __init__(self, in_chans: int, out_chs: int) -> None:
        super().__init__(in_chans, out_chs, kernel_size=7, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stride = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(super().forward(x))


class LiftingStem(nn.Module):
    """Lifting :class:`ScaleConv2d` stem: ``[B, C, H, W] -> [B, C', S, H, W]``, BN per channel over all scales, then

    * with ``pool`` (a :class:`ScalePool` mode, ``"softmax"``: the scale-aware activation): the scale axis
      collapsed right away (local scale selection) and ReLU, ``[B, C', H, W]`` - a stem of a plain 4-D trunk;
    * with ``pool=None``: ReLU and the scale axis kept, for trunks that carry it (SESN-style, dilation-shared).

    ``dilations`` lists the integer dilation of each scale (the dilation basis' own; for the hermite basis the
    one closest to each Gaussian scale), which dilation-shared stages run their convolutions at.
    """

    def __init__(
        self,
        in_chans: int,
        out_chs: int,
        basis: str = "dilation",
        num_scales: int = 2,
        pool: str | None = "softmax",
        kernel_size: int = 3,
        stride: int = 1,
        **conv_kwargs: Any,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.conv = ScaleConv2d(
            in_chans, out_chs, num_scales, kernel_size, basis, lifting=True, stride=stride, **conv_kwargs
        )
        self.bn = nn.BatchNorm3d(out_chs)
        self.pool = ScalePool(pool, dim=2, channels=out_chs, num_scales=num_scales) if pool else None
        if basis == "dilation":
            self.dilations = list(self.conv.dilations)
        else:
            self.dilations = [max(1, round(s / self.conv.sigmas[0])) for s in self.conv.sigmas]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.pool is not None:
            y = self.pool(y)
        return F.relu(y)  # not in place: max pooling over scales keeps its output for the backward pass
