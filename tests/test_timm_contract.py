"""timm's model contract on every registered model: the project's own checks of what timm's ``test_models.py``
checks (forward, backward with every parameter reached, default cfgs incl. the unpooled forms, forward_features via
``features_only``, forward_intermediates, ``torch.fx`` tracing in evaluation and training as torchvision's feature
extraction does it), plus ``torch.export`` of every model with dynamic sizes. Tiny widths and small inputs.

The one stated exception of timm's backward test: the canonicaliser's scale estimator is trained by its own loss,
never through the logits (the logits do not depend on its parameters in training). Its loss rides on the output's
backward pass by default (:class:`msresnet.scale._wrapper.ScaleWrapper`), so timm's test, which backpropagates the
output alone, still reaches every parameter; :func:`test_canonical_estimator_learns_from_its_own_loss_only` pins
both halves.

fx: a pyramid's level set depends on the input size, which ``torch.fx.symbolic_trace`` only has as a proxy; the
traced graph runs a level for every factor and selects the input's levels when it runs, so it equals the eager model
at every size, including sizes where levels are dropped (:mod:`msresnet.scale.pyramid`).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.fx import symbolic_trace

import msresnet
from msresnet.export import export_pt2
from msresnet.models.resnet import ResNet
from msresnet.scale.canonical import CanonicalClassifier
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
    """timm's backward test: the output alone, backpropagated, reaches every parameter (no auxiliary loss added)."""
    model = _tiny(name, num_classes=3).train()
    model(_min_input(model)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:3]


@pytest.mark.parametrize("name", [n for n in MODELS if n.endswith("_canonical")])
def test_canonical_estimator_learns_from_its_own_loss_only(name: str) -> None:
    """The stated exception: no gradient reaches the estimator from the logits; what its parameters get on the
    output's backward pass is exactly the gradient of its own loss (the one the training engine adds itself)."""
    model = _tiny(name, num_classes=3).train()
    assert isinstance(model, CanonicalClassifier)
    x = torch.randn(4, 1, 32, 32)
    est = [p for n, p in model.named_parameters() if n.startswith("estimator.")]
    # the training views depend on the estimator's running statistics (it locates each object to paste a shrunk scene
    # over its own view), which every training forward updates: each call starts from the same state
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def grads(attach: bool, add_aux: bool) -> list[torch.Tensor | None]:
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        model.attach_auxiliary_loss = attach
        torch.manual_seed(0)  # the same training views every time
        loss = model(x).square().mean()
        (loss + model.auxiliary_loss() if add_aux else loss).backward()
        return [p.grad for p in est]

    assert all(g is None for g in grads(attach=False, add_aux=False))  # the logits give the estimator nothing
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("trunk."))
    own = grads(attach=False, add_aux=True)
    riding = grads(attach=True, add_aux=False)
    assert all(g is not None for g in own) and sum(float(g.abs().sum()) for g in own) > 0
    for a, b in zip(own, riding, strict=True):
        torch.testing.assert_close(a, b)


def test_the_engine_adds_the_auxiliary_loss_itself() -> None:
    """The training engine adds the estimator's loss to its (possibly scaled) loss: it turns the riding off."""
    from msresnet.engine.step import TrainStep

    model = _tiny("msresnet8_canonical", num_classes=3)
    TrainStep(model, None, 0.0)
    assert model.attach_auxiliary_loss is False


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
        assert model.num_classes == 0 and model(x).shape == (1, model.head_hidden_size) == (1, model.num_features)
        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.dim() == 4 and tuple(unpooled.shape[-2:]) == tuple(cfg["pool_size"])
        assert unpooled.shape[1] == model.num_features
        torch.testing.assert_close(unpooled, model.forward_features(x))  # the unpooled output is the feature map
        model.reset_classifier(5, "avg")
        assert model(x).shape == (1, 5)
        # built unpooled, as timm's test does it: the same map
        built = _tiny(name, num_classes=0, global_pool="").eval()
        out = built(x)
        assert out.dim() == 4 and tuple(out.shape[-2:]) == tuple(cfg["pool_size"]) and out.shape[1] == feats.shape[1]


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


class _Features(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


@pytest.mark.parametrize("name", MODELS)
def test_fx_trace_equals_the_model(name: str) -> None:
    """timm's fx forward test: the traced graph gives exactly the model's output (and its feature map), also at
    sizes where a pyramid drops levels (40x48: the 1/4 level is 10x12 > 8; 20x28: it is dropped)."""
    model = _tiny(name, num_classes=3).eval()
    graph, features = symbolic_trace(model), symbolic_trace(_Features(model))
    for size in ((40, 48), (20, 28)):
        x = torch.randn(2, 1, *size)
        with torch.no_grad():
            assert torch.equal(graph(x), model(x)), size
            assert torch.equal(features(x), model.forward_features(x)), size


@pytest.mark.parametrize("name", MODELS)
def test_fx_training_graph_reaches_every_parameter(name: str) -> None:
    """timm's fx backward test, through torchvision's feature extraction (what detection backbones use)."""
    fx_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    model = _tiny(name, num_classes=3).train()
    train_nodes, eval_nodes = fx_extraction.get_graph_node_names(model)
    fx_model = fx_extraction.create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]]
    )
    out = next(iter(fx_model(torch.randn(2, 1, 32, 32)).values()))
    out.mean().backward()
    assert out.shape == (2, 3)
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, missing[:3]


def test_fx_trace_of_a_calibrated_pyramid(tmp_path) -> None:
    """A fitted object-scale probe (median over the kept levels) in the traced graph: still the eager output."""
    model = _tiny("msresnet8", num_classes=3).eval()
    with torch.no_grad():
        pooled, factors, _ = model.pool_levels(torch.randn(16, 1, 64, 64))
    model.scale_probe.fit(pooled, factors)
    graph = symbolic_trace(model)
    for size in ((64, 64), (24, 30)):
        x = torch.randn(3, 1, *size)
        with torch.no_grad():
            assert torch.equal(graph(x), model(x)), size


# one of each trunk family and the canonicaliser by default; every model (the pyramids take minutes) with -m slow
EXPORT_DEFAULT = {"resnet8", "res2net_resnet8", "sesn_resnet8", "msresnet20_kernels", "msresnet20_softmax",
                  "msresnet8_canonical"}  # fmt: skip


EXPORT_CASES = [n if n in EXPORT_DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in MODELS]


@pytest.mark.parametrize("name", EXPORT_CASES)
def test_torch_export_of_every_model(name: str, tmp_path) -> None:
    """``export_pt2`` (dynamic batch, height and width; verified at square, non-square and larger sizes) works for
    every registered model; a canonicaliser also with a trained (fixed) canvas."""
    model = _tiny(name, num_classes=3).eval()
    checks = export_pt2(model, tmp_path / "m.pt2", in_chans=1, mean=[0.5], std=[0.25])
    assert len(checks) == 3 and all(c.ok for c in checks)
    if isinstance(model, CanonicalClassifier):
        model.train_canvas.copy_(torch.tensor([28, 36]))
        checks = export_pt2(model, tmp_path / "c.pt2", in_chans=1, mean=[0.5], std=[0.25])
        assert all(c.ok for c in checks)


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
