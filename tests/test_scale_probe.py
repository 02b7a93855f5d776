"""ObjectScaleProbe and select_levels: estimating object scale from a pyramid's levels, and choosing a level by it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from msresnet.errors import UserError
from msresnet.layers import ObjectScaleProbe, log2_factors, select_levels

FACTORS = [1.0, 0.7071, 0.5, 0.3536, 0.25]


def _pooled(n: int, log2_scale: torch.Tensor, factors: list[float], channels: int = 12) -> torch.Tensor:
    """Pooled features ``[N, C, S]`` whose log depends linearly on the apparent size ``log2 s + log2 f`` (plus
    noise and a per-image nuisance that the same image shares across levels, as a real object's texture would)."""
    g = torch.Generator().manual_seed(1)
    slope = torch.randn(channels, generator=g)
    size = log2_scale[:, None] + log2_factors(factors, log2_scale)  # [N, S]
    nuisance = torch.randn(n, channels, 1, generator=g)
    noise = 0.05 * torch.randn(n, channels, len(factors), generator=g)
    log_feature = 3.0 + 0.5 * slope[None, :, None] * size[:, None, :] + 0.2 * nuisance + noise
    return torch.expm1(log_feature.clamp_min(0))


def test_probe_fitted_at_the_training_scale_estimates_other_scales_without_labels() -> None:
    probe = ObjectScaleProbe(12).fit(_pooled(400, torch.zeros(400), FACTORS), FACTORS)
    for s in (0.5, 0.71, 1.0, 1.41):
        estimate = probe.object_scale(_pooled(200, torch.full((200,), math.log2(s)), FACTORS), FACTORS)
        assert estimate.median().item() == pytest.approx(math.log2(s), abs=0.15), s
    pooled = _pooled(50, torch.zeros(50), FACTORS)
    expected = probe.object_scale(pooled, FACTORS)[:, None] + log2_factors(FACTORS, pooled)
    torch.testing.assert_close(probe.apparent_sizes(pooled, FACTORS), expected)
    # the median over levels ignores a level whose features say nothing about size
    pooled = _pooled(200, torch.full((200,), 1.0), FACTORS)
    pooled[:, :, 0] = pooled[:, :, 0].flip(0) * 3  # level 0 scrambled
    assert probe.object_scale(pooled, FACTORS).median().item() == pytest.approx(1.0, abs=0.2)


def _saturating_pooled(n: int, log2_scale: float) -> torch.Tensor:
    """Like :func:`_pooled`, but a level that shows the object outside the trained sizes (``FACTORS``) looks like the
    nearest trained size, as a trunk's features stop changing beyond what training showed it."""
    lo = math.log2(min(FACTORS))
    pooled = _pooled(n, torch.full((n,), log2_scale), FACTORS)
    clamped = _pooled(n, torch.zeros(n), FACTORS)  # the same images at the training scale, level k at log2 f_k
    for k, f in enumerate(FACTORS):
        size = log2_scale + math.log2(f)
        if size < lo:
            pooled[:, :, k] = clamped[:, :, len(FACTORS) - 1]
        elif size > 0:
            pooled[:, :, k] = clamped[:, :, 0]
    return pooled


def test_refined_estimate_trusts_the_levels_that_show_the_object_inside_the_trained_sizes() -> None:
    probe = ObjectScaleProbe(12).fit(_pooled(400, torch.zeros(400), FACTORS), FACTORS)
    assert probe.centre_log2.item() == pytest.approx(-1.0, abs=1e-3)
    for s in (0.25, 4.0):  # most levels show the object beyond the trained sizes and extrapolate wrongly
        pooled = _saturating_pooled(200, math.log2(s))
        per_level = probe(pooled) - log2_factors(FACTORS, pooled)
        median = per_level.median(dim=1).values.mean().item()
        assert abs(median - math.log2(s)) > 0.5, s  # what the median alone would answer
        assert probe.object_scale(pooled, FACTORS).mean().item() == pytest.approx(math.log2(s), abs=0.15), s


def test_fit_is_unbiased_at_the_training_scale_even_under_a_strong_ridge() -> None:
    pooled = _pooled(300, torch.zeros(300), FACTORS)
    probe = ObjectScaleProbe(12).fit(pooled, FACTORS, ridge=3000.0)  # predictions shrink towards the middle
    per_level_mean = probe(pooled).mean(0)
    torch.testing.assert_close(per_level_mean, log2_factors(FACTORS, per_level_mean), atol=0.05, rtol=0)


def test_a_probe_fitted_before_the_refinement_keeps_its_median_estimate() -> None:
    probe = ObjectScaleProbe(12).fit(_pooled(200, torch.zeros(200), FACTORS), FACTORS)
    old = {k: v for k, v in probe.state_dict().items() if k != "centre_log2"}
    legacy = ObjectScaleProbe(12)
    legacy.load_state_dict(old)
    assert legacy.is_fitted and not legacy.refines
    pooled = _saturating_pooled(50, -2.0)
    per_level = legacy(pooled) - log2_factors(FACTORS, pooled)
    torch.testing.assert_close(legacy.object_scale(pooled, FACTORS), per_level.sort(dim=1).values[:, 2])
    reloaded = ObjectScaleProbe(12)
    reloaded.load_state_dict(probe.state_dict())
    assert reloaded.refines
    torch.testing.assert_close(reloaded.object_scale(pooled, FACTORS), probe.object_scale(pooled, FACTORS))


def test_probe_state_round_trips_and_rejects_misuse() -> None:
    probe = ObjectScaleProbe(12)
    with pytest.raises(UserError, match="not fitted"):
        probe(torch.rand(2, 12, 5))
    with pytest.raises(UserError, match="one factor each"):
        probe.fit(torch.rand(8, 12, 5), FACTORS[:3])
    with pytest.raises(UserError, match="12 channels"):
        probe.fit(torch.rand(8, 6, 5), FACTORS)
    probe.fit(_pooled(100, torch.zeros(100), FACTORS), FACTORS)
    copy = ObjectScaleProbe(12)
    copy.load_state_dict(probe.state_dict())
    x = torch.rand(3, 12, 5)
    torch.testing.assert_close(copy(x), probe(x))


def test_select_levels_takes_the_most_confident_level_inside_the_band() -> None:
    logits = torch.zeros(3, 3, 4)
    logits[:, 0, 0] = 9.0  # level 0: very sure of class 0
    logits[:, 1, 1] = 3.0  # level 1: fairly sure of class 1
    logits[:, 2, 2] = 1.0  # level 2: unsure, class 2
    apparent = torch.tensor(
        [
            [1.0, 0.0, -0.5],  # level 0 shows the object twice the best size: outside the band, level 1 wins
            [0.2, -0.5, -1.5],  # levels 0 and 1 inside: the more confident level 0
            [2.0, 1.5, 1.0],  # none inside: the nearest, level 2
        ]
    )
    assert select_levels(logits, apparent, best_log2=0.0, band=0.6).tolist() == [1, 0, 2]


def _tiny_pyramid_model():
    import msresnet

    torch.manual_seed(0)
    return msresnet.create_model("msresnet8", num_classes=4, in_chans=1, width=0.25).eval()


@pytest.mark.parametrize("side", [64, 40, 24])
def test_a_fitted_probe_chooses_the_models_level_for_every_input_size(side: int) -> None:
    model = _tiny_pyramid_model()
    x = torch.randn(6, 1, side, side)
    with torch.no_grad():
        pooled = model.pool_levels(x)[0]
        levels = model.level_logits(pooled)
        factors = model.pyramid.kept_scales((side, side))
        assert pooled.shape[2] == len(factors) >= 2
        most_confident = levels[torch.arange(6), levels.softmax(-1).amax(-1).argmax(1)]
        torch.testing.assert_close(model(x), most_confident)  # unfitted: the confidence rule
        fit_on = model.pool_levels(torch.randn(32, 1, 64, 64))[0]
        model.scale_probe.fit(fit_on, model.pyramid.kept_scales((64, 64)), best_log2=-0.5, band=0.3)
        pick = model.scale_probe.select(levels, pooled, factors)
        torch.testing.assert_close(model(x), levels[torch.arange(6), pick])
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(features, pooled.transpose(1, 2)[torch.arange(6), pick])


def test_probe_state_travels_with_the_weights_and_old_weights_load_unfitted() -> None:
    from msresnet.engine.checkpoint import load_weights_into

    model = _tiny_pyramid_model()
    fitted = _tiny_pyramid_model()
    fitted.scale_probe.fit(fitted.pool_levels(torch.randn(16, 1, 64, 64))[0].detach(), fitted.pyramid.scales)
    model.load_state_dict(fitted.state_dict())
    assert model.scale_probe.is_fitted
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), fitted(x))
    # weights written before the probe existed: no head.probe.* tensors; they load, and the probe is unfitted
    old = {k: v for k, v in fitted.state_dict().items() if not k.startswith("head.probe.")}
    load_weights_into(model, old, Path("old.safetensors"), expected="")
    assert not model.scale_probe.is_fitted
    model.scale_probe.fit(fitted.pool_levels(torch.randn(16, 1, 64, 64))[0].detach(), fitted.pyramid.scales)
    assert not model.scale_probe.reset().is_fitted


