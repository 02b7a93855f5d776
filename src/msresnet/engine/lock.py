"""One writer per run directory: an exclusive ``flock`` on ``RUN/.lock`` held while a command rewrites the run.

``train`` (new or ``--resume``) and every command that rewrites a run's checkpoints (``calibrate``; new ones use
:func:`hold_run` or :func:`hold_checkpoint`) hold the lock for as long as they write. A second writer fails at once
with :class:`RunLocked`, one line naming the process and host that hold the run. The lock is the kernel's
(``fcntl.flock``): it is released when its holder exits, however it exits, so a ``kill -9`` never leaves a stale
lock behind and no one ever has to delete ``.lock`` by hand. The file's content (holder PID, host, command, start
time) is only there for the message.

Readers (evaluate, predict, export, report, scan) never take the lock: every checkpoint, ``metrics.csv`` and
``config.yaml`` write replaces the file atomically (:func:`~msresnet.engine.checkpoint.atomic_write_bytes`), so a
reader sees the previous complete file or the new one.

The lock is re-entrant within one process (``train`` calibrating its own checkpoints at the end takes it again).
Under ``torchrun`` only rank 0 touches the file: pass the job's :class:`~msresnet.engine.distributed.DistContext`
and every rank learns rank 0's outcome through one collective, so all ranks fail together and none waits on a
rank that has already given up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msresnet.errors import UserError

if TYPE_CHECKING:
    from msresnet.engine.distributed import DistContext

LOCK_NAME = ".lock"

_held: dict[str, list[Any]] = {}  # lock file (resolved) -> [fd, depth]: re-entry within this process
_guard = threading.Lock()


class RunLocked(UserError):
    """Another process is writing this run directory (it holds ``RUN/.lock``)."""


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run directory a checkpoint file belongs to (``RUN/checkpoints/NAME.safetensors``), None for a loose file."""
    file = Path(checkpoint)
    return file.parent.parent if file.parent.name == "checkpoints" else None


def _holder(fd: int) -> dict[str, Any]:
    """What the holder wrote into the lock file (it writes right after locking: retry briefly if still empty)."""
    for _ in range(10):
        try:
            text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            if text:
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}


def _describe(run: Path, holder: dict[str, Any]) -> str:
    who = f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    what = f" ({holder['command']} since {holder['since']})" if holder.get("command") and holder.get("since") else ""
    return (
        f"run directory {run} is being written by {who}{what}; wait for it to finish, stop it, or choose another --out"
    )


def acquire(run: str | Path, command: str = "train") -> Path:
    """Take the exclusive lock of ``run`` (created if missing) for this process, or raise :class:`RunLocked`.

    Re-entrant: a process that already holds the lock only deepens it. Pair every call with :func:`release`
    (or use :func:`hold_run`).

    Raises:
        RunLocked: another process holds the run.
        UserError: the run directory cannot be created or the lock file cannot be opened.
    """
    run = Path(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
        key = str((run / LOCK_NAME).resolve())
    except OSError as e:
        raise UserError(f"cannot create run directory {run}: {e.strerror or e}") from None
    with _guard:
        if key in _held:
            _held[key][1] += 1
            return run
        try:
            fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot open the lock file {key}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLocked(_describe(run, holder)) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError:
            pass  # a full disk must not stop the run from being locked; the message then names no holder
        _held[key] = [fd, 1]
    return run


def release(run: str | Path) -> None:
    """Undo one :func:`acquire` of ``run``; the last one empties the record and unlocks (no-op if not held)."""
    key = str((Path(run) / LOCK_NAME).resolve())
    with _guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
        fd = entry[0]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a later reader never mistakes a finished writer for the holder
        os.close(fd)  # closing the descriptor releases the flock


@contextmanager
def hold_run(run: str | Path, command: str = "train", ctx: DistContext | None = None) -> Iterator[Path]:
    """Hold ``run``'s writer lock for the ``with`` block; with a distributed ``ctx``, rank 0 holds it for the job.

    Every rank of a distributed job must enter together: rank 0 tries the lock, then one all-reduce tells every
    rank whether it succeeded, so a refusal (or any failure of rank 0 while trying) stops all ranks at once.

    Raises:
        RunLocked: another process holds the run (on rank 0 with the holder's PID and host; other ranks say so).
        UserError: the run directory or lock file cannot be created.
    """
    distributed = ctx is not None and ctx.enabled
    error: BaseException | None = None
    held = False
    if ctx is None or ctx.is_main:
        try:
            acquire(run, command)
            held = True
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
            if not distributed:
                raise
            error = e
    try:
        if distributed and ctx.any_true(error is not None):
            if error is not None:
                raise error
            raise RunLocked(f"rank 0 could not take the writer lock of {Path(run)}; see its message")
        yield Path(run)
    finally:
        if held:
            release(run)


@contextmanager
def hold_checkpoint(checkpoint: str | Path, command: str) -> Iterator[Path | None]:
    """Hold the writer lock of the run a checkpoint file belongs to while rewriting it (for commands such as
    ``calibrate``). A loose ``.safetensors`` outside any run directory needs none: its rewrite is atomic anyway.

    Raises:
        RunLocked: a training (or another rewrite) of that run is in progress.
    """
    from msresnet.engine.checkpoint import remove_stale_temp_files

    run = run_dir_of(checkpoint)
    if run is None:
        yield None
        return
    with hold_run(run, command):
        # the holder is the only writer: a temp file in the run is what a killed writer left behind
        remove_stale_temp_files(Path(checkpoint).parent)
        yield run
