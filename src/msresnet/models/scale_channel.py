"""``scalechannel_*``: scale-channel networks (Jansson & Lindeberg, 2022) over any backbone of the zoo.

The input is resampled by ``2**(k/2)``, ``k = 2, 1, 0, -1, -2`` (x2 up to x0.5 down); every level runs through the
same backbone (shared weights); each level's map is pooled over space (average, as in the backbone) and the
levels are combined per channel by ``max`` (FovMax), ``avg`` (FovAvg) or the softmax scale-aware activation.

Enlarged levels are centre-cropped back to the input size: each scale channel sees a window of the same size (the
foveated variant of the paper), so the cost stays bounded instead of growing with the square of the largest
factor; objects larger than the crop are still seen whole by the downscaled channels. This is
:func:`msresnet.wrap` with ``method="pyramid"`` around a plain trunk, with factors going up and down. Minimum
input: 16 px.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from msresnet.errors import UserError
from msresnet.models._registry import WRAPPED_CFG, register_model
from msresnet.models.msresnet import PYRAMID_KEYS, build_pyramid
from msresnet.models.resnet import ARCHS, build_trunk

__all__ = ["SCALE_CHANNEL_SCALES", "build_scale_channel"]

SCALE_CHANNEL_SCALES = tuple(2 ** (k / 2) for k in (2, 1, 0, -1, -2))
_POOLS = {"fovmax": "max", "fovavg": "avg", "softmax": "softmax"}


def build_scale_channel(backbone: str, pool: str, name: str | None = None, **kwargs: Any) -> nn.Module:
    """A scale-channel network over ``backbone`` (any key of :data:`~msresnet.models.resnet.ARCHS`).

    Args:
        backbone: Backbone configuration name, e.g. ``"resnet20"`` or ``"res2net_resnet20"``.
        pool: ``"fovmax"``, ``"fovavg"`` or ``"softmax"`` (how scale channels are combined).
        name: Name recorded in ``pretrained_cfg`` (default ``scalechannel_<pool>_<backbone>``).
        **kwargs: Pyramid options (``pyramid_scales``, ``scale_dropout`` ...) and trunk options (``width``,
            ``global_pool`` ...).
    """
    if backbone not in ARCHS:
        raise UserError(f"unknown scale-channel backbone {backbone!r}; choose one of {', '.join(sorted(ARCHS))}")
    if pool not in _POOLS:
        raise UserError(f"unknown scale-channel pooling {pool!r}; choose one of {', '.join(_POOLS)}")
    name = name or f"scalechannel_{pool}_{backbone}"
    opts = {"pyramid_scales": SCALE_CHANNEL_SCALES, "crop_upscaled": True, "scale_pool": _POOLS[pool], **kwargs}
    opts.setdefault("scale_dropout", 0.0)
    trunk = build_trunk(name, ARCHS[backbone], **{k: v for k, v in opts.items() if k not in PYRAMID_KEYS})
    return build_pyramid(name, trunk, opts)


def _register(pool: str, backbone: str) -> None:
    name = f"scalechannel_{pool}_{backbone}"

    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return build_scale_channel(backbone, pool, name=name, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"Scale-channel network ({pool}) over {backbone}: 5 levels x2 ... x0.5, shared weights."
    register_model(entry, cfg=WRAPPED_CFG)


for _backbone in ("resnet8", "resnet20"):
    for _pool in _POOLS:
        _register(_pool, _backbone)
