"""Stems of the generic ResNet: a plain convolution, or a lifting scale convolution with scale selection."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.layers import ScaleConv2d, ScalePool

__all__ = ["ConvStem", "LiftingStem"]


class ConvStem(nn.Module):
    """Plain stem: 3x3/stride 1 (``"cifar"``, small images) or 7x7/stride 2 (``"imagenet"``), BN, ReLU."""

    def __init__(self, in_chans: int, out_chs: int, stem_type: str = "cifar") -> None:
        super().__init__()
        k, self.stride = (3, 1) if stem_type == "cifar" else (7, 2)
        self.conv = nn.Conv2d(in_chans, out_chs, k, self.stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class LiftingStem(nn.Module):
    """Lifting :class:`ScaleConv2d` stem: ``[B, C, H, W] -> [B, C', S, H, W]``, BN per channel over all scales, then
    a :class:`ScalePool` over scales (local scale selection) and ReLU, or, with ``pool=None``, ReLU and the scale
    axis kept for later stages."""

    def __init__(
        self,
        in_chans: int,
        out_chs: int,
        basis: str = "dilation",
        num_scales: int = 2,
        pool: str | None = "softmax",
        stem_type: str = "cifar",
        **conv_kwargs: Any,
    ) -> None:
        super().__init__()
        self.stride = 1 if stem_type == "cifar" else 2
        k = 3 if stem_type == "cifar" else 7
        self.conv = ScaleConv2d(
            in_chans, out_chs, num_scales, k, basis, lifting=True, stride=self.stride, **conv_kwargs
        )
        self.bn = nn.BatchNorm3d(out_chs)
        self.pool = ScalePool(pool, dim=2, channels=out_chs) if pool else None
        if basis == "dilation":
            self.dilations = list(self.conv.dilations)
        else:  # the integer dilation closest to each hermite scale, for shared stages after the stem
            self.dilations = [max(1, round(s / self.conv.sigmas[0])) for s in self.conv.sigmas]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.pool is not None:
            y = self.pool(y)
        return F.relu(y)  # not in place: max pooling over scales keeps its output for the backward pass
