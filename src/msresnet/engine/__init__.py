"""Training and evaluation engine: config, training loop, checkpoints, scale-sweep evaluation, torchrun support.

Public entry points: :func:`~msresnet.engine.config.load_train_config`, :func:`~msresnet.engine.train.train`,
:func:`~msresnet.engine.checkpoint.load_checkpoint` (model, preprocessing, class names, info),
:func:`~msresnet.engine.checkpoint.load_model`, :func:`~msresnet.engine.checkpoint.read_checkpoint_info`,
:func:`~msresnet.engine.evaluate.evaluate_sweep`, :func:`~msresnet.engine.evaluate.evaluate_scales` (which scale
carries each decision), :func:`~msresnet.engine.evaluate.write_eval` and
:func:`~msresnet.engine.calibrate.calibrate_checkpoint` (fit a pyramid model's object-scale probe). Submodules are
imported lazily so that ``import msresnet`` stays light.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "load_train_config": "config",
    "train": "train",
    "NonFiniteError": "checkpoint",
    "TrainState": "state",
    "TrainingInterrupted": "signals",
    "CheckpointInfo": "checkpoint",
    "CheckpointWriteError": "checkpoint",
    "load_model": "checkpoint",
    "load_checkpoint": "checkpoint",
    "LoadedCheckpoint": "checkpoint",
    "read_checkpoint_info": "checkpoint",
    "evaluate_sweep": "evaluate",  # the evaluation core, msresnet.evaluate (engine.evaluate re-exports it)
    "evaluate_scales": "evaluate",
    "write_eval": "evaluate",
    "ValidationSweep": "evaluate",
    "calibrate_model": "calibrate",
    "calibrate_checkpoint": "calibrate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"msresnet.engine.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'msresnet.engine' has no attribute {name!r}")
