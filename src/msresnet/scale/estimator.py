"""Object-scale estimator: a small CNN on a coarse view of the image that says how large its object is, in octaves.

What it estimates is the object's size *relative to the frame*, compared with the training images' (log2; 0: as
in training, +1: twice as large in the same frame). It is self-supervised from single-scale training data: each
training image is zoomed by a known random factor into the coarse view (shrunk inside the canvas, or its central
part shown larger, never past the image's own pixels where the canvas allows) and the factor's log2 is the label.
Nothing in it looks for a background: no thresholds, boxes or uniform-background rules, so clutter and texture only
make the task harder, not impossible.

Against outputs compressed towards the middle of the training range (what a regression head trained on a narrow
range does at its ends), the head is a classification over log-scale bins covering a range wider than the one it
is asked to serve, trained with two-hot targets (the label split between its two neighbouring bins), and read out
by a soft-argmax *local to the most probable bin*, so probability mass far from the mode does not pull the estimate
inwards. Features are global max and average pools of the last map plus an *attention* pool: a learned softmax over
the map's locations. The scale loss teaches the attention to look where the scale can be read, the object, not the
background; the attention's centroid is then where the object is (:meth:`ScaleEstimator.estimate`), which lets the
canonicaliser zoom about the object instead of about the frame's centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.errors import UserError
from msresnet.scale.resample import image_size, zoom

__all__ = ["ScaleEstimator"]


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ScaleEstimator(nn.Module):
    """Log2 object scale of each image from a ``view_size`` coarse view (see the module docstring).

    Args:
        in_chans: image channels.
        view_size: side of the coarse view the CNN sees (the whole image is resampled into it, aspect kept).
        bin_range: ``(lo, hi)`` octaves covered by the classification bins.
        bin_step: octaves between bin centres.
        width: channels of the first stage (doubled twice).
        window: bins on each side of the most probable one that the soft-argmax reads.
    """

    def __init__(
        self,
        in_chans: int = 1,
        view_size: int = 32,
        bin_range: Sequence[float] = (-3.0, 1.75),
        bin_step: float = 0.25,
        width: int = 16,
        window: int = 2,
    ) -> None:
        super().__init__()
        lo, hi = float(bin_range[0]), float(bin_range[1])
        if not lo < 0 < hi or bin_step <= 0:
            raise UserError(f"estimator bin_range must contain 0 with lo < hi, got {tuple(bin_range)}")
        if view_size < 8:
            raise UserError(f"estimator view_size must be at least 8 pixels, got {view_size}")
        n = int(math.floor((hi - lo) / bin_step + 1e-6)) + 1
        self.view_size, self.window, self.num_bins = int(view_size), int(window), n
        self.register_buffer("centres", lo + bin_step * torch.arange(n, dtype=torch.float32), persistent=False)
        w = int(width)
        # receptive field ~45 px of the view: the largest objects it must size fill most of it
        self.features = nn.Sequential(
            _conv(in_chans, w, 1),
            _conv(w, 2 * w, 2),
            _conv(2 * w, 2 * w, 1),
            _conv(2 * w, 4 * w, 2),
            _conv(4 * w, 4 * w, 1),
            _conv(4 * w, 4 * w, 2),
            _conv(4 * w, 4 * w, 1),
        )
        self.attend = nn.Conv2d(4 * w, 1, 1)
        self.head = nn.Sequential(nn.Linear(12 * w, 4 * w), nn.ReLU(inplace=True), nn.Linear(4 * w, n))

    @property
    def bin_range(self) -> tuple[float, float]:
        return float(self.centres[0]), float(self.centres[-1])

    def view(
        self,
        x: torch.Tensor,
        span: torch.Tensor | None = None,
        centre: torch.Tensor | None = None,
        padding: str = "auto",
    ) -> torch.Tensor:
        """The coarse view of ``x``: the whole image (``span`` 1) or a per-image zoom of it (about ``centre``, see
        :func:`~msresnet.scale.resample.zoom`), ``view_size`` square."""
        if span is None:
            span = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return zoom(x, span, (self.view_size, self.view_size), centre=centre, padding=padding)

    def _pooled(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(view)
        a = self.attend(f)  # [B, 1, h, w]
        attn = a.flatten(1).float().softmax(-1).to(f.dtype).view_as(a).squeeze(1)  # [B, h, w], sums to 1
        pooled = torch.cat([f.amax((-2, -1)), f.mean((-2, -1)), (f * attn.unsqueeze(1)).sum((-2, -1))], 1)
        return pooled, attn

    def logits(self, view: torch.Tensor) -> torch.Tensor:
        """Bin logits ``[B, n_bins]`` of coarse views."""
        return self.head(self._pooled(view)[0])

    def logits_and_centre(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin logits ``[B, n_bins]`` and the attention centroid ``[B, 2]`` (``x, y`` in the view's normalised
        coordinates) of coarse views, from one pass."""
        pooled, attn = self._pooled(view)
        return self.head(pooled), _centroid(attn)

    def estimate(self, x: torch.Tensor, padding: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """Log2 object scale ``[B]`` and object centre ``[B, 2]`` (``(x, y)`` in ``x``'s normalised coordinates:
        the centroid of the attention over the whole-image view)."""
        logits, c = self.logits_and_centre(self.view(x, padding=padding))  # c: in the view's coordinates
        # the whole-image view is an isotropic zoom: a non-square input fills the square view along its shorter axis
        size = image_size(x)
        aspect = (size[0] / size[1]).sqrt()
        c = c * torch.stack([aspect, 1 / aspect]).to(c.dtype)
        return self.decode(logits), c

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Log2 scale ``[B]``: soft-argmax over the bins within ``window`` of the most probable one."""
        p = logits.float().softmax(-1)
        idx = torch.arange(p.shape[-1], device=p.device, dtype=p.dtype)
        best = p.argmax(-1, keepdim=True).to(p.dtype)
        near = ((idx - best).abs() <= self.window).to(p.dtype)
        q = p * near
        return (q * self.centres).sum(-1) / q.sum(-1).clamp_min(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log2 object scale ``[B]`` of images ``x`` (relative to the frame, as in training)."""
        return self.decode(self.logits(self.view(x)))

    def targets(self, log2_scale: torch.Tensor) -> torch.Tensor:
        """Two-hot bin targets ``[B, n_bins]`` of log2 labels (clamped into the bin range)."""
        c, n = self.centres, self.num_bins
        step = c[1] - c[0]
        pos = ((log2_scale.float() - c[0]) / step).clamp(0, n - 1)
        lo = pos.floor().clamp(max=n - 2).long()
        frac = (pos - lo.float()).unsqueeze(1)
        t = c.new_zeros((log2_scale.shape[0], n))
        t.scatter_(1, lo.unsqueeze(1), 1 - frac)
        t.scatter_add_(1, lo.unsqueeze(1) + 1, frac)
        return t

    def loss(self, logits: torch.Tensor, log2_scale: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the two-hot targets of the known log2 zoom factors."""
        return torch.sum(-self.targets(log2_scale) * F.log_softmax(logits.float(), -1), -1).mean()


def _centroid(attn: torch.Tensor) -> torch.Tensor:
    """``[B, 2]`` centroid ``(x, y)`` in [-1, 1] of attention maps ``[B, h, w]`` that sum to 1."""
    # pixel-centre coordinates of the map's rows and columns, from tensor ops only (fx, ONNX)
    ys, xs = attn[0, :, 0].detach(), attn[0, 0, :].detach()
    ys = 2 * (torch.ones_like(ys).cumsum(0) - 0.5) / ys.numel() - 1
    xs = 2 * (torch.ones_like(xs).cumsum(0) - 0.5) / xs.numel() - 1
    return torch.stack([(attn.sum(1) * xs).sum(-1), (attn.sum(2) * ys).sum(-1)], -1)
