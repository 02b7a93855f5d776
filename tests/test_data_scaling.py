"""Scale operations: geometry of the object in the canvas, per-sample scales, augmentation, v2 transforms."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from msresnet.data.scaling import (
    RandomDegrade,
    RandomRescale,
    RescaleInCanvas,
    ResizeImages,
    random_degrade,
    random_rescale,
    rescale_in_canvas,
    resize_images,
)
from msresnet.errors import UserError


def _square(n: int = 4, size: int = 28, side: int = 20) -> torch.Tensor:
    x = torch.zeros(n, 1, size, size)
    lo = (size - side) // 2
    x[:, :, lo : lo + side, lo : lo + side] = 1.0
    return x


def _extent(img: torch.Tensor, thr: float = 0.5) -> int:
    rows = torch.nonzero((img.reshape(-1, *img.shape[-2:]) > thr).any(0).any(1)).flatten()
    return int(rows.max() - rows.min() + 1) if len(rows) else 0


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.0, 1.5, 2.0])
def test_rescale_in_canvas_geometry(scale: float) -> None:
    x = _square()
    out = rescale_in_canvas(x, scale, 64)
    assert out.shape == (4, 1, 64, 64)
    assert abs(_extent(out[0]) - 20 * scale) <= 1
    # Centred: equal margins (within a pixel) on each side.
    rows = torch.nonzero(out[0, 0].amax(1) > 0.5).flatten()
    assert abs(int(rows.min()) - (63 - int(rows.max()))) <= 1
    assert out.min() >= 0 and out.max() <= 1 + 1e-6


def test_per_sample_scales_and_crop() -> None:
    x = _square(3)
    out = rescale_in_canvas(x, torch.tensor([0.5, 1.0, 3.0]), 28)
    assert [_extent(o) for o in out[:2]] == [10, 20]
    assert _extent(out[2]) == 28  # 60 px object cropped to the 28 px canvas
    single = rescale_in_canvas(x[0], 0.5, 28)
    assert single.shape == (1, 28, 28) and torch.allclose(single, out[0])


def test_random_placement_stays_inside_and_is_seeded() -> None:
    x = _square(16)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = rescale_in_canvas(x, 1.0, 48, placement="random", generator=g1)
    b = rescale_in_canvas(x, 1.0, 48, placement="random", generator=g2)
    assert torch.equal(a, b)
    assert torch.allclose(a.sum((1, 2, 3)), x.sum((1, 2, 3)))  # object never cut off
    assert len({int(torch.nonzero(im[0].amax(1)).min()) for im in a}) > 1  # offsets differ


def test_resize_images() -> None:
    x = torch.rand(2, 3, 28, 28)
    assert resize_images(x, 14).shape == (2, 3, 14, 14)
    assert resize_images(x, (56, 42)).shape == (2, 3, 56, 42)
    assert torch.equal(resize_images(x, 28), x)
    with pytest.raises(UserError):
        resize_images(x, 14, mode="lanczos")


def test_random_rescale_range_and_determinism() -> None:
    x = _square(64)
    out = random_rescale(x, (0.5, 1.0), generator=torch.Generator().manual_seed(1))
    ext = torch.tensor([_extent(o) for o in out], dtype=torch.float32)
    assert out.shape == x.shape and ext.min() >= 9 and ext.max() <= 21 and ext.std() > 1
    again = random_rescale(x, (0.5, 1.0), generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    with pytest.raises(UserError):
        random_rescale(x, (2.0, 1.0))


def test_random_degrade_blurs_some_samples() -> None:
    x = (torch.rand(32, 1, 28, 28) > 0.5).float()
    out = random_degrade(x, (0.25, 0.5), p=0.5, generator=torch.Generator().manual_seed(0))
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    assert out.shape == x.shape and 0 < int(changed.sum()) < 32
    assert torch.equal(random_degrade(x, p=0.0), x)


def test_v2_transforms_in_compose() -> None:
    img = tv_tensors.Image((_square(1, 28)[0] * 255).to(torch.uint8))
    t = v2.Compose([RescaleInCanvas(0.5, 64), ResizeImages(32), RandomRescale((0.9, 1.1)), RandomDegrade(p=1.0)])
    out, label = t(img, 3)
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.uint8 and out.shape == (1, 32, 32)
    assert label == 3
    pil = v2.ToPILImage()(img)
    assert RescaleInCanvas(2.0, 64)(pil).size == (64, 64)
    batch = ResizeImages(14)(torch.rand(5, 3, 28, 28))
    assert batch.shape == (5, 3, 14, 14)
