"""Scale-sweep evaluation: accuracy of a model at every test condition of a protocol.

:func:`evaluate` (a typed :class:`~msresnet.records.SweepResult`; :func:`evaluate_sweep` gives its JSON form) runs
the model over each condition's test set (object scales for ``*-ls``/``fmnist-scale``, whole-image sizes for
``*-res``) and summarises the curve:

* ``mean`` — mean accuracy over conditions; ``worst`` — the lowest one (and ``worst_condition``);
* ``retention`` — ``worst / accuracy at the training condition``: 1.0 means no loss anywhere in the sweep. When the
  protocol has no single training condition (``fmnist-scale`` trains on a range of scales) or the training
  condition is not in the sweep, retention is ``None``: there is no reference accuracy to retain.

Test-time augmentation (``tta=True``) averages the softmax predictions over the input resized as a whole image by
the factors :data:`TTA_FACTORS` (``2**-0.5, 1, 2**0.5``; a factor is skipped when the image would fall below the
model's ``min_input_size``). This lets a plain network look at an object at three scales; it triples the cost.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msresnet._info import info_value as _info_get
from msresnet.data.scaling import match_channels
from msresnet.engine.batches import Normalizer, TensorSplit, eval_batch_size, iter_batches, limit_split
from msresnet.engine.checkpoint import CheckpointInfo, atomic_write_bytes
from msresnet.engine.scale_error import ScaleErrors, true_log2_scales
from msresnet.engine.step import autocast
from msresnet.errors import UserError
from msresnet.evaluate.condition import Condition
from msresnet.records import ScaleResult, SweepResult, data_key, scale_labels
from msresnet.scale.contracts import PerLevel, scale_estimator

__all__ = [
    "TTA_FACTORS",
    "ValidationSweep",
    "evaluate",
    "evaluate_scales",
    "evaluate_sweep",
    "match_channels",
    "predict_probs",
    "require_same_classes",
    "scale_labels",
    "write_eval",
]

TTA_FACTORS = (2**-0.5, 1.0, 2**0.5)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    x: torch.Tensor,
    *,
    tta: bool = False,
    amp: str | None = None,
) -> torch.Tensor:
    """Softmax probabilities for a normalised float batch; with ``tta``, averaged over :data:`TTA_FACTORS`."""
    from msresnet.data.scaling import resize_images

    device = x.device
    min_size = int(getattr(model, "min_input_size", 1) or 1)
    h, w = x.shape[-2:]
    factors = TTA_FACTORS if tta else (1.0,)
    total, used = None, 0
    for f in factors:
        size = (max(1, round(h * f)), max(1, round(w * f)))
        if f != 1.0 and min(size) < min_size:
            continue
        xi = x if f == 1.0 else resize_images(x, size)
        with autocast(device, amp):
            logits = model(xi)
        p = logits.float().softmax(-1)
        total = p if total is None else total + p
        used += 1
    return total / used


def require_same_classes(model_names: Any, data_names: Any, data: str) -> None:
    """Refuse to score a model on labelled data whose classes are not its own, index for index: a model trained on
    folders ``cat, dog`` evaluated on a benchmark would be matched by index and report a meaningless accuracy.
    Nothing is checked where either side has no names.

    Raises:
        UserError: the names differ (the first differing index is named).
    """
    ours, theirs = list(model_names or []), list(data_names or [])
    if not ours or not theirs or ours == theirs:
        return
    diff = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
    show = ", ".join(ours[:5]) + (" ..." if len(ours) > 5 else "")
    raise UserError(
        f"the model's classes are not those of {data} ({len(ours)} vs {len(theirs)} classes; index {diff}: "
        f"{ours[diff] if diff < len(ours) else '-'!r} vs {theirs[diff] if diff < len(theirs) else '-'!r}); "
        f"its classes: {show}"
    )


def _require_finite_outputs(scores: torch.Tensor, condition: Any) -> None:
    """Refuse to score a model whose outputs are NaN or +Inf: their argmax is class 0 (or arbitrary), a
    plausible-looking accuracy. (-Inf is a class ruled out, e.g. a masked log-probability.)"""
    from msresnet.engine.checkpoint import NonFiniteError

    if bool(torch.isnan(scores).any() or torch.isposinf(scores).any()):
        raise NonFiniteError(f"the model produced non-finite outputs at condition {condition}; no accuracy reported")


def _condition_batches(
    protocol: Any,
    info: CheckpointInfo | dict | None,
    test_limit: int | None,
    batch_size: int | None,
    device: torch.device,
    with_truth: bool = False,
) -> Iterator[tuple[Any, ...]]:
    """Per test condition: ``(condition, batches of (normalised images on device, labels), number of images)``,
    with ``with_truth`` also each image's true log2 object scale (or None; :mod:`msresnet.engine.scale_error`).

    Inputs are normalised with the model's own training statistics from ``info`` (they have its channel count),
    falling back to the protocol's; ``test_limit`` takes the same class-stratified subset at every condition (of
    every same-size group, for a condition made of ``groups``).
    """
    batch_size = batch_size or eval_batch_size(device)
    in_chans = int(_info_get(info, "in_chans", protocol.in_chans))
    mean = tuple(_info_get(info, "mean", None) or protocol.mean)
    std = tuple(_info_get(info, "std", None) or protocol.std)
    if len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    norm = Normalizer(mean, std, device)

    def batches(split: TensorSplit) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in iter_batches(torch.arange(len(split)), batch_size):
            yield norm(match_channels(split.images[idx].to(device).float().div_(255), in_chans)), split.labels[idx]

    for condition, dataset in protocol.test.items():
        # a condition of several same-size groups (a folder of mixed sizes at native size): batches of each group
        groups = getattr(dataset, "groups", [dataset])
        splits = [limit_split(TensorSplit.of(d), test_limit, "stratified") for d in groups]
        out = (condition, (b for split in splits for b in batches(split)), sum(len(s) for s in splits))
        if with_truth:
            truths = [true_log2_scales(protocol, condition, d, test_limit) for d in groups]
            out += (None if any(t is None for t in truths) else torch.cat(truths),)
        yield out


class ValidationSweep:
    """The protocol's validation images under the protocol's own test conditions, protocol-like for
    :func:`evaluate_sweep`: object rescale in the canvas where the condition is a scale (``*-ls``), whole-image
    resize where it is a size (``*-res``). Choices that depend on how a model behaves under scale shift (which
    head, which level-selection rule) are made on this sweep, never on the test split.

    Uses ``protocol.val`` (its first ``limit`` images), else the held-out part of the training split that training
    validates on. A protocol without a single training condition (``fmnist-scale``) has one condition, ``"val"``:
    its validation images as they are.
    """

    def __init__(self, protocol: Any, limit: int | None = None) -> None:
        from msresnet.data import ImageTensorDataset
        from msresnet.engine.batches import train_val_splits

        val = protocol.val
        if val is None:
            held_out = train_val_splits(protocol)[1]
            val = ImageTensorDataset(held_out.images, held_out.labels)
        if limit is not None and len(val) > limit:
            val = val.subset(limit)
        self.name, self.params = f"{protocol.name}-val", dict(protocol.params)
        self.condition_name, self.in_chans = protocol.condition_name, protocol.in_chans
        self.mean, self.std = protocol.mean, protocol.std
        self.train_condition = protocol.train_condition
        self.test: dict[Any, Any] = {}
        if protocol.train_condition is None:
            self.test = {"val": val}
            return
        loader = getattr(protocol, "val_loader", None)
        if loader is not None:  # the protocol makes its own (scenes: fresh backgrounds, not a rescaled frame)
            self.test = {c: loader(c).subset(limit) for c in protocol.test_keys}
            return
        x = val.images.float().div(255)
        for c in protocol.test:
            y = Condition.of_protocol(protocol.condition_name, c, protocol.train_condition).apply(x)
            u8 = y.mul(255).round_().clamp_(0, 255).to(torch.uint8)
            self.test[c] = ImageTensorDataset(u8, val.labels)


def evaluate(
    model: nn.Module,
    protocol: Any,
    *,
    info: CheckpointInfo | dict | None = None,
    test_limit: int | None = None,
    tta: bool = False,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    amp: str | None = None,
    per_scale: bool = False,
    progress: Callable[[int, int, Any, float], None] | None = None,
) -> SweepResult:
    """Accuracy of ``model`` at every test condition of ``protocol``, as a typed record.

    Args:
        model: classifier (put in eval mode here).
        protocol: a built protocol (``msresnet.data.build_protocol``).
        info: the checkpoint's info; its ``mean``/``std`` normalise the inputs (the model's training statistics,
            which matter when evaluating on another protocol), falling back to the protocol's.
        test_limit: evaluate a class-stratified subset of N images per condition (the same images everywhere).
        tta: average predictions over whole-image rescalings (see module docstring).
        batch_size: images per forward pass (default: ``eval_batch_size(device)``).
        device: where to run.
        amp: ``"bf16"`` to run under autocast.
        per_scale: also the accuracy of every entry of the model's scale axis on its own (see
            :func:`evaluate_scales`), from the same forward pass unless ``tta``.
        progress: called after each condition with ``(conditions done, conditions in all, condition, accuracy)``.

    Returns:
        A :class:`~msresnet.records.SweepResult` (``to_dict()``: the JSON form :func:`evaluate_sweep` returns):
        ``protocol``, ``protocol_params``, ``condition_name``, ``conditions`` (list), ``accuracy`` (fractions, one
        per condition), ``mean``, ``worst``, ``worst_condition``, ``retention`` (or None), ``train_condition``,
        ``accuracy_at_train`` (or None), ``n_per_condition``, ``tta``, ``model``, ``seconds``; with ``per_scale``
        also ``per_scale`` (an :func:`evaluate_scales` result); for a model with ``estimate_scale`` also
        ``scale_error`` (the estimate's error per condition in octaves,
        :class:`~msresnet.engine.scale_error.ScaleErrors`; None where the protocol has no true scale per image).

    Raises:
        UserError: ``per_scale`` for a model without a scale axis; a model whose class names (from ``info``) are
            not the data's, index for index (:func:`require_same_classes`).
    """
    from msresnet.errors import UserError

    if per_scale and not isinstance(model, PerLevel):
        raise UserError(f"{type(model).__name__} has no forward_scales (no scale axis to diagnose)")
    require_same_classes(_info_get(info, "class_names"), getattr(protocol, "class_names", None), protocol.name)
    device = torch.device(device)
    model = model.to(device).eval()
    pyramid = getattr(model, "pyramid", None)
    t0 = time.perf_counter()
    conditions, accuracy, counts, level_accuracy, level_scales = [], [], [], [], []
    estimator = scale_estimator(model)  # scale-aware models: the estimate's error per condition
    scale_errors = ScaleErrors() if estimator is not None else None
    for condition, batches, n, truth in _condition_batches(protocol, info, test_limit, batch_size, device, True):
        correct, level_hits, kept, seen = 0, None, None, 0
        for x, labels in batches:
            if scale_errors is not None and truth is not None:
                with torch.no_grad(), autocast(device, amp):
                    scale_errors.add(condition, estimator.estimate_scale(x), truth[seen : seen + len(labels)])
            seen += len(labels)
            levels = None
            if per_scale and not tta:  # both from one pass through the trunk
                with torch.no_grad(), autocast(device, amp):
                    scores, levels = model.forward_with_scales(x)
            else:
                scores = predict_probs(model, x, tta=tta, amp=amp)
                if per_scale:  # levels of the untransformed images
                    with torch.no_grad(), autocast(device, amp):
                        levels = model.forward_scales(x)
            _require_finite_outputs(scores, condition)
            preds = scores.argmax(1)
            correct += int((preds.cpu() == labels).sum())
            if levels is not None:
                hits = (levels.argmax(-1).cpu() == labels[:, None]).sum(0)
                level_hits = hits if level_hits is None else level_hits + hits
                kept = pyramid.kept_scales(x.shape[-2:]) if pyramid is not None else None
        conditions.append(condition)
        accuracy.append(correct / max(1, n))
        if progress is not None:
            progress(len(conditions), len(protocol.test), condition, accuracy[-1])
        counts.append(n)
        level_accuracy.append([int(c) / max(1, n) for c in level_hits] if level_hits is not None else [])
        level_scales.append(kept)
    summary = scale_errors.summary() if scale_errors is not None else None
    if summary is not None:
        summary["conditions"] = [_plain(c) for c in summary["conditions"]]
    per = ScaleResult([_plain(c) for c in conditions], level_accuracy, level_scales) if per_scale else None
    result = SweepResult.from_accuracy(
        protocol.name,
        [_plain(c) for c in conditions],
        accuracy,
        _plain(getattr(protocol, "train_condition", None)),
        protocol_params=dict(getattr(protocol, "params", {}) or {}),
        condition_name=getattr(protocol, "condition_name", "condition"),
        n_per_condition=counts[0] if len(set(counts)) == 1 else counts,
        tta=bool(tta),
        model=_info_get(info, "model", type(model).__name__),
        checkpoint=str(_info_get(info, "path", "") or "") or None,
        seconds=time.perf_counter() - t0,
        per_scale=per,
        scale_error=summary,
    )
    return result


def evaluate_sweep(model: nn.Module, protocol: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate` as JSON (``SweepResult.to_dict()``: what ``RUN/eval/<protocol>.json`` holds, and what run
    records store); the same arguments."""
    return evaluate(model, protocol, **kwargs).to_dict()


