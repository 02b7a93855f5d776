"""What ``--resume`` continues: the stored config, the options that may change, and the weights it leaves behind.

The training state (``checkpoints/last.state.pt``) is the authority on what a run computes: every checkpoint stores
the config the run was computing with. A resume starts from that config and takes the user's options on top
(:func:`resume_values`), so ``train --out RUN --resume`` needs no other option and works without ``config.yaml``.
:func:`check_resume` then refuses, in one line, any option that would change what the run computes; the ones that
may change (:data:`~msresnet.engine.config.RESUME_MUTABLE`: more epochs, logging, device, ...) are recorded in
``config.yaml`` as a resume event (:func:`write_run_config`), whose fields keep describing the original launch.

A resumed run also leaves usable weights behind: :func:`rebuild_weights` rewrites a ``NAME.safetensors`` that is
missing, unreadable or older than its state file (a kill between the two atomic writes, a deleted file) from the
state file, which holds the same weights.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open

from msresnet.engine.checkpoint import (
    META_KEY,
    CheckpointInfo,
    atomic_write_bytes,
    load_state,
    save_weights,
)
from msresnet.engine.config import (
    PROVENANCE_KEY,
    RESUME_MUTABLE,
    TrainConfig,
    read_text,
    to_yaml,
    validate_config,
)
from msresnet.engine.provenance import provenance
from msresnet.errors import UserError

__all__ = ["check_resume", "rebuild_weights", "resume_values", "stored_config", "write_run_config"]

_NOT_RECORDED = ("out", "resume")  # where and how this process was started, not what the run is


def _config_yaml(run: Path) -> dict[str, Any] | None:
    """``RUN/config.yaml`` as a dict (provenance included), or None when it is missing or unreadable."""
    path = run / "config.yaml"
    if not path.is_file():
        return None
    try:
        loaded = yaml.safe_load(read_text(path, "config"))
    except (UserError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def stored_config(run: str | Path) -> dict[str, Any] | None:
    """The config a run was computing with: its last training state's record, else its ``config.yaml``.

    Returns:
        The config fields (no provenance), or None when the run has neither (nothing to resume) or neither is
        readable (the engine then refuses the state file by name).
    """
    run = Path(run)
    state = run / "checkpoints" / "last.state.pt"
    if state.is_file():
        try:  # memory-mapped: only the small config record is read, not the weights and optimizer state
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                saved = torch.load(state, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError):  # fmt: skip
            saved = None
        if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
            return dict(saved["config"])
    loaded = _config_yaml(run)
    if loaded is None:
        return None
    loaded.pop(PROVENANCE_KEY, None)
    return loaded


def resume_values(run: str | Path, given: Mapping[str, Any]) -> dict[str, Any] | None:
    """The config values of ``train --resume``: the run's stored config with the options the user gave on top.

    Args:
        run: the run directory.
        given: the options the user set (recipe values and command-line options; None means not given).

    Returns:
        The merged values (validate them with :func:`~msresnet.engine.config.validate_config`), or None when the
        run has no stored config (a new run).
    """
    stored = stored_config(run)
    if stored is None:
        return None
    known = set(TrainConfig.__dataclass_fields__)
    values = {k: v for k, v in stored.items() if k in known}
    values.update({k.replace("-", "_"): v for k, v in given.items() if v is not None})
    return values


def _same(key: str, old: Any, new: Any) -> bool:
    if key == "data_root" and old is not None and new is not None:
        return os.path.realpath(str(old)) == os.path.realpath(str(new))
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return list(old) == list(new)
    return old == new


def check_resume(cfg: TrainConfig, stored: Mapping[str, Any], run: str | Path) -> dict[str, tuple[Any, Any]]:
    """Compare a resume's config with the config the run was computing with.

    Returns:
        ``{field: (stored value, new value)}`` for the fields that may change on resume and did (e.g. more epochs).

    Raises:
        UserError: a field that defines what the run computes differs (one line naming it and both values).
    """
    current = cfg.to_dict()
    changes: dict[str, tuple[Any, Any]] = {}
    for key, old in stored.items():
        if key not in current or key in _NOT_RECORDED or _same(key, old, current[key]):
            continue
        if key not in RESUME_MUTABLE:
            raise UserError(
                f"cannot resume {run}: it was trained with {key}={old!r}, not {current[key]!r} (on resume only "
                f"{', '.join(k for k in RESUME_MUTABLE if k not in _NOT_RECORDED)} may change; use a new --out "
                "for a different run)"
            )
        changes[key] = (old, current[key])
    return changes


def write_run_config(
    cfg: TrainConfig,
    run: Path,
    checksum: str | None,
    world_size: int,
    resumed_at: int | None = None,
    changes: Mapping[str, tuple[Any, Any]] | None = None,
    stored: Mapping[str, Any] | None = None,
) -> None:
    """Write ``RUN/config.yaml``: the config with its provenance for a new run; for a resume, a resume event
    (step, time, revision, changed options) appended to the original record, whose fields stay as launched.

    Args:
        cfg: the config this process runs.
        run: the run directory.
        checksum: the protocol's data checksum (provenance).
        world_size: processes of the job (provenance).
        resumed_at: the step a resume continues from; None for a new run.
        changes: the resume's changed options (:func:`check_resume`).
        stored: the config the run was computing with, used to rebuild a missing or damaged ``config.yaml``.
    """
    prov = provenance(checksum, world_size)
    if resumed_at is None:
        atomic_write_bytes(run / "config.yaml", to_yaml(cfg, prov).encode())
        return
    event: dict[str, Any] = {
        "step": resumed_at,
        "created": prov["created"],
        "git_revision": prov["git_revision"],
        "command": prov["command"],
    }
    if changes:
        event["changed"] = {k: {"from": a, "to": b} for k, (a, b) in changes.items()}
    record = _config_yaml(run)
    if record is None:  # missing or damaged: rebuilt from the training state's record of the run
        base = validate_config({**dict(stored or cfg.to_dict()), "out": cfg.out, "resume": False})
        note = "config.yaml was missing or unreadable at a resume; rebuilt from the training state"
        text = to_yaml(base, {**prov, "resumes": [event], "rebuilt": note})
    else:
        first = record.get(PROVENANCE_KEY) if isinstance(record.get(PROVENANCE_KEY), dict) else {}
        record[PROVENANCE_KEY] = {**first, "resumes": [*first.get("resumes", []), event]}
        text = yaml.safe_dump(record, sort_keys=False)
    atomic_write_bytes(run / "config.yaml", text.encode())


def _weights_step(file: Path) -> int | None:
    """The step recorded in a weights file, or None when it is missing or unreadable (safetensors checks at open
    that the header covers the whole file, so a truncated file fails here)."""
    if not file.is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as fh:
            meta = fh.metadata() or {}
        return int(CheckpointInfo.from_json(meta[META_KEY]).step)
    except (SafetensorError, OSError, ValueError, TypeError, KeyError, UserError):
        return None


def rebuild_weights(
    ckdir: Path,
    kind: str,
    info: CheckpointInfo,
    state: Mapping[str, Any] | None = None,
    allowed: Collection[str] = (),
) -> bool:
    """Rewrite ``ckdir/KIND.safetensors`` from ``ckdir/KIND.state.pt`` when it is missing, unreadable or from
    another step than the state (the state is written first, the weights last).

    Args:
        ckdir: the run's checkpoint directory.
        kind: ``"last"`` or ``"best"``.
        info: the run's checkpoint info (epoch, step and accuracy are taken from the state).
        state: the already loaded state of ``kind``, if the caller has it.
        allowed: the model's NaN-marker buffers (:func:`~msresnet.engine.checkpoint.allowed_nonfinite`).

    Returns:
        True when the weights file was rewritten.
    """
    state_file = ckdir / f"{kind}.state.pt"
    if state is None:
        if not state_file.is_file():
            return False
        state = load_state(state_file)
    if _weights_step(ckdir / f"{kind}.safetensors") == state["global_step"]:
        return False
    rows = state.get("rows") or []
    val_acc = rows[-1]["val_acc"] if rows else None
    info = dataclasses.replace(info, epoch=state["epoch"], step=state["global_step"], val_acc=val_acc, path=None)
    weights = state.get("ema", state["model"])  # with an EMA the averaged weights are the run's model
    save_weights(ckdir / f"{kind}.safetensors", weights, info, allowed)
    return True
