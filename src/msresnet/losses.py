"""Scale-invariance loss: cross-entropy plus a consistency term between the predictions at two scales.

``ScaleInvarianceLoss`` is called as ``loss, parts = criterion(model, images, targets)``:

* ``ce``: cross-entropy (optional label smoothing) of the *clean* view - the view the accuracy is measured on;
* ``js``: Jensen-Shannon divergence between the softmax predictions of the clean view and ONE rescaled view,
  weighted by ``weight``. Two distributions rather than AugMix's three (clean + two augmentations): it costs one
  extra forward/backward instead of two, which keeps training inside the 2x cost budget, and the clean view is
  already the anchor the CE term trains; JS is symmetric and bounded (<= ln 2), so a badly rescaled view cannot
  blow the loss up the way a KL term could;
* ``feat``: optional ``feature_weight`` times ``1 - cos`` between the two views' pooled features
  (``forward_head(..., pre_logits=True)``), which asks the representation - not just the decision - to ignore scale.

The default view rescales the whole batch by one factor drawn log-uniformly from ``scale_range`` (antialiased;
every model here pools globally, so any size at or above its ``min_input_size`` is fine). Protocols where object
size must not be augmented pass ``view_fn`` (e.g. a down-up degradation at the same size).
With ``weight == 0`` and ``feature_weight == 0`` the loss is plain cross-entropy with a single forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.errors import UserError
from msresnet.layers.pyramid import resize

__all__ = ["ScaleInvarianceLoss", "js_divergence", "random_resize_view"]


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the Jensen-Shannon divergence between ``softmax(logits_a)`` and ``softmax(logits_b)``."""
    log_p = F.log_softmax(logits_a.float(), dim=1)
    log_q = F.log_softmax(logits_b.float(), dim=1)
    # log of the mixture, computed stably from the two log-distributions
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(1)
    return (0.5 * (kl_pm + kl_qm)).mean().clamp_min(0.0)


def random_resize_view(
    images: torch.Tensor,
    scale_range: tuple[float, float],
    min_size: int = 16,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """Resize the whole batch by one factor drawn log-uniformly from ``scale_range``.

    The factor is raised where needed so the shorter side stays at least ``min_size``.

    Returns:
        The resized batch and the factor used.
    """
    lo, hi = scale_range
    u = torch.rand((), generator=generator).item()
    factor = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    factor = max(factor, min_size / min(images.shape[-2:]))
    return resize(images, float(factor)), factor


class ScaleInvarianceLoss(nn.Module):
    """Cross-entropy + ``weight`` * JS(clean, rescaled view) + ``feature_weight`` * (1 - cos) of pooled features.

    Args:
        weight: Weight of the Jensen-Shannon consistency term (0 disables it).
        scale_range: ``(lo, hi)`` range of the default view's resize factor, sampled log-uniformly.
        feature_weight: Weight of the pooled-feature consistency term (needs ``forward_features``/``forward_head``).
        view_fn: ``images -> images`` replacing the default rescaled view.
        label_smoothing: Label smoothing of the cross-entropy.
        generator: Random generator of the default view (default: torch's global one).
    """

    def __init__(
        self,
        weight: float = 1.0,
        scale_range: tuple[float, float] = (0.5, 2.0),
        feature_weight: float = 0.0,
        view_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        label_smoothing: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if weight < 0 or feature_weight < 0:
            raise UserError("scale-invariance weights must be >= 0")
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise UserError(f"scale_range must be 0 < lo <= hi, got {scale_range}")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.weight, self.feature_weight = float(weight), float(feature_weight)
        self.scale_range = (lo, hi)
        self.view_fn, self.label_smoothing, self.generator = view_fn, float(label_smoothing), generator

    def extra_repr(self) -> str:
        return f"weight={self.weight}, scale_range={self.scale_range}, feature_weight={self.feature_weight}"

    @property
    def needs_view(self) -> bool:
        """Whether a second forward pass is made."""
        return self.weight > 0 or self.feature_weight > 0

    def _outputs(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and (when the feature term is on) pooled pre-logit features, from one trunk pass."""
        if self.feature_weight > 0:
            if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
                raise UserError("feature_weight > 0 needs a model with forward_features/forward_head")
            feats = model.forward_features(x)
            return model.forward_head(feats), model.forward_head(feats, pre_logits=True)
        return model(x), None

    def make_view(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The second view of ``images`` and its resize factor (1.0 for a custom ``view_fn``)."""
        if self.view_fn is not None:
            return self.view_fn(images), 1.0
        min_size = int(getattr(model, "min_input_size", 16))
        return random_resize_view(images, self.scale_range, min_size, self.generator)

    def forward(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Compute the loss.

        Returns:
            The scalar loss and ``parts``: floats ``loss``, ``ce``, ``js``, ``feat``, ``view_scale`` and the clean
            view's detached ``logits`` (so the caller can count accuracy without another pass).
        """
        logits, feats = self._outputs(model, images)
        ce = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        zero = ce.detach().new_zeros(())
        js = feat = zero
        factor = 1.0
        loss = ce
        if self.needs_view:
            view, factor = self.make_view(model, images)
            view_logits, view_feats = self._outputs(model, view)
            js = js_divergence(logits, view_logits)
            loss = loss + self.weight * js
            if feats is not None and view_feats is not None:
                feat = 1.0 - F.cosine_similarity(feats.float(), view_feats.float(), dim=1, eps=1e-6).mean()
                loss = loss + self.feature_weight * feat
        # one device->host copy for all the numbers (each .item() on a GPU is a synchronisation)
        vals = torch.stack([loss.detach(), ce.detach(), js.detach(), feat.detach()]).tolist()
        parts: dict[str, Any] = dict(zip(("loss", "ce", "js", "feat"), vals, strict=True))
        parts["view_scale"] = factor
        parts["logits"] = logits.detach()
        return loss, parts
