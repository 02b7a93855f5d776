"""Scale canonicalisation (``wrap(..., method="canonical")``, ``msresnet*_canonical``): the resampler, the object-scale
estimator, the wrapper's timm contract, its training views and auxiliary loss, ONNX export, resume-exactness."""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import msresnet
from msresnet.engine.scale_error import ScaleErrors, true_log2_scales
from msresnet.errors import UserError
from msresnet.scale.canonical import CanonicalClassifier
from msresnet.scale.resample import flat_edge, zoom

pytestmark = pytest.mark.usefixtures("one_thread")


def _canonical(depth: int = 8, width: float = 0.25, in_chans: int = 1, **kw) -> CanonicalClassifier:
    torch.manual_seed(0)
    return msresnet.create_model(f"msresnet{depth}_canonical", num_classes=5, in_chans=in_chans, width=width, **kw)


def _smooth(b: int, c: int, size: int, seed: int = 0, cell: int = 4) -> torch.Tensor:
    """Band-limited random images (detail of ``cell`` px): shrinking them by less than ``cell / 2`` loses little."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, size // cell, size // cell, generator=g)
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


def _objects(scales: torch.Tensor, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Textured ellipses of random shape and stripe phase, drawn at ``scales`` (1: ~16 px wide), on a background of
    random grey level and gradient (which, like most backgrounds and unlike pixel noise, looks the same zoomed)."""
    g = torch.Generator().manual_seed(seed)
    b = scales.numel()
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5 - size / 2, torch.arange(size) + 0.5 - size / 2, indexing="ij")
    ry = (5 + 3 * torch.rand(b, generator=g)) * scales
    rx = (5 + 3 * torch.rand(b, generator=g)) * scales
    phase = torch.rand(b, generator=g) * 6.28
    inside = (yy / ry.view(-1, 1, 1)) ** 2 + (xx / rx.view(-1, 1, 1)) ** 2 <= 1
    stripes = 0.6 + 0.4 * torch.sin(xx / (1.5 * scales.view(-1, 1, 1)) + phase.view(-1, 1, 1))
    tilt = (torch.rand(b, 2, generator=g) - 0.5) * 0.02
    bg = 0.1 + 0.3 * torch.rand(b, 1, 1, generator=g) + tilt[:, :1, None] * yy + tilt[:, 1:, None] * xx
    return torch.where(inside, stripes, bg).unsqueeze(1)


# ------------------------------------------------------------------------------------------------------ resampling
def test_zoom_shapes_and_per_image_factors() -> None:
    x = _smooth(1, 2, 40).expand(3, -1, -1, -1).contiguous()
    spans = torch.tensor([0.5, 1.0, 2.0])
    out = zoom(x, spans)
    assert out.shape == x.shape
    for i in range(3):  # each image is resampled by its own factor, as if alone in the batch
        assert torch.allclose(out[i : i + 1], zoom(x[i : i + 1], spans[i : i + 1]), atol=1e-6)
    assert not torch.allclose(out[0], out[2], atol=1e-2)
    assert torch.allclose(out[1], x[0], atol=1e-5)  # span 1 onto the same grid: the identity
    assert zoom(x, spans, (17, 23)).shape == (3, 2, 17, 23)


@pytest.mark.parametrize("f", [0.5, 0.7, 1.5])
def test_zoom_round_trip_matches_away_from_borders(f: float) -> None:
    x = _smooth(2, 1, 64, seed=1, cell=8)
    there = zoom(x, torch.full((2,), 1 / f))  # content scaled by f
    back = zoom(there, torch.full((2,), f))  # and canonicalised with 1/f
    keep = int(32 * min(1.0, 1 / f) * 0.8)  # the central part that stayed inside the canvas both ways
    c = slice(32 - keep, 32 + keep)
    assert (back[..., c, c] - x[..., c, c]).abs().mean() < 0.02


def test_zoom_shrink_is_antialiased() -> None:
    # a pixel-level checkerboard shrunk 4x must come out (nearly) flat grey, not aliased stripes
    x = ((torch.arange(64).view(-1, 1) + torch.arange(64).view(1, -1)) % 2).float().view(1, 1, 64, 64)
    out = zoom(x, torch.tensor([4.0]), (16, 16))
    assert (out - 0.5).abs().max() < 0.05


