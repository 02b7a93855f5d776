"""Where msresnet keeps downloaded and generated data, and how it writes there safely.

The cache directory is ``$MSRESNET_CACHE`` if set, else ``$XDG_CACHE_HOME/msresnet``, else ``~/.cache/msresnet``.
Writes go to a temporary file in the destination directory followed by :func:`os.replace`, so a crash or a second
process never leaves a half-written array that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from msresnet._atomic import atomic_write

__all__ = ["atomic_write_bytes", "cache_dir", "file_md5", "load_npz", "save_npz", "stable_hash"]


def cache_dir() -> Path:
    """The user cache directory for msresnet (not created here)."""
    if os.environ.get("MSRESNET_CACHE"):
        return Path(os.environ["MSRESNET_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "msresnet"


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hex digest of a JSON-able object, independent of dict order (used as a cache key)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """MD5 of a file's bytes (the official dataset hashes are MD5)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, write_fn) -> None:
    """Call ``write_fn(file_object)`` on a temporary file next to ``path``, then rename it over ``path`` (the
    package's one writer, :func:`msresnet._atomic.atomic_write`; the directory is created)."""
    atomic_write(path, write_fn, make_parents=True)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Atomically save arrays as an uncompressed ``.npz`` (uncompressed: loading is a memcpy, not a decode)."""
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


# What reading a damaged .npz raises: a truncated zip (BadZipFile), a member cut short (EOFError, ValueError), a
# missing member (KeyError), random bytes (OSError, ValueError), a pickled member refused (ValueError).
DAMAGED = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def load_npz(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray] | None:
    """Load an ``.npz`` written by :func:`save_npz` (only ``keys`` when given, every member must then be there);
    ``None`` when it is missing or damaged in any way: a cache entry that fails to load is regenerated, never an
    error (it is not the user's data)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in (keys if keys is not None else z.files)}
    except DAMAGED:
        return None
