"""``sesn_*``: SESN-style scale-equivariant ResNets (Sosnovik, Szmaja & Smeulders, 2020): a trunk family of its own.

A Hermite-Gaussian lifting convolution maps the image to ``S`` scales; every block then uses scale-to-scale
:class:`~msresnet.layers.ScaleConv2d` convolutions (same learned coefficients at every scale, ``scale_size``
neighbouring scales mixed) and BatchNorm per channel over all scales, so the scale axis ``[B, C, S, H, W]`` lives
inside the trunk. At the end of the trunk it is pooled per position (``scale_pool``, max by default: SESN's scale
projection), so the trunk presents 4-D ``forward_features`` like any other; the head pools space (average) and
classifies. Every convolution runs at ``S`` scales with kernels of the coarsest scale's size, so these networks are
the faithful, expensive baseline. Minimum input: 16 px.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.layers import ScaleConv2d, ScalePool
from msresnet.models._registry import register_model
from msresnet.models._stems import LiftingStem
from msresnet.models.resnet import ResNet, build_trunk

__all__ = ["SESNBasicBlock", "SESNResNet", "build_sesn", "per_scale"]


def per_scale(fn: Any, x: torch.Tensor) -> torch.Tensor:
    """Apply a 4-D op to every scale of ``[B, C, S, H, W]`` in one call (scales folded into the batch)."""
    y = fn(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)


class ScaleShortcut(nn.Module):
    """Projection shortcut on ``[B, C, S, H, W]``: the same 1x1 convolution at every scale, then BN over scales.

    A Conv2d over scales folded into the batch rather than a 1x1x1 Conv3d: 5-D weights would break
    ``model.to(memory_format=torch.channels_last)``.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)
        self.bn = nn.BatchNorm3d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(per_scale(self.conv, x))


class SESNBasicBlock(nn.Module):
    """Basic residual block on ``[B, C, S, H, W]`` with two scale-to-scale Hermite convolutions."""

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        num_scales: int = 3,
        scale_size: int = 1,
        kernel_size: int = 5,
        **conv_kwargs: Any,
    ) -> None:
        super().__init__()
        common = {"basis": "hermite", "lifting": False, "hermite_size": kernel_size, **conv_kwargs}
        self.conv1 = ScaleConv2d(in_chs, planes, num_scales, scale_size=scale_size, stride=stride, **common)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = ScaleConv2d(planes, planes, num_scales, scale_size=scale_size, **common)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = ScaleShortcut(in_chs, planes, stride) if stride != 1 or in_chs != planes else None

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(out + short, inplace=True)


class SESNResNet(ResNet):
    """ResNet whose stem lifts to ``S`` scales and whose blocks carry the scale axis; ``scale_pool`` (a
    :class:`ScalePool` mode) pools it per position after the last stage. Other arguments as :class:`ResNet`."""

    def __init__(self, *args: Any, scale_pool: str = "max", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale_pool = ScalePool(scale_pool, dim=2, channels=self.num_features)

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        x = self.stages[i](x)
        return self.scale_pool(x) if i == len(self.stages) - 1 else x

    def _nchw(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(2) if x.dim() == 5 else x  # intermediate maps: the per-position max over scales


_DEPTHS = {"resnet8": (1, 1, 1), "resnet20": (3, 3, 3)}


def build_sesn(
    name: str,
    depths: tuple[int, ...],
    num_scales: int = 3,
    scale_size: int = 1,
    kernel_size: int = 5,
    sigma0: float = 0.6,
    step: float = 2**0.5,
    **kwargs: Any,
) -> SESNResNet:
    """A SESN-style CIFAR ResNet.

    Args:
        name: Registered name.
        depths: Blocks per stage.
        num_scales: Scales carried through the network.
        scale_size: Neighbouring scales mixed by each scale-to-scale convolution.
        kernel_size: Kernel size of the block convolutions (coarse Hermite kernels are truncated to it).
        sigma0: Finest Gaussian scale of the basis.
        step: Ratio between neighbouring scales.
        **kwargs: :class:`SESNResNet` options (``width``, ``scale_pool``, ``global_pool`` ...).
    """
    basis = {"sigma0": sigma0, "step": step}
    arch = {"block": SESNBasicBlock, "depths": depths, "widths": (16, 32, 64), "stem": LiftingStem}
    defaults = {
        "stem_kwargs": {"basis": "hermite", "num_scales": num_scales, "pool": None, **basis},
        "block_kwargs": {"num_scales": num_scales, "scale_size": scale_size, "kernel_size": kernel_size, **basis},
    }
    return build_trunk(name, arch, SESNResNet, **{**defaults, **kwargs})


@register_model
def sesn_resnet8(pretrained: bool = False, **kwargs: Any) -> SESNResNet:
    """SESN-style ResNet-8: 3 scales (sigma 0.6 ... 1.2), Hermite convolutions in every layer."""
    return build_sesn("sesn_resnet8", _DEPTHS["resnet8"], **kwargs)


@register_model
def sesn_resnet20(pretrained: bool = False, **kwargs: Any) -> SESNResNet:
    """SESN-style ResNet-20: 3 scales (sigma 0.6 ... 1.2), Hermite convolutions in every layer."""
    return build_sesn("sesn_resnet20", _DEPTHS["resnet20"], **kwargs)
