"""The one reader of a checkpoint's info fields, whether it is a ``CheckpointInfo`` or its JSON (dict) form. It
imports nothing from the package, so the engine, the evaluation core, the preprocessing and the commands share it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["info_value"]


def info_value(info: Any, name: str, default: Any = None) -> Any:
    """Field ``name`` of a checkpoint's info (a dataclass or a mapping); ``default`` when it is absent or ``info``
    is None."""
    if info is None:
        return default
    return info.get(name, default) if isinstance(info, Mapping) else getattr(info, name, default)
