"""Benchmark protocols: shapes and ranges, object geometry, stratification, determinism, caching, folders, errors.

Protocols are built from small slices (``limit``) or the tiny generated IDX folder into a per-test cache, so each
test generates a few hundred images at most.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder
from msresnet.data import build_protocol, list_protocols, load_idx_dataset
from msresnet.data._store import PartStore
from msresnet.errors import UserError

LS_KEYS = [0.5, 0.5946, 0.7071, 0.8409, 1.0, 1.1892, 1.4142, 1.6818, 2.0]


def _check_split(ds, shape: tuple[int, int, int]) -> None:
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape[1:]) == shape
    assert ds.labels.dtype == torch.int64 and len(ds.labels) == len(ds.images)
    x, y = ds[0]
    assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1 and isinstance(y, int)


def test_list_and_errors(tiny_fmnist_root: Path, tmp_cache: Path) -> None:
    assert list_protocols() == [
        "fmnist-ls",
        "fmnist-ls-scene",
        "fmnist-res",
        "fmnist-scale",
        "folder",
        "folder-ls",
        "folder-res",
    ]
    with pytest.raises(UserError, match="did you mean 'fmnist-ls'"):
        build_protocol("fmnist_ls")
    with pytest.raises(UserError, match="no parameter 'scale'.*did you mean 'scales'"):
        build_protocol("fmnist-ls", root=tiny_fmnist_root, scale=[1.0])
    with pytest.raises(UserError, match="bad canvas"):
        build_protocol("fmnist-ls", root=tiny_fmnist_root, canvas="big")
    with pytest.raises(UserError, match="needs root"):
        build_protocol("folder-ls")
    with pytest.raises(UserError, match="leaves no training images"):
        build_protocol("fmnist-ls", root=tiny_fmnist_root, val_size=300).train  # noqa: B018


def test_fmnist_ls_shapes_and_conditions(tiny_fmnist_root: Path, tmp_cache: Path) -> None:
    p = build_protocol("fmnist-ls", root=tiny_fmnist_root, val_size=50)
    assert list(p.test) == LS_KEYS and p.condition_name == "scale" and p.train_condition == 1.0
    assert p.input_size == (64, 64) and p.num_classes == 10 and p.in_chans == 1 and len(p.class_names) == 10
    assert (len(p.train), len(p.val)) == (250, 50)
    for ds in (p.train, p.val, p.test[0.5], p.test[2.0]):
        _check_split(ds, (1, 64, 64))
    assert len(p.test[2**0.25]) == 100  # exact scales find their rounded key
    assert 0 < p.mean[0] < 0.5 and 0 < p.std[0] < 0.5
    assert json.loads(json.dumps(p.params)) == p.params


def test_fmnist_ls_object_scale_matches_bounding_box(fmnist_root: Path, tmp_cache: Path) -> None:
    """The object's bounding box in the canvas is s times its bounding box in the source, within one pixel."""
    n = 100
    p = build_protocol("fmnist-ls", root=fmnist_root, limit=n)
    src = load_idx_dataset("fashion-mnist", "test", root=fmnist_root).subset(n)

    def extents(images: torch.Tensor) -> torch.Tensor:
        x = images[:, 0].float()
        mask = x > 0.2 * x.amax(dim=(1, 2), keepdim=True)  # relative threshold: robust to the antialiased edge
        out = []
        for m in mask:
            rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
            out.append([rows.max() - rows.min() + 1, cols.max() - cols.min() + 1])
        return torch.tensor(out, dtype=torch.float32)

    src_ext = extents(src.images)
    for key, s in zip(p.test, p.params["scales"], strict=True):
        got = extents(p.test[key].images)
        want = src_ext * round(28 * s) / 28  # the object is round(28 s) pixels wide
        assert (got.mean(0) - want.mean(0)).abs().max() <= 1.0, key
        assert (got - want).abs().amax(1).median() <= 1.0, key


