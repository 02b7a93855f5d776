"""timm's model contract on every registered model: the project's own checks of what timm's ``test_models.py``
checks (forward, backward, default cfgs, forward_features via ``features_only``, forward_intermediates), plus
``torch.fx`` tracing and ``torch.export`` of the plain trunks. Tiny widths and the smallest inputs the models take.

Which wrappers trace (see :class:`msresnet.scale.pyramid.PyramidClassifier`): the pyramid's level set depends on
the input size, which ``torch.fx.symbolic_trace`` only has as a proxy, so fx cannot trace a pyramid (the test
below pins that); ``torch.export`` records the size arithmetic symbolically and exports every pyramid model, and
ONNX export works for all (``tests/test_export.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.fx import symbolic_trace

import msresnet
from msresnet.models.resnet import ResNet
from msresnet.scale.pyramid import PyramidClassifier

MODELS = msresnet.list_models()
IMAGENET_STEM = {"resnet18", "resnet34"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    width = 0.125 if name in IMAGENET_STEM else 0.25
    return msresnet.create_model(name, in_chans=1, width=width * (2 if name.endswith("_w2") else 1), **kwargs)


def _min_input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    side = model.pretrained_cfg["min_input_size"][-1]
    return torch.randn(batch, 1, side, side)


PLAIN = [n for n in MODELS if isinstance(_tiny(n, num_classes=2), ResNet)]
WRAPPED = [n for n in MODELS if n not in PLAIN]


@pytest.mark.parametrize("name", MODELS)
def test_forward(name: str) -> None:
    model = _tiny(name, num_classes=3).eval()
    with torch.no_grad():
        out = model(_min_input(model))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = _tiny(name, num_classes=3).train()
    loss = model(_min_input(model)).mean()
    aux = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else None  # what TrainStep adds
    (loss if aux is None else loss + aux).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:3]


@pytest.mark.parametrize("name", MODELS)
def test_default_cfg(name: str) -> None:
    model = _tiny(name, num_classes=3).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg["input_size"])
    state = model.state_dict()
    for key in ("classifier", "first_conv"):
        names = cfg[key] if isinstance(cfg[key], (list, tuple)) else [cfg[key]]
        assert all(n + ".weight" in state for n in names), (key, names)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.dim() == 4 and tuple(feats.shape[-2:]) == tuple(cfg["pool_size"])
        assert feats.shape[1] == model.num_features
        torch.testing.assert_close(model.forward_head(feats), model(x), rtol=1e-4, atol=1e-5)
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.dim() == 4 and tuple(unpooled.shape[-2:]) == tuple(cfg["pool_size"])
        model.reset_classifier(5, "avg")
        assert model(x).shape == (1, 5)


@pytest.mark.parametrize("name", MODELS)
def test_forward_features_only(name: str) -> None:
    model = _tiny(name, features_only=True).eval()
    x = _min_input(model)
    with torch.no_grad():
        outs = model(x)
    info = model.feature_info
    assert len(outs) == len(info.channels()) >= 3
    for out, chans, red in zip(outs, info.channels(), info.reduction(), strict=True):
        assert out.shape[:2] == (2, chans) and torch.isfinite(out).all()
        assert tuple(out.shape[-2:]) == (math.ceil(x.shape[-2] / red), math.ceil(x.shape[-1] / red))


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates(name: str) -> None:
    model = _tiny(name, num_classes=3).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
    assert len(inter) == len(model.feature_info)
    for out, info in zip(inter, model.feature_info, strict=True):
        assert out.shape[:2] == (2, info["num_chs"])
        assert out.shape[-1] <= math.ceil(32 / info["reduction"]) + 1


@pytest.mark.parametrize("name", PLAIN)
def test_plain_trunks_fx_trace(name: str) -> None:
    model = _tiny(name, num_classes=3).eval()
    assert isinstance(model, ResNet)
    graph = symbolic_trace(model)
    x = torch.randn(2, 1, 40, 48)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x))


# one of each trunk kind (stem class x trunk class) by default; every plain trunk with -m slow
EXPORT_DEFAULT = ["resnet8", "res2net_resnet8", "sesn_resnet8", "msresnet20_kernels", "msresnet20_softmax"]


@pytest.mark.parametrize("name", [n if n in EXPORT_DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in PLAIN])
def test_plain_trunks_torch_export(name: str) -> None:
    model = _tiny(name, num_classes=3).eval()
    x = torch.randn(2, 1, 40, 48)
    program = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x))


def test_fx_cannot_trace_a_pyramid() -> None:
    """The level set is chosen from the input size, a proxy under fx: the pyramid is not fx-traceable."""
    with pytest.raises(Exception):  # noqa: B017 - fx raises TraceError or a TypeError from a proxy comparison
        symbolic_trace(_tiny("msresnet8", num_classes=3).eval())


@pytest.mark.slow
@pytest.mark.parametrize("name", WRAPPED)
def test_wrappers_torch_export(name: str) -> None:
    model = _tiny(name, num_classes=3).eval()
    x = torch.randn(2, 1, 64, 64)
    program = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x))


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("head", ["avg", "max", "softmax", "attention", "confidence"])
def test_pyramid_features_pool_to_the_output_for_every_head(head: str, pool: str) -> None:
    """The pyramid's 4-D map, through the trunk's own head, gives exactly the pyramid's output."""
    trunk = _tiny("resnet8", num_classes=4, global_pool=pool)
    model = msresnet.wrap(trunk, method="pyramid", head=head, scale_dropout=0.0).eval()
    x = torch.randn(3, 1, 45, 37)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (3, model.num_features, 12, 10)
        torch.testing.assert_close(model.forward_head(feats), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), model.head(*_levels(model, x)))


def _levels(model: PyramidClassifier, x: torch.Tensor) -> tuple:
    pooled, factors, _ = model.pool_levels(x)
    return pooled, model.level_logits, factors


def test_wrap_a_timm_classifier() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    base = timm.create_model("resnet18", num_classes=3, in_chans=1, pretrained=False)
    model = msresnet.wrap(base, method="pyramid").eval()
    assert model.trunk is base  # shared, not copied
    state = model.state_dict()
    assert model.pretrained_cfg["classifier"] + ".weight" in state
    assert model.pretrained_cfg["first_conv"] + ".weight" in state
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x), rtol=1e-4, atol=1e-5)
        assert model.forward_scales(x).shape == (2, 5, 3)
