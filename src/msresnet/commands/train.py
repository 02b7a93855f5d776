"""``msresnet train``: the run's configuration from a recipe and options, checked before any data is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msresnet.engine.config import TrainConfig, load_train_config, read_recipe, validate_config
from msresnet.errors import UserError

__all__ = ["precheck", "train_config"]


def train_config(config: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """The configuration of a ``train`` command: the recipe file (if any) with the options on top.

    ``train --out RUN --resume`` starts from the config the run was computing with (its training state's record,
    else its ``config.yaml``; :func:`~msresnet.engine.resume.resume_values`), so it needs no other option; options
    that are given and would change what the run computes are refused by the engine before anything is trained.

    Raises:
        UserError: the recipe file does not exist, or the configuration is invalid.
    """
    if config is not None and not Path(config).is_file():
        raise UserError(f"config file not found: {config}")
    if overrides.get("resume") and overrides.get("out"):
        from msresnet.engine.resume import resume_values

        given = {**(read_recipe(config) if config is not None else {}), **overrides}
        values = resume_values(Path(overrides["out"]), given)
        if values is not None:
            return validate_config(values)
    return load_train_config(config, overrides)


def precheck(cfg: TrainConfig) -> None:
    """Fail in milliseconds on a wrong model name, protocol name or data directory, before any data is built."""
    import msresnet
    from msresnet.data import build_protocol, list_protocols
    from msresnet.models.timm_trunk import is_timm_spec, timm_name

    if is_timm_spec(cfg.model):
        timm_name(cfg.model)  # raises the UserError with close matches
    elif cfg.model not in msresnet.list_models():
        msresnet.create_model(cfg.model)  # raises the UserError with a close-match suggestion
        raise UserError(f"unknown model {cfg.model!r} (see 'msresnet models')")
    if cfg.protocol not in list_protocols():
        build_protocol(cfg.protocol)  # raises the UserError with a close-match suggestion
        raise UserError(f"unknown protocol {cfg.protocol!r}; known: {', '.join(list_protocols())}")
    if cfg.data_root is not None and not Path(cfg.data_root).is_dir():
        raise UserError(f"data directory not found: {cfg.data_root}")
    if cfg.pretrained_file is not None and not Path(cfg.pretrained_file).expanduser().is_file():
        raise UserError(f"pretrained weights file not found: {cfg.pretrained_file}")
