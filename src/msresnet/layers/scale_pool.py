"""``ScalePool``: collapse a scale axis; its ``"softmax"`` mode is the scale-aware activation.

``softmax``: ``sum_s softmax_s(beta * f_s) * f_s`` per channel and position, with a learnable temperature
``beta``; it normalises the responses across scales and keeps the dominant one. ``beta -> inf`` gives max pooling,
``beta -> 0`` gives average pooling, so the network can learn where between the two it wants to be.
``attention`` is SK-style: each scale's globally pooled context goes through a small shared MLP that scores it
per channel, and the scores are softmaxed over scales (the number of scales may change from call to call, e.g.
when an image pyramid drops levels for small inputs).

Scale dropout (training only): with probability ``scale_dropout`` a sample keeps only a random contiguous window
of scales, so every scale learns to carry the decision alone (useful when test objects are larger or smaller
than anything seen in training, where only the extreme scales respond).
"""

from __future__ import annotations

import torch
from torch import nn

from msresnet.errors import UserError
from msresnet.layers._tracing import fx_tracing

__all__ = ["ScalePool", "POOL_MODES", "scale_keep_mask", "training_keep_mask"]

POOL_MODES = ("max", "avg", "softmax", "attention")


def scale_keep_mask(x: torch.Tensor, dim: int, p: float, dense: bool = False) -> torch.Tensor | None:
    """Scale dropout: a boolean mask of the scales each sample keeps along ``dim`` (shape ``[B, 1.., S, 1..]``),
    or None when nothing is dropped (``dense``: an all-true mask then). With probability ``p`` a sample keeps only a
    random contiguous window of scales; the others keep every scale. Call it in training only.

    Under ``torch.fx`` it is one opaque call (:func:`torch.fx.wrap`; a random mask has nothing to trace), which the
    callers make with ``dense=True`` so that the graph always gets a tensor.
    """
    s = x.shape[dim]
    b = x.shape[0]
    dev = x.device
    if not (p > 0 and s > 1):
        if not dense:
            return None
        return torch.ones([b] + [s if i == dim else 1 for i in range(1, x.dim())], dtype=torch.bool, device=dev)
    length = torch.randint(1, s + 1, (b,), device=dev)
    start = (torch.rand(b, device=dev) * (s - length + 1)).floor().long()
    idx = torch.arange(s, device=dev)
    keep = (idx[None] >= start[:, None]) & (idx[None] < (start + length)[:, None])
    keep |= (torch.rand(b, device=dev) >= p)[:, None]  # most samples keep every scale
    shape = [b] + [1] * (x.dim() - 1)
    shape[dim] = s
    return keep.view(shape)


torch.fx.wrap("scale_keep_mask")


def training_keep_mask(x: torch.Tensor, dim: int, p: float, training: bool) -> torch.Tensor | None:
    """:func:`scale_keep_mask` where scale dropout is on (``training`` and ``p > 0``), else None."""
    if not (training and p > 0):
        return None
    return scale_keep_mask(x, dim, p, dense=fx_tracing())


class ScalePool(nn.Module):
    """Pool over the scale axis ``dim`` of a tensor (e.g. ``[B, C, S, H, W]`` or ``[B, C, S]``).

    Args:
        mode: ``"max"``, ``"avg"``, ``"softmax"`` or ``"attention"``.
        dim: The scale axis; channels are expected at dim 1.
        beta: Initial softmax temperature.
        learn_beta: Learn ``beta`` (softmax mode).
        channels: Number of channels (required for ``"attention"``).
        reduction: Attention MLP bottleneck ratio.
        scale_dropout: Probability that a training sample keeps only a random contiguous window of scales.
        num_scales: The size of the scale axis when the caller knows it (a lifting stem does): the choice of the
            two-scale form is then made once, here, rather than on the traced input shape (fx, ``torch.export``).
    """

    def __init__(
        self,
        mode: str = "softmax",
        dim: int = 2,
        beta: float = 1.0,
        learn_beta: bool = True,
        channels: int | None = None,
        reduction: int = 4,
        scale_dropout: float = 0.0,
        num_scales: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in POOL_MODES:
            raise UserError(f"unknown scale pool {mode!r}; choose one of {', '.join(POOL_MODES)}")
        if not 0.0 <= scale_dropout <= 1.0:
            raise UserError(f"scale_dropout must be in [0, 1], got {scale_dropout}")
        self.mode, self.dim, self.scale_dropout, self.num_scales = mode, dim, scale_dropout, num_scales
        if mode == "softmax":
            b = torch.tensor(float(beta))
            self.beta = nn.Parameter(b) if learn_beta else nn.Buffer(b)
        if mode == "attention":
            if not channels:
                raise UserError("attention scale pooling needs the number of channels")
            hidden = max(channels // reduction, 4)
            self.attn = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def extra_repr(self) -> str:
        return f"mode={self.mode}, dim={self.dim}, scale_dropout={self.scale_dropout}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` over ``self.dim``."""
        mask = training_keep_mask(x, self.dim, self.scale_dropout, self.training)
        d = self.dim
        if self.mode == "max":
            return (x if mask is None else x.masked_fill(~mask, float("-inf"))).amax(d)
        if self.mode == "avg":
            if mask is None:
                return x.mean(d)
            m = mask.to(x.dtype)
            return (x * m).sum(d) / m.sum(d)
        two = x.shape[d] == 2 if self.num_scales is None else self.num_scales == 2
        if self.mode == "softmax" and mask is None and two:
            # two scales (the lifting stem's hot path): the softmax over two is the sigmoid of their difference,
            # the same value in a third of the memory traffic
            x0, x1 = x.select(d, 0), x.select(d, 1)  # not unbind: fx cannot unpack a traced value
            diff = x0 - x1
            return torch.addcmul(x1, torch.sigmoid(self.beta * diff), diff)
        if self.mode == "softmax":
            logits = self.beta * x
        else:
            # context per scale: average over every axis after the scale axis (space), channels last for the MLP
            ctx = x.mean(dim=tuple(range(d + 1, x.dim()))) if x.dim() > d + 1 else x
            ctx = ctx.movedim(1, -1)  # [B, S, C]
            logits = self.attn(ctx).movedim(-1, 1)  # [B, C, S]
            logits = logits.reshape(*logits.shape, *([1] * (x.dim() - d - 1)))
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=d)
        return (weights * x).sum(d)
