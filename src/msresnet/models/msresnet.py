"""``msresnet*``: the multi-scale ResNet, a configuration of the project's trunks and scale wrappers.

Default recipe (``msresnet8/14/20/32/56``, ``msresnet20_w2``): :func:`msresnet.wrap` with ``method="pyramid"``
(:class:`~msresnet.scale.pyramid.PyramidClassifier`) around a plain :class:`~msresnet.models.resnet.ResNet` trunk:

* a 5-level antialiased image pyramid with factors ``1, 2**-0.5, 0.5, 2**-1.5, 0.25`` whose levels all run
  through the same trunk (same weights) - the cheap and exactly scale-covariant way to apply the learned kernels
  at coarser scales; levels below 8 px are dropped;
* the trunk's stem is a :class:`~msresnet.models._stems.LiftingStem` with the dilation basis at 2 scales
  (dilations 1 and 2), its scale axis collapsed right away by the softmax scale-aware activation (local scale
  selection between neighbouring pyramid levels);
* spatial **max** pooling per level (the trunk's ``global_pool``): the pooled feature then does not depend on how
  much background surrounds a small object in a big canvas (average pooling dilutes it with the canvas area);
* the ``confidence`` level head with scale dropout 0.5 (:mod:`msresnet.scale.heads`): trained as the average of the
  levels' pooled features, half of the training images using a random contiguous window of levels only, so every
  level learns to decide alone; evaluated by each image's most confident level, which an object-scale probe
  (``model.scale_probe``), once ``msresnet calibrate`` has fitted it, restricts to the levels that show the object
  near the size the trunk knows best. Measured effects of each choice: ``docs/results.md``.

Every knob is a ``create_model`` keyword, translated here into the composition: ``pyramid_scales`` (``(1,)``: no
pyramid), ``pyramid_min_size``, ``crop_upscaled``, ``pyramid_jitter``, ``scale_pool`` (the level head:
``confidence``/``softmax``/``avg``/``max``/``attention``), ``scale_dropout``; the trunk's ``stem_basis``
(``"dilation"``/``"hermite"``/``None``), ``stem_scales``, ``stem_pool``, ``stem_kwargs``, ``shared_stages``
(dilation-shared stages, :mod:`msresnet.models.dilated`), ``global_pool``, ``width``, ``drop_rate``.

Single-mechanism variants for the ablation (all depth 20, width 16/32/64):

* ``msresnet20_pyramid``  - the pyramid with shared weights only (plain conv stem).
* ``msresnet20_kernels``  - scale-invariant kernels only: no pyramid; a dilation lifting stem with 2 scales whose
  scale axis is carried through ALL stages with shared weights (scale ``s`` runs every 3x3 conv at dilation
  ``s + 1``, TridentNet-style), averaged over scales at the end of the trunk.
* ``msresnet20_softmax``  - the softmax scale-aware activation on a single-scale trunk: no pyramid; a dilation
  lifting stem with 3 scales collapsed by the softmax.
* ``msresnet20_hermite``  - the default recipe with the Hermite-Gaussian lifting stem instead of dilations.

Cost-target candidate: ``msresnet20_lite`` - an octave pyramid ``1, 0.5, 0.25`` with the 2-scale dilation stem
meant to fill the half-octave between levels (costs and accuracy: ``docs/results.md``).

Minimum input: 16 px (level 0 always runs; coarser levels appear as the input grows).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from msresnet.errors import UserError
from msresnet.models._registry import WRAPPED_CFG, register_model
from msresnet.models._stems import LiftingStem
from msresnet.models.dilated import DilatedScaleResNet
from msresnet.models.resnet import ARCHS, ResNet, build_trunk
from msresnet.scale import wrap
from msresnet.scale.pyramid import PYRAMID_SQRT2

__all__ = ["PYRAMID_SQRT2", "MSRESNET_DEFAULTS", "build_msresnet", "build_pyramid"]

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

#: create_model keywords of the pyramid -> PyramidClassifier arguments
PYRAMID_KEYS = {
    "pyramid_scales": "scales",
    "pyramid_min_size": "min_size",
    "crop_upscaled": "crop_upscaled",
    "pyramid_jitter": "jitter",
    "scale_pool": "head",
    "scale_dropout": "scale_dropout",
}


def build_pyramid(name: str, trunk: ResNet, opts: dict[str, Any], level_pool: str = "avg") -> nn.Module:
    """The trunk itself for ``pyramid_scales=(1,)``, else ``wrap(trunk, "pyramid", ...)`` with ``opts`` (the
    :data:`PYRAMID_KEYS` keywords) and ``pretrained_cfg["architecture"] = name``.

    A trunk built without pooling (``global_pool=""``) pools its levels with ``level_pool`` (the level head needs
    pooled features), and the pyramid is the unpooled one of timm's contract (``reset_classifier(n, "")``).
    """
    kwargs = {new: opts[old] for old, new in PYRAMID_KEYS.items() if old in opts}
    if tuple(float(s) for s in kwargs.get("scales", (1.0,))) == (1.0,):
        return trunk
    unpooled = trunk.global_pool == ""
    if unpooled:
        trunk.global_pool = level_pool
    model = wrap(trunk, method="pyramid", **kwargs)
    model.pretrained_cfg["architecture"] = name
    if unpooled:
        model.reset_classifier(model.num_classes, "")
    return model


def _trunk(name: str, arch: dict[str, Any], opts: dict[str, Any]) -> ResNet:
    """The trunk the stem/stage knobs in ``opts`` describe (the pyramid knobs are ignored here)."""
    trunk_opts = {k: v for k, v in opts.items() if k not in PYRAMID_KEYS}
    basis, scales = trunk_opts.pop("stem_basis"), int(trunk_opts.pop("stem_scales"))
    stem_pool, shared = trunk_opts.pop("stem_pool"), int(trunk_opts.pop("shared_stages", 0))
    stem = {"basis": basis, "num_scales": scales, **trunk_opts.pop("stem_kwargs", {})}
    if not shared:
        if not basis:
            return build_trunk(name, arch, **trunk_opts)
        return build_trunk(name, arch, stem=LiftingStem, stem_kwargs={**stem, "pool": stem_pool}, **trunk_opts)
    if not basis:
        raise UserError("shared_stages needs a lifting stem: set stem_basis='dilation' or 'hermite'")
    if shared == len(arch["depths"]):  # the scale axis reaches the end of the trunk: pooled by the level rule
        # (the confidence rule selects pyramid levels; over the trunk's own scales it is the average it trains as)
        head = opts["scale_pool"]
        pool, dropout = ("avg" if head == "confidence" else head), opts["scale_dropout"]
    else:
        pool, dropout = stem_pool, 0.0
    return build_trunk(
        name,
        arch,
        DilatedScaleResNet,
        stem=LiftingStem,
        stem_kwargs={**stem, "pool": None},
        shared_stages=shared,
        scale_pool=pool,
        scale_dropout=dropout,
        **trunk_opts,
    )


def build_msresnet(name: str, backbone: str, overrides: dict[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """The multi-scale ResNet over the backbone configuration ``ARCHS[backbone]``.

    Args:
        name: Registered name (recorded in ``pretrained_cfg``).
        backbone: Key of :data:`msresnet.models.resnet.ARCHS`.
        overrides: The variant's changes to :data:`MSRESNET_DEFAULTS`.
        **kwargs: User options (override both).
    """
    recipe = {**MSRESNET_DEFAULTS, **(overrides or {})}
    opts = {**recipe, **kwargs}
    return build_pyramid(name, _trunk(name, ARCHS[backbone], opts), opts, level_pool=recipe["global_pool"])


_NO_PYRAMID = {"pyramid_scales": (1.0,)}


@register_model(cfg=WRAPPED_CFG)
def msresnet8(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Multi-scale ResNet-8 (default recipe; the fast one for tests)."""
    return build_msresnet("msresnet8", "resnet8", **kwargs)


