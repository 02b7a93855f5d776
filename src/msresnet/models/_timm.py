"""Expose msresnet's models through timm's registry, so ``timm.create_model("msresnet20", ...)`` works.

Each model is registered under its own name with a complete ``pretrained_cfg`` (``url=""``: no weights) taken
from the model itself (see :func:`_cfg_for`). timm's entry point forwards to
:func:`msresnet.create_model`, so ``features_only=True`` gives the same timm ``FeatureGetterNet`` either way.
Names timm already owns (its own ``resnet18``/``resnet34``) are skipped - overwriting them would silently change
what ``timm.create_model("resnet18")`` means for every other library in the process. The skipped names are in
:data:`SKIPPED` and logged at debug level (they clash on every import, so a warning would only be noise).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from msresnet.models._registry import create_model, entry_cfg, list_models, make_cfg

__all__ = ["register_timm_models", "SKIPPED", "REGISTERED"]

log = logging.getLogger(__name__)

SKIPPED: list[str] = []
REGISTERED: list[str] = []
default_cfgs: dict[str, dict[str, Any]] = {}  # read by timm's register_model (module-level, by convention)


def _cfg_for(name: str) -> dict[str, Any]:
    """The timm ``pretrained_cfg`` for ``name``.

    Static rather than read from a built model: building every model at import costs seconds. All models timm gets
    from msresnet use the small-image stem (the ImageNet-stem names are timm's own and skipped), so the generic cfg
    is theirs, with the entries each model was registered with (a scale wrapper's layer names start with
    ``trunk.``); ``tests/test_models.py`` checks it equals each model's own ``pretrained_cfg``.
    """
    return make_cfg(architecture=name, **entry_cfg(name))


def _make_entry(name: str) -> Callable[..., nn.Module]:
    def entry(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: Any = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ) -> nn.Module:
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        kwargs.pop("feature_cls", None)  # msresnet always uses timm's FeatureGetterNet
        model = create_model(name, pretrained=pretrained, **kwargs)
        if pretrained_cfg_overlay:
            model.pretrained_cfg = {**model.pretrained_cfg, **dict(pretrained_cfg_overlay)}
            model.default_cfg = model.pretrained_cfg
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"msresnet model {name!r} (see msresnet.create_model)."
    return entry


def register_timm_models() -> list[str]:
    """Register every msresnet model timm does not already know; returns the names registered now."""
    try:
        from timm.models import is_model as timm_is_model
        from timm.models import register_model as timm_register
        from timm.models._pretrained import PretrainedCfg
    except ImportError:  # timm is a dependency, but the library itself must not break without it
        return []
    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    module = sys.modules[__name__]
    new = []
    for name in list_models():
        if name in REGISTERED:
            continue
        if timm_is_model(name):
            if name not in SKIPPED:
                SKIPPED.append(name)
                log.debug("timm already has a model called %r; msresnet's is only available via msresnet", name)
            continue
        cfg = {k: v for k, v in _cfg_for(name).items() if k in fields}
        default_cfgs[name] = cfg
        fn = _make_entry(name)
        setattr(module, name, fn)
        timm_register(fn)
        REGISTERED.append(name)
        new.append(name)
    return new
