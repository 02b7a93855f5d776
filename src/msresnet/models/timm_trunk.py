"""``timm:NAME`` models: any timm classifier as the trunk, with msresnet's scale wrapper chosen by name.

``create_timm_model("timm:resnet18", num_classes=4, in_chans=3, wrap="canonical")`` is
``wrap(timm.create_model("resnet18", num_classes=4, in_chans=3), "canonical")``; the keyword arguments are split
between the wrapper (its constructor's parameters) and ``timm.create_model`` (the rest, e.g. ``drop_path_rate``).
Local pretrained weights come in through timm itself, ``timm.create_model(..., pretrained=True,
pretrained_cfg_overlay=...)`` (see :mod:`msresnet.models.pretrained`), so timm's per-model checkpoint filters apply.
Nothing is ever downloaded: without a local file the trunk starts from timm's random initialisation.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from torch import nn

from msresnet.errors import UserError

__all__ = ["DEFAULT_WRAP", "TIMM_PREFIX", "WRAP_CHOICES", "create_timm_model", "is_timm_spec", "split_wrap_kwargs"]

TIMM_PREFIX = "timm:"
#: The scale method of the library's default model (``msresnet.DEFAULT_MSRESNET``, chosen on validation data);
#: ``timm:NAME`` trunks get it unless ``wrap`` says otherwise. A test checks the two agree.
DEFAULT_WRAP = "canonical"
WRAP_CHOICES = ("canonical", "pyramid", "none")


def is_timm_spec(name: str) -> bool:
    """Whether ``name`` names a timm model (``timm:NAME``)."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def timm_name(spec: str) -> str:
    """``timm:NAME`` -> ``NAME``, checked against timm's registry.

    Raises:
        UserError: timm has no such model (with close matches).
    """
    import timm

    name = spec[len(TIMM_PREFIX) :]
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(TIMM_PREFIX + c) for c in close)}?" if close else ""
        raise UserError(f"unknown model {spec!r}: timm has no model {name!r}{hint}")
    return name


def resolve_wrap(wrap: str | None, default: str) -> str:
    """A ``wrap`` option (``"default"``/None mean ``default``), checked."""
    method = default if wrap in (None, "default") else wrap
    from msresnet.scale import list_wrappers

    if method != "none" and method not in list_wrappers():
        raise UserError(f"unknown scale wrapper {method!r}; choose one of {', '.join([*list_wrappers(), 'none'])}")
    return method


def split_wrap_kwargs(method: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(wrapper options, trunk options)``: the wrapper class's constructor parameters go to the wrapper."""
    if method == "none":
        return {}, dict(kwargs)
    from msresnet.scale._factory import _WRAPPERS

    keys = set(inspect.signature(_WRAPPERS[method]).parameters) - {"self", "trunk"}
    return {k: v for k, v in kwargs.items() if k in keys}, {k: v for k, v in kwargs.items() if k not in keys}


def apply_wrap(trunk: nn.Module, method: str, options: dict[str, Any], label: str) -> nn.Module:
    """``wrap(trunk, method, **options)`` (or the trunk itself for ``"none"``), its ``pretrained_cfg`` naming
    ``label``."""
    if method == "none":
        return trunk
    from msresnet.scale import wrap

    model = wrap(trunk, method=method, **options)
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "architecture": label}
    return model


def create_timm_model(
    spec: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    pretrained: bool = False,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    wrap: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``timm:NAME`` with the scale wrapper ``wrap`` (see the module docstring).

    Args:
        spec: ``timm:NAME``.
        num_classes: classifier outputs.
        in_chans: input channels.
        pretrained: load ``pretrained_cfg_overlay["file"]`` (a local file; required: nothing is downloaded).
        pretrained_cfg_overlay: ``{"file": PATH}``.
        wrap: ``"canonical"``, ``"pyramid"``, ``"none"``, or None/``"default"`` for :data:`DEFAULT_WRAP`.
        **kwargs: the wrapper's options and ``timm.create_model``'s.

    Raises:
        UserError: unknown name or option, a pretrained request without a local file, weights that do not fit.
    """
    import timm

    name = timm_name(spec)
    method = resolve_wrap(wrap, DEFAULT_WRAP)
    wrap_opts, trunk_opts = split_wrap_kwargs(method, kwargs)
    file = (pretrained_cfg_overlay or {}).get("file") if pretrained else None
    if pretrained and not file:
        raise UserError(f"{spec}: pretrained weights come from a local file only (--pretrained-file); "
                        "nothing is downloaded")  # fmt: skip
    note = None
    try:
        if file:
            from msresnet.models import pretrained as pt

            sd, left_out = pt.strip_wrapper(pt.read_weights(file))
            found = timm.models.get_pretrained_cfg(name)
            cfg = found.to_dict() if found is not None else {}
            overlay = pt.pretrained_overlay(sd, cfg)
            with pt.timm_load_report(f"--pretrained-file {file} does not fit {spec}", pt._names(cfg, "classifier")):
                trunk = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay,
                                          num_classes=num_classes, in_chans=in_chans, **trunk_opts)  # fmt: skip
            trunk.pretrained_cfg = trunk.default_cfg = {k: v for k, v in trunk.pretrained_cfg.items()
                                                        if k != "state_dict"}  # fmt: skip
            note = pt.summary(file, {**cfg, **overlay}, num_classes, in_chans, left_out)
        else:
            trunk = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                      **trunk_opts)  # fmt: skip
    except TypeError as e:
        if "unexpected keyword argument" in str(e) or "got multiple values" in str(e):
            raise UserError(f"model {spec!r}: {e}") from None
        raise
    model = apply_wrap(trunk, method, wrap_opts, spec)
    if note:
        model.pretrained_note = note  # what the pretrained load did, for the training log
    return model
