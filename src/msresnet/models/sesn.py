"""``sesn_*``: SESN-style scale-equivariant ResNets (Sosnovik, Szmaja & Smeulders, 2020).

A Hermite-Gaussian lifting convolution maps the image to ``S`` scales; every block then uses scale-to-scale
:class:`~msresnet.layers.ScaleConv2d` convolutions (same learned coefficients at every scale, ``scale_size``
neighbouring scales mixed), BatchNorm per channel over all scales, and the scale axis is carried to the head,
where each scale is pooled over space and the scales are max-pooled. Every convolution runs at ``S`` scales with
kernels of the coarsest scale's size, so these networks cost roughly ``S * (k/3)**2`` times a plain ResNet: they are
the faithful, expensive baseline. Minimum input: 16 px.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.layers import ScaleConv2d
from msresnet.models._registry import register_model
from msresnet.models.resnet import ResNet, _per_scale, build_resnet

__all__ = ["SESNBasicBlock", "build_sesn"]


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
        return self.bn(_per_scale(self.conv, x))


class SESNBasicBlock(nn.Module):
    """Basic residual block on ``[B, C, S, H, W]`` with two scale-to-scale Hermite convolutions."""

    expansion = 1
    scale_axis = True

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
) -> ResNet:
    """A SESN-style CIFAR ResNet.

    Args:
        name: Registered name.
        depths: Blocks per stage.
        num_scales: Scales carried through the network.
        scale_size: Neighbouring scales mixed by each scale-to-scale convolution.
        kernel_size: Kernel size of the block convolutions (coarse Hermite kernels are truncated to it).
        sigma0: Finest Gaussian scale of the basis.
        step: Ratio between neighbouring scales.
        **kwargs: ResNet options (``width``, ``scale_pool``, ``global_pool`` ...).
    """
    basis_kwargs = {"sigma0": sigma0, "step": step}
    arch = {"block": SESNBasicBlock, "depths": depths, "widths": (16, 32, 64), "stem_type": "cifar"}
    defaults = {
        "stem_basis": "hermite",
        "stem_scales": num_scales,
        "stem_kwargs": basis_kwargs,
        "shared_stages": len(depths),
        "scale_pool": "max",
        "global_pool": "avg",
        "block_kwargs": {
            "num_scales": num_scales,
            "scale_size": scale_size,
            "kernel_size": kernel_size,
            **basis_kwargs,
        },
    }
    return build_resnet(name, arch, defaults, **kwargs)


@register_model
def sesn_resnet8(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SESN-style ResNet-8: 3 scales (sigma 0.6 ... 1.2), Hermite convolutions in every layer."""
    return build_sesn("sesn_resnet8", _DEPTHS["resnet8"], **kwargs)


@register_model
def sesn_resnet20(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SESN-style ResNet-20: 3 scales (sigma 0.6 ... 1.2), Hermite convolutions in every layer."""
    return build_sesn("sesn_resnet20", _DEPTHS["resnet20"], **kwargs)
