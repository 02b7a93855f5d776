"""``msresnet*``: the multi-scale ResNet (the generic ResNet with its scale machinery switched on).

Default recipe (``msresnet8/14/20/32/56``, ``msresnet20_w2``):

* a 5-level antialiased image pyramid with factors ``1, 2**-0.5, 0.5, 2**-1.5, 0.25`` whose levels all run
  through the same trunk (same weights) - the cheap and exactly scale-covariant way to apply the learned kernels
  at coarser scales; cost ~ ``sum(f**2)`` = 1.94x the plain ResNet in FLOPs; levels below 8 px are dropped;
* a lifting stem with the dilation basis at 2 scales (dilations 1 and 2), its scale axis collapsed right away
  by the softmax scale-aware activation (local scale selection between neighbouring pyramid levels);
* spatial **max** pooling per level: the pooled feature then does not depend on how much background surrounds a
  small object in a big canvas (average pooling dilutes it with the canvas area);
* over the levels (``scale_pool="confidence"``, ``scale_dropout=0.5``): trained as the average of the levels'
  pooled features, with scale dropout (half of the training images use a random contiguous window of levels
  only, so every level learns to decide alone); evaluated by each image's most confident level. An object twice
  the training size is recognised by the level that halves the image, and an average lets the finer levels, which
  see an object larger than anything in training, outvote it; the heads were compared on validation data only
  (``docs/results.md``). ``scale_pool="softmax"`` (the scale-aware activation with a
  learnable temperature), ``"avg"``, ``"max"`` and ``"attention"`` remain available;
* an object-scale probe (``model.scale_probe``, :class:`~msresnet.layers.ObjectScaleProbe`), unfitted until
  ``msresnet calibrate`` (or ``calibrate_probe: true`` in training) fits it on validation images at the training
  condition: it then limits the confidence vote to the levels that show the object near the size the trunk knows
  best, where validation says this helps (``msresnet.engine.calibrate``).

Every knob is a ``create_model`` keyword: ``pyramid_scales``, ``pyramid_min_size``, ``stem_basis``
(``"dilation"``/``"hermite"``/``None``), ``stem_scales``, ``stem_pool``, ``shared_stages``, ``global_pool``,
``scale_pool`` (``softmax``/``max``/``avg``/``attention``/``confidence``), ``scale_dropout``, ``pyramid_jitter``,
``width``, ``drop_rate``.

Single-mechanism variants for the ablation (all depth 20, width 16/32/64):

* ``msresnet20_pyramid``  - the pyramid with shared weights only (plain conv stem); the benchmark's ablation row
  pins the softmax over levels it was measured with.
* ``msresnet20_kernels``  - scale-invariant kernels only: no pyramid; a dilation lifting stem with 2 scales whose
  scale axis is carried through ALL stages with shared weights (scale ``s`` runs every 3x3 conv at dilation
  ``s + 1``, TridentNet-style), plain average over scales at the head. Cost 2x.
* ``msresnet20_softmax``  - the softmax scale-aware activation on a single-scale trunk: no pyramid; a dilation
  lifting stem with 3 scales collapsed by the softmax; cost ~1x.
* ``msresnet20_hermite``  - the default recipe with the Hermite-Gaussian lifting stem instead of dilations.

Cost-target candidate: ``msresnet20_lite`` - an octave pyramid ``1, 0.5, 0.25`` (1.31x FLOPs) with the 2-scale
dilation stem meant to fill the half-octave between levels; the 5-level default's measured cost relative to the
plain ResNet (``benchmarks/speed.py``) and both models' accuracies are in ``docs/results.md``.

Minimum input: 16 px (level 0 always runs; coarser levels appear as the input grows).
"""

from __future__ import annotations

from typing import Any

from msresnet.models._registry import register_model
from msresnet.models.resnet import ARCHS, ResNet, build_resnet

__all__ = ["PYRAMID_SQRT2", "MSRESNET_DEFAULTS", "build_msresnet"]

PYRAMID_SQRT2 = (1.0, 2**-0.5, 0.5, 2**-1.5, 0.25)

MSRESNET_DEFAULTS: dict[str, Any] = {
    "pyramid_scales": PYRAMID_SQRT2,
    "pyramid_min_size": 8,
    "stem_basis": "dilation",
    "stem_scales": 2,
    "stem_pool": "softmax",
    "global_pool": "max",
    "scale_pool": "confidence",
    "scale_dropout": 0.5,
}


def build_msresnet(name: str, backbone: str, overrides: dict[str, Any] | None = None, **kwargs: Any) -> ResNet:
    """The multi-scale ResNet over the backbone configuration ``ARCHS[backbone]``.

    Args:
        name: Registered name (recorded in ``pretrained_cfg``).
        backbone: Key of :data:`msresnet.models.resnet.ARCHS`.
        overrides: The variant's changes to :data:`MSRESNET_DEFAULTS`.
        **kwargs: User options (override both).
    """
    return build_resnet(name, ARCHS[backbone], {**MSRESNET_DEFAULTS, **(overrides or {})}, **kwargs)


@register_model
def msresnet8(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Multi-scale ResNet-8 (default recipe; the fast one for tests)."""
    return build_msresnet("msresnet8", "resnet8", **kwargs)


@register_model
def msresnet14(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Multi-scale ResNet-14 (default recipe)."""
    return build_msresnet("msresnet14", "resnet14", **kwargs)


@register_model
def msresnet20(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Multi-scale ResNet-20 (default recipe)."""
    return build_msresnet("msresnet20", "resnet20", **kwargs)


@register_model
def msresnet32(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Multi-scale ResNet-32 (default recipe)."""
    return build_msresnet("msresnet32", "resnet32", **kwargs)


@register_model
def msresnet56(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Multi-scale ResNet-56 (default recipe)."""
    return build_msresnet("msresnet56", "resnet56", **kwargs)


@register_model
def msresnet20_w2(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Multi-scale ResNet-20 at double width (32/64/128)."""
    return build_msresnet("msresnet20_w2", "resnet20", {"width": 2.0}, **kwargs)


@register_model
def msresnet20_pyramid(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Ablation: shared-weight image pyramid only (plain stem)."""
    return build_msresnet("msresnet20_pyramid", "resnet20", {"stem_basis": None, "stem_scales": 1}, **kwargs)


@register_model
def msresnet20_kernels(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Ablation: scale-invariant kernels only (dilation scale axis through every stage, average over scales)."""
    overrides = {"pyramid_scales": (1.0,), "shared_stages": 3, "scale_pool": "avg", "global_pool": "avg"}
    return build_msresnet("msresnet20_kernels", "resnet20", overrides, **kwargs)


@register_model
def msresnet20_softmax(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Ablation: softmax scale-aware activation over a 3-scale dilation stem on a single-scale trunk."""
    overrides = {"pyramid_scales": (1.0,), "stem_scales": 3, "global_pool": "avg"}
    return build_msresnet("msresnet20_softmax", "resnet20", overrides, **kwargs)


@register_model
def msresnet20_lite(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Cost-target recipe: octave pyramid (1, 1/2, 1/4) + 2-scale dilation stem (half-octave in between)."""
    return build_msresnet("msresnet20_lite", "resnet20", {"pyramid_scales": (1.0, 0.5, 0.25)}, **kwargs)


@register_model
def msresnet20_hermite(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Default recipe with a Hermite-Gaussian lifting stem (2 scales, sigma 0.8 and 1.13)."""
    return build_msresnet("msresnet20_hermite", "resnet20", {"stem_basis": "hermite"}, **kwargs)
