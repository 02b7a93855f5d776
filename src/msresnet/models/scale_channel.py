"""``scalechannel_*``: scale-channel networks (Jansson & Lindeberg, 2022) over any backbone of the zoo.

The input is resampled by ``2**(k/2)``, ``k = 2, 1, 0, -1, -2`` (x2 up to x0.5 down); every level runs through the
same backbone (shared weights); each level's map is pooled over space (average, as in the backbone) and the
levels are combined per channel by ``max`` (FovMax), ``avg`` (FovAvg) or the softmax scale-aware activation.

Enlarged levels are centre-cropped back to the input size: each scale channel sees a window of the same size (the
foveated variant of the paper), so the cost stays bounded at ``3 + 0.5 + 0.25 = 3.75x`` the backbone instead of
``4 + 2 + 1 + ...``; objects larger than the crop are still seen whole by the downscaled channels.
This is the generic :class:`~msresnet.models.resnet.ResNet` with ``pyramid_scales`` going up and down and
``crop_upscaled=True``. Minimum input: 16 px.
"""

from __future__ import annotations

from typing import Any

from msresnet.errors import UserError
from msresnet.models._registry import register_model
from msresnet.models.resnet import ARCHS, ResNet, build_resnet

__all__ = ["SCALE_CHANNEL_SCALES", "build_scale_channel"]

SCALE_CHANNEL_SCALES = tuple(2 ** (k / 2) for k in (2, 1, 0, -1, -2))
_POOLS = {"fovmax": "max", "fovavg": "avg", "softmax": "softmax"}


def build_scale_channel(backbone: str, pool: str, name: str | None = None, **kwargs: Any) -> ResNet:
    """A scale-channel network over ``backbone`` (any key of :data:`~msresnet.models.resnet.ARCHS`).

    Args:
        backbone: Backbone configuration name, e.g. ``"resnet20"`` or ``"res2net_resnet20"``.
        pool: ``"fovmax"``, ``"fovavg"`` or ``"softmax"`` (how scale channels are combined).
        name: Name recorded in ``pretrained_cfg`` (default ``scalechannel_<pool>_<backbone>``).
        **kwargs: ResNet options (e.g. ``pyramid_scales``, ``width``, ``global_pool``).
    """
    if backbone not in ARCHS:
        raise UserError(f"unknown scale-channel backbone {backbone!r}; choose one of {', '.join(sorted(ARCHS))}")
    if pool not in _POOLS:
        raise UserError(f"unknown scale-channel pooling {pool!r}; choose one of {', '.join(_POOLS)}")
    defaults = {
        "pyramid_scales": SCALE_CHANNEL_SCALES,
        "crop_upscaled": True,
        "scale_pool": _POOLS[pool],
        "global_pool": "avg",
    }
    return build_resnet(name or f"scalechannel_{pool}_{backbone}", ARCHS[backbone], defaults, **kwargs)


def _register(pool: str, backbone: str) -> None:
    name = f"scalechannel_{pool}_{backbone}"

    def entry(pretrained: bool = False, **kwargs: Any) -> ResNet:
        return build_scale_channel(backbone, pool, name=name, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"Scale-channel network ({pool}) over {backbone}: 5 levels x2 ... x0.5, shared weights."
    register_model(entry)


for _backbone in ("resnet8", "resnet20"):
    for _pool in _POOLS:
        _register(_pool, _backbone)
