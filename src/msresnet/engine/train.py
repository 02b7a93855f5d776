"""The training loop: :func:`train` reads top to bottom — set up, resume, epochs of steps, validate, checkpoint.

The pieces it strings together live beside it: :mod:`msresnet.engine.state` (the run's state as one object with
``state_dict``/``load_state_dict``, the epoch meter, the per-step reseeding that makes ``--resume`` exact, the
checkpoint writer) and :mod:`msresnet.engine.step` (one optimizer step and the non-finite guard).

Exactness of ``--resume``: the batch order of an epoch is a function of ``(seed, epoch)``; the random state of every
step (augmentation, dropout, the scale-invariance loss's second view) is re-seeded from ``(seed, rank, step)``;
the learning rate is a function of the step; the optimizer and weights come from the state file. So a run resumed
from any checkpoint — epoch end or mid-epoch — computes exactly what the uninterrupted run computes (bit-identical
on CPU with ``deterministic: true``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn

from msresnet.data.stream import batch_augmentation, parse_augment
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
    allowed_nonfinite,
    describe_kept,
    load_state,
    remove_stale_temp_files,
)
from msresnet.engine.config import TrainConfig, model_build_kwargs, protocol_kwargs
from msresnet.engine.distributed import DistContext
from msresnet.engine.lock import LOCK_NAME, hold_run
from msresnet.engine.optim import build_optimizer, lr_at, set_lr
from msresnet.engine.progress import StepReporter, TensorBoardLog, log, write_metrics_csv
from msresnet.engine.resume import check_resume, rebuild_weights, stored_config, write_run_config
from msresnet.engine.settings import TorchSettings, set_cudnn_autotune
from msresnet.engine.signals import GracefulStop, TrainingInterrupted
from msresnet.engine.state import (
    EpochMeter,
    StepRandomness,
    TrainState,
    save_checkpoint,
    save_mid_epoch,
    seed_everything,
)
from msresnet.engine.step import (
    MAX_CONSECUTIVE_SKIPS,
    NonFiniteError,
    NonFiniteGuard,
    TrainStep,
    autocast,
    build_criterion,
    prepare_batch,
    to_channels_last,
    train_step,
)
from msresnet.engine.streaming import StreamedData, uses_stream
from msresnet.errors import UserError

__all__ = ["NonFiniteError", "TrainStep", "train", "validate"]

StepHook = Callable[[int], None]
EpochHook = Callable[[int, dict[str, Any]], None]


@torch.no_grad()
def validate(
    model: nn.Module, split: TensorSplit, norm: Normalizer, batch_size: int, ctx: DistContext, amp: str | None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``split`` (sharded over ranks, sums reduced: same as one process)."""
    was_training = model.training
    model.eval()
    index = ctx.shard_eval(len(split))
    loss_sum, correct = 0.0, 0.0
    for idx in iter_batches(index, batch_size):
        x = norm(norm.to_unit(split.images[idx]))
        y = split.labels[idx].to(norm.device)
        with autocast(norm.device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    loss_sum, correct = ctx.all_reduce_sum([loss_sum, correct])
    model.train(was_training)
    n = max(1, len(split))
    return loss_sum / n, correct / n


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
        PeerLost: under torchrun, another rank died or stopped answering for ``cfg.dist_timeout`` seconds.
    """
    ctx = DistContext.from_env(cfg.device, cfg.dist_timeout)
    fresh = not Path(cfg.out).exists()
    try:
        # the writer lock comes first: the "already holds a run" test below is only sound under it
        with hold_run(cfg.out, "train", ctx), TorchSettings(cfg), GracefulStop() as stop:
            try:
                return _train(cfg, ctx, stop, on_step, on_epoch)
            except BaseException:
                if fresh and ctx.is_main:
                    _remove_unstarted_run(Path(cfg.out))
                raise
    except RuntimeError as e:  # under torchrun: another rank died or hung (one line, not a hang or a traceback)
        ctx.raise_if_peer_failure(e, cfg.out)
        raise
    finally:
        ctx.close()


def _train(
    cfg: TrainConfig, ctx: DistContext, stop: GracefulStop, on_step: StepHook | None, on_epoch: EpochHook | None
) -> Path:
    from msresnet.data import build_protocol

    run, main, device = Path(cfg.out), ctx.is_main, ctx.device
    ckdir = run / "checkpoints"
    saved = _open_run_dir(cfg, run, main)  # the resume point, or None for a new run
    changes: dict[str, tuple[Any, Any]] = {}
    if saved is not None:
        ctx.check_resume_world_size(run, saved.get("world_size"))
        stored = saved.get("config") or stored_config(run)  # state files record their config; older ones do not
        changes = check_resume(cfg, stored, run) if stored else {}

    # ---- data, model, state
    protocol = build_protocol(cfg.protocol, root=cfg.data_root, **protocol_kwargs(cfg))
    if main and getattr(protocol, "summary", None):
        log(protocol.summary)
    streamed: StreamedData | None = None
    if uses_stream(cfg, protocol):  # decoded batch by batch in loader workers: memory independent of the folder
        streamed = StreamedData.build(protocol, cfg, ctx, device)
        n_train, n_val, mix = len(streamed.train), len(streamed.val), streamed.mix
    else:  # one decoded tensor: the small benchmark protocols, fastest there
        train_split, val_split = train_val_splits(protocol, cfg.val_limit)
        train_split = limit_split(train_split, cfg.train_limit, cfg.limit_mode)
        n_train, n_val = len(train_split), len(val_split)
        mix = batch_augmentation(parse_augment(cfg.augment), protocol.num_classes)
    # a streamed folder's statistics come from a sample: the protocol's own would decode every training image
    mean, std = (streamed.mean, streamed.std) if streamed is not None else (protocol.mean, protocol.std)
    norm = Normalizer(tuple(mean), tuple(std), device)
    model = _build_model(cfg, protocol, device, main)
    set_cudnn_autotune(cfg, model, device, main)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
    state = TrainState(model, build_optimizer(model, cfg), scaler, StepRandomness(cfg.seed, ctx.rank), ema=ema,
                       sampler=streamed.sampler if streamed is not None else None)  # fmt: skip
    info = _checkpoint_info(cfg, protocol, mean, std)
    if saved is not None:
        try:
            state.load_state_dict(saved, main=main)
        except (RuntimeError, KeyError, ValueError) as e:  # a state of another shape than this config's model
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot resume {run}: its training state does not fit this model ({first})") from None
        if main:
            _log_resume(run, state, cfg, changes)
    if main:
        resumed_at = state.global_step if saved is not None else None
        # a streamed folder is identified by its files (names, sizes, times), not by a checksum of decoded pixels
        checksum = f"files:{protocol.fingerprint}" if streamed is not None else getattr(protocol, "checksum", None)
        stored = (saved or {}).get("config")
        write_run_config(cfg, run, checksum, ctx.world_size, resumed_at, changes, stored)
        write_metrics_csv(run / "metrics.csv", state.rows)  # after a resume: exactly the checkpoint's epochs
        if saved is not None:  # weights lost or older than their state (deleted; killed between the two writes)
            for kind, kind_state in (("last", saved), ("best", None)):
                if rebuild_weights(ckdir, kind, info, kind_state, allowed_nonfinite(model)):
                    log(f"rebuilt {ckdir / (kind + '.safetensors')} from its training state")

    compiled: nn.Module = torch.compile(model) if cfg.compile else model
    # Validation uses the un-wrapped model: DDP's forward is a collective, and shards may differ in batch count.
    net = ctx.wrap(TrainStep(compiled, build_criterion(cfg), cfg.label_smoothing))
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = num_batches(ctx.shard_train(torch.arange(n_train)).numel(), cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    max_skips = min(MAX_CONSECUTIVE_SKIPS, steps_per_epoch)  # a whole epoch of skipped steps always stops the run
    guard = NonFiniteGuard(cfg.nan_policy, lambda: describe_kept(ckdir), verbose=main, max_skips=max_skips)
    tb = TensorBoardLog(run / "tensorboard") if cfg.tensorboard and main else None
    reporter = StepReporter(main, cfg.log_every)
    if main:
        log(
            f"training {cfg.model} on {protocol.name}: {n_train} train / {n_val} val images, "
            f"{cfg.epochs} epochs x {steps_per_epoch} steps, batch {cfg.batch_size} x {ctx.world_size} process(es), "
            f"device {device}" + (f", streamed by {cfg.workers} loader worker(s)" if streamed is not None else "")
        )
    try:
        while state.epoch < cfg.epochs:
            order = ctx.shard_train(epoch_permutation(n_train, cfg.seed, state.epoch))
            net.train()
            reporter.start_epoch(state.epoch + 1, cfg.epochs, steps_per_epoch, state.batch_in_epoch)
            t_start = time.perf_counter() - state.seconds_in_epoch
            t_seen, images_seen = time.perf_counter(), 0
            if streamed is not None:
                batches = streamed.epoch(order, state.epoch, state.batch_in_epoch)
            else:
                batches = ((train_split.images[i], train_split.labels[i])
                           for i in iter_batches(order, cfg.batch_size, start=state.batch_in_epoch))  # fmt: skip
            for images, labels in batches:
                state.rng.reseed(state.global_step)  # everything random in this step derives from (seed, rank, step)
                set_lr(state.optimizer, lr_at(state.global_step, total_steps, steps_per_epoch, cfg))
                x, y = prepare_batch(images, labels, norm, cfg, state.rng.augment, mix)
                result = train_step(net, x, y, state.optimizer, scaler, params, cfg, ctx)
                if ema is not None and result.skipped is None:
                    ema.update(model, step=state.global_step)
                where = f"step {state.global_step + 1} (epoch {state.epoch + 1}, batch {state.batch_in_epoch + 1})"
                guard.check(result, where)
                state.finish_step(result)
                images_seen += result.images
                now = time.perf_counter()
                state.seconds_in_epoch = now - t_start
                rate = images_seen * ctx.world_size / max(1e-9, now - t_seen)
                reporter.step(state.batch_in_epoch, state.global_step, state.meter.loss, state.meter.accuracy, rate)
                if tb is not None and state.global_step % cfg.log_every == 0:
                    lr = state.optimizer.param_groups[0]["lr"]
                    tb.scalars({"loss": result.loss, "lr": lr}, state.global_step, "step")
                mid_epoch = state.batch_in_epoch < steps_per_epoch  # the epoch end checkpoints anyway
                if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0 and mid_epoch:
                    save_mid_epoch(ckdir, state, info, cfg, ctx)
                if on_step is not None:
                    on_step(state.global_step)
                if ctx.any_true(stop.requested):
                    reporter.close()
                    save_mid_epoch(ckdir, state, info, cfg, ctx)
                    raise _interrupted(stop, state.global_step, ckdir, main)

            # ---- end of epoch: validate, log, checkpoint (best first, then last: last is the resume point)
            seconds = time.perf_counter() - t_start
            totals = state.meter.reduced(ctx)
            ctx.broadcast_module(model)
            judged = ema.module if ema is not None else compiled  # the EMA weights are the ones saved
            if streamed is not None:
                if main:
                    streamed.report_bad(state.epoch + 1)
                val_loss, val_acc = streamed.validate(judged, norm, ctx, cfg.amp)
            else:
                val_loss, val_acc = validate(judged, val_split, norm, eval_batch_size(device), ctx, cfg.amp)
            row = _epoch_row(state, totals, val_loss, val_acc, seconds)
            improved = state.finish_epoch(row)
            reporter.end_epoch(row)
            if main:
                if improved:
                    save_checkpoint(ckdir, "best", state, info, cfg, world_size=ctx.world_size)
                save_checkpoint(ckdir, "last", state, info, cfg, world_size=ctx.world_size)
                write_metrics_csv(run / "metrics.csv", state.rows)
                if tb is not None:
                    tb.scalars({k: v for k, v in row.items() if k != "epoch"}, state.epoch, "epoch")
            ctx.barrier()
            if on_epoch is not None:
                on_epoch(state.epoch, row)
            if ctx.any_true(stop.requested):  # a signal during validation or the checkpoint: stop now, all saved
                raise _interrupted(stop, state.global_step, ckdir, main)
    finally:
        reporter.close()
        if tb is not None:
            tb.close()
    if main:
        if cfg.calibrate_probe:
            _calibrate_checkpoints(ckdir, cfg, device)
        log(f"done: best val_acc {state.best_acc:.4f}; run directory {run}")
    return run


def _log_resume(run: Path, state: TrainState, cfg: TrainConfig, changes: dict[str, tuple[Any, Any]]) -> None:
    changed = "".join(f"; {k} {a} -> {b}" for k, (a, b) in changes.items())
    if state.epoch >= cfg.epochs:
        log(f"{run} has finished its {cfg.epochs} epoch(s) (step {state.global_step}): nothing to train{changed}")
    else:
        where = f"epoch {state.epoch + 1} of {cfg.epochs}, batch {state.batch_in_epoch}, step {state.global_step}"
        log(f"resuming {run} at {where}{changed}")


def _epoch_row(state: TrainState, totals: EpochMeter, val_loss: float, val_acc: float, seconds: float) -> dict:
    """The epoch's ``metrics.csv`` row (``totals``: the epoch's sums over all ranks)."""
    return {
        "epoch": state.epoch + 1,
        "step": state.global_step,
        "train_loss": totals.loss,
        "train_acc": totals.accuracy,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": state.optimizer.param_groups[0]["lr"],
        "images_per_s": totals.images / max(1e-9, seconds),
        "seconds": seconds,
    }


def _interrupted(stop: GracefulStop, step: int, ckdir: Path, main: bool) -> TrainingInterrupted:
    """The exception that ends a run stopped by a signal (its checkpoint is written)."""
    signum = stop.signum or 15
    if main:
        log(f"stopped by signal {signum} at step {step}; checkpoint {ckdir / 'last.state.pt'}")
    return TrainingInterrupted(signum, str(ckdir / "last.state.pt"))


def _remove_unstarted_run(run: Path) -> None:
    """A run directory this process created and that failed before its first checkpoint is removed again (its
    header-only metrics and config say nothing the error message did not). Called while holding its lock."""
    ckdir = run / "checkpoints"
    if ckdir.is_dir() and any(ckdir.iterdir()):
        return
    for name in ("metrics.csv", "config.yaml", LOCK_NAME):
        (run / name).unlink(missing_ok=True)
    for d in (ckdir, run):
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty: anything else the user or another tool put there stays


def _open_run_dir(cfg: TrainConfig, run: Path, main: bool) -> dict[str, Any] | None:
    """Check the run directory against ``cfg.resume``, prepare it (rank 0) and return the state to resume from.

    The state file alone is a complete, consistent checkpoint (see :mod:`msresnet.engine.checkpoint`).
    """
    ckdir = run / "checkpoints"
    saved: dict[str, Any] | None = None
    if (ckdir / "last.state.pt").exists() or (ckdir / "last.safetensors").exists():
        if not cfg.resume:
            raise UserError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
        if not (ckdir / "last.state.pt").exists():
            raise UserError(f"cannot resume {run}: checkpoints/last.state.pt is missing")
        saved = load_state(ckdir / "last.state.pt")
    elif cfg.resume and main:
        log(f"nothing to resume in {run}: starting a new run")
    if main:
        try:
            ckdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run directory {run}: {e.strerror or e}") from None
        remove_stale_temp_files(ckdir)
        remove_stale_temp_files(run)
        if saved is None:
            write_metrics_csv(run / "metrics.csv", [])  # the run is visible (header only) before data loading
    return saved


def _build_model(cfg: TrainConfig, protocol: Any, device: torch.device, main: bool = True) -> nn.Module:
    """The run's model with its initial weights, a function of ``cfg.seed`` (the same on every rank; DDP also
    broadcasts rank 0's)."""
    from msresnet import create_model

    seed_everything(cfg.seed)
    kwargs = model_build_kwargs(cfg)
    if cfg.pretrained_file:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": cfg.pretrained_file})
    model = create_model(cfg.model, num_classes=protocol.num_classes, in_chans=protocol.in_chans, **kwargs)
    if getattr(model, "pretrained_note", None) and main:
        log(model.pretrained_note)
    model = model.to(device)
    if cfg.calibrate_probe:
        from msresnet.engine.calibrate import require_calibratable

        require_calibratable(model, protocol)  # fail now, not after the training
    return to_channels_last(model) if cfg.channels_last else model


def _checkpoint_info(cfg: TrainConfig, protocol: Any, mean: Sequence[float], std: Sequence[float]) -> CheckpointInfo:
    """What the run's checkpoints say about their model and data (``mean``/``std``: the training normalisation)."""
    from msresnet import __version__
    from msresnet.preprocess import preprocess_for_protocol

    return CheckpointInfo(
        model=cfg.model,
        model_kwargs=model_build_kwargs(cfg),
        num_classes=protocol.num_classes,
        in_chans=protocol.in_chans,
        class_names=list(protocol.class_names),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        protocol=protocol.name,
        protocol_params=dict(protocol.params),
        data_root=str(Path(cfg.data_root).expanduser().resolve()) if cfg.data_root else None,  # from any directory
        train_condition=protocol.train_condition,
        condition_name=protocol.condition_name,
        input_size=tuple(protocol.input_size),
        msresnet_version=__version__,
        preprocess=preprocess_for_protocol(protocol, mean, std).to_dict(),
    )


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
