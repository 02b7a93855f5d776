"""Own images end to end: train --data-dir on a plain folder, the stored preprocessing, predict / evaluate / the
Python API / ONNX agreeing on raw images, benchmark geometry recorded, and the user's bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import msresnet
from msresnet.cli import main
from msresnet.data import build_protocol
from msresnet.data.folder import BadImageWarning
from msresnet.data.imagefolder import MixedModesWarning, SmallClassWarning
from msresnet.engine.checkpoint import read_checkpoint_info
from msresnet.engine.config import TrainConfig, load_train_config
from msresnet.errors import UserError
from msresnet.preprocess import Preprocess, preprocess_for_protocol, preprocess_from_info

CLASSES = ("bag", "boot", "coat")


def write_folder(root: Path, per_class: int, sizes=((24, 24),), mode: str = "L", seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: a bright class-dependent bar on black (learnable), sizes cycling over ``sizes``."""
    rng = np.random.default_rng(seed)
    for ci, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            a = rng.integers(0, 40, (h, w), dtype=np.uint8)
            if ci == 0:
                a[h // 3 : 2 * h // 3, :] = 230
            elif ci == 1:
                a[:, w // 3 : 2 * w // 3] = 230
            else:
                a[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 230
            im = Image.fromarray(a)
            (im if mode == "L" else im.convert(mode)).save(root / name / f"{i}.png")
    return root


def _train(tmp: Path, data: Path, *extra: str, name: str = "run") -> tuple[int, Path]:
    run = tmp / name
    rc = main(["train", "--data-dir", str(data), "--model", "resnet8", "--epochs", "1", "--batch-size", "16",
               "--out", str(run), *extra])  # fmt: skip
    return rc, run


def _predict(run: Path, images: Path, capsys: pytest.CaptureFixture) -> dict[str, tuple[str, int]]:
    capsys.readouterr()
    assert main(["predict", str(run), str(images), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    return {str(Path(r["path"]).resolve()): (r["top"][0]["class"], r["top"][0]["index"]) for r in out["results"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A plain-folder run (DIR/train + DIR/test, 24x24 grayscale) trained through the CLI."""
    base = tmp_path_factory.mktemp("own")
    mp = pytest.MonkeyPatch()
    mp.setenv("MSRESNET_CACHE", str(base / "cache"))
    data = base / "data"
    write_folder(data / "train", 12)
    write_folder(data / "test", 4, seed=1)
    rc, run = _train(base, data)
    assert rc == 0
    yield {"base": base, "data": data, "run": run}
    mp.undo()


def test_metadata_records_the_folder_and_its_preprocessing(trained: dict[str, Path]) -> None:
    info = read_checkpoint_info(trained["run"])
    assert info.protocol == "folder" and info.class_names == list(CLASSES)
    prep = Preprocess.from_dict(info.preprocess)
    assert (prep.mode, prep.policy, prep.input_size) == ("L", "native", (24, 24))
    assert prep.mean == tuple(info.mean) and prep.std == tuple(info.std)
    assert Preprocess.from_dict(json.loads(json.dumps(prep.to_dict()))) == prep
    assert preprocess_from_info(info) == prep
    model = msresnet.load_model(str(trained["run"]))
    assert model.preprocess == prep and model.class_names == list(CLASSES)


def test_predict_agrees_with_evaluate_on_the_same_folder(trained: dict[str, Path], capsys) -> None:
    pred = _predict(trained["run"], trained["data"] / "test", capsys)
    acc = np.mean([Path(p).parent.name == c for p, (c, _) in pred.items()])
    out = trained["base"] / "eval-out"
    assert main(["evaluate", str(trained["run"]), "--data-dir", str(trained["data"] / "test"), "--out", str(out)]) == 0
    result = json.loads((out / "eval" / "test.json").read_text())
    assert result["conditions"] == [1.0] and result["n_per_condition"] == len(pred)
    assert result["accuracy"][0] == pytest.approx(acc)
    # the run's own test split (no --data-dir) is the same images
    assert main(["evaluate", str(trained["run"]), "--out", str(out)]) == 0
    assert json.loads((out / "eval" / "folder.json").read_text())["accuracy"][0] == pytest.approx(acc)


def test_python_api_and_onnx_agree_with_predict(trained: dict[str, Path], capsys) -> None:
    ort = pytest.importorskip("onnxruntime")
    pred = _predict(trained["run"], trained["data"] / "test", capsys)
    model = msresnet.load_model(str(trained["run"]))
    onnx_path = trained["base"] / "m.onnx"
    assert main(["export", str(trained["run"]), "--out", str(onnx_path)]) == 0
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for f, (_, index) in pred.items():
        im = Image.open(f)
        with torch.no_grad():
            assert int(model(model.preprocess(im).unsqueeze(0)).argmax(1)) == index
        raw = np.asarray(im.convert("L"), np.float32)[None, None] / 255.0
        assert int(sess.run(None, {"images": raw})[0].argmax(1)[0]) == index


def test_scale_and_resolution_sweeps_of_a_folder(trained: dict[str, Path]) -> None:
    test, out = trained["data"] / "test", trained["base"] / "sweeps"
    assert main(["evaluate", str(trained["run"]), "--data-dir", str(test), "--sweep", "scale", "--out", str(out)]) == 0
    scale = json.loads((out / "eval" / "test-scale.json").read_text())
    assert len(scale["conditions"]) == 9 and scale["train_condition"] == 1.0 and scale["retention"] is not None
    assert (out / "eval" / "test-scale.png").exists()
    plain = main(["evaluate", str(trained["run"]), "--data-dir", str(test), "--out", str(out)])
    assert plain == 0
    assert scale["accuracy"][4] == json.loads((out / "eval" / "test.json").read_text())["accuracy"][0]
    assert main(["evaluate", str(trained["run"]), "--data-dir", str(test), "--sweep", "resolution",
                 "--out", str(out)]) == 0  # fmt: skip
    res = json.loads((out / "eval" / "test-resolution.json").read_text())
    assert res["condition_name"] == "size" and 24 in res["conditions"] and res["train_condition"] == 24


def test_mixed_sizes_are_fitted_and_stated(tmp_path: Path, tmp_cache: Path, capsys) -> None:
    data = write_folder(tmp_path / "mixed", 8, sizes=((30, 20), (20, 26), (24, 24)), mode="RGB")
    rc, run = _train(tmp_path, data, "--input-size", "16")
    assert rc == 0
    assert "shorter side to 16 px + centre crop 16x16" in capsys.readouterr().err
    prep = msresnet.load_model(str(run)).preprocess
    assert (prep.policy, prep.size, prep.mode) == ("resize", 16, "RGB")  # RGB files: an RGB model
    im = Image.open(next((data / "bag").glob("*.png")))
    as_float = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    pil, tensor = prep.to_unit(im), prep.to_unit(as_float)
    assert pil.shape == tensor.shape == (3, 16, 16) and (pil - tensor).abs().mean() < 0.05
    # the fit is inside the ONNX graph: any image size in, verified against the eager model at three sizes
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx")]) == 0


def test_benchmark_protocols_record_their_geometry(tmp_path: Path, tmp_cache: Path, tiny_fmnist_root: Path) -> None:
    """A raw image of the kind a protocol is made from becomes exactly that protocol's training-scale input."""
    data = tmp_path / "ls"
    write_folder(data / "train", 6, sizes=((40, 30),))
    write_folder(data / "test", 2, sizes=((40, 30),), seed=1)
    ls = build_protocol("folder-ls", root=data, image_size=16, mode="L")
    prep = preprocess_for_protocol(ls, ls.mean, ls.std)
    assert (prep.policy, prep.size, prep.canvas) == ("canvas", 16, tuple(ls.input_size))
    files = sorted((data / "test").rglob("*.png"))
    for i, f in enumerate(files):
        assert torch.equal(prep.to_unit(Image.open(f)), ls.test[1.0].images[i].float() / 255)
    fm = build_protocol("fmnist-ls", root=tiny_fmnist_root, limit=4, val_size=50)
    prep = preprocess_for_protocol(fm, fm.mean, fm.std)
    from msresnet.data.idx import load_idx_arrays

    raw = load_idx_arrays("fashion-mnist", str(tiny_fmnist_root))["test"][0]
    for i in range(4):
        got = prep.to_unit(Image.fromarray(raw[i]))
        assert got.shape == (1, 64, 64) and torch.equal(got, fm.test[1.0].images[i].float() / 255)


def test_default_protocol_and_folder_options() -> None:
    assert TrainConfig(data_root="x").protocol == "folder" and TrainConfig().protocol == "fmnist-ls"
    from msresnet.engine.config import protocol_kwargs

    cfg = load_train_config(None, {"model": "resnet8", "out": "r", "protocol": "folder-ls", "input_size": 20})
    assert protocol_kwargs(cfg) == {"image_size": 20}
    cfg = load_train_config(None, {"model": "resnet8", "out": "r", "mode": "L"})
    with pytest.raises(UserError, match="apply to image folders"):
        protocol_kwargs(cfg)


# ------------------------------------------------------------------------------------------------------- bad data


def test_class_folder_without_readable_image_is_one_line_exit_2(tmp_path: Path, tmp_cache: Path, capsys) -> None:
    data = write_folder(tmp_path / "d", 4)
    (data / "zebra").mkdir()
    (data / "zebra" / "a.png").write_bytes(b"not a png")
    rc, _ = _train(tmp_path, data)
    err = capsys.readouterr().err
    assert rc == 2 and "zebra has no readable image" in err and "Traceback" not in err
    (data / "zebra" / "a.png").unlink()
    rc, _ = _train(tmp_path, data, name="run2")
    assert rc == 2 and "zebra has no image files" in capsys.readouterr().err


def test_unknown_test_classes_are_refused(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    other = write_folder(tmp_path / "other", 2)
    (other / "bag").rename(other / "zebra")
    assert main(["evaluate", str(trained["run"]), "--data-dir", str(other)]) == 2
    assert "classes the model does not know: zebra" in capsys.readouterr().err
    data = tmp_path / "split"
    write_folder(data / "train", 3)
    write_folder(data / "test", 1)
    (data / "test" / "bag").rename(data / "test" / "zebra")
    with pytest.raises(UserError, match="lacks: zebra"):
        build_protocol("folder", root=data)


def test_mixed_modes_one_image_classes_and_bad_files_are_named(tmp_path: Path, tmp_cache: Path) -> None:
    data = write_folder(tmp_path / "d", 6)
    Image.new("RGB", (24, 24), (200, 10, 10)).save(data / "coat" / "red.png")
    (data / "solo").mkdir()
    Image.new("L", (24, 24), 128).save(data / "solo" / "only.png")
    (data / "bag" / "broken.png").write_bytes(b"\x89PNG truncated")
    with pytest.warns(MixedModesWarning, match="grayscale and 1 colour"), pytest.warns(SmallClassWarning, match="solo"):
        p = build_protocol("folder", root=data)
    assert p.in_chans == 3 and p.class_names[-1] == "solo"
    with pytest.warns(BadImageWarning, match="broken.png"):
        train = p.train
    assert (train.labels == p.class_names.index("solo")).sum() == 1  # the single image is kept for training
    assert build_protocol("folder", root=data, mode="L").in_chans == 1


def test_bad_files_in_an_evaluated_folder_are_named(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    test = write_folder(tmp_path / "t-0.5x", 2)  # a dotted name keeps its eval file name
    (test / "bag" / "empty.png").write_bytes(b"")
    (test / "coat" / "notes.png").write_text("not an image")
    rc = main(["evaluate", str(trained["run"]), "--data-dir", str(test), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "empty.png" in err and "notes.png" in err and "Traceback" not in err
    assert json.loads((tmp_path / "eval" / "t-0.5x.json").read_text())["n_per_condition"] == 6


def test_nothing_to_train_on_is_exit_2(tmp_path: Path, tmp_cache: Path, tiny_fmnist_root: Path, capsys) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    rc, _ = _train(tmp_path, tmp_path / "empty")
    err = capsys.readouterr().err
    assert rc == 2 and "no image files" in err
    rc, _ = _train(tmp_path, tiny_fmnist_root, name="idx")
    assert rc == 2 and "pass --protocol fmnist-ls" in capsys.readouterr().err


def test_the_canonical_default_trains_predicts_and_exports_on_a_folder(tmp_path: Path, tmp_cache: Path, capsys):
    """The README's own-data example with the default kind of model: canonicalisation on an RGB folder, then
    predict on images of another size and an ONNX export that agrees with PyTorch."""
    ort = pytest.importorskip("onnxruntime")
    data = write_folder(tmp_path / "rgb", 8, sizes=((32, 32),), mode="RGB")
    run = tmp_path / "canon"
    rc = main(["train", "--data-dir", str(data), "--model", msresnet.DEFAULT_MSRESNET.replace("20", "8"),
               "--epochs", "1", "--batch-size", "8", "--out", str(run)])  # fmt: skip
    assert rc == 0
    model = msresnet.load_model(str(run))
    assert model.preprocess.mode == "RGB" and hasattr(model, "estimate_scale")
    big = write_folder(tmp_path / "big", 1, sizes=((48, 40),), mode="RGB", seed=3)
    pred = _predict(run, big, capsys)
    assert len(pred) == len(CLASSES)
    onnx_path = tmp_path / "canon.onnx"
    assert main(["export", str(run), "--out", str(onnx_path)]) == 0
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 32, 32)  # the exported graph takes [0, 1] pixels and normalises inside
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (model.preprocess.mean, model.preprocess.std))
    with torch.no_grad():
        ref = model((x - mean) / std).numpy()
    np.testing.assert_allclose(sess.run(None, {"images": x.numpy()})[0], ref, rtol=1e-3, atol=1e-3)
