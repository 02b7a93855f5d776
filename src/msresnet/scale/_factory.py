"""``wrap(model, method=...)``: the one entry point to msresnet's scale machinery around any trunk.

A *trunk* is any classifier with timm's contract: ``forward_features(x) -> [B, C, H, W]``,
``forward_head(x, pre_logits=False)``, ``num_features`` and ``reset_classifier(num_classes)``. The project's ResNets,
SESN-style networks and any timm model qualify. Each scale method is a wrapper class registered here by name with
:func:`register_wrapper`; the registered ``msresnet*`` models are built through the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from msresnet.errors import UserError

__all__ = ["TRUNK_METHODS", "check_trunk", "list_wrappers", "register_wrapper", "wrap"]

_WRAPPERS: dict[str, Callable[..., nn.Module]] = {}
TRUNK_METHODS = ("forward_features", "forward_head", "reset_classifier")


def register_wrapper(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a wrapper class (or builder) ``cls(trunk, **kwargs)`` under ``name``; a duplicate is an error."""

    def deco(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _WRAPPERS:
            raise ValueError(f"scale wrapper {name!r} is already registered")
        _WRAPPERS[name] = cls
        return cls

    return deco


def list_wrappers() -> list[str]:
    """Names accepted by ``wrap(..., method=...)``."""
    return sorted(_WRAPPERS)


def check_trunk(model: nn.Module) -> nn.Module:
    """Return ``model`` if it has the timm classifier contract, else raise a one-line :class:`UserError`."""
    missing = [m for m in TRUNK_METHODS if not callable(getattr(model, m, None))]
    if not isinstance(model, nn.Module) or missing or not isinstance(getattr(model, "num_features", None), int):
        what = type(model).__name__
        lacks = ", ".join(missing) if missing else "an integer num_features"
        raise UserError(f"{what} is not a trunk msresnet can wrap: it lacks {lacks} (timm's classifier contract)")
    return model


def wrap(model: nn.Module, method: str = "pyramid", **kwargs: Any) -> nn.Module:
    """Put the scale machinery ``method`` around ``model`` (a trunk with timm's classifier contract).

    Args:
        model: The trunk; its weights are shared, not copied.
        method: A registered wrapper name (:func:`list_wrappers`), e.g. ``"pyramid"`` or ``"canonical"``.
        **kwargs: The wrapper's own options.

    Raises:
        UserError: unknown method, or a model without the trunk contract.
    """
    if method not in _WRAPPERS:
        raise UserError(f"unknown scale method {method!r}; choose one of {', '.join(list_wrappers()) or '(none)'}")
    return _WRAPPERS[method](check_trunk(model), **kwargs)
