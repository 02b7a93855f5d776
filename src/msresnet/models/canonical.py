"""Registered canonicalising classifiers: ``msresnet{8,20}_canonical`` = ``wrap(resnetN(global_pool="max"),
method="canonical")``.

The trunk is the project's plain CIFAR-style ResNet with global *max* pooling: after canonicalisation a small
object sits in a canvas of background, and an average over the canvas would dilute it where a max does not. Any
option of :class:`~msresnet.scale.canonical.CanonicalClassifier` (``estimator_range``, ``tolerance``, ``canvas``,
``search`` ...) is accepted as a keyword; the rest go to the trunk.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from msresnet.models._registry import WRAPPED_CFG, create_model, register_model
from msresnet.scale import wrap
from msresnet.scale.canonical import CanonicalClassifier

__all__ = ["build_canonical"]

_WRAPPER_KEYS = frozenset(inspect.signature(CanonicalClassifier.__init__).parameters) - {"self", "trunk"}


def build_canonical(name: str, trunk: str, **kwargs: Any) -> nn.Module:
    """``wrap(create_model(trunk, global_pool="max", ...), "canonical", ...)`` with the options split between the
    two, and a ``pretrained_cfg`` naming ``name``."""
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k in _WRAPPER_KEYS}
    unpooled = kwargs.get("global_pool") == ""  # timm's unpooled form: the trunk keeps its pooling (local search)
    if unpooled or "global_pool" not in kwargs:
        kwargs["global_pool"] = "max"
    model = wrap(create_model(trunk, **kwargs), method="canonical", **opts)
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "architecture": name}
    if unpooled:
        model.reset_classifier(model.num_classes, "")
    return model


@register_model(cfg=WRAPPED_CFG)
def msresnet8_canonical(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Scale canonicalisation around a ResNet-8 with global max pooling (estimate, resample once, classify once)."""
    return build_canonical("msresnet8_canonical", "resnet8", **kwargs)


@register_model(cfg=WRAPPED_CFG)
def msresnet20_canonical(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Scale canonicalisation around a ResNet-20 with global max pooling (estimate, resample once, classify once)."""
    return build_canonical("msresnet20_canonical", "resnet20", **kwargs)
