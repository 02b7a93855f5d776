"""Multi-process training under ``torchrun``: process group, DDP, sharding, metric reduction.

The training command is the same with one process or N: ``torchrun --nproc_per_node=N -m msresnet train ...``.
torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :meth:`DistContext.from_env` then joins the process group
(gloo on CPU, NCCL on CUDA). Each rank takes every ``world_size``-th index of the epoch's shared permutation,
padded to equal length as ``DistributedSampler`` does, so every rank runs the same number of steps; gradients are
averaged by DDP; rank 0 alone writes files and logs. Validation shards the images without padding and sums the
correct counts over ranks, so its accuracy is exactly what one process would measure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from msresnet.errors import UserError


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
    def from_env(cls, device: str = "auto") -> DistContext:
        """Join the torchrun process group if the environment says so, else a single process on ``device``."""
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
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
            owns = True
        return cls(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

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
        """DDP-wrap ``model`` when distributed (buffers such as BatchNorm statistics follow rank 0)."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=True)

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
