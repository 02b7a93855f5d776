"""Multi-process training under ``torchrun``: process group, DDP, sharding, metric reduction.

The training command is the same with one process or N: ``torchrun --nproc_per_node=N -m msresnet train ...``.
torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :meth:`DistContext.from_env` then joins the process group
(gloo on CPU, NCCL on CUDA). Each rank takes every ``world_size``-th index of the epoch's shared permutation,
padded to equal length as ``DistributedSampler`` does, so every rank runs the same number of steps; gradients are
averaged by DDP; rank 0 alone writes files and logs. Validation shards the images without padding and sums the
correct counts over ranks, so its accuracy is exactly what one process would measure.

Faults: every collective waits at most ``dist_timeout`` seconds (the process group's timeout). A rank that dies
(even by SIGKILL) closes its sockets, so its peers' next collective fails at once; one that hangs makes them fail
when the timeout expires. Either way :meth:`DistContext.raise_if_peer_failure` turns the backend's error into one
:class:`PeerLost` line and the rank exits, instead of waiting forever. Rank 0 writes every checkpoint atomically,
so the run resumes from its last one; only with the same number of processes, since the per-process batches, the
steps per epoch and the learning-rate schedule all depend on it (:meth:`DistContext.check_resume_world_size`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from msresnet.errors import UserError

# What gloo's and NCCL's errors say when a peer is gone or silent (they are plain RuntimeErrors, not DistErrors).
# gloo's "Application timeout caused pair closure" (a silent peer, seen in DDP's buffer broadcast) names no backend.
_PEER_FAILURE_MARKS = ("gloo", "nccl", "NCCL", "Connection closed", "Connection reset", "Broken pipe", "imed out",
                       "pair closure")  # fmt: skip


class PeerLost(UserError):
    """Another rank of the job died or stopped answering, so this rank stopped too."""


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank is gone or silent (not a bug in this rank)."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _PEER_FAILURE_MARKS)


def _reason(exc: BaseException) -> str:
    """The backend's first sentence, without gloo's ``[source/file.cc:123]`` prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")[:200]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Turn ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"`` into a device, refusing ones that are not there."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available (use --device cpu)")
        if name == "cuda":
            name = f"cuda:{local_rank}"
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' requested but MPS is not available")
    return torch.device(name)


@dataclass
class DistContext:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and logs."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto", timeout: float | None = None) -> DistContext:
        """Join the torchrun process group if the environment says so, else a single process on ``device``.

        ``timeout``: seconds any collective may wait for the other ranks (None: torch's default).

        Raises:
            PeerLost: the other ranks never joined within the timeout.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device, local)
        if world <= 1:
            return cls(device=dev)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        owns = False
        if not dist.is_initialized():
            kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timedelta(seconds=timeout)}
            try:
                dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", **kwargs)
            except RuntimeError as e:
                if not is_peer_failure(e):
                    raise
                raise PeerLost(f"rank {rank} of {world}: the other ranks did not join ({_reason(e)})") from None
            owns = True
        return cls(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def raise_if_peer_failure(self, exc: BaseException, run: str | Path) -> None:
        """Re-raise a collective's failure (a peer died, or hung past the timeout) as one :class:`PeerLost` line
        saying how to resume ``run``; returns for any other error, which the caller re-raises as it is."""
        if not self.enabled or not is_peer_failure(exc):
            return
        last = Path(run) / "checkpoints" / "last.state.pt"
        how = (
            f"continue from rank 0's last checkpoint with --resume and the same {self.world_size} processes"
            if last.exists()
            else "no checkpoint was written yet"
        )
        raise PeerLost(
            f"rank {self.rank} of {self.world_size}: another rank died or stopped answering ({_reason(exc)}); "
            f"stopped, {how}"
        ) from None

    def check_resume_world_size(self, run: str | Path, recorded: int | None = None) -> None:
        """Refuse to resume ``run`` with another number of processes than it was trained with (the world size its
        ``config.yaml`` records from the first launch; without a readable one, ``recorded``: what the training
        state says).

        Raises:
            UserError: the numbers differ.
        """
        saved = _provenance_world_size(Path(run))
        if saved is None:
            saved = recorded
        if saved is None or saved == self.world_size:
            return
        how = "as one process, without torchrun" if saved == 1 else f"with {saved} processes in all under torchrun"
        raise UserError(
            f"cannot resume {run} with {self.world_size} process(es): it was trained with {saved}, and its batches, "
            f"steps per epoch and learning-rate schedule depend on that; resume it {how}, or start a new --out"
        )

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return list(values)
        backend_dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=backend_dev)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any_true(self, flag: bool) -> bool:
        """True on every rank when it is true on any (used to stop all ranks together)."""
        return bool(self.all_reduce_sum([float(flag)])[0]) if self.enabled else flag

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP-wrap ``model`` when distributed (buffers such as BatchNorm statistics follow rank 0: DDP's default,
        left implicit because naming it is deprecated, with a FutureWarning from every rank)."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def broadcast_module(self, model: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (before validation and saving)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)

    def shard_train(self, perm: torch.Tensor) -> torch.Tensor:
        """This rank's share of an epoch permutation, padded by wrap-around so all ranks get the same count."""
        if not self.enabled:
            return perm
        n = perm.numel()
        total = -(-n // self.world_size) * self.world_size
        if total > n:
            perm = torch.cat([perm, perm[: total - n]])
        return perm[self.rank : total : self.world_size]

    def shard_eval(self, n: int) -> torch.Tensor:
        """This rank's indices of ``range(n)`` for evaluation (no padding, so nothing is counted twice)."""
        return torch.arange(self.rank, n, self.world_size)


def _provenance_world_size(run: Path) -> int | None:
    import yaml

    try:
        saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):  # missing, not UTF-8 or not YAML: nothing recorded
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("provenance"), dict):
        return None
    world = saved["provenance"].get("world_size")
    return int(world) if isinstance(world, int) else None
