"""export: ONNX and torch.export (dynamic batch/height/width, normalisation inside), verified against eager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import msresnet
from msresnet import export as export_mod
from msresnet.errors import UserError
from msresnet.export import ExportMismatchError, NormalizedClassifier, export_model

MEAN, STD = (0.3,), (0.4,)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return msresnet.create_model(name, num_classes=10, in_chans=1).eval()


def _smallest(prefix: str) -> str:
    return min((n for n in msresnet.list_models() if n.startswith(prefix)), key=len)


@pytest.mark.parametrize("prefix", ["resnet", "msresnet"])
def test_onnx_export_dynamic_sizes(prefix: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _model(_smallest(prefix))
    out = tmp_path / "m.onnx"
    checks = export_model(model, out, format="onnx", in_chans=1, mean=MEAN, std=STD)
    assert len(checks) == 3 and all(c.ok for c in checks)
    assert {c.size for c in checks} >= {(48, 80), (96, 96)}
    # the graph takes [0, 1] images: normalisation is inside it
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 1, 72, 56)
    (got,) = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = model((x - MEAN[0]) / STD[0]).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(ref).max())))


def test_onnx_export_of_confidence_level_selection(tmp_path: Path) -> None:
    """The evaluation-time choice of the most confident level (argmax, gather) survives export at several sizes."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = msresnet.create_model("msresnet8", num_classes=10, in_chans=1, scale_pool="confidence").eval()
    checks = export_model(model, tmp_path / "m.onnx", format="onnx", in_chans=1, mean=MEAN, std=STD)
    assert len(checks) == 3 and all(c.ok for c in checks)


@pytest.mark.parametrize("prefix", ["resnet", pytest.param("msresnet", marks=pytest.mark.slow)])
def test_pt2_export_dynamic_sizes(prefix: str, tmp_path: Path) -> None:
    model = _model(_smallest(prefix))
    out = tmp_path / "m.pt2"
    checks = export_model(model, out, format="pt2", in_chans=1, mean=MEAN, std=STD)
    assert len(checks) == 3 and all(c.ok for c in checks)
    loaded = torch.export.load(str(out)).module()
    x = torch.rand(1, 1, 70, 90)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model((x - MEAN[0]) / STD[0]), rtol=1e-3, atol=1e-3)


def test_torchscript_is_replaced(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--format pt2"):
        export_model(
            _model(_smallest("resnet")), tmp_path / "m.pt", format="torchscript", in_chans=1, mean=MEAN, std=STD
        )


def test_mismatch_removes_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(export_mod, "RTOL", -1.0)  # nothing can match a negative tolerance
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportMismatchError, match="removed"):
        export_model(_model(_smallest("resnet")), out, format="onnx", in_chans=1, mean=MEAN, std=STD)
    assert not out.exists()


def test_bad_output_paths(tmp_path: Path) -> None:
    model = _model(_smallest("resnet"))
    with pytest.raises(UserError, match="is a directory"):
        export_model(model, tmp_path, format="onnx", in_chans=1, mean=MEAN, std=STD)
    with pytest.raises(UserError, match="does not exist"):
        export_model(model, tmp_path / "no" / "m.onnx", format="onnx", in_chans=1, mean=MEAN, std=STD)
    with pytest.raises(UserError, match="unknown export format"):
        export_model(model, tmp_path / "m.x", format="tflite", in_chans=1, mean=MEAN, std=STD)


def test_normalized_classifier() -> None:
    model = _model(_smallest("resnet"))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(NormalizedClassifier(model, MEAN, STD)(x), model((x - 0.3) / 0.4))


@pytest.mark.parametrize("policy", ["resize", "canvas"])
def test_pt2_export_with_a_fitted_geometry_takes_any_aspect(policy: str, tmp_path: Path) -> None:
    """A run trained on mixed-size images crops the shorter side and resizes inside the graph: the program must
    keep H and W symbolic (not assume the 64x64 example's orientation), so 48x80 and 80x48 both run."""
    from msresnet.preprocess import Preprocess

    prep = Preprocess(
        mode="L", mean=MEAN, std=STD, policy=policy, size=24, canvas=(32, 32) if policy == "canvas" else None
    )
    model = _model("resnet8")
    checks = export_model(model, tmp_path / "m.pt2", format="pt2", in_chans=1, mean=MEAN, std=STD, preprocess=prep)
    assert [c.size for c in checks] == [(64, 64), (48, 80), (96, 96)] and all(c.ok for c in checks)
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = torch.rand(2, 1, 80, 48)
    with torch.no_grad():
        torch.testing.assert_close(program(x), prep.deployable(model).eval()(x), rtol=1e-4, atol=1e-4)


def test_pt2_refusal_is_one_line_pointing_to_onnx(tmp_path: Path) -> None:
    """Where torch.export truly cannot capture a model (a decision on a tensor's value), one line says so."""
    from msresnet.export import ExportUnsupportedError

    class ValueBranch(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) if x.sum() > 0 else -x.mean((2, 3))

    with pytest.raises(ExportUnsupportedError, match="--format onnx") as err:
        export_model(ValueBranch(), tmp_path / "m.pt2", format="pt2", in_chans=1, mean=MEAN, std=STD)
    assert "\n" not in str(err.value) and not (tmp_path / "m.pt2").exists()
