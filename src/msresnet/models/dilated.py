"""Dilation-shared stages: a trunk that carries a lifting stem's scale axis through its first stages, one set of
weights run at several dilations (TridentNet-style), and pools the axis before the rest (``msresnet20_kernels``).

The :class:`~msresnet.models._stems.LiftingStem` (``pool=None``) maps the image to ``S`` scales ``[B, C, S, H, W]``;
each of the first ``shared_stages`` stages runs scale ``s`` through the same blocks with every 3x3 convolution at
the stem's dilation ``d_s`` (scale-invariant kernels without extra parameters). After the last shared stage a
:class:`~msresnet.layers.ScalePool` (``scale_pool``, with optional training-time ``scale_dropout``) pools the scale
axis per position; the remaining stages, the head and ``forward_features`` are those of the plain 4-D trunk.
"""

from __future__ import annotations

from typing import Any

import torch

from msresnet.errors import UserError
from msresnet.layers import ScalePool
from msresnet.models.resnet import ResNet

__all__ = ["DilatedScaleResNet"]


class DilatedScaleResNet(ResNet):
    """ResNet with dilation-shared stages (see the module docstring).

    Args:
        *args: :class:`ResNet` arguments; ``stem`` must keep a scale axis and list its ``dilations``.
        shared_stages: How many stages (from the first) run at every dilation, at least 1.
        scale_pool: :class:`ScalePool` mode pooling the scale axis after the shared stages.
        scale_dropout: Training-time scale dropout of that pooling.
        **kwargs: :class:`ResNet` options.
    """

    def __init__(
        self, *args: Any, shared_stages: int = 1, scale_pool: str = "avg", scale_dropout: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if not 1 <= shared_stages <= len(self.stages):
            raise UserError(f"shared_stages must be between 1 and {len(self.stages)}, got {shared_stages}")
        self.shared_stages = shared_stages
        self.dilations = list(self.stem.dilations)
        chans = self.feature_info[shared_stages]["num_chs"]
        self.scale_pool = ScalePool(scale_pool, dim=2, channels=chans, scale_dropout=scale_dropout)

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i >= self.shared_stages:
            return self.stages[i](x)
        outs = []
        for s, d in enumerate(self.dilations):  # shared weights: scale s runs the stage at dilation d_s
            y = x[:, :, s]
            for blk in self.stages[i]:
                y = blk(y, d)
            outs.append(y)
        x = torch.stack(outs, 2)
        return self.scale_pool(x) if i + 1 == self.shared_stages else x

    def _nchw(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(2) if x.dim() == 5 else x  # intermediate maps: the per-position max over scales
