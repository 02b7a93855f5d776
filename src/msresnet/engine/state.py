"""The training run's state as one object: weights, optimizer, progress counters, the epoch's metrics, randomness.

:class:`TrainState` is what a checkpoint's ``last.state.pt`` holds (:meth:`TrainState.state_dict`) and what
``--resume`` restores (:meth:`TrainState.load_state_dict`); :func:`save_checkpoint` writes it with the weights.

Randomness has one mechanism, :class:`StepRandomness`: before every optimizer step, every generator the step draws
from (torch's global ones, NumPy's, Python's and the augmentation generator) is reseeded from ``(seed, rank,
step)``. Together with batch orders that are a function of ``(seed, epoch)`` and a learning rate that is a function
of the step, a resumed run computes exactly what the uninterrupted run computes, on any rank, without storing
generator bytes; the state file records only which seed the randomness derives from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msresnet.engine.checkpoint import (
    CheckpointInfo,
    NonFiniteError,
    allowed_nonfinite,
    describe_kept,
    nonfinite_tensors,
    plain_state_dict,
    save_state,
    save_weights,
)
from msresnet.engine.config import TrainConfig
from msresnet.engine.distributed import DistContext
from msresnet.engine.step import StepResult
from msresnet.errors import UserError

STEP_SEED = "step_seed(seed, rank, step)"  # recorded in the state file: how the step's randomness is derived


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of all randomness in one training step (fits in 63 bits, distinct per rank and step)."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729 + 12_345) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StepRandomness:
    """The run's randomness: every step reseeds all generators from ``(seed, rank, step)``.

    Attributes:
        augment: the generator batch augmentation draws from (dropout and the scale-invariance loss's second view
            draw from torch's global generator).
    """

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank = seed, rank
        self.augment = torch.Generator()

    def reseed(self, step: int) -> None:
        """Make everything random in step ``step`` a function of ``(seed, rank, step)`` alone."""
        s = step_seed(self.seed, self.rank, step)
        seed_everything(s)
        self.augment.manual_seed(s)

    def state_dict(self) -> dict[str, Any]:
        """How each stream is derived (global generators: ``rng``; augmentation: ``aug_rng``), not its bytes."""
        record = {"derivation": STEP_SEED, "seed": self.seed}
        return {"rng": record, "aug_rng": {**record, "stream": "augmentation"}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a state whose randomness derives from another seed (state files from before this record are
        accepted: their generator bytes are not needed, each step reseeds)."""
        for key in ("rng", "aug_rng"):
            saved = state.get(key)
            if isinstance(saved, dict) and "seed" in saved and saved["seed"] != self.seed:
                raise UserError(
                    f"cannot resume: the training state was written with seed={saved['seed']}, not {self.seed}"
                )


@dataclass
class EpochMeter:
    """Running sums of the current epoch (one rank's, or all ranks' after :meth:`reduced`)."""

    loss_sum: float = 0.0  # loss x images
    correct: float = 0.0
    images: float = 0.0

    def add(self, result: StepResult) -> None:
        """Count an applied step (skipped steps do not count)."""
        if result.skipped is None:
            self.loss_sum += result.loss * result.images
            self.correct += result.correct
            self.images += result.images

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.images)

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.images)

    def to_list(self) -> list[float]:
        return [self.loss_sum, self.correct, self.images]

    def reduced(self, ctx: DistContext) -> EpochMeter:
        """The sums over all ranks (a collective: every rank calls it)."""
        return EpochMeter(*ctx.all_reduce_sum(self.to_list()))


