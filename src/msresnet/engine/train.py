"""The training loop: :func:`train` reads top to bottom — set up, resume, epochs of steps, validate, checkpoint.

Exactness of ``--resume``: the batch order of an epoch is a function of ``(seed, epoch)``; the random state of every
step (augmentation, dropout, the scale-invariance loss's second view) is re-seeded from ``(seed, rank, step)``;
the learning rate is a function of the step; the optimizer and weights come from the state file. So a run resumed
from any checkpoint — epoch end or mid-epoch — computes exactly what the uninterrupted run computes (bit-identical
on CPU with ``deterministic: true``).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from msresnet.engine.batches import (
    Normalizer,
    TensorSplit,
    epoch_permutation,
    eval_batch_size,
    iter_batches,
    limit_split,
    num_batches,
    train_val_splits,
)
from msresnet.engine.checkpoint import (
    CheckpointInfo,
    atomic_write_bytes,
    load_state,
    plain_state_dict,
    remove_stale_temp_files,
    save_state,
    save_weights,
)
from msresnet.engine.config import PROVENANCE_KEY, RESUME_INVARIANT, TrainConfig, provenance, to_yaml
from msresnet.engine.distributed import DistContext
from msresnet.engine.lock import hold_run
from msresnet.engine.optim import build_optimizer, lr_at, set_lr
from msresnet.engine.progress import StepReporter, TensorBoardLog, log, write_metrics_csv
from msresnet.engine.signals import GracefulStop, TrainingInterrupted
from msresnet.errors import UserError

MAX_CONSECUTIVE_SKIPS = 50  # nan_policy="skip" still stops when the run has clearly diverged
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

StepHook = Callable[[int], None]
EpochHook = Callable[[int, dict[str, Any]], None]


class NonFiniteError(UserError):
    """The loss or gradient became NaN/Inf; the run stopped and the last good checkpoint was kept."""


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of all randomness in one training step (fits in 63 bits, distinct per rank and step)."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729 + 12_345) % (2**63 - 1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Global generator states as plain tensors/containers (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *[int(v) for v in np_state[2:4]],
            float(np_state[4]),
        ],
        "python": random.getstate(),
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


class _Determinism:
    """Apply ``deterministic`` / thread settings for the run and restore the process's previous ones after."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def __enter__(self) -> _Determinism:
        self.prev = (
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.benchmark,
            torch.get_num_threads(),
        )
        if self.cfg.deterministic:
            # cuBLAS needs this before its first use to be deterministic; harmless on CPU.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True
        if self.cfg.num_workers > 0:
            torch.set_num_threads(self.cfg.num_workers)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.use_deterministic_algorithms(self.prev[0])
        torch.backends.cudnn.benchmark = self.prev[1]
        torch.set_num_threads(self.prev[2])


class TrainStep(nn.Module):
    """Model + loss as one module, so one (DDP) forward call covers every pass the loss makes.

    The scale-invariance loss runs the model on two views before the backward pass; DDP expects exactly one forward
    per backward, so DDP wraps this module instead of the bare model. With ``criterion=None`` the loss is plain
    cross-entropy with label smoothing (one forward pass).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module | None, label_smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.label_smoothing = label_smoothing

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the loss and the clean view's (detached) logits."""
        if self.criterion is None:
            logits = self.model(x)
            return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing), logits.detach()
        loss, parts = self.criterion(self.model, x, y)
        return loss, parts["logits"]


def build_criterion(cfg: TrainConfig) -> nn.Module | None:
    """The scale-invariance loss when its weight is positive; None means plain cross-entropy (one forward pass)."""
    if cfg.si_weight <= 0 and cfg.si_feature_weight <= 0:
        return None
    from msresnet.losses import ScaleInvarianceLoss

    kwargs: dict[str, Any] = {
        "weight": cfg.si_weight,
        "feature_weight": cfg.si_feature_weight,
        "label_smoothing": cfg.label_smoothing,
    }
    if cfg.si_scale_range is not None:
        kwargs["scale_range"] = cfg.si_scale_range
    if cfg.si_view == "degrade":
        from msresnet.data.scaling import random_degrade

        factors = tuple(cfg.degrade_aug or (0.5, 1.0))
        # torch's global generator: the training loop reseeds it every step, so resume stays exact
        kwargs["view_fn"] = lambda x: random_degrade(x, factors, p=1.0)
    return ScaleInvarianceLoss(**kwargs)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Channels-last layout for the 4-d tensors only (``model.to(memory_format=...)`` refuses the 5-d weights of
    multi-scale layers)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.ndim == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


