"""Properties of the scale layers: equivariance of the lifting convolutions, ScalePool limits, the pyramid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msresnet.errors import UserError
from msresnet.layers import ImagePyramid, ScaleConv2d, ScalePool, hermite_basis, resize

# Measured (seed 0/1, 4 smooth 64x64 images, 12-px border excluded, bilinear 2x upsampling, 2x2 average-pool
# downsampling of the response): relative L2 error 0.066-0.085 over sigma0 in {0.8, 1.0}, order in {2, 3}.
# The residual comes from discretisation: bilinear upsampling is not the ideal magnified image and the finest
# kernels are point-sampled. Mismatched scale indices give errors > 0.3, so the bound below is meaningful.
HERMITE_EQUIVARIANCE_TOL = 0.12


def _smooth_images(n: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    for _ in range(3):  # band-limit: point-sampled equivariance only holds for content the grid can represent
        x = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    return x


def _rel_err(a: torch.Tensor, b: torch.Tensor, border: int = 12) -> float:
    m = slice(border, -border)
    a, b = a[..., m, m], b[..., m, m]
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.parametrize("sigma0", [0.8, 1.0])
def test_hermite_lifting_is_scale_equivariant(sigma0: float) -> None:
    torch.manual_seed(1)
    conv = ScaleConv2d(1, 8, num_scales=4, basis="hermite", sigma0=sigma0, step=2**0.5)  # 2 indices = x2
    x = _smooth_images()
    with torch.no_grad():
        y, y_up = conv(x), conv(resize(x, 2.0))
    for i in range(2):
        err = _rel_err(y[:, :, i], F.avg_pool2d(y_up[:, :, i + 2], 2))
        assert err < HERMITE_EQUIVARIANCE_TOL, (i, err)
        wrong = _rel_err(y[:, :, i], F.avg_pool2d(y_up[:, :, i], 2))
        assert wrong > 3 * err


def test_dilation_lifting_exact_on_nearest_upsampling() -> None:
    torch.manual_seed(0)
    conv = ScaleConv2d(2, 5, num_scales=3, basis="dilation", dilations=[1, 2, 4])
    x = torch.randn(2, 2, 20, 24)
    with torch.no_grad():
        y, y_up = conv(x), conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    # dilation 2d on the 2x nearest-upsampled image, sampled at even pixels, is dilation d on the original
    torch.testing.assert_close(y_up[:, :, 1, ::2, ::2], y[:, :, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(y_up[:, :, 2, ::2, ::2], y[:, :, 1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("basis", ["hermite", "dilation"])
@pytest.mark.parametrize("stride", [1, 2])
def test_scale_to_scale_matches_per_scale_reference(basis: str, stride: int) -> None:
    torch.manual_seed(0)
    s, j = 3, 2
    conv = ScaleConv2d(3, 4, num_scales=s, basis=basis, lifting=False, scale_size=j, stride=stride)
    x = torch.randn(2, 3, s, 15, 17)
    with torch.no_grad():
        out = conv(x)
        xp = F.pad(x, (0, 0, 0, 0, 0, j - 1))
        for i in range(s):
            inp = xp[:, :, i : i + j].reshape(2, 3 * j, 15, 17)  # channel-major, neighbouring scales inner
            if basis == "hermite":
                k = conv.effective_kernels()[i]
                ref = F.conv2d(inp, k, stride=stride, padding=k.shape[-1] // 2)
            else:
                w = conv.weight
                d = conv.dilations[i]
                ref = F.conv2d(inp, w, stride=stride, padding=d, dilation=d)
            torch.testing.assert_close(out[:, :, i], ref, rtol=1e-4, atol=1e-5)


def test_hermite_basis_keeps_dc_gain_across_scales() -> None:
    basis = hermite_basis([0.8, 1.6, 3.2], order=2)
    dc = basis[:, 0].sum(dim=(-2, -1))  # the Gaussian's integral: 1/sigma^2 normalisation keeps it constant
    torch.testing.assert_close(dc, dc[:1].expand(3), rtol=0.02, atol=0)
    assert basis.shape[1] == 6


def test_scale_pool_softmax_limits() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6, 6)
    pool = ScalePool("softmax")
    with torch.no_grad():
        pool.beta.fill_(200.0)
        torch.testing.assert_close(pool(x), x.amax(2), rtol=0, atol=2e-2)
        pool.beta.fill_(1e-6)
        torch.testing.assert_close(pool(x), x.mean(2), rtol=0, atol=1e-5)
    assert torch.equal(ScalePool("max")(x), x.amax(2))
    torch.testing.assert_close(ScalePool("avg")(x), x.mean(2))


@pytest.mark.parametrize("dim, shape", [(2, (3, 4, 2, 5, 5)), (2, (3, 4, 2)), (1, (3, 2, 4))])
def test_scale_pool_softmax_two_scales_is_the_softmax_formula(dim: int, shape: tuple[int, ...]) -> None:
    """The two-scale shortcut (sigmoid of the difference) gives the softmax-weighted sum and its gradients."""
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    pool = ScalePool("softmax", dim=dim, beta=1.7).double()
    fast = pool(x)
    (gx_fast, gb_fast) = torch.autograd.grad(fast.square().sum(), (x, pool.beta))
    ref = (torch.softmax(pool.beta * x, dim) * x).sum(dim)
    (gx_ref, gb_ref) = torch.autograd.grad(ref.square().sum(), (x, pool.beta))
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(gx_fast, gx_ref)
    torch.testing.assert_close(gb_fast, gb_ref)


def test_scale_pool_attention_and_variable_scales() -> None:
    pool = ScalePool("attention", channels=8)
    for s in (1, 3, 5):
        x = torch.randn(2, 8, s, 4, 4, requires_grad=True)
        out = pool(x)
        assert out.shape == (2, 8, 4, 4)
        out.sum().backward()
    y = pool(torch.randn(2, 8, 3))  # pooled features, no spatial axes
    assert y.shape == (2, 8)


def test_scale_dropout_keeps_a_window_in_training_only() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 4, 5)
    pool = ScalePool("avg", scale_dropout=1.0).train()
    out = pool(x)
    assert not torch.allclose(out, x.mean(2))  # some samples saw only a window of scales
    assert (out <= x.amax(2) + 1e-6).all() and (out >= x.amin(2) - 1e-6).all()
    mx = ScalePool("max", scale_dropout=1.0).train()(x)
    assert torch.isfinite(mx).all()
    pool.eval()
    torch.testing.assert_close(pool(x), x.mean(2))


def test_scale_pool_rejects_unknown_mode() -> None:
    with pytest.raises(UserError, match="unknown scale pool"):
        ScalePool("median")


def test_image_pyramid_levels_and_crop() -> None:
    pyr = ImagePyramid([1.0, 0.5, 0.25], min_size=8)
    levels = pyr(torch.rand(2, 1, 28, 36))
    assert [tuple(lv.shape[-2:]) for lv in levels] == [(28, 36), (14, 18)]  # 7x9 is below min_size
    up = ImagePyramid([2.0, 1.0], crop_upscaled=True)(torch.rand(1, 3, 20, 30))
    assert [tuple(lv.shape[-2:]) for lv in up] == [(20, 30), (20, 30)]
    tiny = ImagePyramid([0.5, 0.25], min_size=16)(torch.rand(1, 1, 16, 16))
    assert len(tiny) == 1  # never empty: the level nearest to the input's own scale is kept


def test_pyramid_jitter_shrinks_in_training_only() -> None:
    x = torch.rand(2, 1, 64, 64)
    pyr = ImagePyramid([1.0, 0.5, 0.25], min_size=8, jitter=1.0)
    exact = [lvl.shape[-1] for lvl in pyr.eval()(x)]
    assert exact == [64, 32, 16]
    torch.manual_seed(0)
    seen = {tuple(lvl.shape[-1] for lvl in pyr.train()(x)) for _ in range(20)}
    assert len(seen) > 5  # a new factor on every call ...
    for sizes in seen:  # ... shrinking every level by the same factor in (1/2, 1], never below min_size
        assert len(sizes) == 3 and all(e / 2 - 1 <= s <= e and s >= 8 for s, e in zip(sizes, exact, strict=True))
    with pytest.raises(UserError, match="jitter"):
        ImagePyramid([1.0, 0.5], jitter=-0.5)


def test_pyramid_jitter_leaves_the_trained_model_unchanged_in_eval() -> None:
    import msresnet

    torch.manual_seed(0)
    plain = msresnet.create_model("msresnet8", num_classes=3, in_chans=1, width=0.25).eval()
    jittered = msresnet.create_model("msresnet8", num_classes=3, in_chans=1, width=0.25, pyramid_jitter=0.5).eval()
    jittered.load_state_dict(plain.state_dict())  # no new parameters or buffers
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(jittered(x), plain(x))


def test_resize_antialias_and_identity() -> None:
    x = torch.zeros(1, 1, 32, 32)
    x[..., ::2, :] = 1.0  # 2-px stripes: aliased subsampling would give all ones or all zeros
    inner = resize(x, 0.5)[..., 1:-1, :]  # the border rows see a truncated filter
    torch.testing.assert_close(inner, torch.full_like(inner, 0.5), rtol=0, atol=1e-6)
    assert resize(x, 1.0) is x
    assert resize(x, (20, 10)).shape[-2:] == (20, 10)


def measure_hermite_equivariance() -> dict[str, list[float]]:
    """The figures quoted above: relative L2 error per scale index, for several basis settings."""
    out = {}
    x = _smooth_images()
    for sigma0 in (0.8, 1.0):
        for order in (2, 3):
            torch.manual_seed(1)
            conv = ScaleConv2d(1, 8, num_scales=4, basis="hermite", sigma0=sigma0, order=order)
            with torch.no_grad():
                y, y_up = conv(x), conv(resize(x, 2.0))
            out[f"sigma0={sigma0} order={order}"] = [
                round(_rel_err(y[:, :, i], F.avg_pool2d(y_up[:, :, i + 2], 2)), 4) for i in range(2)
            ]
    return out


if __name__ == "__main__":  # python tests/test_layers.py
    for setting, errs in measure_hermite_equivariance().items():
        print(setting, "relative L2 error at scale index 0, 1:", errs)
