"""Reliability across the command line: an image folder with broken files still evaluates (issue 6, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_image_folder
from msresnet.cli import main


def _plant_bad_files(root: Path) -> list[str]:
    """A zero-byte, a non-image and a truncated file among the good ones; returns their names."""
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "dog" / "notes.png").write_bytes(b"this is not an image at all")
    good = (root / "fox" / "0.png").read_bytes()
    (root / "fox" / "truncated.png").write_bytes(good[: len(good) // 2])
    return ["empty.png", "notes.png", "truncated.png"]


def test_evaluate_folder_with_bad_images(tmp_path: Path, tmp_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "images"  # root/train + root/test: the bad files all sit in the test split evaluate reads
    make_image_folder(root / "train", per_class=8, size=(32, 32))
    bad = _plant_bad_files(make_image_folder(root / "test", per_class=4, size=(32, 32)))
    run = tmp_path / "run"
    args = ["--protocol", "folder-res", "--data-dir", str(root), "--protocol-params", "image_size=32"]
    assert main(["train", "--model", "resnet8", *args, "--out", str(run), "--epochs", "1", "--seed", "0"]) == 0
    capsys.readouterr()
    rc = main(["evaluate", str(run)])  # the run's own folder (it records its root)
    out, err = capsys.readouterr()
    assert rc == 1, "some inputs failed: the exit code must say so"
    assert (run / "eval" / "folder-res.json").exists(), "the good images are still evaluated"
    assert "Traceback" not in err
    for name in bad:
        assert name in err, f"{name} is not reported"
