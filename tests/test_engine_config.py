"""TrainConfig loading and validation: every mistake is a one-line UserError naming the key."""

from __future__ import annotations

import pytest
import yaml

from msresnet.engine.config import TrainConfig, load_train_config, to_yaml
from msresnet.engine.provenance import provenance
from msresnet.errors import UserError

BASE = {"model": "resnet8", "out": "runs/x"}


def test_defaults_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: resnet8\nout: runs/a\nlr: 1e-3\nepochs: 3\nrescale_aug: [0.5, 2]\n")
    cfg = load_train_config(recipe, {"epochs": 5, "batch_size": None, "degrade-aug": "0.5,1.0"})
    assert isinstance(cfg, TrainConfig)
    assert cfg.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string; it is coerced
    assert cfg.epochs == 5  # override wins
    assert cfg.batch_size == TrainConfig().batch_size  # None overrides are ignored
    assert cfg.rescale_aug == (0.5, 2.0)
    assert cfg.degrade_aug == (0.5, 1.0)


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"learning_rate": 0.1}, "unknown config key 'learning_rate'"),
        ({"epoch": 3}, "did you mean 'epochs'"),
        ({"epochs": -3}, "'epochs' must be >= 1"),
        ({"epochs": 2.5}, "expected an integer"),
        ({"lr": 0}, "'lr' must be > 0"),
        ({"lr": "fast"}, "expected a number"),
        ({"optimizer": "adam"}, "is not one of 'adamw', 'sgd'"),
        ({"amp": "fp8"}, "'amp'"),
        ({"deterministic": "maybe"}, "expected true/false"),
        ({"rescale_aug": [2.0, 0.5]}, "0 < lo <= hi"),
        ({"rescale_aug": [1.0]}, "expected 2 values"),
        ({"label_smoothing": 1.5}, "in [0, 1)"),
        ({"device": "tpu"}, "'device'"),
        ({"model": ""}, "no model given"),
        ({"model_kwargs": 3}, "expected a mapping"),
    ],
)
def test_bad_values_are_user_errors(over, needle):
    with pytest.raises(UserError) as e:
        load_train_config(None, {**BASE, **over})
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg


def test_bad_yaml_files(tmp_path):
    with pytest.raises(UserError, match="cannot read config"):
        load_train_config(tmp_path / "missing.yaml", BASE)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_train_config(bad, BASE)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a mapping"):
        load_train_config(lst, BASE)


def test_yaml_round_trip_with_provenance(tmp_path):
    cfg = load_train_config(None, {**BASE, "rescale_aug": [0.5, 2.0], "amp": "bf16", "model_kwargs": {"width": 8}})
    text = to_yaml(cfg, provenance("abc123"))
    saved = yaml.safe_load(text)
    assert saved["provenance"]["protocol_checksum"] == "abc123"
    assert {"torch", "torchvision", "timm", "msresnet"} <= set(saved["provenance"]["versions"])
    assert "hostname" in saved["provenance"] and "git_revision" in saved["provenance"]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    again = load_train_config(path, None)  # provenance is skipped when a run's config is fed back
    assert again == cfg


def test_example_recipes_validate():
    """Every recipe in configs/ loads and names a registered model."""
    from pathlib import Path

    import msresnet

    recipes = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert recipes
    for path in recipes:
        cfg = load_train_config(path, {"out": "runs/x"})
        assert cfg.model in msresnet.list_models(), path