def test_calibration_needs_a_pyramid_model_and_one_training_condition(tiny_fmnist_root, tmp_cache) -> None:
    import msresnet
    from msresnet.data import build_protocol
    from msresnet.engine.calibrate import calibrate_model

    plain = msresnet.create_model("resnet8", num_classes=10, in_chans=1)
    protocol = build_protocol("fmnist-ls", root=tiny_fmnist_root, val_size=50)
    with pytest.raises(UserError, match="no object-scale probe"):
        calibrate_model(plain, protocol)
    scale = build_protocol("fmnist-scale", root=tiny_fmnist_root, train_size=100, val_size=20, test_size=150)
    with pytest.raises(UserError, match="single training condition"):
        calibrate_model(_tiny_pyramid_model(), scale)


def test_calibration_table_keeps_its_columns_aligned_for_short_condition_labels() -> None:
    from msresnet.engine.calibrate import Calibration, format_calibration

    result = Calibration(0.6, 0.5, 500, [14, 112], [82.0, 73.2], [82.4, 81.4], True, "size")
    rows = format_calibration(result).splitlines()[:-1]  # the last line is the verdict
    assert len({len(row) for row in rows}) == 1, rows
    assert rows[-1].split() == ["worst", "73.2", "81.4"] and rows[-2].split() == ["mean", "77.6", "81.9"]


def test_estimate_scale_exists_once_the_probe_is_fitted() -> None:
    model = _tiny_pyramid_model()
    assert not hasattr(model, "estimate_scale")  # unfitted: nothing to estimate with (scan / predict skip it)
    with torch.no_grad():
        model.scale_probe.fit(model.pool_levels(torch.randn(16, 1, 64, 64))[0], model.pyramid.kept_scales((64, 64)))
        est = model.estimate_scale(torch.randn(3, 1, 64, 64))
    assert est.shape == (3,) and bool((est > 0).all())
    import msresnet

    assert not hasattr(msresnet.create_model("resnet8"), "estimate_scale")