def test_tiny_rectangles_scale_exactly(tiny_fmnist_root: Path, tmp_cache: Path) -> None:
    p = build_protocol("fmnist-ls", root=tiny_fmnist_root, limit=40)
    src = load_idx_dataset("fashion-mnist", "test", root=tiny_fmnist_root).subset(40)
    for key, s in zip(p.test, p.params["scales"], strict=True):
        for i in range(40):
            a, b = src.images[i, 0].float(), p.test[key].images[i, 0].float()
            a, b = a > a.max() / 2, b > b.max() / 2  # half-coverage threshold: edges count when mostly inside
            for axis in (0, 1):
                ea, eb = int(a.any(axis).sum()), int(b.any(axis).sum())
                assert abs(eb - ea * round(28 * s) / 28) <= 1.0, (key, i)  # the object is round(28 s) px wide


def test_fmnist_scale_stratified_and_deterministic(tiny_fmnist_root: Path, tmp_path: Path, monkeypatch) -> None:
    sizes = dict(train_size=100, val_size=20, test_size=150)
    monkeypatch.setenv("MSRESNET_CACHE", str(tmp_path / "a"))
    p = build_protocol("fmnist-scale", root=tiny_fmnist_root, **sizes)
    assert (len(p.train), len(p.val), sum(len(d) for d in p.test.values())) == (100, 20, 150)
    assert len(p.test) == 5 and list(p.test) == sorted(p.test) and p.train_condition is None
    # The pool is class-balanced (40 per class), so every split is too.
    for ds, per_class in ((p.train, 10), (p.val, 2)):
        assert torch.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
    assert torch.bincount(torch.cat([d.labels for d in p.test.values()]), minlength=10).tolist() == [15] * 10
    # Splits are disjoint and scales lie in U(0.3, 1.0); the bins are ordered by scale.
    idx = torch.cat([p.train.extras["index"], p.val.extras["index"], p.store.get("test").extras["index"]])
    assert len(torch.unique(idx)) == 270
    scales = p.store.get("test").extras["scale"]
    assert float(scales.min()) >= 0.3 and float(scales.max()) <= 1.0
    bins = list(p.test.values())
    assert float(bins[0].extras["scale"].max()) <= float(bins[1].extras["scale"].min())
    _check_split(p.train, (1, 28, 28))
    checksum = p.checksum
    # Same realization regenerated in a fresh cache: same bytes. Another realization: different.
    monkeypatch.setenv("MSRESNET_CACHE", str(tmp_path / "b"))
    again = build_protocol("fmnist-scale", root=tiny_fmnist_root, **sizes)
    assert not again.store.is_cached("train") or again.cache_path != p.cache_path
    assert again.checksum == checksum
    other = build_protocol("fmnist-scale", root=tiny_fmnist_root, realization=1, **sizes)
    assert other.checksum != checksum
    assert not torch.equal(other.train.extras["index"], p.train.extras["index"])
    with pytest.raises(UserError, match="need"):
        build_protocol("fmnist-scale", root=tiny_fmnist_root, train_size=1000)


def test_fmnist_res_sizes(tiny_fmnist_root: Path, tmp_cache: Path) -> None:
    p = build_protocol("fmnist-res", root=tiny_fmnist_root, val_size=50, limit=30)
    assert list(p.test) == [14, 21, 28, 42, 56, 84, 112] and p.condition_name == "size" and p.train_condition == 28
    assert p.input_size == (28, 28) and len(p.train) == 30
    for size in p.test:
        _check_split(p.test[size], (1, size, size))
    src = load_idx_dataset("fashion-mnist", "test", root=tiny_fmnist_root).subset(30)
    assert torch.equal(p.test[28].images, src.images)


def test_cache_is_reused_and_lazy(tiny_fmnist_root: Path, tmp_cache: Path, monkeypatch) -> None:
    p = build_protocol("fmnist-ls", root=tiny_fmnist_root, limit=20, val_size=50)
    _ = p.test[2.0]
    files = sorted(f.name for f in p.cache_path.iterdir())
    assert files == ["test-2.npz"]  # only the condition that was used was generated
    checksum = p.checksum
    first = p.test[2.0].images.clone()

    def no_generation(self, part):
        raise AssertionError(f"{part} regenerated although cached")

    monkeypatch.setattr(PartStore, "_generate", no_generation)
    again = build_protocol("fmnist-ls", root=tiny_fmnist_root, **{**again_params(p)})
    assert again.cache_path == p.cache_path and again.checksum == checksum
    assert torch.equal(again.test[2.0].images, first)


