"""``wrap(trunk, method="pyramid")``: an image-pyramid classifier around any trunk, one set of trunk weights.

The input is resampled by each pyramid factor (antialiased; enlarged levels centre-cropped back to the input size);
every level runs through the same trunk (``forward_features``, then the trunk's own pooling:
``forward_head(..., pre_logits=True)``), and a level head (:mod:`msresnet.scale.heads`, chosen by name) combines
the levels' pooled features before the trunk's classifier. ``msresnet*`` and the scale-channel networks are
configurations of this class over the project's trunks; a timm classifier wraps the same way.

Deployment: ONNX export and ``torch.export`` (batch, height and width dynamic) both work for every pyramid model.
``torch.fx.symbolic_trace`` (torchvision's feature extraction, timm's fx tests) traces every pyramid model too:
which levels exist is decided from the input size, which fx only has as a proxy, so the traced graph runs the trunk
on a level for every factor and selects the input's levels when it runs (:func:`msresnet.layers.pyramid.
every_level`); its outputs equal the eager model's at every input size. The levels the eager model would drop are
run on placeholders and weigh nothing, but in a traced *training* graph their BatchNorm statistics still count
(inputs below ``min_size / min(scales)`` pixels a side only: 32 for the default factors).

Unpooled features (``reset_classifier(n, "")``, ``create_model(..., global_pool="")``): ``forward`` returns the map
of :meth:`PyramidClassifier.forward_features`, the levels' maps on the grid of the level at the input's own
resolution, combined by the head's level weights (see the class docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from msresnet.errors import UserError
from msresnet.layers import ImagePyramid, resize
from msresnet.layers._tracing import fx_tracing
from msresnet.scale._factory import register_wrapper
from msresnet.scale._wrapper import ScaleWrapper
from msresnet.scale.heads import make_level_head

__all__ = ["PYRAMID_SQRT2", "PyramidClassifier"]

PYRAMID_SQRT2 = (1.0, 2**-0.5, 0.5, 2**-1.5, 0.25)
"""Half-octave factors from the input size down to a quarter (the pyramid models' default levels)."""


def _resize_as(x: Tensor, ref: Tensor) -> Tensor:
    """``x`` resized (nearest) to ``ref``'s grid; one opaque call under ``torch.fx``, where sizes are proxies."""
    return resize(x, tuple(ref.shape[-2:]), mode="nearest")


torch.fx.wrap("_resize_as")


@register_wrapper("pyramid")
class PyramidClassifier(ScaleWrapper):
    """Image pyramid + shared trunk + level head, with timm's classifier contract.

    ``forward`` pools each level on its own grid and never builds a common map. ``forward_features`` returns a
    4-D map on the grid of the level at the input's own resolution (``[B, num_features, *pool_size]`` at the
    configured input size), built from the head's own rule so that ``forward_head(forward_features(x))`` equals
    ``forward(x)``: the levels' maps are resampled onto that grid (nearest neighbour, which keeps a map's maximum
    when enlarging), combined with the head's level weights (per image, per channel), and shifted per channel by
    the constant that makes the trunk's own global pooling of the map give the head's combined features. That
    constant is zero for one-hot heads (``max``, ``confidence`` at evaluation) under max pooling, and otherwise
    accounts for what a pooling of a combination does not share with the combination of poolings (e.g. the maximum
    of an average of maps against the average of their maxima). The map therefore shows where, level by level, the
    features the head decides on come from, and pools to exactly what the classifier sees. This needs a trunk whose
    pre-logits features are its pooled channels (``head_hidden_size == num_features``: ResNets and most CNNs) and
    whose pooling commutes with a per-channel shift (average and max pooling do).

    Args:
        trunk: Any module with timm's classifier contract (``forward_features``, ``forward_head``,
            ``num_features``, ``reset_classifier``, ``get_classifier``); stored as ``self.trunk``, not copied.
        scales: Pyramid factors (above 1 enlarges); levels below ``min_size`` are dropped for small inputs.
        head: Level head name (``avg``, ``max``, ``softmax``, ``attention``, ``confidence``).
        scale_dropout: Training-time scale dropout of the head.
        min_size: Smallest pyramid level side.
        crop_upscaled: Centre-crop enlarged levels back to the input size.
        jitter: Training-time random shrink of all factors, up to this many octaves.
    """

    def __init__(
        self,
        trunk: nn.Module,
        scales: Sequence[float] = PYRAMID_SQRT2,
        head: str = "confidence",
        scale_dropout: float = 0.5,
        min_size: int = 8,
        crop_upscaled: bool = True,
        jitter: float = 0.0,
    ) -> None:
        if not callable(getattr(trunk, "get_classifier", None)):
            raise UserError(f"{type(trunk).__name__} has no get_classifier(): the pyramid applies it to each level")
        super().__init__(trunk)
        self.pyramid = ImagePyramid(scales, min_size, crop_upscaled, jitter)
        self.head = make_level_head(head, self.head_hidden_size, scale_dropout)

    def extra_repr(self) -> str:
        return f"head={self.head.name}"

    @property
    def scale_probe(self) -> nn.Module | None:
        """The head's object-scale probe (``confidence`` head), which ``msresnet calibrate`` fits; else None."""
        return getattr(self.head, "probe", None)

    @property
    def estimate_scale(self) -> Callable[[Tensor], Tensor]:
        """``estimate_scale(x) -> [B]``: each image's object scale relative to the training objects (2.0: twice
        the training size), from the fitted object-scale probe. Absent (AttributeError) until a probe is fitted."""
        if self.scale_probe is None or not self.scale_probe.is_fitted:
            raise AttributeError("estimate_scale needs a fitted object-scale probe (msresnet calibrate)")
        return self._estimate_scale

    # ----------------------------------------------------------------------------------------------- forward
    def pool_levels(self, x: Tensor) -> tuple[Tensor, list[float], list[Tensor]]:
        """The trunk's pooled features of every level ``[B, D, S]``, the levels' factors and their unpooled maps.

        Under ``torch.fx`` the graph runs the trunk on a level for every factor and selects the input's levels
        when it runs (:func:`msresnet.layers.pyramid.every_level`): the pooled features and factors are then exactly
        the eager ones, the maps are those of every factor.
        """
        maps = [self.trunk.forward_features(level) for level in self.pyramid(x)]
        pooled = [self.trunk.forward_head(m, pre_logits=True) for m in maps]
        if fx_tracing():
            index, factors = self.pyramid.kept(x)
            return torch.stack(pooled, 2).index_select(2, index), factors, maps
        if pooled[0].dim() != 2:
            raise UserError("the pyramid needs a trunk that pools: reset its global_pool to 'avg' or 'max'")
        return torch.stack(pooled, 2), self.pyramid.kept_scales(x.shape[-2:]), maps

    def level_logits(self, pooled: Tensor) -> Tensor:
        """The classifier on every level's pooled features ``[B, D, S]`` on its own: ``[B, S, num_classes]``."""
        return self.trunk.get_classifier()(pooled.transpose(1, 2))

    def _classify(self) -> Callable[[Tensor], Tensor] | None:
        return self.level_logits if self.num_classes > 0 else None

    def logits_from_levels(self, pooled: Tensor, factors: Sequence[float]) -> Tensor:
        """The model's output from the levels' pooled features ``[B, D, S]`` (the head, then the classifier)."""
        return self.trunk.get_classifier()(self.head(pooled, self._classify(), factors))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` (the head's combined features when ``num_classes == 0``)."""
        if not self.pooled_output:
            return self.forward_features(x)
        pooled, factors, _ = self.pool_levels(x)
        return self.logits_from_levels(pooled, factors)

    def forward_with_scales(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The logits ``[B, num_classes]`` and :meth:`forward_scales`' ``[B, S, num_classes]`` from one pass."""
        pooled, factors, _ = self.pool_levels(x)
        return self.logits_from_levels(pooled, factors), self.level_logits(pooled)

    def forward_scales(self, x: Tensor) -> Tensor:
        """What each pyramid level says on its own: logits ``[B, S, num_classes]``, finest level first (the
        factors are ``self.pyramid.kept_scales(x.shape[-2:])``). With the ``avg`` head their mean over ``S`` is
        the model's output (the classifier is linear)."""
        return self.forward_with_scales(x)[1]

    def forward_features(self, x: Tensor) -> Tensor:
        """The 4-D map described in the class docstring, ``[B, num_features, H, W]`` on the input's own grid."""
        if self.head_hidden_size != self.num_features:
            raise UserError("the pyramid's forward_features needs a trunk whose pre-logits features are its channels")
        pooled, factors, maps = self.pool_levels(x)
        weights = self.head.weights(pooled, self._classify(), factors)  # [B, D|1, S]
        if fx_tracing():  # a map for every factor: the kept levels' weights in their places, zero elsewhere
            index, _ = self.pyramid.kept(x)
            shape = weights[:, :, :1].expand(-1, -1, len(maps)).shape
            placed = weights.new_zeros(shape).index_copy(2, index, weights)
            ref = min(range(len(maps)), key=lambda i: abs(self.pyramid.scales[i] - 1.0))
            fused = sum(placed[:, :, i, None, None] * _resize_as(m, maps[ref]) for i, m in enumerate(maps))
        else:
            ref = min(range(len(factors)), key=lambda i: abs(factors[i] - 1.0))
            grid = tuple(maps[ref].shape[-2:])
            fused = sum(weights[:, :, i, None, None] * resize(m, grid, mode="nearest") for i, m in enumerate(maps))
        target = (weights * pooled).sum(2)
        return fused + (target - self.trunk.forward_head(fused, pre_logits=True))[:, :, None, None]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The trunk's intermediates of the input at its own resolution (what a detector or segmenter expects), and
        unless ``intermediates_only`` the pyramid's :meth:`forward_features`."""
        inter = self.trunk.forward_intermediates(
            x, indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt, intermediates_only=True
        )
        return inter if intermediates_only else (self.forward_features(x), inter)

    def _estimate_scale(self, x: Tensor) -> Tensor:
        pooled, factors, _ = self.pool_levels(x)
        return torch.exp2(self.scale_probe.object_scale(pooled, factors))

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        # weights written before the trunk/wrapper split (one flat ResNet): trunk tensors lacked the "trunk." prefix
        # and the head was "scale_pool" / "scale_probe"
        if not any(k.startswith(prefix + "trunk.") for k in state_dict):
            renames = (("scale_pool.", "head."), ("scale_probe.", "head.probe."), ("", "trunk."))
            for key in [k for k in state_dict if k.startswith(prefix)]:
                rest = key[len(prefix) :]
                old, new = next(r for r in renames if rest.startswith(r[0]))
                state_dict[prefix + new + rest[len(old) :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
