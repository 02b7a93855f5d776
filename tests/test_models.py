"""Every registered model: any input size / channels / batch, gradients everywhere, head reset, feature
extraction, safetensors round trip, timm registry. Small widths keep it fast (see ``_small``)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import msresnet
from msresnet.errors import UserError
from msresnet.models import _timm as timm_bridge
from msresnet.models._registry import register_model

MODELS = msresnet.list_models()
IMAGENET_STEM = {"resnet18", "resnet34"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _small(name: str, **kwargs):
    """The model at a small width: the tests check wiring, not capacity."""
    width = 0.125 if name in IMAGENET_STEM else 0.25
    if name.endswith("_w2"):
        width *= 2
    torch.manual_seed(0)
    return msresnet.create_model(name, width=width, **kwargs)


def test_five_families_registered() -> None:
    for family in ("resnet", "msresnet", "scalechannel", "sesn", "res2net"):
        assert msresnet.list_models(f"{family}*"), family
    assert msresnet.list_models("msresnet2?") == ["msresnet20"]


@pytest.mark.parametrize("name", MODELS)
def test_forward_any_size_channels_batch(name: str) -> None:
    # every size with batch 1 and 4 and 1 and 3 channels between them; None = the model's minimum size
    shapes = {1: [(4, 28, 28), (1, 47, 61)], 3: [(1, 64, 64), (4, None, None)]}
    for in_chans, cases in shapes.items():
        model = _small(name, num_classes=5, in_chans=in_chans).eval()
        side = model.min_input_size
        assert side >= 16
        for batch, h, w in cases:
            h, w = h or side, w or side
            with torch.no_grad():
                out = model(torch.randn(batch, in_chans, h, w))
            assert out.shape == (batch, 5), (in_chans, batch, h, w)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = _small(name, num_classes=4, in_chans=1).train()
    loss = model(torch.randn(2, 1, 32, 32)).logsumexp(1).mean()
    aux = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else None  # what TrainStep adds
    (loss if aux is None else loss + aux).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", MODELS)
def test_head_reset_and_timm_default_cfg_contract(name: str) -> None:
    model = _small(name, num_classes=6, in_chans=3).eval()
    cfg = model.pretrained_cfg
    for key in ("url", "input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "first_conv"):
        assert key in cfg, key
    state = model.state_dict()
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():  # forward == forward_head(forward_features): one trunk pass serves every head check
        feats = model.forward_features(x)
        assert tuple(feats.shape[-2:]) == tuple(cfg["pool_size"])
        model.reset_classifier(3)
        assert model.forward_head(feats).shape == (1, 3) and model.num_classes == 3
        model.reset_classifier(0)
        assert model.forward_head(feats).shape == (1, model.num_features)
        model.reset_classifier(0, "")
        unpooled = model.forward_head(feats)
        assert unpooled.dim() == 4 and tuple(unpooled.shape[-2:]) == tuple(cfg["pool_size"])


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_and_bf16_autocast(name: str) -> None:
    # what the engine does with --channels-last --amp bf16: no 5-D parameter may block the conversion
    model = _small(name, num_classes=3, in_chans=1).to(memory_format=torch.channels_last).train()
    x = torch.rand(2, 1, 24, 20).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert out.shape == (2, 3) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", MODELS)
def test_features_only(name: str) -> None:
    width = 0.125 if name in IMAGENET_STEM else 0.25
    model = msresnet.create_model(name, features_only=True, in_chans=1, width=width).eval()
    info = model.feature_info
    assert len(info.channels()) >= 4
    with torch.no_grad():
        outs = model(torch.randn(2, 1, 40, 36))
    assert len(outs) == len(info.channels())
    for out, chans, red in zip(outs, info.channels(), info.reduction(), strict=True):
        assert out.shape[:2] == (2, chans)
        assert tuple(out.shape[-2:]) == (math.ceil(40 / red), math.ceil(36 / red))
    last2 = msresnet.create_model(name, features_only=True, out_indices=(-2, -1), width=width)
    assert len(last2.feature_info.channels()) == 2


@pytest.mark.parametrize("name", MODELS)
def test_safetensors_round_trip(name: str, tmp_path) -> None:
    model = _small(name, num_classes=3, in_chans=1).eval()
    with torch.no_grad():  # make BN statistics non-trivial so buffers are part of the check
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    torch.manual_seed(123)
    other = msresnet.create_model(name, num_classes=3, in_chans=1, width=0.125 if name in IMAGENET_STEM else 0.25)
    if name.endswith("_w2"):
        other = _small(name, num_classes=3, in_chans=1)
    other.load_state_dict(load_file(tmp_path / "w.safetensors"))
    other.eval()
    x = torch.randn(2, 1, 24, 20)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


@pytest.mark.parametrize("name", [n for n in MODELS if n not in timm_bridge.SKIPPED])
def test_timm_create_model(name: str) -> None:
    assert timm.is_model(name)
    width = 0.5 if name.endswith("_w2") else 0.25
    model = timm.create_model(name, num_classes=3, in_chans=1, width=width).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 20, 20)).shape == (1, 3)
    registered = timm.models.get_pretrained_cfg(name).to_dict()
    own = model.pretrained_cfg
    for key in ("pool_size", "first_conv", "classifier", "crop_pct", "interpolation"):
        assert tuple(registered[key]) == tuple(own[key]) if isinstance(own[key], tuple) else registered[key] == own[key]
    assert registered["input_size"][1:] == own["input_size"][1:]
    feats = timm.create_model(name, features_only=True, in_chans=1, width=width)
    assert len(feats(torch.randn(1, 1, 20, 20))) == len(feats.feature_info.channels())


def test_timm_names_it_already_owns_are_left_alone() -> None:
    assert set(timm_bridge.SKIPPED) == IMAGENET_STEM  # timm's own resnet18/resnet34 keep their meaning
    assert "timm.models.resnet" in type(timm.create_model("resnet18", pretrained=False)).__module__


def test_registry_errors() -> None:
    with pytest.raises(UserError, match="did you mean 'msresnet20'"):
        msresnet.create_model("msresnet_20")
    with pytest.raises(UserError, match="does not take|unexpected keyword"):
        msresnet.create_model("resnet8", pyramid_scale=(1, 0.5))
    with pytest.raises(UserError, match="pretrained"):
        msresnet.create_model("resnet8", pretrained=True)
    with pytest.raises(UserError, match=r"unknown level head \(scale_pool\) 'median'"):
        msresnet.create_model("msresnet8", scale_pool="median")
    with pytest.raises(UserError, match="in_chans"):
        msresnet.create_model("resnet8", in_chans=0)

    def resnet8(pretrained: bool = False, **kwargs):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet8)


def test_msresnet_pyramid_adapts_to_input_size() -> None:
    model = _small("msresnet8", num_classes=2, in_chans=1).eval()
    with torch.no_grad():
        assert model.pool_levels(torch.randn(1, 1, 64, 64))[0].shape[2] == 5  # 64, 45, 32, 23, 16 px
        assert model.pool_levels(torch.randn(1, 1, 28, 28))[0].shape[2] == 4  # the 7-px level is dropped
        assert model.pool_levels(torch.randn(1, 1, 16, 16))[0].shape[2] == 3


def test_msresnet_knobs_build_and_run() -> None:
    x = torch.randn(2, 1, 32, 32)
    variants = [
        {"scale_pool": "attention", "scale_dropout": 0.5},
        {"stem_basis": "hermite", "stem_scales": 3, "stem_pool": "max"},
        {"pyramid_scales": (1,), "stem_basis": "dilation", "stem_scales": 2, "shared_stages": 1},
        {"pyramid_scales": (1, 0.5), "global_pool": "avg", "scale_pool": "max"},
        {"stem_basis": None},
    ]
    for kw in variants:
        model = _small("msresnet8", num_classes=3, in_chans=1, **kw).train()
        model(x).sum().backward()
        assert all(p.grad is not None for p in model.parameters()), kw
    with pytest.raises(UserError, match="shared_stages needs a lifting stem"):
        msresnet.create_model("msresnet8", stem_basis=None, shared_stages=1)


def test_forward_scales_one_decision_per_level() -> None:
    model = _small("msresnet8", num_classes=4, in_chans=1, scale_pool="avg").eval()
    with torch.no_grad():
        for size, levels in ((64, 5), (28, 4), (16, 3)):
            x = torch.randn(2, 1, size, size)
            per_level = model.forward_scales(x)
            assert per_level.shape == (2, levels, 4)
            # the classifier is linear: with an average over levels the model's output is the mean of the levels'
            torch.testing.assert_close(per_level.mean(1), model(x), rtol=1e-4, atol=1e-5)
        # each level's logits depend on that level alone: a model restricted to one pyramid factor agrees with it
        x = torch.randn(2, 1, 64, 64)
        coarse = model.forward_scales(x)[:, 2]
        model.pyramid.scales = [0.5]
        torch.testing.assert_close(model(x), coarse, rtol=1e-4, atol=1e-5)
    assert not hasattr(_small("resnet8"), "forward_scales")  # a plain trunk has no levels to diagnose


def test_confidence_scale_pool_takes_the_most_confident_level() -> None:
    torch.manual_seed(0)
    model = _small("msresnet8", num_classes=5, in_chans=1, scale_pool="confidence", scale_dropout=0.5)
    avg = _small("msresnet8", num_classes=5, in_chans=1, scale_pool="avg", scale_dropout=0.5)
    # same parameters: only the evaluation rule differs (the avg head has no object-scale probe to load)
    avg.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.probe.")})
    x = torch.randn(6, 1, 40, 40)
    model.train(), avg.train()
    torch.manual_seed(1)
    trained_as = model(x)
    torch.manual_seed(1)
    torch.testing.assert_close(trained_as, avg(x))  # training: the average over levels (with scale dropout)
    model.eval()
    with torch.no_grad():
        per_level = model.forward_scales(x)  # [B, S, K]
        pick = per_level.softmax(-1).amax(-1).argmax(1)
        torch.testing.assert_close(model(x), per_level[torch.arange(6), pick])
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (6, model.num_features)
    with pytest.raises(UserError, match="confidence"):
        _small("msresnet8", scale_pool="median")


def test_forward_is_deterministic_in_eval() -> None:
    model = _small("msresnet8", num_classes=3, in_chans=1, scale_dropout=0.5).eval()
    x = torch.randn(2, 1, 30, 30)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_full_width_forward_backward(name: str) -> None:
    model = msresnet.create_model(name, num_classes=10, in_chans=1).train()
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
