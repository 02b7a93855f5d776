"""Robust image loading and ImageFolder handling: each kind of bad file, each kind of pixel format."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msresnet.data import BadImageError, BadImageWarning, RobustImageFolder, load_folder_tensors, scan_image_folder
from msresnet.data.images import load_image
from msresnet.errors import UserError


def _bad_files(d: Path) -> dict[str, str]:
    """Write one file of each bad kind into ``d``; returns name -> expected reason fragment."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    buf = d / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf)
    (d / "truncated.png").write_bytes(buf.read_bytes()[:400])
    buf.unlink()
    Image.new("L", (300, 300)).save(d / "huge.png")  # over the max_pixels=50_000 used below
    return {"empty.png": "empty file", "text.jpg": "not an image", "truncated.png": "truncated or corrupt",
            "huge.png": "too large"}  # fmt: skip


def test_bad_files_give_reasons(tmp_path: Path) -> None:
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(BadImageError) as err:
            load_image(tmp_path / name, max_pixels=50_000)
        assert reason in err.value.reason and err.value.path.endswith(name)
        assert isinstance(err.value, UserError)
    with pytest.raises(BadImageError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("L", (100, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own check fires first here (warning or error)
    with pytest.raises(BadImageError, match="too large"):
        load_image(tmp_path / "bomb.png", max_pixels=None)


def test_pixel_format_conversions(tmp_path: Path) -> None:
    # 16-bit grayscale: full scale maps to 255, not clipped.
    a16 = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    assert np.asarray(load_image(tmp_path / "g16.png", mode="L")).tolist() == [[0, 128, 255]]
    # 32-bit integer image holding 16-bit data.
    Image.fromarray(a16.astype(np.int32)).save(tmp_path / "i32.tif")
    assert np.asarray(load_image(tmp_path / "i32.tif", mode="L")).tolist() == [[0, 128, 255]]
    # Palette image goes through the palette.
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "pal.png")
    assert np.asarray(load_image(tmp_path / "pal.png")).tolist() == [[[0, 0, 0], [255, 0, 0]]]
    # RGBA: transparent pixels become the background (black by default), opaque ones keep their colour.
    rgba = np.array([[[255, 255, 255, 0], [10, 200, 30, 255]]], dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.asarray(load_image(tmp_path / "rgba.png")).tolist() == [[[0, 0, 0], [10, 200, 30]]]
    white = load_image(tmp_path / "rgba.png", background=(255, 255, 255))
    assert np.asarray(white)[0, 0].tolist() == [255, 255, 255]
    # CMYK: no ink = white, full cyan = (0, 255, 255).
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    got = np.asarray(load_image(tmp_path / "cmyk.jpg")).astype(int)
    assert np.abs(got - np.array([[[255, 255, 255], [0, 255, 255]]])).max() < 12
    # Grayscale to RGB and RGB to grayscale.
    Image.new("L", (3, 3), 77).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").mode == "RGB"
    assert np.asarray(load_image(tmp_path / "gray.png", mode="L")).max() == 77
    # Animated GIF: the first frame.
    frames = [Image.new("L", (4, 4), v) for v in (40, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(tmp_path / "anim.gif", mode="L")).max() == 40


def test_folder_skips_bad_files_with_one_warning(image_folder: Path) -> None:
    expected = _bad_files(image_folder / "dog")
    samples, classes = scan_image_folder(image_folder)
    assert classes == ["cat", "dog", "fox"] and len(samples) == 18 + len(expected)
    with pytest.warns(BadImageWarning) as rec:
        ds = load_folder_tensors(samples, 16, max_pixels=50_000, root=image_folder, class_names=classes)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert f"skipped {len(expected)} of {len(samples)}" in msg and all(name in msg for name in expected)
    assert ds.images.shape == (18, 3, 16, 16) and ds.labels.bincount().tolist() == [6, 6, 6]
    with pytest.raises(BadImageError):
        load_folder_tensors(samples, 16, max_pixels=50_000, strict=True)


def test_robust_image_folder(image_folder: Path) -> None:
    _bad_files(image_folder / "fox")
    with pytest.warns(BadImageWarning, match="skipped 4"):
        ds = RobustImageFolder(image_folder, max_pixels=50_000)
    assert len(ds) == 18 and ds.classes == ["cat", "dog", "fox"]
    img, label = ds[0]
    assert img.mode == "RGB" and label == 0
    with pytest.raises(BadImageError):
        RobustImageFolder(image_folder, max_pixels=50_000, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unchecked = RobustImageFolder(image_folder, max_pixels=50_000, check=False)
    assert len(unchecked) == 22


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no image files"):
        scan_image_folder(tmp_path / "empty")
