"""What several commands share: reading a checkpoint argument, choosing the device, where results go."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from msresnet._info import info_value
from msresnet.errors import UserError

__all__ = ["PROG", "as_paths", "checkpoint_path", "info_value", "resolve_device", "run_dir_of", "terminal_width"]

PROG = "msresnet"


def checkpoint_path(raw: str) -> Path:
    """A run directory or a .safetensors file given on the command line, checked to exist."""
    p = Path(raw)
    if not p.exists():
        raise UserError(f"no such run directory or checkpoint: {p}")
    if p.is_file() and p.suffix != ".safetensors":
        raise UserError(f"{p} is not a .safetensors checkpoint or a run directory")
    return p


def run_dir_of(path: Path) -> Path:
    """Where eval results go: the run directory for a run or one of its checkpoints, else the checkpoint's folder."""
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").exists():
        return path.parent.parent
    return path.parent


def resolve_device(name: str | None) -> str:
    """``--device``: ``auto`` picks CUDA when there is one; a device that is not there is a user error. The one
    resolver, :func:`msresnet.engine.distributed.resolve_device`, as the string the commands pass on."""
    from msresnet.engine.distributed import resolve_device as _resolve

    return str(_resolve(name or "auto"))


def as_paths(written: Any) -> list[Path]:
    """What a writer returned (a path, a list or a dict of paths, or None) as a list of paths."""
    if written is None:
        return []
    if isinstance(written, (str, Path)):
        return [Path(written)]
    if isinstance(written, dict):
        return [Path(v) for v in written.values()]
    return [Path(v) for v in written]


def terminal_width() -> int:
    return shutil.get_terminal_size((100, 20)).columns
