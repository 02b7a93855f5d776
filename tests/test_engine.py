"""Training engine end to end on a tiny fake protocol: run directory, checkpoints, evaluation, failure modes."""

from __future__ import annotations

import json
import os
import pickle

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from safetensors.torch import save as st_save

import msresnet
from engine_fakes import base_config, fake_protocol, install
from msresnet.engine import checkpoint as ckpt
from msresnet.engine.checkpoint import CheckpointWriteError, load_model, read_checkpoint_info
from msresnet.engine.config import load_train_config
from msresnet.engine.evaluate import evaluate_scales, evaluate_sweep, write_eval
from msresnet.engine.train import NonFiniteError, train
from msresnet.errors import UserError

TINY = {"protocol_params": {"n_train": 160}, "batch_size": 32}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One 2-epoch run shared by the read-only tests of this module."""
    out = tmp_path_factory.mktemp("run") / "r"
    with pytest.MonkeyPatch.context() as mp:
        install(mp)
        torch.set_num_threads(1)
        train(load_train_config(None, base_config(out, **TINY)))
    return out


def test_run_directory_layout(run_dir):
    assert (run_dir / "config.yaml").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"] == "resnet8" and saved["provenance"]["protocol_checksum"] == "fake-checksum"
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    assert {"step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "seconds"} <= set(metrics)
    for name in ("last", "best"):
        assert (run_dir / "checkpoints" / f"{name}.safetensors").is_file()
        state = torch.load(run_dir / "checkpoints" / f"{name}.state.pt", weights_only=True)
        assert {"optimizer", "model", "rng", "aug_rng", "epoch", "global_step"} <= set(state)
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))  # no temp files left behind


def test_checkpoint_info_and_load_model(run_dir):
    info = read_checkpoint_info(run_dir)
    assert info.model == "resnet8" and info.num_classes == 4 and info.in_chans == 1
    assert info.class_names == ["bar0", "bar1", "bar2", "bar3"]
    assert info.protocol == "fake" and info.train_condition == 1.0 and info.input_size == (32, 32)
    model = msresnet.load_model(run_dir)
    assert not model.training and model.checkpoint_info.model == "resnet8"
    weights = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    last = load_model(run_dir / "checkpoints" / "last.safetensors")
    assert all(torch.equal(v, weights[k]) for k, v in last.state_dict().items())


def test_checkpoint_from_before_the_confidence_default_loads_its_softmax_head(tmp_path):
    """msresnet* checkpoints written while the head was the softmax over levels record no scale_pool: the
    softmax temperature in the weights says which head to rebuild (and evaluation matches the model saved)."""
    torch.manual_seed(0)
    old = msresnet.create_model("msresnet8", num_classes=4, in_chans=1, width=0.25, scale_pool="softmax").eval()
    info = ckpt.CheckpointInfo(model="msresnet8", num_classes=4, in_chans=1, model_kwargs={"width": 0.25})
    # the tensor names of then (one flat ResNet: no "trunk." prefix, the head was "scale_pool")
    flat = {k.replace("trunk.", "", 1).replace("head.", "scale_pool.", 1): v for k, v in old.state_dict().items()}
    data = st_save({k: v.contiguous() for k, v in flat.items()}, metadata={ckpt.META_KEY: info.to_json()})
    (tmp_path / "old.safetensors").write_bytes(data)
    loaded = load_model(tmp_path / "old.safetensors")
    assert loaded.head.name == "softmax"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), old(x))


def test_wrong_architecture_is_refused(run_dir):
    with pytest.raises(UserError, match="is for model resnet8, not resnet14"):
        load_model(run_dir, model="resnet14")
    with pytest.raises(UserError, match="does not exist"):
        load_model(run_dir / "does-not-exist.safetensors")
    with pytest.raises(UserError, match="no checkpoint in"):
        load_model(run_dir.parent)
    foreign = run_dir.parent / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="no msresnet metadata"):
        read_checkpoint_info(foreign)


def test_evaluate_sweep_and_write_eval(run_dir, tmp_path):
    model = load_model(run_dir)
    protocol = fake_protocol()
    result = evaluate_sweep(model, protocol, info=model.checkpoint_info, test_limit=20, batch_size=16)
    assert result["conditions"] == [0.5, 1.0, 2.0]
    assert len(result["accuracy"]) == 3 and all(0 <= a <= 1 for a in result["accuracy"])
    assert result["worst"] == min(result["accuracy"])
    assert result["mean"] == pytest.approx(sum(result["accuracy"]) / 3)
    assert result["n_per_condition"] == 20
    if result["accuracy_at_train"]:
        assert result["retention"] == pytest.approx(result["worst"] / result["accuracy"][1])
    tta = evaluate_sweep(model, protocol, info=model.checkpoint_info, test_limit=20, tta=True)
    assert tta["tta"] is True and len(tta["accuracy"]) == 3
    written = write_eval(tmp_path, result)
    assert (tmp_path / "eval" / "fake.json") in written and (tmp_path / "eval" / "fake.csv") in written
    loaded = json.loads((tmp_path / "eval" / "fake.json").read_text())
    assert loaded["worst"] == result["worst"] and "retention" in loaded
    assert len(pd.read_csv(tmp_path / "eval" / "fake.csv")) == 3


def test_evaluate_scales_per_level_accuracy(run_dir):
    """One accuracy (a count over the same stratified images) per pyramid level and condition; a model without a
    scale axis is refused by name."""
    protocol = fake_protocol()
    torch.manual_seed(0)
    model = msresnet.create_model("msresnet8", num_classes=4, in_chans=1, width=0.25, scale_pool="avg")
    result = evaluate_scales(model, protocol, test_limit=20, batch_size=8)
    assert result["conditions"] == [0.5, 1.0, 2.0]
    assert result["scales"] == [model.pyramid.kept_scales((32, 32))] * 3
    assert all(len(a) == len(result["scales"][0]) == 5 for a in result["accuracy"])  # 32, 23, 16, 11, 8 px
    assert all(0 <= v <= 1 and v * 20 == pytest.approx(round(v * 20)) for a in result["accuracy"] for v in a)
    with pytest.raises(UserError, match="no forward_scales"):
        evaluate_scales(torch.nn.Identity(), protocol)


@pytest.mark.parametrize("scale_pool", ["confidence", "softmax"])
def test_sweep_with_per_scale_is_one_pass_with_the_same_numbers(scale_pool: str) -> None:
    """``per_scale=True`` reports the pooled accuracy of a plain sweep and the per-level one of evaluate_scales,
    from one trunk pass (forward_with_scales returns exactly the model's logits and forward_scales' logits)."""
    protocol = fake_protocol()
    torch.manual_seed(0)
    model = msresnet.create_model("msresnet8", num_classes=4, in_chans=1, width=0.25, scale_pool=scale_pool).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        logits, levels = model.forward_with_scales(x)
        assert torch.equal(logits, model(x)) and torch.equal(levels, model.forward_scales(x))
    both = evaluate_sweep(model, protocol, test_limit=20, batch_size=8, per_scale=True)
    assert both["accuracy"] == evaluate_sweep(model, protocol, test_limit=20, batch_size=8)["accuracy"]
    assert both["per_scale"] == evaluate_scales(model, protocol, test_limit=20, batch_size=8)
    with_tta = evaluate_sweep(model, protocol, test_limit=20, batch_size=8, per_scale=True, tta=True)
    assert with_tta["per_scale"]["accuracy"] == both["per_scale"]["accuracy"]


def test_existing_run_needs_resume(run_dir, monkeypatch):
    install(monkeypatch)
    with pytest.raises(UserError, match="pass --resume"):
        train(load_train_config(None, base_config(run_dir, **TINY)))
    with pytest.raises(UserError, match="cannot resume .* model='resnet8'|trained with model"):
        train(load_train_config(None, base_config(run_dir, **{**TINY, "model": "resnet14", "resume": True})))


def test_planted_pickle_is_refused(run_dir, tmp_path, monkeypatch):
    """A malicious pickle in place of the training state is refused by name and never executed."""
    install(monkeypatch)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(copy / "checkpoints" / "last.state.pt", "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(UserError, match=r"refusing training state .*last\.state\.pt"):
        train(load_train_config(None, base_config(copy, **{**TINY, "epochs": 3, "resume": True})))
    assert not marker.exists()


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    """Weights poisoned after step 3 make step 4's loss NaN: stop naming the step, keep the step-3 checkpoint."""
    install(monkeypatch)
    real_create = msresnet.create_model
    made = {}

    def create(*a, **k):
        made["model"] = real_create(*a, **k)
        return made["model"]

    monkeypatch.setattr(msresnet, "create_model", create)

    def poison(step):
        if step == 3:
            with torch.no_grad():
                next(made["model"].parameters()).fill_(float("nan"))

    out = tmp_path / "nan"
    cfg = load_train_config(None, base_config(out, **TINY, checkpoint_every=1))
    with pytest.raises(NonFiniteError, match=r"non-finite loss .* at step 4 \(epoch 1, batch 4\)"):
        train(cfg, on_step=poison)
    state = ckpt.load_state(out / "checkpoints" / "last.state.pt")
    assert state["global_step"] == 3
    weights = load_file(str(out / "checkpoints" / "last.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_nan_policy_skip(tmp_path, monkeypatch):
    """With nan_policy=skip a single bad step is skipped and training goes on."""
    install(monkeypatch)
    real_ce = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def flaky_ce(logits, y, **kw):
        calls["n"] += 1
        loss = real_ce(logits, y, **kw)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr("msresnet.engine.train.F.cross_entropy", flaky_ce)
    out = tmp_path / "skip"
    train(load_train_config(None, base_config(out, **TINY, epochs=1, nan_policy="skip")))
    assert len(pd.read_csv(out / "metrics.csv")) == 1


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """A write failing mid-run (ENOSPC) is a clear error and the epoch-1 checkpoint stays intact and loadable."""
    install(monkeypatch)
    out = tmp_path / "full"
    real_replace = os.replace

    def full_after_epoch_1(epoch, row):
        def no_space(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", no_space)

    cfg = load_train_config(None, base_config(out, **TINY, epochs=2))
    with pytest.raises(CheckpointWriteError, match="No space left on device; the previous checkpoint is intact"):
        train(cfg, on_epoch=full_after_epoch_1)
    monkeypatch.setattr(os, "replace", real_replace)
    assert ckpt.load_state(out / "checkpoints" / "last.state.pt")["epoch"] == 1
    assert read_checkpoint_info(out).epoch == 1
    load_model(out)
    assert not list((out / "checkpoints").glob(".*tmp*"))


def test_tensorboard_and_terminal_progress(tmp_path, monkeypatch, capsys):
    """TensorBoard event files are written; the rich progress bar path runs when stderr is a terminal."""
    from msresnet.engine import progress

    install(monkeypatch)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    out = tmp_path / "tb"
    train(load_train_config(None, base_config(out, **TINY, epochs=1, tensorboard=True, log_every=1)))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "epoch 1/1: train_loss" in capsys.readouterr().err