# -------------------------------------------------------------------------------------------------------- wrapper
@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 16, 16), (3, 1, 47, 61), (2, 3, 28, 28)])
def test_shapes_at_many_sizes(shape: tuple[int, ...]) -> None:
    model = _canonical(in_chans=shape[1])
    x = torch.randn(*shape)
    for train in (True, False):
        model.train(train)
        out = model(x)
        assert out.shape == (shape[0], 5) and torch.isfinite(out).all()
    est = model.estimate_scale(x)
    assert est.shape == (shape[0],) and (est > 0).all()
    assert model.forward_features(x).ndim == 4


@pytest.mark.parametrize("trunk_view", ["true", "estimated"])
def test_gradients_reach_trunk_and_estimator(trunk_view: str) -> None:
    model = _canonical(trunk_view=trunk_view).train()
    logits = model(torch.randn(4, 1, 32, 32))
    aux = model.auxiliary_loss()
    assert aux is not None and aux.ndim == 0
    (F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + aux).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert any(n.startswith("estimator.") for n, _ in model.named_parameters())


def test_training_views_differ_per_image_and_follow_the_global_generator() -> None:
    model = _canonical().train()
    x = _smooth(1, 1, 32).expand(4, -1, -1, -1).contiguous()
    torch.manual_seed(3)
    a = model._training_input(x)
    torch.manual_seed(3)
    b = model._training_input(x)
    assert torch.equal(a, b)  # the training loop reseeds torch's generator every step: resume stays exact
    assert not torch.allclose(a[0], a[1], atol=1e-3)  # every image gets its own factors
    assert model.train_canvas.tolist() == [32, 32]


def test_forward_equals_head_of_features_in_eval() -> None:
    for search in (0.0, 0.25):
        model = _canonical(search=search).eval()
        x = torch.randn(3, 1, 40, 40)
        with torch.no_grad():
            assert torch.allclose(model(x), model.forward_head(model.forward_features(x)), atol=1e-6)


