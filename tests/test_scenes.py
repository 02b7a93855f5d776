"""The scene protocol (``fmnist-ls-scene``) and its generators: RGB, textured, objects anywhere, deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from msresnet.data import build_protocol
from msresnet.data.scenes import colour_objects, compose, dead_leaves, pink_noise, scenes
from msresnet.engine.evaluate import ValidationSweep
from msresnet.errors import UserError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("family", [dead_leaves, pink_noise])
def test_backgrounds_are_textured_in_range_and_seeded(family) -> None:
    a, b = family(6, 48, _gen(1)), family(6, 48, _gen(1))
    assert a.shape == (6, 3, 48, 48) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    # every image has texture (not a flat canvas), and images differ from each other
    assert (a.flatten(1).std(1) > 0.02).all()
    assert not torch.equal(a[0], a[1])


def test_dead_leaves_sizes_follow_a_power_law() -> None:
    # a scale-invariant model: the share of the canvas in regions of one colour does not depend on the canvas size
    # much; measured crudely as the fraction of horizontal neighbours that differ, which falls as discs grow
    small, large = dead_leaves(8, 32, _gen(0), r_max=4), dead_leaves(8, 32, _gen(0), r_max=32)
    edges = lambda x: (x[..., 1:] != x[..., :-1]).float().mean()  # noqa: E731
    assert edges(large) < edges(small)


def test_colour_and_compose_keep_the_object_over_its_background() -> None:
    obj = torch.zeros(2, 1, 8, 8)
    obj[:, :, 2:6, 2:6] = 1.0
    rgba = colour_objects(obj, _gen(0))
    assert rgba.shape == (2, 4, 8, 8) and torch.equal(rgba[:, 3:], (2.5 * obj).clamp(0, 1))
    bg = torch.full((2, 3, 8, 8), 0.25)
    out = compose(rgba, bg)
    assert torch.equal(out[:, :, 0, 0], bg[:, :, 0, 0])  # no object: background
    assert torch.allclose(out[:, :, 3, 3], rgba[:, :3, 3, 3])  # opaque object: its colour


def test_scenes_prefix_does_not_depend_on_how_many_are_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("msresnet.data.scenes.CHUNK", 8)  # two chunks, the second one partial
    objects = (torch.rand(13, 1, 28, 28) * 255).to(torch.uint8)
    few = scenes(objects[:5], 1.0, 64, ["dead_leaves", "pink_noise"], (0, 1))
    many = scenes(objects, 1.0, 64, ["dead_leaves", "pink_noise"], (0, 1))
    assert few.shape == (5, 3, 64, 64) and few.dtype == torch.uint8
    assert torch.equal(few, many[:5])


def test_scene_protocol(tiny_fmnist_root: Path, tmp_cache: Path) -> None:
    p = build_protocol("fmnist-ls-scene", root=tiny_fmnist_root, val_size=50, limit=40)
    assert p.in_chans == 3 and p.input_size == (64, 64) and p.train_condition == 1.0 and len(p.test_keys) == 9
    assert p.train.images.shape == (40, 3, 64, 64) and len(p.val) == 40
    x = p.train.images.float() / 255
    # textured corners in (nearly) every image: a scene, not a flat canvas
    corners = torch.stack([x[..., :8, :8], x[..., :8, -8:], x[..., -8:, :8], x[..., -8:, -8:]], 1)
    assert ((corners.flatten(2).std(-1) > 0.02).float().mean(1) >= 0.75).float().mean() >= 0.9
    # the same test objects at two scales: another background and place each time
    a, b = p.test[0.5].images, p.test[2.0].images
    assert torch.equal(p.test[0.5].labels, p.test[2.0].labels) and not torch.equal(a, b)
    # deterministic: built again (from the cache or not) it is the same data
    assert build_protocol("fmnist-ls-scene", root=tiny_fmnist_root, val_size=50, limit=40).checksum == p.checksum
    with pytest.raises(UserError, match="backgrounds"):
        build_protocol("fmnist-ls-scene", root=tiny_fmnist_root, backgrounds="clouds")


def test_scene_objects_are_placed_anywhere(tiny_fmnist_root: Path, tmp_cache: Path) -> None:
    # the generator places a white square object on a flat black background: its centre must vary widely
    objects = torch.zeros(200, 1, 28, 28, dtype=torch.uint8)
    objects[:, :, 10:18, 10:18] = 255
    out = scenes(objects, 1.0, 64, ["pink_noise"], (3, 4)).float()
    # the object is the most saturated region; find its centre by the channel spread (backgrounds are near grey)
    sat = out.amax(1) - out.amin(1)
    w = (sat > sat.flatten(1).quantile(0.98, dim=1).view(-1, 1, 1)).float()
    ys = (w.sum(2) * torch.arange(64)).sum(1) / w.sum((1, 2))
    assert ys.std() > 6  # uniform over 0..36 px of offset: std ~ 10 px; centred objects would give ~0


def test_validation_sweep_uses_the_protocols_own_scenes(tiny_fmnist_root: Path, tmp_cache: Path) -> None:
    p = build_protocol("fmnist-ls-scene", root=tiny_fmnist_root, val_size=50, limit=20)
    sweep = ValidationSweep(p, limit=20)
    assert list(sweep.test) == list(p.test_keys)
    small = sweep.test[0.5]
    assert len(small) == 20 and small.images.shape[1] == 3
    # not the val images shrunk into a black frame: the border of a shrunk scene is still textured
    border = small.images[..., :4, :].float().flatten(1).std(1)
    assert (border > 2).float().mean() > 0.9


def test_reflect_fill_surrounds_a_shrunk_scene_with_more_of_it() -> None:
    from msresnet.data.scaling import random_rescale, rescale_in_canvas

    x = torch.rand(2, 3, 16, 16) * 0.5 + 0.25
    out = rescale_in_canvas(x, 0.5, fill="reflect")
    assert out.shape == x.shape and out[..., :4, :].min() > 0.2  # no black frame
    wide = rescale_in_canvas(x, 0.25, 64, fill="reflect")  # pads wider than the 4-px object: mirrored in steps
    assert wide.shape == (2, 3, 64, 64) and wide.min() > 0.2
    big = rescale_in_canvas(x, 2.0, fill="reflect")  # an enlargement only crops
    assert torch.allclose(big, rescale_in_canvas(x, 2.0))
    assert random_rescale(x, (0.5, 1.0), generator=_gen(0), fill="reflect")[..., :2, :].min() > 0.2
    with pytest.raises(UserError, match="reflect"):
        rescale_in_canvas(x, 0.5, fill="reflect", placement="random")
