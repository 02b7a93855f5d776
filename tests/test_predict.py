"""predict: images of any size and mode, bad files reported by name, exit codes, JSON output."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import msresnet
from msresnet.cli import main
from msresnet.engine.checkpoint import CheckpointInfo, save_weights
from msresnet.predict import PredictResult, expand_inputs, predict_files

CLASSES = [f"class{i}" for i in range(10)]


def make_checkpoint(path: Path, name: str = "resnet8", in_chans: int = 1) -> Path:
    """An untrained model saved like a training run's weights (no training needed to test inference)."""
    torch.manual_seed(0)
    model = msresnet.create_model(name, num_classes=10, in_chans=in_chans).eval()
    info = CheckpointInfo(
        model=name,
        num_classes=10,
        in_chans=in_chans,
        class_names=CLASSES,
        mean=(0.2,) * in_chans,
        std=(0.3,) * in_chans,
        protocol="fmnist-ls",
        input_size=(64, 64),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, model, info)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bomb_png(path: Path, side: int = 200_000) -> None:
    """A PNG whose header claims side x side pixels (40 Gpx): a decompression bomb, refused before decoding."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str], set[str]]:
    """A folder of good images in awkward formats and bad files; returns (dir, good names, bad names)."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(d / "gray.jpg")
    Image.fromarray(rng.integers(0, 65535, (40, 30), dtype=np.uint16)).save(d / "deep16.png")
    Image.new("CMYK", (50, 40), (10, 200, 30, 0)).save(d / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (33, 33, 4), dtype=np.uint8), mode="RGBA").save(d / "rgba.png")
    frames = [Image.new("P", (32, 32), i * 40) for i in range(3)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    Image.new("L", (2000, 90), 128).save(d / "wide.png")  # larger than --max-side: shrunk, not refused
    Image.new("L", (8, 8), 255).save(d / "tiny.png")  # smaller than any model's minimum: enlarged
    (d / "empty.png").write_bytes(b"")
    good = (d / "rgb.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "notimage.jpg").write_text("this is not an image\n")
    write_bomb_png(d / "bomb.png")
    (d / "README.txt").write_text("not an image extension: ignored when the folder is expanded\n")
    good_names = {"rgb.png", "gray.jpg", "deep16.png", "cmyk.jpg", "rgba.png", "anim.gif", "wide.png", "tiny.png"}
    bad_names = {"empty.png", "truncated.png", "notimage.jpg", "bomb.png"}
    return d, good_names, bad_names


def test_expand_inputs(image_folder: tuple[Path, set[str], set[str]], tmp_path: Path) -> None:
    d, good, bad = image_folder
    files, failures, ignored = expand_inputs([d, tmp_path / "missing.png", tmp_path])
    assert {f.name for f in files} == good | bad
    assert [f.reason for f in failures] == ["no such file or directory", "directory holds no image files"]
    assert [Path(p).name for p in ignored] == ["README.txt"]


def test_predict_folder_with_bad_images(image_folder: tuple[Path, set[str], set[str]], checkpoint: Path) -> None:
    d, good, bad = image_folder
    model = msresnet.load_model(checkpoint)
    info = model.checkpoint_info
    res = predict_files(
        model, [d], in_chans=1, mean=info.mean, std=info.std, class_names=info.class_names, topk=3, max_side=512
    )
    assert {Path(p.path).name for p in res.predictions} == good
    assert {Path(f.path).name for f in res.failures} == bad
    assert all(f.reason for f in res.failures)
    assert res.exit_code == 1
    for p in res.predictions:
        assert len(p.top) == 3 and p.top[0]["class"] in CLASSES
        probs = [t["prob"] for t in p.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5
        assert max(p.input_size) <= 512 and min(p.input_size) >= model.min_input_size
    wide = next(p for p in res.predictions if p.path.endswith("wide.png"))
    assert (wide.width, wide.height) == (2000, 90) and wide.input_size[1] == 512  # aspect kept, shrunk


def test_predict_tta_matches_shape(checkpoint: Path, image_folder: tuple[Path, set[str], set[str]]) -> None:
    d, _, _ = image_folder
    model = msresnet.load_model(checkpoint)
    info = model.checkpoint_info
    kw = {"in_chans": 1, "mean": info.mean, "std": info.std, "class_names": CLASSES, "topk": 10}
    plain = predict_files(model, [d / "gray.jpg"], **kw)
    tta = predict_files(model, [d / "gray.jpg"], tta=True, **kw)
    assert plain.exit_code == 0 and tta.exit_code == 0
    assert abs(sum(t["prob"] for t in tta.predictions[0].top) - 1.0) < 1e-4


def test_cli_predict_json_and_exit_codes(
    checkpoint: Path, image_folder: tuple[Path, set[str], set[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    d, good, bad = image_folder
    rc = main(["predict", str(checkpoint), str(d), "--json", "--topk", "2", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 1
    data = json.loads(out)
    assert {Path(r["path"]).name for r in data["results"]} == good
    assert {Path(e["path"]).name for e in data["errors"]} == bad
    for name in bad:
        assert name in err
    assert "Traceback" not in err

    rc = main(["predict", str(checkpoint), str(d / "rgb.png"), "--device", "cpu"])
    out, err = capsys.readouterr()
    # an fmnist-ls model: the image is fitted to the 28-px object and centred on the 64-px training canvas
    assert rc == 0 and "rgb.png (53x37 -> 64x64)" in out and "1. class" in out
    rc = main(["predict", str(checkpoint), str(d / "rgb.png"), "--device", "cpu", "--native-size"])
    out, err = capsys.readouterr()
    assert rc == 0 and "rgb.png (53x37)\n" in out

    rc = main(["predict", str(checkpoint), str(d / "empty.png"), str(d / "nope.png"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 2 and "empty.png" in err and "nope.png" in err and "Traceback" not in err


def test_rgb_checkpoint_converts_grayscale(tmp_path: Path, image_folder: tuple[Path, set[str], set[str]]) -> None:
    d, _, _ = image_folder
    ckpt = make_checkpoint(tmp_path / "rgb.safetensors", in_chans=3)
    model = msresnet.load_model(ckpt)
    res = predict_files(
        model, [d / "gray.jpg", d / "deep16.png"], in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3, class_names=CLASSES
    )
    assert isinstance(res, PredictResult) and res.exit_code == 0 and len(res.predictions) == 2