@dataclass
class TrainState:
    """Everything a run needs to continue exactly: model, optimizer, grad scaler, randomness and progress.

    Attributes:
        epoch: epochs completed.
        batch_in_epoch: batches of the current epoch done.
        global_step: optimizer steps done (skipped non-finite steps included).
        rows: one metrics row per completed epoch (``metrics.csv``).
        best_acc: best validation accuracy so far (-1 before the first validation).
        meter: this rank's sums over the current epoch's batches.
        seconds_in_epoch: training time spent in the current epoch (a resumed epoch reports the whole epoch's).
        ema: the weights' moving average (``timm.utils.ModelEmaV3``), or None.
        sampler: a streamed folder's batch sampler (its ``state_dict(batch_in_epoch)`` is saved), or None.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    rng: StepRandomness
    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    meter: EpochMeter = field(default_factory=EpochMeter)
    seconds_in_epoch: float = 0.0
    ema: nn.Module | None = None
    sampler: Any = None

    def state_dict(self, meter: EpochMeter | None = None) -> dict[str, Any]:
        """Plain tensors and containers (loadable with ``weights_only=True``); ``meter`` replaces this rank's sums
        (a mid-epoch checkpoint stores all ranks' sums)."""
        state = {
            "model": plain_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "rows": self.rows,
            "best_acc": self.best_acc,
            "sums": (meter or self.meter).to_list(),
            "seconds_in_epoch": self.seconds_in_epoch,
            **self.rng.state_dict(),
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = plain_state_dict(self.ema.module)
        if self.sampler is not None:
            state["sampler"] = self.sampler.state_dict(self.batch_in_epoch)
        return state

    def load_state_dict(self, state: dict[str, Any], *, main: bool = True) -> None:
        """Restore from :meth:`state_dict` output. The saved sums are all ranks' totals: rank 0 (``main``) takes
        them, the other ranks start from zero, so the reduced epoch metrics come out the same."""
        self.rng.load_state_dict(state)
        if self.sampler is not None and "sampler" in state:
            self.sampler.check_state(state["sampler"])
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            # a run that had no average yet starts it from the resumed weights
            self.ema.module.load_state_dict(state.get("ema", state["model"]))
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch, self.global_step = (
            state["epoch"],
            state["batch_in_epoch"],
            state["global_step"],
        )
        self.rows, self.best_acc = list(state["rows"]), state["best_acc"]
        self.meter = EpochMeter(*state["sums"]) if main else EpochMeter()
        self.seconds_in_epoch = state.get("seconds_in_epoch", 0.0)

    def finish_step(self, result: StepResult) -> None:
        """Count one step (applied or skipped) and its metrics."""
        self.meter.add(result)
        self.global_step += 1
        self.batch_in_epoch += 1

    def finish_epoch(self, row: dict[str, Any]) -> bool:
        """Record the epoch's metrics row and start the next epoch; True when validation accuracy improved."""
        self.epoch += 1
        self.rows.append(row)
        self.batch_in_epoch, self.meter, self.seconds_in_epoch = 0, EpochMeter(), 0.0
        improved = row["val_acc"] > self.best_acc
        self.best_acc = max(self.best_acc, row["val_acc"])
        return improved


def save_checkpoint(
    ckdir: Path,
    kind: str,
    state: TrainState,
    info: CheckpointInfo,
    cfg: TrainConfig,
    meter: EpochMeter | None = None,
    world_size: int = 1,
) -> None:
    """Write checkpoint ``kind`` (``last``/``best``): the state file first, the weights last, both atomic. The
    state records the config and the number of processes the run computes with (what ``--resume`` checks).

    Call on rank 0 only. Raises :class:`~msresnet.engine.checkpoint.NonFiniteError` instead of replacing a good
    checkpoint by one with a non-finite parameter or buffer (a finite loss and gradient can still overflow in the
    update, or in a BatchNorm's running statistics); nothing is written then.
    """
    models = [state.model] if state.ema is None else [state.model, state.ema.module]
    bad = [k for m in models for k in nonfinite_tensors(m.state_dict(), allowed_nonfinite(m))]
    if bad:
        raise NonFiniteError(
            f"weights became non-finite by step {state.global_step} ({len(bad)} tensor(s), e.g. {bad[0]}); stopped, "
            f"{describe_kept(ckdir)} (start a new run with a lower learning rate)"
        )
    info.epoch, info.step = state.epoch, state.global_step
    info.val_acc = state.rows[-1]["val_acc"] if state.rows else None
    record = {"config": cfg.to_dict(), "world_size": world_size}
    save_state(ckdir / f"{kind}.state.pt", {**state.state_dict(meter), **record})
    # with an EMA the averaged weights are the run's model (validated and saved); the raw ones live in the state
    save_weights(ckdir / f"{kind}.safetensors", state.ema.module if state.ema is not None else state.model, info)


def save_mid_epoch(ckdir: Path, state: TrainState, info: CheckpointInfo, cfg: TrainConfig, ctx: DistContext) -> None:
    """The ``last`` checkpoint in the middle of an epoch, with all ranks' partial sums so that a resumed epoch reports
    the same train loss/accuracy (a collective: every rank calls it)."""
    ctx.broadcast_module(state.model)
    meter = state.meter.reduced(ctx)
    if ctx.is_main:
        save_checkpoint(ckdir, "last", state, info, cfg, meter, ctx.world_size)
    ctx.barrier()
