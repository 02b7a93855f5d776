"""benchmarks/level_selection.py: the level-selection rules on hand-made per-level logits (no training)."""

from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark


@pytest.fixture(scope="module")
def selection():
    return load_benchmark("level_selection")


def _levels(selection, logits: torch.Tensor, labels: torch.Tensor, factors: list[float]):
    """Levels whose pooled features say how large the object looks (channel 0 grows with the level's factor)."""
    pooled = torch.rand(len(logits), 4, logits.shape[1])
    pooled[:, 0] = torch.tensor(factors).log2().add(3.0)[None, :] * 2 + 0.05 * torch.rand(len(logits), len(factors))
    return selection.Levels(logits, pooled, labels, factors)


def test_rules_pick_levels_and_fit_on_the_training_condition_only(selection):
    torch.manual_seed(0)
    factors = [1.0, 0.5, 0.25]
    train_logits = torch.randn(256, 1, 4) + 0.5 * torch.randn(256, 3, 4)  # levels that mostly agree
    train_labels = torch.where(torch.rand(256) < 0.7, train_logits.mean(1).argmax(-1), torch.randint(0, 4, (256,)))
    rules = selection.rules(_levels(selection, train_logits, train_labels, factors))
    # image 0: level 2 is sure of class 3, the others are unsure of class 0; image 1: level 0 is sure of class 1
    logits = torch.zeros(2, 3, 4)
    logits[0, :2, 0], logits[0, 2, 3] = 0.5, 6.0
    logits[1, 0, 1], logits[1, 1:, 2] = 6.0, 1.0
    test = _levels(selection, logits, torch.tensor([3, 1]), factors)
    for name in ("max prob (default)", "margin", "neg. entropy", "energy", "max logit", "calibrated"):
        assert rules[name](test).argmax(-1).tolist() == [3, 1], name
    torch.testing.assert_close(rules["avg logits"](test), logits.mean(1))
    assert rules["avg probs"](test).shape == (2, 4)
    assert rules["object-scale probe (band 0.6)"](test).shape == (2, 4)
    # the temperatures come from the training condition: scaling the training logits changes them
    assert (
        selection._temperatures(train_logits * 4, train_labels)
        .gt(selection._temperatures(train_logits, train_labels))
        .all()
    )
    # an image of another size keeps other levels (fmnist-res): every rule still answers, one row per image
    fewer = _levels(selection, logits[:, :2], torch.tensor([0, 1]), factors[:2])
    assert all(rule(fewer).shape == (2, 4) for rule in rules.values())
    table = selection.score({1.0: test, 2.0: test}, rules)
    assert set(table) == set(rules) | {"best level (labels; ceiling)"}
    assert table["max prob (default)"] == [1.0, 1.0] and table["best level (labels; ceiling)"] == [0.5, 0.5]


def test_pyramid_option_parses_factors_and_rejects_bad_ones(selection):
    import argparse

    assert selection._factors("1, 0.5,0.25") == [1.0, 0.5, 0.25]
    for bad in ("1,x", "", "1,-0.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="pyramid factors"):
            selection._factors(bad)


def test_a_trained_pyramid_model_evaluates_with_other_factors():
    """The pyramid has no parameters: the same weights run a finer pyramid at test time (what ``--pyramid`` does)."""
    import msresnet
    from msresnet.layers import ImagePyramid

    model = msresnet.create_model("msresnet8", num_classes=3, in_chans=1, width=0.25).eval()
    trained_keys = set(model.state_dict())
    finer = [2 ** (-k / 4) for k in range(9)]
    model.pyramid = ImagePyramid(finer, model.pyramid.min_size, model.pyramid.crop_upscaled)
    assert set(model.state_dict()) == trained_keys  # nothing new to load
    with torch.no_grad():
        assert model.forward_scales(torch.randn(2, 1, 64, 64)).shape == (2, 9, 3)
