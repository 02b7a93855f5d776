"""The one atomic file writer: readers see either the old file or the complete new one, never a partial write.

Used for checkpoints, run configs, metrics, evaluation results, scan reports and the data cache. It imports
nothing from the package, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, make_parents: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path`` (named ``.<name>.tmp-<pid>-*``), fsync it, rename it
    over ``path`` and fsync the directory, so that the rename itself survives a power cut.

    Raises:
        OSError: the write failed (e.g. disk full); ``path`` is untouched and the temporary file removed. Any other
            exception from ``write`` also leaves ``path`` untouched.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as fh:  # a fresh name, with the permissions any new file gets
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened for fsync
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, make_parents: bool = False) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda fh: fh.write(data), make_parents=make_parents)
