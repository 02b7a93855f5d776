"""Model registry: ``register_model`` / ``create_model`` / ``list_models``.

Every model is a function ``name(pretrained=False, **kwargs) -> nn.Module`` registered under its own name.
Duplicates are a programming error. Unknown names and bad keyword arguments are user mistakes
(:class:`msresnet.errors.UserError`, with a close-match suggestion for names).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from msresnet.errors import UserError

__all__ = [
    "WRAPPED_CFG",
    "create_model",
    "entry_cfg",
    "is_model",
    "list_models",
    "make_cfg",
    "model_entrypoint",
    "register_model",
]

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_CFGS: dict[str, dict[str, Any]] = {}

WRAPPED_CFG = {"first_conv": "trunk.stem.conv", "classifier": "trunk.fc"}
"""The ``pretrained_cfg`` names of a scale wrapper around one of the project's trunks (stored as ``trunk``)."""


def register_model(
    fn: Callable[..., nn.Module] | None = None, *, cfg: dict[str, Any] | None = None
) -> Callable[..., nn.Module]:
    """Decorator (``@register_model`` or ``@register_model(cfg=...)``): register ``fn`` under ``fn.__name__``;
    ``cfg`` holds the ``pretrained_cfg`` entries that differ from :func:`make_cfg`'s defaults (what timm's registry
    is told without building the model, see :func:`entry_cfg`).

    Raises:
        ValueError: the name is already registered (two models must never silently shadow each other).
    """
    if fn is None:
        return lambda f: register_model(f, cfg=cfg)  # type: ignore[return-value]
    name = fn.__name__
    if name in _ENTRYPOINTS:
        raise ValueError(f"model {name!r} is already registered (by {_ENTRYPOINTS[name].__module__})")
    _ENTRYPOINTS[name] = fn
    _CFGS[name] = dict(cfg or {})
    return fn


def entry_cfg(name: str) -> dict[str, Any]:
    """The ``pretrained_cfg`` entries ``name`` was registered with (beyond :func:`make_cfg`'s defaults)."""
    return dict(_CFGS.get(name, {}))


def is_model(name: str) -> bool:
    """Whether ``name`` is registered."""
    return name in _ENTRYPOINTS


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally filtered by a shell-style ``pattern`` (``"msresnet*"``)."""
    names = sorted(_ENTRYPOINTS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The registered function for ``name``; UserError with a suggestion when unknown."""
    try:
        return _ENTRYPOINTS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_ENTRYPOINTS), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "; see `msresnet models`"
        raise UserError(f"unknown model {name!r}{hint}") from None


def make_cfg(**overrides: Any) -> dict[str, Any]:
    """A complete timm-style ``pretrained_cfg`` with msresnet's defaults (no weights: ``url=""``)."""
    cfg: dict[str, Any] = {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 64, 64),
        "min_input_size": (3, 16, 16),
        "pool_size": (16, 16),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv",
        "classifier": "fc",
        "license": "mit",
    }
    cfg.update(overrides)
    return cfg


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    pretrained: bool = False,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    wrap: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, or any timm classifier as ``timm:NAME``.

    Args:
        name: Registered name (see :func:`list_models`), or ``timm:NAME`` (see
            :mod:`msresnet.models.timm_trunk`).
        num_classes: Classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: Input channels (1 for grey, 3 for RGB).
        pretrained: start from the local weights file ``pretrained_cfg_overlay["file"]``, loaded as timm loads
            pretrained weights (classifier re-initialised when the class count differs, first convolution adapted
            to ``in_chans``); msresnet ships no downloadable weights and never downloads.
        pretrained_cfg_overlay: ``{"file": PATH}`` with ``pretrained``, as in ``timm.create_model``.
        wrap: a scale wrapper to put around the model (``"canonical"``, ``"pyramid"``; ``"none"``/None: none, the
            registered names are configured already); ``timm:NAME`` gets ``msresnet.DEFAULT_WRAP`` unless told.
        features_only: Return a feature extractor (list of stage outputs) with a timm-compatible ``feature_info``
            (``.channels()``, ``.reduction()``) instead of a classifier.
        out_indices: With ``features_only``: which levels to return (default all).
        **kwargs: Model options (``width``, ``drop_rate``, the scale machinery of ``msresnet*`` ...).

    Returns:
        The model (in training mode, like torch modules).
    """
    from msresnet.models import timm_trunk

    if not isinstance(num_classes, int) or num_classes < 0:
        raise UserError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise UserError(f"in_chans must be a positive integer, got {in_chans!r}")
    file = (pretrained_cfg_overlay or {}).get("file") if pretrained else None
    if timm_trunk.is_timm_spec(name):
        model = timm_trunk.create_timm_model(name, num_classes, in_chans, pretrained, pretrained_cfg_overlay, wrap,
                                             **kwargs)  # fmt: skip
    else:
        fn = model_entrypoint(name)
        if pretrained and not file:
            raise UserError(f"no pretrained weights are published for {name!r}; train with `msresnet train` and "
                            "use load_model, or pass a local file (--pretrained-file)")  # fmt: skip
        method = timm_trunk.resolve_wrap(wrap, "none")
        wrap_opts, kwargs = timm_trunk.split_wrap_kwargs(method, kwargs)
        try:
            model = fn(num_classes=num_classes, in_chans=in_chans, **kwargs)
        except TypeError as e:
            # a misspelt or foreign option (e.g. from a YAML recipe) is the user's mistake, not a crash
            if "unexpected keyword argument" in str(e) or "got multiple values" in str(e):
                raise UserError(f"model {name!r}: {e}") from None
            raise
        note = None
        if file:
            from msresnet.models.pretrained import load_pretrained_file

            note = load_pretrained_file(model, file, num_classes, in_chans, label=name)
        if method != "none":
            model = timm_trunk.apply_wrap(model, method, wrap_opts, name)
        if note:
            model.pretrained_note = note  # what the load did, for the training log
    if features_only:
        from timm.models._features import FeatureGetterNet

        n_levels = len(model.feature_info)
        idx = tuple(range(n_levels)) if out_indices is None else tuple(out_indices)
        if any(not -n_levels <= i < n_levels for i in idx):
            raise UserError(f"out_indices {idx} out of range for {name!r} ({n_levels} feature levels)")
        idx = tuple(i % n_levels for i in idx)
        cfg = model.pretrained_cfg
        model = FeatureGetterNet(model, out_indices=idx)
        model.pretrained_cfg = model.default_cfg = cfg
    return model
