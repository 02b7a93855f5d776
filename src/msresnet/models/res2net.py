"""``res2net_*``: Res2Net-style hierarchical multi-scale blocks (Gao et al., 2019) in the plain ResNet trunk.

The block reduces with a 1x1 convolution, splits the channels into ``scale`` groups and runs cascaded 3x3
convolutions: group ``i`` sees group ``i``'s input plus group ``i-1``'s output, so its receptive field grows with
``i`` (3, 5, 7 ... px) inside one block; the last group passes through. A 1x1 convolution fuses the groups.
Multi-scale features at one resolution - no scale axis, cost below the plain block (a 3x3 over C/scale channels
per group). Widths are rounded to a multiple of ``scale``. Minimum input: 16 px.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.models._registry import register_model
from msresnet.models.blocks import conv_at, shortcut
from msresnet.models.resnet import ARCHS, ResNet, build_trunk

__all__ = ["Res2NetBlock"]


class Res2NetBlock(nn.Module):
    """1x1 -> hierarchical split 3x3 convolutions -> 1x1, with a residual connection (expansion 1)."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, scale: int = 4) -> None:
        super().__init__()
        if planes % scale:
            raise ValueError(f"Res2NetBlock needs planes divisible by scale ({planes} % {scale})")
        self.scale, self.stride = scale, stride
        group = planes // scale
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.convs = nn.ModuleList(nn.Conv2d(group, group, 3, stride, 1, bias=False) for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(group) for _ in range(scale - 1))
        # a downsampling block cannot add neighbouring groups (different sizes); the pass-through group is pooled
        self.pool = nn.AvgPool2d(3, stride, 1) if stride > 1 else None
        self.conv3 = nn.Conv2d(planes, planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.downsample = shortcut(in_chs, planes, stride)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor, dilation: int = 1) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        splits = out.chunk(self.scale, dim=1)
        ys, prev = [], None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            sp = splits[i] if prev is None or self.stride > 1 else prev + splits[i]
            prev = F.relu(bn(conv_at(conv, sp, dilation)), inplace=True)
            ys.append(prev)
        ys.append(splits[-1] if self.pool is None else self.pool(splits[-1]))
        out = self.bn3(self.conv3(torch.cat(ys, dim=1)))
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(out + short, inplace=True)


for _depth, _blocks in (("8", (1, 1, 1)), ("20", (3, 3, 3))):
    ARCHS[f"res2net_resnet{_depth}"] = {
        "block": Res2NetBlock,
        "depths": _blocks,
        "widths": (16, 32, 64),
        "channel_multiple": 4,
    }


@register_model
def res2net_resnet8(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Res2Net-style ResNet-8 (scale 4, widths 16/32/64)."""
    return build_trunk("res2net_resnet8", ARCHS["res2net_resnet8"], **kwargs)


@register_model
def res2net_resnet20(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Res2Net-style ResNet-20 (scale 4, widths 16/32/64)."""
    return build_trunk("res2net_resnet20", ARCHS["res2net_resnet20"], **kwargs)
