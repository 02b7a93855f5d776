"""Scale wrappers around any trunk (``msresnet.wrap``): one concept per module, each registered by name."""

from __future__ import annotations

# each wrapper module registers itself on import; a new wrapper adds its module to this import
from msresnet.scale import (
    canonical,  # noqa: F401
    pyramid,  # noqa: F401
)
from msresnet.scale._factory import check_trunk, list_wrappers, register_wrapper, wrap

__all__ = ["check_trunk", "list_wrappers", "register_wrapper", "wrap"]
