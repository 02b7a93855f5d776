"""msresnet scan: every model source, bad specs and files as one-line errors, broken images, the report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import msresnet
from msresnet.cli import main
from msresnet.engine.checkpoint import CheckpointInfo, save_weights
from msresnet.scan.data import load_folder
from msresnet.scan.sources import ModelSource
from msresnet.scan.sweep import conditions_for, run_sweeps

CLASSES = ["a", "b", "c", "d"]
QUICK = ["--scales", "0.5,1,2", "--resolutions", "0.5,1,2"]


def _folder(root: Path, n: int = 10, size: int = 32, rgb: bool = False) -> Path:
    """``n`` images per class: a bright square whose size depends on the class, on a black background."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.zeros((size, size), np.uint8)
            half = 3 + 2 * k
            cy, cx = rng.integers(half, size - half, 2)
            a[cy - half : cy + half, cx - half : cx + half] = 200 + rng.integers(0, 55)
            im = Image.fromarray(np.stack([a, a // 2, a], -1) if rgb else a)
            im.save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("scan") / "data")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An msresnet run directory holding an untrained resnet8 saved with the project's checkpoint helper."""
    run = tmp_path_factory.mktemp("run") / "resnet8-run"
    torch.manual_seed(0)
    model = msresnet.create_model("resnet8", num_classes=4, in_chans=1)
    info = CheckpointInfo(model="resnet8", num_classes=4, in_chans=1, class_names=CLASSES, mean=(0.1,), std=(0.3,))
    (run / "checkpoints").mkdir(parents=True)
    save_weights(run / "checkpoints" / "best.safetensors", model, info)
    return run


def _scan(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    rc = main(["scan", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("msresnet: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_scan_msresnet_run_and_report_files(folder: Path, run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "scan"
    rc, stdout, err = _scan(capsys, str(run_dir), "--data-dir", str(folder), "--out", str(out))
    assert rc == 0, err
    assert "report.html" in stdout
    for f in ("report.html", "report.md", "scan.json", "scan.csv"):
        assert (out / f).stat().st_size > 0
    d = json.loads((out / "scan.json").read_text())
    assert d["data"]["images"] == 40 and d["data"]["in_chans"] == 1 and d["data"]["classes"] == CLASSES
    (m,) = d["models"]
    assert m["kind"] == "msresnet" and not m["random_init"] and m["mean"] == [0.1]
    assert "random" not in d["title"]
    assert len(m["sweeps"]["scale"]["conditions"]) == 9 and len(m["sweeps"]["resolution"]["conditions"]) == 7
    for sweep in m["sweeps"].values():
        assert set(sweep["summary"]) >= {"mean_accuracy", "worst_accuracy", "retention"}
        for c in sweep["conditions"]:
            assert 0 <= c["accuracy"] <= 1 and 0 < c["mean_confidence"] <= 1 and 0 <= c["ece"] <= 1
            assert set(c["per_class_accuracy"]) == set(CLASSES) and c["n"] == 40
    sizes = [c["size"][0] for c in m["sweeps"]["resolution"]["conditions"]]
    assert sizes == [16, 24, 32, 48, 64, 96, 128]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "src='figures" not in page
    rows = (out / "scan.csv").read_text().splitlines()
    assert rows[0].startswith("model,sweep,condition") and len(rows) == 1 + 16


def test_scan_timm_random_and_torchvision_overlaid(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "scan"
    rc, _, err = _scan(capsys, "timm:test_resnet", "torchvision:resnet18", "--data-dir", str(folder),
                       "--out", str(out), *QUICK)  # fmt: skip
    assert rc == 0, err
    d = json.loads((out / "scan.json").read_text())
    timm_m, tv_m = d["models"]
    assert timm_m["random_init"] and tv_m["random_init"] and d["title"].count("random weights") == 2
    assert timm_m["in_chans"] == 1 and tv_m["in_chans"] == 1
    assert any("first convolution" in n for n in tv_m["notes"])
    assert [c["factor"] for c in timm_m["sweeps"]["scale"]["conditions"]] == [0.5, 1.0, 2.0]
    assert "random weights" in (out / "report.md").read_text().splitlines()[0]


def test_scan_checkpoints_for_timm_and_torchvision(folder: Path, tmp_path: Path, capsys) -> None:
    import timm
    from safetensors.torch import save_file
    from torchvision.models import get_model

    st = tmp_path / "timm.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=4, in_chans=1).state_dict(), str(st))
    pt = tmp_path / "tv.pt"
    torch.save({"state_dict": get_model("resnet18", weights=None, num_classes=4).state_dict()}, pt)
    out = tmp_path / "scan"
    rc, _, err = _scan(capsys, "timm:test_resnet", "torchvision:resnet18", "--checkpoint", str(st),
                       "--checkpoint", str(pt), "--data-dir", str(folder), "--out", str(out), *QUICK)  # fmt: skip
    assert rc == 0, err
    timm_m, tv_m = json.loads((out / "scan.json").read_text())["models"]
    assert not timm_m["random_init"] and timm_m["mean"] == [0.5]  # timm's pretrained_cfg, reduced to 1 channel
    assert tv_m["in_chans"] == 3 and tv_m["mean"] == pytest.approx([0.485, 0.456, 0.406])  # weights' transforms


def test_checkpoint_class_mismatch_is_one_line(folder: Path, tmp_path: Path, capsys) -> None:
    from torchvision.models import get_model

    pt = tmp_path / "tv10.pt"
    torch.save(get_model("resnet18", weights=None, num_classes=10).state_dict(), pt)
    rc, _, err = _scan(capsys, "torchvision:resnet18", "--checkpoint", str(pt), "--data-dir", str(folder),
                       "--out", str(tmp_path / "o"))  # fmt: skip
    assert "10 classes but the data has 4" in _one_line_error(rc, err)


def test_scan_onnx(folder: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    import timm

    model = timm.create_model("test_resnet", num_classes=4, in_chans=1).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.rand(1, 1, 32, 32),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}}, opset_version=17, dynamo=False)  # fmt: skip
    out = tmp_path / "scan"
    rc, _, err = _scan(capsys, str(path), "--data-dir", str(folder), "--out", str(out), *QUICK)
    assert rc == 0, err
    (m,) = json.loads((out / "scan.json").read_text())["models"]
    assert m["kind"] == "onnx" and m["mean"] is None and m["fixed_input_size"] is None
    with torch.no_grad():  # the ONNX model's accuracy at the native condition matches the eager model's
        x = torch.stack([torch.from_numpy(np.array(Image.open(p))).float()[None] / 255
                         for p in sorted(folder.rglob("*.png"))])  # fmt: skip
        labels = torch.tensor([CLASSES.index(p.parent.name) for p in sorted(folder.rglob("*.png"))])
        eager = (model(x).argmax(1) == labels).float().mean().item()
    native = next(c for c in m["sweeps"]["scale"]["conditions"] if c["factor"] == 1.0)
    assert native["accuracy"] == pytest.approx(eager, abs=1 / 40 + 1e-6)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("timm:no_such_model_xyz", "timm has no model"),
        ("torchvision:no_such_model_xyz", "torchvision has no model"),
        ("does/not/exist", "no such file or directory"),
        ("missing.onnx", "no such ONNX file"),
        ("BAD_ONNX", "not a loadable ONNX model"),
    ],
)
def test_bad_model_spec_is_one_line(spec: str, expected: str, folder: Path, tmp_path: Path, capsys) -> None:
    if spec == "BAD_ONNX":
        pytest.importorskip("onnxruntime")
        spec = str(tmp_path / "garbage.onnx")
        Path(spec).write_bytes(b"this is not a model")
    rc, _, err = _scan(capsys, spec, "--data-dir", str(folder), "--out", str(tmp_path / "o"))
    assert expected in _one_line_error(rc, err)


def test_missing_checkpoint_and_stray_checkpoint(folder: Path, run_dir: Path, tmp_path: Path, capsys) -> None:
    rc, _, err = _scan(capsys, "timm:test_resnet", "--checkpoint", str(tmp_path / "nope.safetensors"),
                       "--data-dir", str(folder), "--out", str(tmp_path / "o"))  # fmt: skip
    assert "does not exist" in _one_line_error(rc, err)
    rc, _, err = _scan(capsys, str(run_dir), "--checkpoint", str(tmp_path / "x.pt"), "--data-dir", str(folder),
                       "--out", str(tmp_path / "o"))  # fmt: skip
    assert "--checkpoint" in _one_line_error(rc, err)
    bad = tmp_path / "pickle.pt"
    torch.save({"weights": object()}, bad)
    rc, _, err = _scan(capsys, "timm:test_resnet", "--checkpoint", str(bad), "--data-dir", str(folder),
                       "--out", str(tmp_path / "o"))  # fmt: skip
    assert "refusing" in _one_line_error(rc, err)


def test_no_data_is_one_line(tmp_path: Path, capsys) -> None:
    rc, _, err = _scan(capsys, "timm:test_resnet", "--out", str(tmp_path / "o"))
    assert "--data-dir" in _one_line_error(rc, err)
    rc, _, err = _scan(capsys, "timm:test_resnet", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path))
    assert "does not exist" in _one_line_error(rc, err)


def test_broken_images_are_named_and_skipped(tmp_path: Path, run_dir: Path, capsys) -> None:
    data = _folder(tmp_path / "data", n=3)
    (data / "a" / "truncated.png").write_bytes((data / "a" / "0.png").read_bytes()[:40])
    (data / "b" / "text.jpg").write_text("not an image")
    out = tmp_path / "scan"
    rc, _, err = _scan(capsys, str(run_dir), "--data-dir", str(data), "--out", str(out), *QUICK)
    assert rc == 0, err
    assert "truncated.png" in err and "text.jpg" in err
    d = json.loads((out / "scan.json").read_text())["data"]
    assert d["images"] == 12 and d["files"] == 14 and len(d["skipped"]) == 2
    assert "text.jpg" in (out / "report.md").read_text()


def test_rgb_folder_and_limit(tmp_path: Path, capsys) -> None:
    data = _folder(tmp_path / "data", n=4, size=24, rgb=True)
    assert load_folder(data).in_chans == 3
    out = tmp_path / "scan"
    rc, _, err = _scan(capsys, "timm:test_resnet", "--data-dir", str(data), "--out", str(out), "--limit", "8",
                       "--input-size", "32", *QUICK)  # fmt: skip
    assert rc == 0, err
    d = json.loads((out / "scan.json").read_text())
    assert d["data"]["images"] == 8 and d["models"][0]["in_chans"] == 3
    assert d["models"][0]["fixed_input_size"] == [32, 32]


class _ScaleAware(nn.Module):
    """A stand-in scale-aware model: classifies by brightness, 'estimates' the object scale from the bright area."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3)), x.amax((1, 2, 3)), -x.amax((1, 2, 3))], 1)

    def estimate_scale(self, x: torch.Tensor) -> torch.Tensor:
        area = (x > 0.3).float().mean((1, 2, 3)).clamp_min(1e-4)
        return (area / 0.1).sqrt()


def test_scale_aware_model_reports_estimated_scale(folder: Path) -> None:
    data = load_folder(folder)
    module = _ScaleAware()
    src = ModelSource("aware", "aware", "msresnet", 4, 1, False, None, None, None, "bilinear", "test",
                      module=module, runner=module, scale_aware=True)  # fmt: skip
    conds = conditions_for(data.size, (0.5, 1.0, 2.0), (1.0,))
    swept = run_sweeps([src], data, conds, batch_size=16, progress=False)
    rows = swept["results"]["aware"]["scale"]
    assert all("scale_log2_error_median" in r for r in rows)
    est = [r["estimated_scale_median"] for r in rows]
    assert est[0] < est[1] < est[2]


def test_predict_prints_object_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from msresnet.predict import format_text, predict_files

    img = tmp_path / "x.png"
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(img)
    model = _ScaleAware()
    model.estimate_scale = lambda x: torch.full((len(x),), 1.8)  # type: ignore[method-assign]
    result = predict_files(model, [img], in_chans=1, mean=(0.0,), std=(1.0,), class_names=CLASSES, topk=2)
    assert result.to_json()["results"][0]["object_scale"] == pytest.approx(1.8)
    assert "object x1.8" in format_text(result)


def test_scan_protocol_test_split(tmp_path: Path, capsys) -> None:
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    out = tmp_path / "scan"
    rc, _, err = _scan(capsys, "timm:test_resnet", "--protocol", "fmnist-ls", "--protocol-param", "limit=30",
                       "--out", str(out), *QUICK)  # fmt: skip
    assert rc == 0, err
    d = json.loads((out / "scan.json").read_text())
    assert d["data"]["native_size"] == [64, 64] and d["data"]["images"] == 30 and len(d["data"]["classes"]) == 10
    assert "fmnist-ls" in d["data"]["source"]