def _augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Batch augmentation on images in [0, 1]: random object rescale, then random detail loss."""
    if cfg.rescale_aug is None and cfg.degrade_aug is None:
        return x
    from msresnet.data import scaling

    if cfg.rescale_aug is not None:
        x = scaling.random_rescale(x, cfg.rescale_aug, generator=gen)
    if cfg.degrade_aug is not None:
        x = scaling.random_degrade(x, cfg.degrade_aug, p=cfg.degrade_p, generator=gen)
    return x


@torch.no_grad()
def validate(
    model: nn.Module, split: TensorSplit, norm: Normalizer, batch_size: int, ctx: DistContext, amp: str | None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``split`` (sharded over ranks, sums reduced: same as one process)."""
    was_training = model.training
    model.eval()
    index = ctx.shard_eval(len(split))
    loss_sum, correct = 0.0, 0.0
    autocast = _autocast(norm.device, amp)
    for idx in iter_batches(index, batch_size):
        x = norm(norm.to_unit(split.images[idx]))
        y = split.labels[idx].to(norm.device)
        with autocast:
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    loss_sum, correct = ctx.all_reduce_sum([loss_sum, correct])
    model.train(was_training)
    n = max(1, len(split))
    return loss_sum / n, correct / n


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def _check_resumable(cfg: TrainConfig, run: Path) -> None:
    """Refuse to resume a run directory made with a different model/protocol/data/batch/seed."""
    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # the state file is the authority; a damaged config.yaml is rewritten below
    current = cfg.to_dict()
    for key in RESUME_INVARIANT:
        if key in saved and saved[key] != current[key]:
            raise UserError(
                f"cannot resume {run}: it was trained with {key}={saved[key]!r}, not {current[key]!r} "
                "(use a new --out for a different run)"
            )


def _write_config(cfg: TrainConfig, run: Path, checksum: str | None, world: int, resumed_at: int | None) -> None:
    prov = provenance(checksum, world)
    old = run / "config.yaml"
    if resumed_at is not None and old.is_file():
        try:
            first = (yaml.safe_load(old.read_text()) or {}).get(PROVENANCE_KEY) or {}
        except (OSError, yaml.YAMLError):
            first = {}
        history = list(first.get("resumes", []))
        history.append({"step": resumed_at, "created": prov["created"], "git_revision": prov["git_revision"]})
        prov = {**first, "resumes": history} if first else {**prov, "resumes": history}
    atomic_write_bytes(run / "config.yaml", to_yaml(cfg, prov).encode())


def train(cfg: TrainConfig, *, on_step: StepHook | None = None, on_epoch: EpochHook | None = None) -> Path:
    """Train ``cfg.model`` on ``cfg.protocol`` and write the run directory ``cfg.out``.

    Works as one process or as every rank of a ``torchrun`` job (see :mod:`msresnet.engine.distributed`).

    Args:
        cfg: the run's configuration (``cfg.resume`` continues from ``out/checkpoints/last.state.pt``).
        on_step: called with the global step after every optimizer step (tests use it to interrupt).
        on_epoch: called with ``(epoch, metrics_row)`` after each epoch's checkpoint is written.

    Returns:
        The run directory.

    Raises:
        UserError: bad configuration, unusable run directory, another process writing it
            (:class:`~msresnet.engine.lock.RunLocked`), refused state file, non-finite loss
            (:class:`NonFiniteError`), unwritable disk (:class:`~msresnet.engine.checkpoint.CheckpointWriteError`).
        TrainingInterrupted: SIGINT/SIGTERM arrived; a checkpoint was written; ``.code`` is 130/143.
    """
    ctx = DistContext.from_env(cfg.device)
    try:
        # the writer lock comes first: the "already holds a run" test below is only sound under it
        with hold_run(cfg.out, "train", ctx), _Determinism(cfg), GracefulStop() as stop:
            return _train(cfg, ctx, stop, on_step, on_epoch)
    finally:
        ctx.close()