@register_model(cfg=WRAPPED_CFG)
def msresnet14(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Multi-scale ResNet-14 (default recipe)."""
    return build_msresnet("msresnet14", "resnet14", **kwargs)


@register_model(cfg=WRAPPED_CFG)
def msresnet20(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Multi-scale ResNet-20 (default recipe)."""
    return build_msresnet("msresnet20", "resnet20", **kwargs)


@register_model(cfg=WRAPPED_CFG)
def msresnet32(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Multi-scale ResNet-32 (default recipe)."""
    return build_msresnet("msresnet32", "resnet32", **kwargs)


@register_model(cfg=WRAPPED_CFG)
def msresnet56(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Multi-scale ResNet-56 (default recipe)."""
    return build_msresnet("msresnet56", "resnet56", **kwargs)


@register_model(cfg=WRAPPED_CFG)
def msresnet20_w2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Multi-scale ResNet-20 at double width (32/64/128)."""
    return build_msresnet("msresnet20_w2", "resnet20", {"width": 2.0}, **kwargs)


@register_model(cfg=WRAPPED_CFG)
def msresnet20_pyramid(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Ablation: shared-weight image pyramid only (plain stem)."""
    return build_msresnet("msresnet20_pyramid", "resnet20", {"stem_basis": None, "stem_scales": 1}, **kwargs)


@register_model
def msresnet20_kernels(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Ablation: scale-invariant kernels only (dilation scale axis through every stage, average over scales)."""
    overrides = {**_NO_PYRAMID, "shared_stages": 3, "scale_pool": "avg", "global_pool": "avg"}
    return build_msresnet("msresnet20_kernels", "resnet20", overrides, **kwargs)


@register_model
def msresnet20_softmax(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Ablation: softmax scale-aware activation over a 3-scale dilation stem on a single-scale trunk."""
    overrides = {**_NO_PYRAMID, "stem_scales": 3, "global_pool": "avg"}
    return build_msresnet("msresnet20_softmax", "resnet20", overrides, **kwargs)


@register_model(cfg=WRAPPED_CFG)
def msresnet20_lite(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Cost-target recipe: octave pyramid (1, 1/2, 1/4) + 2-scale dilation stem (half-octave in between)."""
    return build_msresnet("msresnet20_lite", "resnet20", {"pyramid_scales": (1.0, 0.5, 0.25)}, **kwargs)


@register_model(cfg=WRAPPED_CFG)
def msresnet20_hermite(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Default recipe with a Hermite-Gaussian lifting stem (2 scales, sigma 0.8 and 1.13)."""
    return build_msresnet("msresnet20_hermite", "resnet20", {"stem_basis": "hermite"}, **kwargs)
