"""Whether ``torch.fx`` is symbolically tracing the current call.

Under ``torch.fx.symbolic_trace`` (torchvision's feature extraction, timm's fx tests) tensor sizes are proxies: a
module that decides something from a size (which pyramid levels exist, whether a random mask is needed) takes its
graph form then, with the decision moved into a :func:`torch.fx.wrap`-ed helper that runs when the graph runs.
ONNX (TorchScript tracing) and ``torch.export`` have concrete or symbolic sizes and keep the eager code.
"""

from __future__ import annotations

from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ["fx_tracing"]


def fx_tracing() -> bool:
    """True while ``torch.fx`` symbolically traces (not under ``torch.export``/``torch.compile``)."""
    return is_fx_symbolic_tracing()