def again_params(p) -> dict:
    """A protocol's resolved params are enough to rebuild it (that is what checkpoints store)."""
    return dict(p.params)


def test_train_scale_range(tiny_fmnist_root: Path, tmp_cache: Path) -> None:
    p = build_protocol("fmnist-ls", root=tiny_fmnist_root, train_scales=(0.5, 2.0), val_size=50)
    s = p.train.extras["scale"]
    assert float(s.min()) >= 0.5 and float(s.max()) <= 2.0 and float(s.std()) > 0.1
    assert p.train_condition == 1.0
    with pytest.raises(UserError, match="train_scales"):
        build_protocol("fmnist-ls", root=tiny_fmnist_root, train_scales=(2.0, 0.5))


def test_folder_protocols(tmp_path: Path, tmp_cache: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=10)
    ls = build_protocol("folder-ls", root=root, image_size=16, seed=1)
    assert ls.params["canvas"] == 38 and ls.input_size == (38, 38) and ls.in_chans == 3 and ls.num_classes == 3
    assert (len(ls.train), len(ls.val), len(ls.test[1.0])) == (22, 2, 6)
    assert torch.bincount(ls.test[1.0].labels).tolist() == [2, 2, 2]
    _check_split(ls.test[2.0], (3, 38, 38))
    res = build_protocol("folder-res", root=root, image_size=16, mode="L")
    assert list(res.test) == [8, 12, 16, 24, 32, 48, 64] and res.train_condition == 16 and res.in_chans == 1
    _check_split(res.test[64], (1, 64, 64))
    _check_split(res.train, (1, 16, 16))
    # Rebuilding from the recorded params hits the same cache.
    assert build_protocol("folder-res", **res.params).cache_path == res.cache_path


def test_folder_with_train_test_subfolders(tmp_path: Path, tmp_cache: Path) -> None:
    make_image_folder(tmp_path / "ds" / "train", per_class=5)
    make_image_folder(tmp_path / "ds" / "test", classes=("cat", "fox"), per_class=3)
    p = build_protocol("folder-ls", root=tmp_path / "ds", image_size=8, val_fraction=0.2, scales=[0.5, 1, 2])
    assert p.class_names == ["cat", "dog", "fox"] and list(p.test) == [0.5, 1.0, 2.0]
    assert (len(p.train), len(p.val)) == (12, 3)
    assert torch.bincount(p.test[1.0].labels, minlength=3).tolist() == [3, 0, 3]
    make_image_folder(tmp_path / "ds" / "test", classes=("wolf",), per_class=1)
    with pytest.raises(UserError, match="missing from"):
        build_protocol("folder-ls", root=tmp_path / "ds", image_size=8)


@pytest.mark.slow
def test_full_fmnist_protocols(real_fmnist_root: Path) -> None:
    """The exact full-size protocols (uses the user cache: generated once, then loaded)."""
    ls = build_protocol("fmnist-ls", root=real_fmnist_root)
    assert (len(ls.train), len(ls.val), [len(d) for d in ls.test.values()]) == (55000, 5000, [10000] * 9)
    sc = build_protocol("fmnist-scale", root=real_fmnist_root)
    assert (len(sc.train), len(sc.val), sum(len(d) for d in sc.test.values())) == (10000, 2000, 50000)
    for ds, n in ((sc.train, 1000), (sc.val, 200)):
        assert torch.bincount(ds.labels).tolist() == [n] * 10
    res = build_protocol("fmnist-res", root=real_fmnist_root)
    assert [d.images.shape[-1] for d in res.test.values()] == [14, 21, 28, 42, 56, 84, 112]
