"""The base class of the scale wrappers: a trunk with timm's classifier contract, and that contract delegated to it.

Both wrappers (:class:`~msresnet.scale.pyramid.PyramidClassifier`,
:class:`~msresnet.scale.canonical.CanonicalClassifier`) keep the trunk as ``self.trunk`` and present themselves to
timm, torchvision and the project's engine as the trunk would: ``num_classes``, ``num_features``,
``head_hidden_size``, ``min_input_size``, ``feature_info`` and ``pretrained_cfg`` (layer names prefixed with
``trunk.``), ``get_classifier``, ``reset_classifier`` and ``set_grad_checkpointing``. A wrapper implements
``forward_features``; ``forward`` is ``forward_head(forward_features(x))``.

``reset_classifier(n, "")`` (or ``create_model(..., global_pool="")``) asks for no pooling: ``forward`` then returns
``forward_features``' map ``[B, num_features, *pool_size]``. The trunk keeps its own pooling for what the wrapper
needs inside (a pyramid pools every level before its level head; canonicalisation's local search compares pooled
confidences), and the classifier is not applied to the map.

A wrapper that trains a part of itself by its own loss (the canonicaliser's scale estimator) records that loss in
training forwards (:meth:`ScaleWrapper.auxiliary_loss`). By default the loss also *rides on the output*
(``attach_auxiliary_loss = True``): the output's value is unchanged, and its backward pass adds the gradient of the
loss to those parameters, so a training loop that knows nothing of auxiliary losses (timm's, a traced ``torch.fx``
graph) still trains them. A loop that adds ``auxiliary_loss()`` to its loss itself, or scales its loss (fp16
``GradScaler``: the attached gradient is not scaled), sets ``attach_auxiliary_loss = False`` first; msresnet's
engine does.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from msresnet.layers._tracing import fx_tracing

__all__ = ["ScaleWrapper", "attach_loss", "prefixed_cfg"]


class _AttachLoss(torch.autograd.Function):
    """Identity on ``out``; the backward pass gives ``loss`` a gradient of one (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, loss: Tensor) -> Tensor:  # noqa: ANN401 - autograd's context
        ctx.loss_like = (loss.shape, loss.dtype, loss.device)
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN401
        shape, dtype, device = ctx.loss_like
        return grad, torch.ones(shape, dtype=dtype, device=device)


def attach_loss(out: Tensor, loss: Tensor) -> Tensor:
    """``out`` unchanged, with ``loss``'s gradient added on ``out``'s backward pass (one opaque call under fx)."""
    return _AttachLoss.apply(out, loss)


torch.fx.wrap("attach_loss")


def prefixed_cfg(trunk: nn.Module, prefix: str = "trunk.") -> dict[str, Any]:
    """The trunk's ``pretrained_cfg`` with its layer names (``first_conv``, ``classifier``; strings or tuples) as
    seen from the wrapper."""
    cfg = dict(getattr(trunk, "pretrained_cfg", None) or {})
    for key in ("first_conv", "classifier"):
        if isinstance(cfg.get(key), str):
            cfg[key] = f"{prefix}{cfg[key]}"
        elif cfg.get(key):
            cfg[key] = tuple(f"{prefix}{n}" for n in cfg[key])
    return cfg


class ScaleWrapper(nn.Module):
    """A trunk (``self.trunk``, shared, not copied) and timm's classifier contract delegated to it.

    Subclasses implement :meth:`forward_features`; see the module docstring for the no-pooling form and the
    auxiliary loss.

    Args:
        trunk: any classifier with timm's contract (``forward_features``, ``forward_head``, ``num_features``,
            ``reset_classifier``, ``get_classifier``).
    """

    attach_auxiliary_loss: bool = True
    """Let the auxiliary loss ride on the output's backward pass (see the module docstring)."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.pooled_output = True
        self._aux: Tensor | None = None
        self.num_features = int(trunk.num_features)
        self.head_hidden_size = int(getattr(trunk, "head_hidden_size", self.num_features))
        self.pretrained_cfg = self.default_cfg = prefixed_cfg(trunk)
        cfg_min = (self.pretrained_cfg.get("min_input_size") or (16,))[-1]
        self.min_input_size = int(getattr(trunk, "min_input_size", 0) or cfg_min)
        if getattr(trunk, "feature_info", None):
            self.feature_info = [{**f, "module": f"trunk.{f['module']}"} for f in copy.deepcopy(trunk.feature_info)]

    # ------------------------------------------------------------------------------------------- timm contract
    @property
    def num_classes(self) -> int:
        return int(getattr(self.trunk, "num_classes", 0))

    def get_classifier(self) -> nn.Module:
        """The trunk's classifier."""
        return self.trunk.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the trunk's classifier (``num_classes=0``: none). ``global_pool=""``: ``forward`` returns the
        unpooled :meth:`forward_features` map (the trunk keeps its pooling for the wrapper's own use); another
        value sets the trunk's pooling and pools the output again."""
        if global_pool == "":
            self.pooled_output = False
        elif global_pool is not None:
            self.pooled_output = True
        if global_pool:
            self.trunk.reset_classifier(num_classes, global_pool)
        else:
            self.trunk.reset_classifier(num_classes)
        self.head_hidden_size = int(getattr(self.trunk, "head_hidden_size", self.num_features))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The trunk's gradient checkpointing (NotImplementedError where it has none)."""
        fn = getattr(self.trunk, "set_grad_checkpointing", None)
        if fn is None:
            raise NotImplementedError(f"{type(self.trunk).__name__} has no gradient checkpointing")
        fn(enable)

    # --------------------------------------------------------------------------------------------- forward
    def forward_features(self, x: Tensor) -> Tensor:
        """The unpooled map ``[B, num_features, H', W']`` (``pretrained_cfg["pool_size"]`` at its input size)."""
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """The trunk's head (pooling, classifier) on a :meth:`forward_features` map; the map itself after
        ``reset_classifier(n, "")``."""
        return self.trunk.forward_head(x, pre_logits=pre_logits) if self.pooled_output else x

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` (pooled features when ``num_classes == 0``, the map without pooling)."""
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------------------------------- own loss
    def auxiliary_loss(self) -> Tensor | None:
        """The wrapper's own loss of the last training-mode forward (None before one, or for a wrapper without
        one); add it to the loss only with ``attach_auxiliary_loss = False`` (see the module docstring)."""
        return self._aux

    def _attach_auxiliary(self, out: Tensor) -> Tensor:
        """``out`` carrying the auxiliary loss just recorded (see the module docstring); a graph capture leaves no
        graph value on the module."""
        aux = self._aux
        if fx_tracing() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            self._aux = None
        if aux is None or not self.attach_auxiliary_loss:
            return out
        return attach_loss(out, aux)
