"""Building blocks for multi-scale networks: scale bases, scale convolutions, scale pooling, image pyramids,
object-scale estimation."""

from __future__ import annotations

from msresnet.layers.basis import dilate_kernel, hermite_basis, hermite_scales, num_hermite_functions
from msresnet.layers.pyramid import ImagePyramid, center_crop, resize, scaled_size
from msresnet.layers.scale_conv import ScaleConv2d
from msresnet.layers.scale_pool import POOL_MODES, ScalePool
from msresnet.layers.scale_probe import ObjectScaleProbe, best_level_log2, log2_factors, select_levels

__all__ = [
    "POOL_MODES",
    "ImagePyramid",
    "ObjectScaleProbe",
    "ScaleConv2d",
    "ScalePool",
    "best_level_log2",
    "center_crop",
    "dilate_kernel",
    "hermite_basis",
    "hermite_scales",
    "log2_factors",
    "num_hermite_functions",
    "resize",
    "scaled_size",
    "select_levels",
]
