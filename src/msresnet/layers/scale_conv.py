"""``ScaleConv2d``: one set of learned weights applied at several scales (scale-equivariant convolution).

Two forms, chosen by ``lifting``:

* lifting (``[B, C, H, W] -> [B, C', S, H, W]``): the image is convolved with the same filter at ``S`` scales;
* scale-to-scale (``[B, C, S, H, W] -> [B, C', S, H, W]``): output scale ``s`` mixes input scales
  ``s .. s + scale_size - 1`` (zero beyond the coarsest, as SESN does), each with the kernel at scale ``s``.

Kernel parameterisation by name: ``"hermite"`` (learned coefficients on a fixed multi-scale Hermite-Gaussian
basis, see :mod:`msresnet.layers.basis`) or ``"dilation"`` (the same ``k x k`` weights at dilations 1, 2, 3...).
The hermite form stacks the ``S`` effective kernels into one weight and makes ONE convolution call (grouped by
scale in the scale-to-scale form). The dilation form makes one call per scale: stacking would zero-pad every
kernel to the largest dilation and waste FLOPs, whereas separate dilated calls cost exactly ``S`` plain convs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.errors import UserError
from msresnet.layers.basis import hermite_basis, hermite_scales

__all__ = ["ScaleConv2d"]

BASES = ("hermite", "dilation")


class ScaleConv2d(nn.Module):
    """Scale-equivariant convolution with shared weights across ``num_scales`` scales.

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels ``C'``.
        num_scales: Number of scales ``S`` (finest first).
        kernel_size: Size of the base kernel (dilation) or of the finest Hermite support hint (ignored: the
            hermite support follows the scales).
        basis: ``"hermite"`` or ``"dilation"``.
        lifting: Lifting form (4-D input) if True, scale-to-scale form (5-D input) otherwise.
        scale_size: Scale-to-scale only: how many neighbouring input scales each output scale mixes.
        stride: Spatial stride.
        bias: Add a learned bias per output channel.
        sigma0: Hermite: finest Gaussian scale.
        step: Hermite: ratio between neighbouring scales (``sqrt(2)`` -> a 2x magnification is 2 indices).
        order: Hermite: maximal polynomial order of the basis.
        dilations: Dilation: the dilation of each scale; default ``1, 2, ..., S``.
        hermite_size: Hermite: common kernel size (odd); default the coarsest scale's own support. A smaller size
            truncates the coarse kernels (cheaper, less exactly equivariant).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_scales: int,
        kernel_size: int = 3,
        basis: str = "hermite",
        lifting: bool = True,
        scale_size: int = 1,
        stride: int = 1,
        bias: bool = False,
        sigma0: float = 0.8,
        step: float = 2**0.5,
        order: int = 3,
        dilations: Sequence[int] | None = None,
        hermite_size: int | None = None,
    ) -> None:
        super().__init__()
        if basis not in BASES:
            raise UserError(f"unknown scale basis {basis!r}; choose one of {', '.join(BASES)}")
        if num_scales < 1 or scale_size < 1 or (lifting and scale_size != 1):
            raise UserError("ScaleConv2d needs num_scales >= 1 and scale_size >= 1 (1 for the lifting form)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_scales, self.scale_size, self.lifting = num_scales, scale_size, lifting
        self.basis_name, self.stride = basis, stride
        fan_in = in_channels * scale_size
        if basis == "hermite":
            self.sigmas = hermite_scales(num_scales, sigma0, step)
            self.register_buffer(
                "basis", hermite_basis(self.sigmas, order=order, kernel_size=hermite_size), persistent=False
            )
            n_func = self.basis.shape[1]
            self.weight = nn.Parameter(torch.randn(out_channels, in_channels, scale_size, n_func))
            # kaiming-like: each basis function has ~unit L2 norm, so the effective kernel's squared norm is ~sum w^2
            nn.init.normal_(self.weight, std=math.sqrt(2.0 / (fan_in * n_func)))
            self.kernel_size = self.basis.shape[-1]
            self.dilations = None
        else:
            self.dilations = list(dilations) if dilations is not None else list(range(1, num_scales + 1))
            if len(self.dilations) != num_scales or min(self.dilations) < 1:
                raise UserError("dilations must list one positive dilation per scale")
            self.kernel_size = kernel_size
            # stored 4-D, [C', C * scale_size, k, k] (channel-major, neighbouring scales inner), so the module
            # survives model.to(memory_format=torch.channels_last), which rejects 5-D parameters
            self.weight = nn.Parameter(torch.empty(out_channels, fan_in, kernel_size, kernel_size))
            nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def extra_repr(self) -> str:
        form = "lifting" if self.lifting else f"scale_size={self.scale_size}"
        return (
            f"{self.in_channels}, {self.out_channels}, num_scales={self.num_scales}, basis={self.basis_name}, "
            f"{form}, kernel_size={self.kernel_size}, stride={self.stride}"
        )

    def effective_kernels(self) -> torch.Tensor:
        """Hermite: the kernels at every scale, ``[S, C', C * scale_size, k, k]``."""
        if self.basis_name != "hermite":
            raise RuntimeError("effective_kernels is defined for the hermite basis")
        w = torch.einsum("ocjf,sfhw->socjhw", self.weight, self.basis)
        s, o, c, j, h, w_ = w.shape
        return w.reshape(s, o, c * j, h, w_)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, S, H, W] -> [B, S, C * scale_size, H, W]``: each scale with its coarser neighbours."""
        j = self.scale_size
        if j > 1:
            x = F.pad(x, (0, 0, 0, 0, 0, j - 1))
        win = x.unfold(2, j, 1)  # [B, C, S, H, W, J]
        return win.permute(0, 2, 1, 5, 3, 4).flatten(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the convolution at every scale; returns ``[B, C', S, H', W']``."""
        out = self._forward_hermite(x) if self.basis_name == "hermite" else self._forward_dilation(x)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1, 1)
        return out

    def _forward_hermite(self, x: torch.Tensor) -> torch.Tensor:
        kernels = self.effective_kernels()  # [S, C', C*J, k, k]
        # sizes from the configuration, not from traced shapes (fx and torch.export see plain integers)
        s, o, k = self.num_scales, self.out_channels, self.kernel_size
        pad = k // 2
        if self.lifting:
            # output channel layout (C', S) so the result reshapes to [B, C', S, H, W] without a copy
            y = F.conv2d(x, kernels.transpose(0, 1).flatten(0, 1), stride=self.stride, padding=pad)
            return y.unflatten(1, (o, s))
        inp = self._windows(x).flatten(1, 2)
        y = F.conv2d(inp, kernels.flatten(0, 1), stride=self.stride, padding=pad, groups=s)
        return y.unflatten(1, (s, o)).transpose(1, 2)

    def _forward_dilation(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        k = weight.shape[-1]
        if self.lifting:
            inputs = [x] * self.num_scales
        else:
            win = self._windows(x)
            inputs = [win[:, i] for i in range(self.num_scales)]
        outs = [
            F.conv2d(inp, weight, stride=self.stride, padding=d * (k // 2), dilation=d)
            for inp, d in zip(inputs, self.dilations, strict=True)
        ]
        return torch.stack(outs, dim=2)
