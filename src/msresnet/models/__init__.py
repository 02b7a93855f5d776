"""Model zoo: plain ResNet trunks, multi-scale ResNets, scale-channel, SESN-style and Res2Net-style networks.

Every model is registered by name; build one with :func:`create_model`. Importing this package also registers
the models into timm's registry (see :mod:`msresnet.models._timm`).
"""

from __future__ import annotations

from msresnet.models import canonical, msresnet, res2net, resnet, scale_channel, sesn  # noqa: F401  (registers)
from msresnet.models._registry import create_model, is_model, list_models, model_entrypoint, register_model
from msresnet.models._timm import register_timm_models
from msresnet.models.resnet import ResNet
from msresnet.models.timm_trunk import DEFAULT_WRAP

register_timm_models()

#: The multi-scale model the project recommends, chosen on validation data (the highest validation mean of the
#: msresnet rows of ``benchmarks/scale_bench.py``; docs/results.md shows the comparison, and a test checks that the
#: stored records still choose it). The demo and the README's examples use it.
DEFAULT_MSRESNET = "msresnet20_canonical"

__all__ = [
    "DEFAULT_MSRESNET",
    "DEFAULT_WRAP",
    "ResNet",
    "create_model",
    "is_model",
    "list_models",
    "model_entrypoint",
    "register_model",
]