@torch.no_grad()
def evaluate_scales(
    model: nn.Module,
    protocol: Any,
    *,
    info: CheckpointInfo | dict | None = None,
    test_limit: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Accuracy of every entry of the model's scale axis on its own, at every test condition of ``protocol``.

    The diagnosis behind a sweep: which pyramid level (or scale) recognises the object at each test condition,
    and how far the pooled decision falls below the best single level (see ``ResNet.forward_scales``).
    Arguments as in :func:`evaluate_sweep`; the model must have ``forward_scales``.

    Returns:
        ``conditions``, ``accuracy`` (per condition, a list with one fraction per scale entry, finest first) and
        ``scales`` (the pyramid factors kept at each condition's input size, or None for models without a
        pyramid).
    """
    result = evaluate_sweep(
        model, protocol, info=info, test_limit=test_limit, batch_size=batch_size, device=device, per_scale=True
    )
    return result["per_scale"]


def _plain(v: Any) -> Any:
    """Conditions as JSON numbers (ints stay ints)."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and v.is_integer() and not isinstance(v, bool):
        return v  # keep 1.0 a float: it is a scale, not a size
    return v


def _eval_stem(out: Path, result: dict[str, Any]) -> str:
    """The file name (without suffix) of a result in ``out``: the protocol's name, unless that file holds a sweep
    of other data (another folder of the same name, other protocol parameters); then ``<name>-<data key>``. The
    same data evaluated again replaces its own files; other data never does."""
    name = str(result["protocol"])
    key = data_key(name, result.get("protocol_params"))
    existing = out / f"{name}.json"
    try:
        held = json.loads(existing.read_text()) if existing.is_file() else None
    except (OSError, json.JSONDecodeError):  # unreadable: kept as it is, this result goes beside it
        return f"{name}-{key}"
    if held is None or data_key(str(held.get("protocol", name)), held.get("protocol_params")) == key:
        return name
    return f"{name}-{key}"


def write_eval(run_dir: str | Path, result: dict[str, Any]) -> list[Path]:
    """Write ``RUN/eval/<protocol>.json`` and ``.csv`` atomically, and the ``.png`` plot when plotting is available.

    Results are keyed by the data they measured (:func:`~msresnet.records.data_key`): evaluating another dataset
    whose protocol has the same name (two folders both called ``test``) writes ``<protocol>-<key>.*`` beside the
    first instead of replacing it.

    Returns:
        The paths written.
    """
    out = Path(run_dir) / "eval"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from msresnet.errors import UserError

        raise UserError(f"cannot create {out}: {e.strerror or e}") from None
    base = out / _eval_stem(out, result)
    # appended, not with_suffix: a folder named "test-0.5x" must not become "test-0.json"
    json_path, csv_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".csv")
    atomic_write_bytes(json_path, (json.dumps(result, indent=2) + "\n").encode())
    buf = io.StringIO()
    buf.write(f"{result['condition_name']},accuracy\n")
    for c, a in zip(result["conditions"], result["accuracy"], strict=True):
        buf.write(f"{c},{a:.6f}\n")
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    written = [json_path, csv_path]
    try:
        from msresnet.report.plots import plot_sweep
    except ImportError:  # plotting is optional for library use; the CLI always has it
        return written
    written.append(Path(plot_sweep(result, base.with_name(base.name + ".png"))))
    return written
