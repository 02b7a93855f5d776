"""Fixed multi-scale filter bases: one set of learned coefficients becomes a kernel at every scale.

Two parameterisations of "the same kernel at several scales":

* **Hermite-Gaussian** (as in SESN, Sosnovik et al. 2020): kernel ``k`` at scale ``sigma`` is
  ``sum_j w_j psi_j(x / sigma) / sigma**2`` where ``psi_j(u, v) = H_n(u) H_m(v) exp(-(u**2 + v**2) / 2)``,
  ``n + m <= order``. The ``1 / sigma**2`` factor (an L1-type normalisation) is what makes the continuous
  filter bank exactly scale-equivariant: convolving an image magnified by ``a`` with the kernel at ``a * sigma`` and
  shrinking the result by ``a`` gives the response of the original at ``sigma``. The support grows with the scale
  (radius ``ceil(support * sigma)``), so coarse kernels are not truncated.
* **Dilation** (as in TridentNet): the same ``k x k`` weights spread out with dilation ``d``; exact on images
  magnified by an integer factor with nearest-neighbour upsampling, and the cheapest (no extra FLOPs per scale).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

__all__ = ["hermite_basis", "hermite_scales", "dilate_kernel", "num_hermite_functions"]


def num_hermite_functions(order: int) -> int:
    """Number of 2-D Hermite-Gaussian functions with total order ``n + m <= order``."""
    return (order + 1) * (order + 2) // 2


def hermite_scales(num_scales: int, sigma0: float = 0.8, step: float = 2**0.5) -> list[float]:
    """Geometric scale ladder ``sigma_i = sigma0 * step**i`` (finest first), as used by SESN."""
    if num_scales < 1:
        raise ValueError("num_scales must be >= 1")
    return [sigma0 * step**i for i in range(num_scales)]


def _hermite_poly(n: int, x: torch.Tensor) -> torch.Tensor:
    """Physicists' Hermite polynomial ``H_n(x)`` by the three-term recurrence (float64 for accuracy)."""
    h_prev, h = torch.ones_like(x), 2 * x
    if n == 0:
        return h_prev
    for k in range(1, n):
        h_prev, h = h, 2 * x * h - 2 * k * h_prev
    return h


def hermite_basis(
    sigmas: Sequence[float],
    order: int = 3,
    support: float = 2.5,
    kernel_size: int | None = None,
) -> torch.Tensor:
    """Sample the multi-scale Hermite-Gaussian basis.

    Args:
        sigmas: Gaussian scales, finest first.
        order: Maximal total polynomial order ``n + m``; the basis has ``(order+1)(order+2)/2`` functions.
        support: Kernel radius in units of sigma; the kernel of scale ``sigma`` has radius ``ceil(support*sigma)``.
        kernel_size: Common (odd) size all scales are zero-padded to; default: the largest scale's own size, so
            every scale can be stacked into one convolution weight.

    Returns:
        float32 tensor ``[S, K, k, k]``. Scale ``i`` equals ``psi(x / sigma_i) / sigma_i**2`` on its own support
        (zero outside), divided by one constant per function so the coarsest scale has unit L2 norm. Because the
        constant is shared across scales, the relative amplitude between scales (what equivariance needs) is kept.
    """
    sigmas = tuple(float(s) for s in sigmas)
    if not sigmas or min(sigmas) <= 0:
        raise ValueError("sigmas must be positive")
    return _hermite_basis(sigmas, order, float(support), kernel_size).clone()


@functools.lru_cache(maxsize=64)
def _hermite_basis(sigmas: tuple[float, ...], order: int, support: float, kernel_size: int | None) -> torch.Tensor:
    # Computed on the CPU in float64 whatever the default device is (a model built under torch.device("meta")
    # still gets real basis values), and cached: every layer of a SESN network uses the same basis.
    radii = [max(1, math.ceil(support * s)) for s in sigmas]
    size = kernel_size if kernel_size is not None else 2 * max(radii) + 1
    if size % 2 == 0:
        raise ValueError("kernel_size must be odd")
    half = size // 2
    coords = torch.arange(-half, half + 1, dtype=torch.float64, device="cpu")
    orders = [(n, total - n) for total in range(order + 1) for n in range(total, -1, -1)]
    out = torch.zeros(len(sigmas), len(orders), size, size, dtype=torch.float64, device="cpu")
    for i, (sigma, radius) in enumerate(zip(sigmas, radii, strict=True)):
        u = coords / sigma
        gauss = torch.exp(-0.5 * u**2)
        inside = (coords.abs() <= radius).to(torch.float64)
        for j, (n, m) in enumerate(orders):
            fy = _hermite_poly(n, u) * gauss * inside
            fx = _hermite_poly(m, u) * gauss * inside
            out[i, j] = torch.outer(fy, fx) / sigma**2
    # One normalising constant per function (from the best-sampled, coarsest scale) keeps the functions on a
    # comparable footing for the optimiser without breaking the 1/sigma^2 relation between scales.
    norm = out[-1].flatten(1).norm(dim=1).clamp_min(1e-12)
    out = out / norm[None, :, None, None]
    return out.float()


def dilate_kernel(weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """Spread a ``[..., k, k]`` kernel out with zeros so that a plain convolution equals a dilated one."""
    if dilation == 1:
        return weight
    k = weight.shape[-1]
    size = dilation * (k - 1) + 1
    out = weight.new_zeros(*weight.shape[:-2], size, size)
    out[..., ::dilation, ::dilation] = weight
    return out
