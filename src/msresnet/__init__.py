"""msresnet: multi-scale ResNets for image recognition that keeps working when image scale changes."""

from __future__ import annotations

import os as _os
import sys as _sys

from msresnet.errors import UserError

try:  # torch and timm load here (seconds); importing also registers the models with timm
    from msresnet.models import DEFAULT_MSRESNET, DEFAULT_WRAP, create_model, list_models, register_model
    from msresnet.scale import wrap
except KeyboardInterrupt:
    if _os.path.basename(_sys.argv[0] if _sys.argv else "") != "msresnet":
        raise
    # Ctrl-C while the command line starts: its usual one line and exit code, not a traceback from deep in torch
    print("msresnet: interrupted", file=_sys.stderr)
    raise SystemExit(130) from None

__version__ = "0.2.0"


def load_model(path: str, **kwargs):
    """Rebuild a trained model from a checkpoint (``.safetensors``) or a run directory; see
    :func:`msresnet.engine.checkpoint.load_model`."""
    from msresnet.engine.checkpoint import load_model as _load_model

    return _load_model(path, **kwargs)


def load_checkpoint(path: str, **kwargs):
    """A trained model with its preprocessing, class names and training info, as one typed record
    (:class:`msresnet.engine.checkpoint.LoadedCheckpoint`); see :func:`msresnet.engine.checkpoint.load_checkpoint`."""
    from msresnet.engine.checkpoint import load_checkpoint as _load_checkpoint

    return _load_checkpoint(path, **kwargs)


__all__ = [
    "DEFAULT_MSRESNET",
    "DEFAULT_WRAP",
    "UserError",
    "__version__",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "register_model",
    "wrap",
]
