"""What a new user met on a fresh clone with small folders, each pinned by a test: evaluation results kept per
dataset, class names checked wherever a model meets labelled data, a background-consistent fill in the folder scale
sweep, no traceback on a closed pipe, progress and streamed output, the README's Python example, absolute paths in a
run's config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from msresnet.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _folder(root: Path, n: int, seed: int, mode: str = "L", size: int = 32) -> Path:
    """``root/c<k>/<i>.png``: a class-dependent bright square on a noisy background."""
    rng = np.random.default_rng(seed)
    for c in range(3):
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = (rng.random((size, size)) * 40).astype(np.uint8)
            y, x = rng.integers(2, size // 2, 2)
            a[y : y + size // 3, x : x + size // 3] = 90 + 60 * c
            im = Image.fromarray(a)
            (im if mode == "L" else im.convert(mode)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch resnet8 trained on a small generated folder, and two different folders both named ``test``."""
    tmp = tmp_path_factory.mktemp("defects")
    _folder(tmp / "a" / "train", 8, 0)
    _folder(tmp / "a" / "test", 4, 1)
    _folder(tmp / "b" / "test", 5, 2)
    out = tmp / "run"
    rc = main(["train", "--data-dir", str(tmp / "a"), "--model", "resnet8", "--epochs", "1", "--batch-size", "8",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    return out


def test_two_folders_named_test_are_kept_apart_and_never_mixed_in_a_report(run: Path, tmp_path: Path, capsys) -> None:
    a, b = run.parent / "a" / "test", run.parent / "b" / "test"
    assert main(["evaluate", str(run), "--data-dir", str(a)]) == 0
    first = {p.name: p.read_bytes() for p in (run / "eval").iterdir()}
    assert main(["evaluate", str(run), "--data-dir", str(b)]) == 0
    second = {p.name: p.read_bytes() for p in (run / "eval").iterdir()}
    assert all(second[name] == data for name, data in first.items())  # the first evaluation's files untouched
    new = [n for n in second if n not in first and n.endswith(".json")]
    assert len(new) == 1 and json.loads(second[new[0]])["protocol_params"]["root"] == str(b.resolve())
    assert main(["evaluate", str(run), "--data-dir", str(a)]) == 0  # the same data again: replaces its own files
    assert sorted(p.name for p in (run / "eval").iterdir()) == sorted(second)
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    sections = re.findall(r"^## (test.*)$", md, re.M)
    assert sorted(sections) == sorted([f"test ({a.resolve()})", f"test ({b.resolve()})"])
    counts = re.findall(r"test images per condition: (\d+)", md)
    assert sorted(counts) == ["12", "15"]  # each table's header counts its own dataset


def test_a_model_meets_labelled_data_only_with_its_own_classes(run: Path, capsys) -> None:
    capsys.readouterr()
    rc = main(["evaluate", str(run), "--protocol", "fmnist-ls", "--test-limit", "10"])
    err = capsys.readouterr().err
    assert rc == 2 and "classes" in err and "Traceback" not in err
    from msresnet.errors import UserError
    from msresnet.evaluate import require_same_classes

    require_same_classes(["a", "b"], ["a", "b"], "x")
    require_same_classes([], ["a", "b"], "x")  # nothing to compare
    with pytest.raises(UserError, match="index 0"):
        require_same_classes(["b", "a"], ["a", "b"], "x")


def test_folder_scale_sweep_fills_with_the_image_background_not_black() -> None:
    from msresnet.evaluate.folder import border_fill, rescale_on_background

    x = torch.full((2, 3, 32, 32), 0.6)
    x[1] = torch.tensor([0.2, 0.5, 0.9])[:, None, None]
    x[:, :, 12:20, 12:20] = 1.0  # the object
    y = rescale_on_background(x, 0.5)
    assert torch.allclose(y[0, :, 0, 0], torch.full((3,), 0.6)) and torch.allclose(y[1, :, 0, 0], x[1, :, 0, 0])
    assert torch.allclose(border_fill(x)[:, :, 0, 0], x[:, :, 0, 0])
    assert torch.allclose(rescale_on_background(x, 1.0), x, atol=1e-6)  # the image itself is left as it is
    assert y[0, 0, 16, 16] > 0.9  # the shrunk object is still at the centre


def test_predict_streams_and_a_closed_pipe_is_no_traceback(run: Path) -> None:
    images = run.parent / "a" / "test"
    cmd = f"'{sys.executable}' -m msresnet predict '{run}' '{images}' | head -1"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert r.stdout.count("\n") == 1 and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr
    from msresnet.commands.predict import predict_checkpoint

    seen: list[str] = []
    result = predict_checkpoint(run, [str(images)], device="cpu", batch_size=4, on_prediction=lambda p: seen.append(
        p.path))  # fmt: skip
    assert seen == [p.path for p in result.predictions] and len(seen) == 12  # each as it is made, in input order


def test_evaluate_shows_progress_per_condition(run: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data-dir", str(run.parent / "a" / "test"), "--sweep", "scale"]) == 0
    err = capsys.readouterr().err
    assert len(re.findall(r"evaluated condition \d+/9", err)) == 9


def test_config_yaml_stores_absolute_paths_so_it_reproduces_the_run(run: Path) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert Path(cfg["data_root"]).is_absolute() and Path(cfg["data_root"]) == (run.parent / "a").resolve()
    assert Path(cfg["out"]).is_absolute()
    from msresnet.engine.config import TrainConfig, to_yaml

    text = to_yaml(TrainConfig(model="resnet8", data_root="rel/data", out="runs/x"))
    assert yaml.safe_load(text)["data_root"] == str(Path("rel/data").resolve())


def test_readme_python_blocks_run_as_written(tmp_path: Path) -> None:
    """Every ```python block of the README, each in a fresh interpreter in an empty directory."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for i, block in enumerate(blocks):
        r = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"README python block {i + 1}: {r.stderr.strip().splitlines()[-1:]}"


def test_scan_flags_a_freshly_wrapped_estimator_as_untrained() -> None:
    from msresnet.scan.report import scan_title
    from msresnet.scan.sources import load_source, wrapped_source

    src = load_source("timm:resnet10t", num_classes=3, in_chans=1, data_stats=((0.5,), (0.25,)))
    src.random_init = False  # as if trained weights were loaded: only the wrapper is new
    canonical = wrapped_source(src, "canonical")
    assert canonical.untrained_wrapper > 0 and any("UNTRAINED WRAPPER" in n for n in canonical.notes)
    assert "(untrained wrapper)" in scan_title([canonical])
    assert src.untrained_wrapper == 0 and "untrained" not in scan_title([src])