def test_timm_contract_and_cfg_names() -> None:
    model = _canonical().eval()
    cfg, state = model.pretrained_cfg, model.state_dict()
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state
    assert model.trunk.global_pool == "max"  # what the registered models use
    feats = model.forward_features(torch.randn(1, 1, 64, 64))
    model.reset_classifier(3)
    assert model.forward_head(feats).shape == (1, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model.forward_head(feats).shape == (1, model.num_features)


def test_timm_trunk() -> None:
    torch.manual_seed(0)
    model = msresnet.wrap(timm.create_model("resnet18", num_classes=4, in_chans=1), method="canonical")
    assert model.estimator.features[0][0].in_channels == 1
    model.train()
    out = model(torch.randn(2, 1, 64, 64))
    (out.sum() + model.auxiliary_loss()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    x = torch.randn(3, 1, 64, 64)
    assert model(x).shape == (3, 4) and model.estimate_scale(x).shape == (3,)
    assert model.forward_features(x).ndim == 4
    assert model.pretrained_cfg["first_conv"] + ".weight" in model.state_dict()


def test_train_canvas_is_recorded_and_used() -> None:
    model = _canonical().train()
    model(torch.randn(2, 1, 28, 28))
    model.eval()
    x = torch.randn(2, 1, 112, 112)
    assert model.canonicalise(x).shape[-2:] == (28, 28)  # a model trained at 28 px sees 28 px
    e = model.log2_scale(x)
    assert torch.allclose(model.estimate_scale(x), torch.exp2(e) * 4, rtol=1e-5)  # relative -> pixels
    loose = _canonical(canvas="input").train()
    loose(torch.randn(2, 1, 28, 28))
    assert loose.eval().canonicalise(x).shape[-2:] == (112, 112)


def test_bad_options_are_user_errors() -> None:
    bad = ({"canvas": "fixed"}, {"detail_range": (-1.0, 0.5)}, {"tolerance": -1.0}, {"estimator_range": (1, 0)},
           {"trunk_view": "oracle"})  # fmt: skip
    for kw in bad:
        with pytest.raises(UserError):
            _canonical(**kw)


def test_estimator_is_cheap() -> None:
    # the estimator costs at most a tenth of the trunk's FLOPs (resnet20 at 64 px)
    model = msresnet.create_model("msresnet20_canonical", num_classes=10, in_chans=1).eval()
    x = torch.randn(1, 1, 64, 64)

    def flops(fn) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn(x)
        return counter.get_total_flops()

    ratio = flops(model.estimator) / flops(model.trunk)
    assert ratio <= 0.10, ratio


def test_estimator_learns_large_shifts() -> None:
    """Trained on known zooms of single-scale images only, it tells objects at x0.5 from objects at x2."""
    torch.manual_seed(0)
    model = _canonical(estimator_range=(-1.5, 1.0), view_size=32)
    opt = torch.optim.Adam(model.estimator.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        x = _objects(torch.ones(32), seed=step)
        model(x)
        opt.zero_grad()
        model.auxiliary_loss().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        small = model.log2_scale(_objects(torch.full((32,), 0.5), seed=1000))
        large = model.log2_scale(_objects(torch.full((32,), 2.0), seed=1001))
    assert (small < 0).float().mean() >= 0.8 and (large > 0).float().mean() >= 0.8, (small, large)
    assert large.median() - small.median() > 1.0


# ----------------------------------------------------------------------------------------------------------- export
def test_onnx_export_dynamic_batch_and_size(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _canonical(depth=8, width=0.5).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # non-trivial weights and statistics, so estimates (and zooms) differ per image
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    for canvas in ((0, 0), (64, 64)):  # the input's own size, then a trained model's fixed canvas
        model.train_canvas.copy_(torch.tensor(canvas))
        path = tmp_path / f"c{canvas[0]}.onnx"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torch.onnx.export(model, (torch.rand(2, 1, 64, 64),), str(path), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b"}}, opset_version=17,
                              dynamo=False)  # fmt: skip
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for shape in ((2, 1, 64, 64), (3, 1, 48, 80), (1, 1, 96, 96)):
            x = torch.rand(*shape)
            with torch.no_grad():
                ref = model(x)
            got = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
            assert (got - ref).abs().max() <= 1e-3 * max(1.0, ref.abs().max().item()), (canvas, shape)


# ----------------------------------------------------------------------------------------------- engine integration
def test_train_step_adds_the_auxiliary_loss() -> None:
    from msresnet.engine.step import TrainStep

    model = _canonical().train()
    step = TrainStep(model, None, 0.0)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    loss, logits = step(x, y)
    assert torch.allclose(loss, F.cross_entropy(logits, y) + model.auxiliary_loss())


def test_scale_error_summary() -> None:
    errs = ScaleErrors()
    errs.add(0.5, torch.full((4,), 0.5), torch.full((4,), -1.0))  # exact
    errs.add(2.0, torch.tensor([2.0, 4.0]), torch.full((2,), 1.0))  # 0 and +1 octave
    s = errs.summary()
    assert s["conditions"] == [0.5, 2.0] and s["median_abs"][0] == 0.0 and math.isclose(s["p90_abs"][1], 0.9)
    proto = type("P", (), {"train_condition": 28, "params": {}})()
    ds = type("D", (), {"labels": torch.arange(6) % 3})()
    assert torch.allclose(true_log2_scales(proto, 56, ds, None), torch.ones(6))
    assert len(true_log2_scales(proto, 14, ds, 3)) == 3


def test_resume_is_exact_with_a_canonical_model(tmp_path, monkeypatch) -> None:
    from engine_fakes import base_config, install
    from msresnet.engine.config import load_train_config
    from msresnet.engine.train import train
    from test_resume import SimulatedKill, assert_same_run

    install(monkeypatch)
    recipe = {"protocol_params": {"n_train": 160}, "batch_size": 32, "epochs": 2, "model": "msresnet8_canonical",
              "model_kwargs": {"width": 0.5}}  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "run"
    train(load_train_config(None, base_config(ref, **recipe)))

    def crash(step: int) -> None:
        if step == 6:  # mid-epoch 2 (4 steps per epoch), after a mid-epoch checkpoint at step 5
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        train(load_train_config(None, base_config(out, **recipe, checkpoint_every=5)), on_step=crash)
    train(load_train_config(None, base_config(out, **recipe, checkpoint_every=5, resume=True)))
    assert_same_run(ref, out)


def test_zoom_about_a_centre_moves_the_window() -> None:
    x = torch.zeros(1, 1, 32, 32)
    x[..., 4:8, 24:28] = 1.0  # a blob near the top-right corner: x ~ +0.62, y ~ -0.62 in normalised coordinates
    c = torch.tensor([[26 / 16 - 1, 6 / 16 - 1]])
    about_centre = zoom(x, torch.tensor([0.25]))
    about_blob = zoom(x, torch.tensor([0.25]), centre=c)
    assert about_centre.max() == 0  # the blob left the canvas
    assert about_blob[..., 12:20, 12:20].mean() > 0.9  # the blob fills the middle of the enlarged window


@pytest.mark.parametrize("padding", ["reflection", "border", "zeros"])
def test_zoom_padding_of_a_shrink(padding: str) -> None:
    x = torch.rand(1, 1, 32, 32)
    out = zoom(x, torch.tensor([2.0]), padding=padding)
    ring = out[..., :4, :]  # outside the shrunk image
    if padding == "zeros":
        assert ring.abs().max() < 1e-6
    elif padding == "border":  # streaks: each column of the ring repeats one edge pixel
        assert torch.allclose(ring[..., 0, :], ring[..., 1, :], atol=1e-5)
    else:  # mirrored content: the ring varies down its columns like the image does
        assert (ring[..., 0, :] - ring[..., 3, :]).abs().mean() > 0.05


def test_auto_padding_keeps_a_plain_canvas_plain_and_continues_a_scene() -> None:
    plain = torch.zeros(2, 3, 32, 32)
    plain[..., 12:20, 12:20] = 2.0  # an object alone on a flat canvas
    plain[1] -= 0.5  # another canvas colour
    scene = torch.rand(2, 3, 32, 32)  # a textured edge
    x = torch.cat([plain, scene])
    assert flat_edge(x).tolist() == [True, True, False, False]
    span = torch.full((4,), 2.5)
    out = zoom(x, span, padding="auto")
    # the shrunk object stays alone: the surroundings carry the canvas colour, no mirrored copies of the object
    assert torch.allclose(out[:2, :, :5, :], plain[:, :, :1, :1].expand(-1, -1, 5, 32), atol=1e-5)
    assert torch.allclose(out[2:], zoom(scene, span[2:], padding="reflection"))
    mixed_batch_traced = torch.fx.symbolic_trace(lambda t: zoom(t, span, padding="auto"))(x)
    assert torch.allclose(mixed_batch_traced, out, atol=1e-6)
    with pytest.raises(ValueError, match="padding"):
        zoom(x, span, padding="mirror")


def test_localised_windows_stay_inside_the_image() -> None:
    model = _canonical(fill="zeros").eval()
    x = torch.ones(4, 1, 32, 32)
    corners = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [0.9, -0.9], [-1.0, -1.0]])
    spans = torch.tensor([0.25, 0.5, 0.7, 0.9])
    out = model._zoom(x, spans, None, corners)  # enlargements about the corners: clamped to stay inside
    assert out[..., 4:-4, 4:-4].min() > 0.99  # (the outermost pixels blend with what lies half a pixel beyond)
    unclamped = zoom(x, spans, centre=corners, padding="zeros")
    assert unclamped[..., 4:-4, 4:-4].min() < 0.01
    shrunk = model._zoom(x, torch.full((4,), 2.0), None, corners)  # shrinks: the whole image stays in view
    assert torch.allclose(shrunk.sum((-2, -1)), torch.full((4, 1), 32 * 32 / 4.0), rtol=0.02)


def test_estimator_locates_and_its_attention_learns_from_its_loss() -> None:
    model = _canonical(in_chans=3).train()
    x = torch.rand(3, 3, 40, 24)
    e, c = model.estimator.estimate(x)
    assert e.shape == (3,) and c.shape == (3, 2) and c.abs().max() <= 1.0
    model(torch.rand(4, 3, 32, 32))
    model.auxiliary_loss().backward()
    assert model.estimator.attend.weight.grad is not None and model.estimator.attend.weight.grad.abs().sum() > 0
    assert "fill='auto'" in repr(model) and "localise=True" in repr(model)
    with pytest.raises(UserError, match="fill"):
        _canonical(fill="mirror")


def test_second_look_only_zooms_further_in(monkeypatch) -> None:
    model = _canonical(in_chans=3).eval()
    x = torch.rand(3, 3, 32, 32)
    first = torch.tensor([-1.0, 0.0, 0.5])
    monkeypatch.setattr(model.estimator, "estimate", lambda t, padding="auto": (first.clone(), torch.zeros(3, 2)))
    looked: list[torch.Tensor] = []
    residual = torch.tensor([-0.2, -0.4, -0.5])

    def logits(view: torch.Tensor) -> torch.Tensor:
        looked.append(view)
        return model.estimator.targets(residual[: view.shape[0]]).log()

    monkeypatch.setattr(model.estimator, "logits", logits)
    e, _ = model.locate(x)
    # a small object (e < 0) is read again zoomed in by its estimate; a large one keeps its first estimate
    assert torch.allclose(e, torch.tensor([-1.2, 0.0, 0.5]), atol=0.02)
    v = model.estimator.view_size
    assert looked[0].shape[0] == 1  # eager: only the small object is looked at again
    assert torch.allclose(looked[0][0], zoom(x[:1], torch.tensor([0.5]), (v, v), padding="reflection")[0], atol=1e-5)
    monkeypatch.setattr("msresnet.scale.canonical._tracing", lambda: True)  # a recorded graph: every image, selected
    assert torch.equal(model.locate(x)[0], e) and looked[-1].shape[0] == 3
    residual = torch.tensor([-1.5, -1.5, -1.5])  # at most `tolerance` further in
    assert torch.allclose(model.locate(x)[0], torch.tensor([-1.0 - model.tolerance, 0.0, 0.5]), atol=0.02)
    residual = torch.tensor([0.7, 0.7, 0.7])  # a second look never zooms back out
    assert torch.equal(model.locate(x)[0], first)
    model.refine = 0
    assert torch.equal(model.locate(x)[0], first) and len(looked) == 4
    assert "refine=0" in repr(model)
    with pytest.raises(UserError, match="refine"):
        _canonical(refine=-1)


def test_estimator_training_views_surround_a_shrunk_scene_with_its_own_background(monkeypatch) -> None:
    model = _canonical(in_chans=3).train()
    v = model.estimator.view_size
    plain = torch.zeros(2, 3, 48, 48)
    plain[..., 18:30, 18:30] = 2.0  # objects alone on a flat canvas
    scene = _smooth(4, 3, 48, seed=1) * 2  # textured scenes
    x = torch.cat([plain, scene])
    span = torch.tensor([1.6, 3.0, 1.6, 2.0, 3.0, 0.7])
    shift = torch.zeros(6, 2)
    centre = torch.tensor([[0.3, -0.2]]).expand(6, 2)  # where the estimator says each object is
    monkeypatch.setattr(model.estimator, "estimate", lambda t, padding="auto": (torch.zeros(len(t)), centre[: len(t)]))
    view, pasted = model._estimator_view(x, span, shift)
    assert pasted is not None and pasted[0].tolist() == [False, False, True, True, False, False]
    assert torch.equal(pasted[1], centre)  # where the trunk's training view is then centred
    plain_views = model.estimator.view(x, span, centre=shift, padding="auto")
    # a plain canvas, a shrink beyond OWN_SURROUND and a zoom-in keep the plain zoom
    for i in (0, 1, 4, 5):
        assert torch.equal(view[i], plain_views[i])
    # a textured image shrunk by at most OWN_SURROUND: pasted over its own full-size view, centred on its object
    full = model.estimator.view(x)
    for i in (2, 3):
        c = -centre[i : i + 1] * span[i]  # the window centre that puts the shrunk image's centre on the object
        around = view[i] - zoom(x[i : i + 1], span[i : i + 1], (v, v), centre=c, padding="zeros")[0]
        assert torch.allclose(around[:, :1, :1], full[i, :, :1, :1], atol=1e-5)  # the corner: its own background
        assert not torch.allclose(view[i, :, :1, :1], plain_views[i, :, :1, :1], atol=1e-3)  # not a mirror
    # an all-plain batch takes the plain path without asking the estimator where its objects are
    monkeypatch.setattr(model.estimator, "estimate", None)
    plain_only, none = model._estimator_view(plain, span[:2], shift[:2])
    assert torch.equal(plain_only, plain_views[:2]) and none is None
    # the trunk's training views of pasted images are centred where the full view located the object
    monkeypatch.setattr(model.estimator, "estimate", lambda t, padding="auto": (torch.zeros(len(t)), centre[: len(t)]))
    model.estimator_range = (-0.9, -0.1)  # every view a shrink of at most 2x: every scene pasted
    _, located = model._estimator_step(scene)
    assert located is not None and torch.equal(located, centre[:4])
