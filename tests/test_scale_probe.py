"""ObjectScaleProbe and select_levels: estimating object scale from a pyramid's levels, and choosing a level by it."""

from __future__ import annotations

import math

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
    picked = select_levels(logits, apparent, best_log2=0.0, band=0.6)
    assert picked.argmax(-1).tolist() == [1, 0, 2]
