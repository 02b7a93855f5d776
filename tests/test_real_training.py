"""Training with the backbones users already have: ``timm:NAME`` trunks, local pretrained weights, the lower trunk
learning rate, and the command-line conventions (``--workers``/``--threads``, defaults in ``--help``, no
abbreviations)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import msresnet
from msresnet.cli import main
from msresnet.engine.config import TrainConfig, load_train_config, model_build_kwargs
from msresnet.engine.optim import build_optimizer, set_lr
from msresnet.errors import UserError
from msresnet.models.pretrained import PretrainedMismatchError


def _save(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(3)
    m = timm.create_model("resnet10t", num_classes=7, in_chans=3)
    return m, _save(m, tmp_path_factory.mktemp("w") / "w.safetensors")


def test_timm_model_gets_the_default_wrapper_and_its_options() -> None:
    m = msresnet.create_model("timm:resnet10t", num_classes=3, in_chans=1)
    assert type(m).__name__ == type(msresnet.create_model(msresnet.DEFAULT_MSRESNET)).__name__
    assert m(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    p = msresnet.create_model("timm:resnet10t", num_classes=3, wrap="pyramid", head="max", drop_rate=0.25)
    assert type(p).__name__ == "PyramidClassifier" and p.head.name == "max" and p.trunk.drop_rate == 0.25
    bare = msresnet.create_model("timm:resnet10t", num_classes=3, wrap="none")
    assert type(bare).__name__ == "ResNet" and bare.num_classes == 3


def test_unknown_timm_model_and_option_are_user_errors() -> None:
    with pytest.raises(UserError, match="did you mean 'timm:resnet18'"):
        msresnet.create_model("timm:resnet19")
    with pytest.raises(UserError, match="no_such_option"):
        msresnet.create_model("timm:resnet10t", wrap="none", no_such_option=1)
    with pytest.raises(UserError, match="local file"):
        msresnet.create_model("timm:resnet10t", pretrained=True)


@pytest.mark.parametrize("wrap", ["none", "canonical"])
def test_pretrained_file_loads_trunk_and_reinitialises_classifier(weights, wrap: str) -> None:
    src, file = weights
    m = msresnet.create_model("timm:resnet10t", num_classes=4, in_chans=3, wrap=wrap, pretrained=True,
                              pretrained_cfg_overlay={"file": str(file)})  # fmt: skip
    trunk = getattr(m, "trunk", m)
    assert torch.equal(trunk.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    assert trunk.fc.weight.shape == (4, src.fc.weight.shape[1])
    assert "classifier re-initialised (7 classes in the file, 4 here)" in m.pretrained_note


def test_pretrained_file_adapts_input_channels_and_reads_weights_only_files(weights, tmp_path: Path) -> None:
    src, _ = weights
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": src.state_dict()}, pth)
    m = msresnet.create_model("timm:resnet10t", num_classes=7, in_chans=1, wrap="none", pretrained=True,
                              pretrained_cfg_overlay={"file": str(pth)})  # fmt: skip
    # timm's adapt_input_conv: RGB filters summed into one grey channel; the classifier kept (same class count)
    assert torch.allclose(m.conv1[0].weight, src.conv1[0].weight.sum(1, keepdim=True))
    assert torch.equal(m.fc.weight, src.fc.weight)


def test_pretrained_mismatch_is_one_line_naming_tensors(weights) -> None:
    _, file = weights
    with pytest.raises(PretrainedMismatchError) as e:
        msresnet.create_model("timm:resnet14t", num_classes=4, pretrained=True,
                              pretrained_cfg_overlay={"file": str(file)})  # fmt: skip
    msg = str(e.value)
    assert "\n" not in msg and "does not fit timm:resnet14t" in msg and "layer1.0.conv1.weight" in msg


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(UserError, match="cannot read pretrained weights"):
        msresnet.create_model("timm:resnet10t", pretrained=True, pretrained_cfg_overlay={"file": str(bad)})


def test_own_model_from_a_wrapped_run_checkpoint_takes_the_trunk(tmp_path: Path) -> None:
    torch.manual_seed(0)
    wrapped = msresnet.create_model("msresnet8_canonical", num_classes=10, in_chans=1)
    file = _save(wrapped, tmp_path / "run.safetensors")
    m = msresnet.create_model("resnet8", num_classes=5, in_chans=3, pretrained=True,
                              pretrained_cfg_overlay={"file": str(file)})  # fmt: skip
    assert torch.allclose(m.stem.conv.weight, wrapped.trunk.stem.conv.weight.expand(-1, 3, -1, -1) / 3)
    assert "tensors of the file's scale wrapper not used" in m.pretrained_note


def test_trunk_lr_scale_gives_the_classifier_the_full_rate() -> None:
    m = msresnet.create_model("timm:resnet10t", num_classes=3, wrap="canonical")
    cfg = TrainConfig(model="timm:resnet10t", out="x", trunk_lr_scale=0.1)
    opt = build_optimizer(m, cfg)
    set_lr(opt, 1.0)
    head = {id(p) for p in m.get_classifier().parameters()}
    for g in opt.param_groups:
        want = 1.0 if all(id(p) in head for p in g["params"]) else 0.1
        assert g["lr"] == pytest.approx(want)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.parameters()))


def test_checkpoint_records_how_to_rebuild() -> None:
    cfg = TrainConfig(model="timm:resnet10t", out="x", model_kwargs={"drop_rate": 0.1})
    assert model_build_kwargs(cfg) == {"drop_rate": 0.1, "wrap": msresnet.DEFAULT_WRAP}
    assert model_build_kwargs(TrainConfig(model="resnet8", out="x")) == {}


def test_help_shows_defaults_and_abbreviations_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: 128)" in out and "(default: adamw)" in out and "--workers" in out and "--threads" in out
    assert main(["evaluate", "--help"]) == 0
    assert "(default: auto)" in capsys.readouterr().out
    assert main(["train", "--model", "resnet8", "--out", "x", "--check", "5"]) == 2
    assert "unrecognized arguments: --check" in capsys.readouterr().err


def test_num_workers_is_a_deprecated_alias_of_threads() -> None:
    with pytest.warns(UserWarning, match="'num_workers' is deprecated"):
        cfg = load_train_config(None, {"model": "resnet8", "out": "x", "num_workers": 3})
    assert cfg.threads == 3 and cfg.workers == TrainConfig.workers
    with pytest.warns(UserWarning):
        cfg = load_train_config(None, {"model": "resnet8", "out": "x", "num_workers": 3, "threads": 1})
    assert cfg.threads == 1


def test_timm_run_reloads_with_its_wrapper_and_pretrained_trunk(weights, tmp_path: Path) -> None:
    """A timm run records how to rebuild its model: load_model gives the same wrapper, weights and outputs."""
    import numpy as np
    from PIL import Image

    from msresnet.engine.config import load_train_config
    from msresnet.engine.train import train

    rng = np.random.default_rng(0)
    for c in range(2):
        d = tmp_path / "data" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(10):
            a = (rng.random((28, 28, 3)) * 80).astype(np.uint8)
            a[8:20, 8:20, c] = 230
            Image.fromarray(a).save(d / f"{i}.png")
    src, file = weights
    cfg = load_train_config(None, {"model": "timm:resnet10t", "pretrained_file": str(file), "lr": 1e-5,
                                   "data_root": str(tmp_path / "data"), "out": str(tmp_path / "run"), "epochs": 1,
                                   "batch_size": 8, "workers": 0, "device": "cpu"})  # fmt: skip
    train(cfg)
    m = msresnet.load_model(str(tmp_path / "run"))
    assert type(m).__name__ == type(msresnet.create_model(msresnet.DEFAULT_MSRESNET)).__name__
    assert m.checkpoint_info.model == "timm:resnet10t" and m.checkpoint_info.model_kwargs["wrap"] == "canonical"
    # trained a little at a tiny rate: the trunk is still the pretrained one, not a fresh init
    w = m.trunk.layer1[0].conv1.weight.flatten()
    assert torch.corrcoef(torch.stack([w, src.layer1[0].conv1.weight.flatten()]))[0, 1] > 0.99
    x = m.preprocess(Image.open(next((tmp_path / "data" / "c1").iterdir())))
    assert m(x.unsqueeze(0)).shape == (1, 2)
