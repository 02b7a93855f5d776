"""Optimizer and learning-rate schedule.

The schedule is a pure function of the global step (:func:`lr_at`), set on the optimizer before every step, so a
resumed run needs no scheduler state to land on exactly the same learning rates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from msresnet.engine.config import TrainConfig

ONECYCLE_DEFAULT_WARMUP = 0.3  # fraction of the run spent rising when one-cycle gets no explicit warm-up


def _classifier_params(model: nn.Module) -> set[int]:
    """Ids of the classifier's parameters (timm's ``get_classifier()``), empty for a model without one."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    return {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov); no weight decay on biases and normalisation parameters (1-d tensors).

    With ``trunk_lr_scale != 1`` every parameter but the classifier's learns at ``lr * trunk_lr_scale`` (each group
    carries its ``lr_scale``, as in timm, and :func:`set_lr` applies it).
    """
    head = _classifier_params(model) if cfg.trunk_lr_scale != 1.0 else set()
    buckets: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            scale = 1.0 if id(p) in head or not head else cfg.trunk_lr_scale
            buckets.setdefault((p.ndim <= 1, scale), []).append(p)
    groups = [
        {"params": ps, "weight_decay": 0.0 if no_decay else cfg.weight_decay, "lr_scale": scale}
        for (no_decay, scale), ps in sorted(buckets.items(), key=lambda kv: (kv[0][0], -kv[0][1]))
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_at(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate before optimizer step ``step`` (0-based) of ``total_steps``.

    * ``cosine``: linear warm-up over ``warmup_epochs``, then cosine decay to 0 at the last step.
    * ``onecycle``: linear rise to ``lr`` (over ``warmup_epochs``, or 30% of the run), then cosine decay to ~0
      (the two-phase shape of one-cycle, starting at ``lr / 25`` as PyTorch's OneCycleLR does).
    * ``constant``: warm-up, then ``lr``.
    """
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        warm = warm or max(1, int(ONECYCLE_DEFAULT_WARMUP * total_steps))
        start = cfg.lr / 25.0
        if step < warm:
            return start + (cfg.lr - start) * step / warm
        t = (step - warm) / max(1, total_steps - warm)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - warm) / max(1, total_steps - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (times the group's ``lr_scale``, where it has one)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