def _train(
    cfg: TrainConfig, ctx: DistContext, stop: GracefulStop, on_step: StepHook | None, on_epoch: EpochHook | None
) -> Path:
    from msresnet import __version__, create_model
    from msresnet.data import build_protocol

    run = Path(cfg.out)
    ckdir = run / "checkpoints"
    main = ctx.is_main
    device = ctx.device

    # ---- resume point: the state file alone is a complete, consistent checkpoint (see checkpoint.py)
    state: dict[str, Any] | None = None
    if (ckdir / "last.state.pt").exists() or (ckdir / "last.safetensors").exists():
        if not cfg.resume:
            raise UserError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
        _check_resumable(cfg, run)
        if not (ckdir / "last.state.pt").exists():
            raise UserError(f"cannot resume {run}: checkpoints/last.state.pt is missing")
        state = load_state(ckdir / "last.state.pt")
    elif cfg.resume and main:
        log(f"nothing to resume in {run}: starting a new run")
    if main:
        try:
            ckdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run directory {run}: {e.strerror or e}") from None
        remove_stale_temp_files(ckdir)
        remove_stale_temp_files(run)
        if state is None:
            write_metrics_csv(run / "metrics.csv", [])  # the run is visible (header only) before data loading

    # ---- data and model
    protocol = build_protocol(cfg.protocol, root=cfg.data_root, **cfg.protocol_params)
    train_split, val_split = train_val_splits(protocol, cfg.val_limit)
    train_split = limit_split(train_split, cfg.train_limit, cfg.limit_mode)
    norm = Normalizer(tuple(protocol.mean), tuple(protocol.std), device)

    _seed_everything(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = create_model(
        cfg.model, num_classes=protocol.num_classes, in_chans=protocol.in_chans, **cfg.model_kwargs
    ).to(device)
    if cfg.calibrate_probe:
        from msresnet.engine.calibrate import require_calibratable

        require_calibratable(model, protocol)  # fail now, not after the training
    if cfg.channels_last:
        to_channels_last(model)
    optimizer = build_optimizer(model, cfg)
    criterion = build_criterion(cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    aug_gen = torch.Generator()

    info = CheckpointInfo(
        model=cfg.model,
        model_kwargs=dict(cfg.model_kwargs),
        num_classes=protocol.num_classes,
        in_chans=protocol.in_chans,
        class_names=list(protocol.class_names),
        mean=tuple(float(v) for v in protocol.mean),
        std=tuple(float(v) for v in protocol.std),
        protocol=protocol.name,
        protocol_params=dict(protocol.params),
        data_root=cfg.data_root,
        train_condition=protocol.train_condition,
        condition_name=protocol.condition_name,
        input_size=tuple(protocol.input_size),
        msresnet_version=__version__,
    )

    # ---- progress counters (restored on resume)
    steps_per_epoch = num_batches(ctx.shard_train(torch.arange(len(train_split))).numel(), cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    epoch, batch_in_epoch, global_step = 0, 0, 0
    rows: list[dict[str, Any]] = []
    best_acc = -1.0
    sums = [0.0, 0.0, 0.0]  # loss * n, correct, n of the current epoch on this rank
    seconds_done = 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        epoch, batch_in_epoch, global_step = state["epoch"], state["batch_in_epoch"], state["global_step"]
        rows, best_acc = list(state["rows"]), state["best_acc"]
        sums = list(state["sums"]) if main else [0.0, 0.0, 0.0]  # saved sums are totals over ranks
        seconds_done = state.get("seconds_in_epoch", 0.0)
        _set_rng_state(state["rng"])
        aug_gen.set_state(state["aug_rng"])
        if main:
            log(f"resuming {run} at epoch {epoch + 1}, batch {batch_in_epoch}, step {global_step}")
    if main:
        _write_config(cfg, run, getattr(protocol, "checksum", None), ctx.world_size, global_step if state else None)
        write_metrics_csv(run / "metrics.csv", rows)  # after a resume: exactly the checkpoint's epochs

    compiled: nn.Module = torch.compile(model) if cfg.compile else model
    # Validation uses the un-wrapped model: DDP's forward is a collective, and shards may differ in batch count.
    net = ctx.wrap(TrainStep(compiled, criterion, cfg.label_smoothing))
    tb = TensorBoardLog(run / "tensorboard") if cfg.tensorboard and main else None
    reporter = StepReporter(main, cfg.log_every)

    def save(kind: str, epoch_sums: list[float] | None = None) -> None:
        """Write ``kind`` (last/best): state first, weights last, both atomic; rank 0 only."""
        if not main:
            return
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            # A finite loss and gradient can still overflow in the update; never replace a good checkpoint by this.
            raise NonFiniteError(f"weights became non-finite by step {global_step}; stopped, last good checkpoint kept")
        info.epoch, info.step = epoch, global_step
        info.val_acc = rows[-1]["val_acc"] if rows else None
        payload = {
            "model": plain_state_dict(model),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "global_step": global_step,
            "rows": rows,
            "best_acc": best_acc,
            "sums": epoch_sums if epoch_sums is not None else sums,
            "seconds_in_epoch": seconds_done,
            "rng": _rng_state(),
            "aug_rng": aug_gen.get_state(),
            "config": cfg.to_dict(),
        }
        if scaler.is_enabled():
            payload["scaler"] = scaler.state_dict()
        save_state(ckdir / f"{kind}.state.pt", payload)
        save_weights(ckdir / f"{kind}.safetensors", model, info)

    def mid_epoch_checkpoint() -> None:
        ctx.broadcast_module(model)
        # The partial-epoch sums of all ranks, so a resumed epoch reports the same train loss/accuracy.
        save("last", ctx.all_reduce_sum(sums))
        ctx.barrier()

    if main:
        log(
            f"training {cfg.model} on {protocol.name}: {len(train_split)} train / {len(val_split)} val images, "
            f"{cfg.epochs} epochs x {steps_per_epoch} steps, batch {cfg.batch_size} x {ctx.world_size} process(es), "
            f"device {device}"
        )
    consecutive_skips = 0
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        while epoch < cfg.epochs:
            order = ctx.shard_train(epoch_permutation(len(train_split), cfg.seed, epoch))
            net.train()
            reporter.start_epoch(epoch + 1, cfg.epochs, steps_per_epoch, batch_in_epoch)
            t_start = time.perf_counter() - seconds_done
            images_seen = 0
            t_seen = time.perf_counter()
            for idx in iter_batches(order, cfg.batch_size, start=batch_in_epoch):
                # Everything random in this step derives from (seed, rank, step): exact resume at any step.
                s = step_seed(cfg.seed, ctx.rank, global_step)
                torch.manual_seed(s)
                aug_gen.manual_seed(s)
                set_lr(optimizer, lr_at(global_step, total_steps, steps_per_epoch, cfg))

                x = _augment(norm.to_unit(train_split.images[idx]), cfg, aug_gen)
                x = norm(x)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = train_split.labels[idx].to(device, non_blocking=True)
                with _autocast(device, cfg.amp):
                    loss, logits = net(x, y)

                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
                # One device->host copy per step for everything the loop needs to know (each copy is a GPU sync).
                loss_v, norm_v, correct_v = torch.stack(
                    [loss.detach().float(), grad_norm.detach().float(), (logits.argmax(1) == y).sum().float()]
                ).tolist()
                # A NaN loss makes NaN gradients, and DDP's all-reduce spreads them to every rank. Under fp16 the
                # scaler itself skips inf-gradient steps (expected while it calibrates), so only the loss counts.
                what = f"loss ({loss_v})" if not math.isfinite(loss_v) else f"gradient norm ({norm_v})"
                bad = not math.isfinite(loss_v) or (not scaler.is_enabled() and not math.isfinite(norm_v))
                bad = ctx.any_true(bad)
                if bad:
                    where = f"step {global_step + 1} (epoch {epoch + 1}, batch {batch_in_epoch + 1})"
                    last = ckdir / "last.safetensors"
                    kept = f"last good checkpoint {last}" if last.exists() else "no checkpoint was written yet"
                    if cfg.nan_policy == "stop":
                        raise NonFiniteError(
                            f"non-finite {what} at {where}; stopped, {kept} "
                            "(lower the learning rate or set nan_policy: skip)"
                        )
                    consecutive_skips += 1
                    optimizer.zero_grad(set_to_none=True)
                    if main:
                        log(f"warning: non-finite {what} at {where}: step skipped")
                    if consecutive_skips > MAX_CONSECUTIVE_SKIPS:
                        raise NonFiniteError(
                            f"{consecutive_skips} consecutive non-finite steps up to {where}; stopped, {kept}"
                        )
                else:
                    consecutive_skips = 0
                    scaler.step(optimizer)
                    scaler.update()
                    n = y.numel()
                    sums[0] += loss_v * n
                    sums[1] += correct_v
                    sums[2] += n
                global_step += 1
                batch_in_epoch += 1
                images_seen += y.numel()
                seconds_done = time.perf_counter() - t_start
                rate = images_seen * ctx.world_size / max(1e-9, time.perf_counter() - t_seen)
                reporter.step(batch_in_epoch, global_step, sums[0] / max(1, sums[2]), sums[1] / max(1, sums[2]), rate)
                if tb is not None and global_step % cfg.log_every == 0:
                    tb.scalars({"loss": loss_v, "lr": optimizer.param_groups[0]["lr"]}, global_step, "step")
                if (
                    cfg.checkpoint_every
                    and global_step % cfg.checkpoint_every == 0
                    and batch_in_epoch < steps_per_epoch  # the epoch end checkpoints anyway
                ):
                    mid_epoch_checkpoint()
                if on_step is not None:
                    on_step(global_step)
                if ctx.any_true(stop.requested):
                    reporter.close()
                    mid_epoch_checkpoint()
                    signum = stop.signum or 15
                    if main:
                        log(f"stopped by signal {signum} at step {global_step}; checkpoint {ckdir / 'last.state.pt'}")
                    raise TrainingInterrupted(signum, str(ckdir / "last.state.pt"))

            # ---- end of epoch: validate, log, checkpoint (best first, then last: last is the resume point)
            seconds = time.perf_counter() - t_start
            train_loss_sum, train_correct, train_n = ctx.all_reduce_sum(sums)
            ctx.broadcast_module(model)
            val_loss, val_acc = validate(compiled, val_split, norm, eval_batch_size(ctx.device), ctx, cfg.amp)
            epoch += 1
            row = {
                "epoch": epoch,
                "step": global_step,
                "train_loss": train_loss_sum / max(1, train_n),
                "train_acc": train_correct / max(1, train_n),
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": train_n / max(1e-9, seconds),
                "seconds": seconds,
            }
            rows.append(row)
            batch_in_epoch, sums, seconds_done = 0, [0.0, 0.0, 0.0], 0.0
            reporter.end_epoch(row)
            if val_acc > best_acc:
                best_acc = val_acc
                save("best")
            save("last")
            if main:
                write_metrics_csv(run / "metrics.csv", rows)
                if tb is not None:
                    tb.scalars({k: v for k, v in row.items() if k != "epoch"}, epoch, "epoch")
            ctx.barrier()
            if on_epoch is not None:
                on_epoch(epoch, row)
    finally:
        reporter.close()
        if tb is not None:
            tb.close()
    if main:
        if cfg.calibrate_probe:
            _calibrate_checkpoints(ckdir, cfg, device)
        log(f"done: best val_acc {best_acc:.4f}; run directory {run}")
    return run


def _calibrate_checkpoints(ckdir: Path, cfg: TrainConfig, device: torch.device) -> None:
    """``calibrate_probe``: fit the object-scale probe of the best and last checkpoints (kept where validation
    improves). Training weights are final by now; a resumed or extended run calibrates again at its end."""
    from msresnet.engine.calibrate import calibrate_checkpoint

    for kind in ("best", "last"):
        _, result = calibrate_checkpoint(ckdir / f"{kind}.safetensors", val_limit=cfg.val_limit, device=device)
        verdict = "kept" if result.kept else "not kept"
        log(
            f"{kind}: object-scale probe {verdict} (validation sweep mean {result.probe_mean:.1f}% with it, "
            f"{result.confidence_mean:.1f}% with the most confident level)"
        )
