"""The two sweeps of a scan and the loop that runs every model through them.

* ``scale``: the object rescaled by ``s`` inside the unchanged canvas (``s = 2^(k/4)``, ``k = -4..4``, as in
  fmnist-ls): the image keeps its size, the object shrinks (surrounded by the fill) or grows (cropped).
* ``resolution``: the whole image resized by ``r`` (0.5x ... 4x the native size, as fmnist-res's 14 ... 112 px
  around 28 px): the same content at fewer or more pixels, so the object is ``r`` times as many pixels across.

Both use :mod:`msresnet.data.scaling` (antialiased resampling). Each batch of images is resampled once per
condition and the result is shared by every model, so adding a model costs its forward passes only.

Per model and condition the scan keeps: accuracy, mean confidence (top softmax probability), expected calibration
error (:data:`ECE_BINS` equal-width confidence bins), per-class accuracy, and for models with ``estimate_scale``
the median of ``|log2(estimated / true object scale)|`` (the true scale is ``s``, or ``r`` for resolution).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from msresnet.evaluate.condition import Condition, Kind
from msresnet.scan.data import ScanData
from msresnet.scan.sources import ModelSource

__all__ = ["DEFAULT_RESOLUTIONS", "DEFAULT_SCALES", "ECE_BINS", "Condition", "conditions_for", "run_sweeps"]

DEFAULT_SCALES = tuple(2 ** (k / 4) for k in range(-4, 5))
DEFAULT_RESOLUTIONS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
ECE_BINS = 15
EXAMPLES = 6  # example images kept per condition for the report


def conditions_for(
    native: tuple[int, int],
    scales: Sequence[float] = DEFAULT_SCALES,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
) -> list[Condition]:
    """The scale conditions then the resolution ones (sizes at least 1 px), as the evaluation core's
    :class:`~msresnet.evaluate.condition.Condition`."""
    scale = Condition.sweep(Kind.SCALE, [round(float(s), 4) for s in scales], native)
    return scale + Condition.sweep(Kind.RESOLUTION, [float(r) for r in resolutions], native)


@dataclass
class _Tally:
    """Running counts of one model at one condition."""

    num_classes: int
    n: int = 0
    correct: int = 0
    conf_sum: float = 0.0
    class_n: torch.Tensor = field(init=False)
    class_hit: torch.Tensor = field(init=False)
    bin_n: torch.Tensor = field(init=False)
    bin_conf: torch.Tensor = field(init=False)
    bin_hit: torch.Tensor = field(init=False)
    scale_err: list[torch.Tensor] = field(default_factory=list)
    scale_est: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        k = self.num_classes
        self.class_n, self.class_hit = torch.zeros(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)
        self.bin_n = torch.zeros(ECE_BINS, dtype=torch.long)
        self.bin_conf, self.bin_hit = torch.zeros(ECE_BINS, dtype=torch.float64), torch.zeros(ECE_BINS)

    def add(self, probs: torch.Tensor, labels: torch.Tensor, est: torch.Tensor | None, true_scale: float) -> None:
        conf, pred = probs.max(-1)
        hit = pred == labels
        self.n += len(labels)
        self.correct += int(hit.sum())
        self.conf_sum += float(conf.double().sum())
        self.class_n += torch.bincount(labels, minlength=self.num_classes)
        self.class_hit += torch.bincount(labels[hit], minlength=self.num_classes)
        b = (conf.double() * ECE_BINS).long().clamp_(0, ECE_BINS - 1)
        self.bin_n += torch.bincount(b, minlength=ECE_BINS)
        self.bin_conf += torch.bincount(b, weights=conf.double(), minlength=ECE_BINS)
        self.bin_hit += torch.bincount(b, weights=hit.double(), minlength=ECE_BINS).float()
        if est is not None and len(est) == len(labels):
            good = torch.isfinite(est) & (est > 0)
            self.scale_est.append(est[good])
            self.scale_err.append((torch.log2(est[good]) - math.log2(true_scale)).abs())

    def result(self, class_names: Sequence[str]) -> dict[str, Any]:
        n = max(1, self.n)
        nz = self.bin_n > 0
        ece = float(((self.bin_conf[nz] - self.bin_hit[nz].double()).abs()).sum() / n)
        per_class = {
            name: (int(h) / int(c) if int(c) else None)
            for name, h, c in zip(class_names, self.class_hit.tolist(), self.class_n.tolist(), strict=True)
        }
        out: dict[str, Any] = {
            "n": self.n, "accuracy": self.correct / n, "mean_confidence": self.conf_sum / n, "ece": ece,
            "per_class_accuracy": per_class,
        }  # fmt: skip
        if self.scale_err:
            err, est = torch.cat(self.scale_err), torch.cat(self.scale_est)
            out["scale_log2_error_median"] = float(err.median()) if len(err) else None
            out["estimated_scale_median"] = float(est.median()) if len(est) else None
        return out


def _progress(total: int, enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("scan {task.fields[what]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True, disable=not enabled,
    )  # fmt: skip


def run_sweeps(
    models: Sequence[ModelSource],
    data: ScanData,
    conditions: Sequence[Condition],
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    interpolation: str = "bilinear",
    progress: bool = True,
) -> dict[str, Any]:
    """Run every model over every condition.

    Returns:
        ``results[model label][sweep]`` = list of per-condition dicts (``condition``, ``factor``, ``size``,
        ``true_scale`` and the :class:`_Tally` numbers), ``examples[condition index]`` = uint8 images
        ``[EXAMPLES, C, H, W]`` with their labels, ``seconds``, ``images`` and ``model_seconds`` (forward time).
    """
    import sys

    device = torch.device(device)
    tallies = {m.label: [_Tally(data.num_classes) for _ in conditions] for m in models}
    model_seconds = {m.label: 0.0 for m in models}
    from msresnet.engine.batches import stratified_order

    ex_idx = torch.sort(stratified_order(data.labels)[:EXAMPLES]).values  # different classes where there are some
    ex = data.images[ex_idx].float().div(255)
    examples = [
        (c.apply(ex, interpolation).mul(255).round_().clamp_(0, 255).to(torch.uint8), data.labels[ex_idx])
        for c in conditions
    ]
    n = len(data.labels)
    n_batches = -(-n // batch_size)
    native_px = data.size[0] * data.size[1]
    t0 = time.perf_counter()
    with _progress(n_batches * len(conditions), progress and sys.stderr.isatty()) as bar:
        task = bar.add_task("scan", total=n_batches * len(conditions), what=f"{len(models)} model(s)")
        for start in range(0, n, batch_size):
            x0 = data.images[start : start + batch_size].to(device).float().div_(255)
            labels = data.labels[start : start + batch_size]
            for ci, cond in enumerate(conditions):
                x = cond.apply(x0, interpolation)
                # large conditions go through in smaller pieces: peak memory stays that of ~4x the native size
                step = max(1, min(len(x), batch_size * 4 * native_px // (x.shape[-2] * x.shape[-1])))
                for m in models:
                    t1 = time.perf_counter()
                    for i in range(0, len(x), step):
                        xi = x[i : i + step]
                        probs, est = m.predict(xi if m.kind != "onnx" else xi.cpu())
                        tallies[m.label][ci].add(probs.cpu(), labels[i : i + step], est, cond.factor)
                    model_seconds[m.label] += time.perf_counter() - t1
                bar.update(task, advance=1, what=f"{cond.sweep_name} {cond.label}")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for m in models:
        per: dict[str, list[dict[str, Any]]] = {"scale": [], "resolution": []}
        for cond, tally in zip(conditions, tallies[m.label], strict=True):
            row = {"condition": cond.label, "factor": cond.factor, "size": list(cond.size), "true_scale": cond.factor}
            per[cond.sweep_name].append(row | tally.result(data.class_names))
        results[m.label] = {k: v for k, v in per.items() if v}
    return {
        "results": results,
        "examples": examples,
        "seconds": time.perf_counter() - t0,
        "images": n,
        "model_seconds": model_seconds,
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst accuracy over a sweep's conditions and the retention ``worst / accuracy at factor 1``."""
    acc = [r["accuracy"] for r in rows]
    at_one = next((r["accuracy"] for r in rows if math.isclose(r["factor"], 1.0)), None)
    worst_i = min(range(len(acc)), key=acc.__getitem__)
    return {
        "mean_accuracy": sum(acc) / len(acc),
        "worst_accuracy": acc[worst_i],
        "worst_condition": rows[worst_i]["condition"],
        "accuracy_at_native": at_one,
        "retention": (acc[worst_i] / at_one) if at_one else None,
    }
