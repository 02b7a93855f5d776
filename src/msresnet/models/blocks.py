"""Residual blocks of the trunks (passed to :class:`~msresnet.models.resnet.ResNet` as classes).

Every block is built as ``block(in_chs, planes, stride, **block_kwargs)``, has an ``expansion`` (output channels
per ``planes``) and ``zero_init_last()`` (zero its last BN: the block starts as the identity). The 3x3 convolutions
of the plain blocks take an optional ``dilation`` at call time, so that dilation-shared stages
(:mod:`msresnet.models.dilated`) can run the same weights at several dilations without copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "conv_at", "make_divisible", "shortcut"]


def conv_at(conv: nn.Conv2d, x: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Apply ``conv`` with its own weights at another dilation (padding grows with it, so the size is kept)."""
    if dilation == 1:
        return conv(x)
    pad = dilation * (conv.kernel_size[0] // 2)
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, pad, dilation, conv.groups)


def make_divisible(value: float, multiple: int = 1) -> int:
    """Round a (width-multiplied) channel count to a positive multiple of ``multiple``."""
    return max(multiple, int(value + multiple / 2) // multiple * multiple)


def shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    """The projection shortcut (1x1 convolution + BN) where the residual changes shape, else None (identity)."""
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34, CIFAR ResNets)."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = shortcut(in_chs, planes, stride)

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

    def __init__(self, in_chs: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.downsample = shortcut(in_chs, out_chs, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor, dilation: int = 1) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(conv_at(self.conv2, out, dilation)), inplace=True)
        out = self.bn3(self.conv3(out))
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(out + short, inplace=True)
