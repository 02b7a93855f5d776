"""Which rule should pick the pyramid level? Alternatives to the default "most confident level", on validation data.

A pyramid msresnet classifies every level on its own (``model.forward_scales``); ``scale_pool="confidence"``
answers with each image's most confident level. This script takes a trained scale-bench run (an ``fmnist-ls`` or
``fmnist-res`` one), collects every level's logits once on the protocol's *validation* sweep (held-out training
images under the test conditions, as the benchmark selects on), and scores other selection rules on them without
retraining:

* ``max prob`` (the default), ``margin`` (top-1 minus top-2 probability), ``neg. entropy``, ``energy``
  (logsumexp of the logits), ``max logit``: per image, the level with the highest score;
* ``avg logits`` (the ``avg`` head), ``avg probs``: no selection, a mean over levels;
* ``z-confidence``: the max probability standardised per level by its mean and spread at the training condition
  (a coarse level that sees a tiny object is never very confident; this asks which level is *unusually* sure);
* ``calibrated``: max probability after a per-level temperature fitted (NLL) at the training condition (a level
  of an image of another size, fmnist-res, takes the fit of the training level with the nearest factor);
* ``object-scale probe``: :class:`msresnet.layers.ObjectScaleProbe` fitted on the training condition's pooled
  features (the level index is the label: no class labels, no other scale) estimates each image's object scale;
  the most confident level among those that then show the object within ``--band`` octaves of the size whose level
  classified best at the training condition.

The fitted rules use the training condition only, never another scale. The last line, ``best level``, is no
rule: the best single level per condition, chosen with the labels - the ceiling of any per-condition choice.

``--test-limit N`` scores the same rules, still fitted on validation data, on N test images per condition as well
(choose a rule on the validation table; the test table is for reporting). ``--pyramid`` evaluates the trained model
with other pyramid factors than it was trained with (the pyramid has no parameters, so any factors load): does a
finer pyramid at test time fill the dips between the trained levels?

    python -m benchmarks.level_selection runs/bench/quick__fullmodel__fmnist-ls__msresnet_conf_sd__seed0
    python -m benchmarks.level_selection RUN --pyramid 1,0.8409,0.7071,0.5946,0.5,0.4204,0.3536,0.2973,0.25
    python -m benchmarks.level_selection runs/depth8/depth8__fmnist-ls__msresnet_jitter__seed0 --test-limit 2000
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from msresnet.engine.calibrate import Levels, collect_levels
from msresnet.layers.scale_probe import ESTIMATE

ROOT = Path(__file__).resolve().parent.parent


Rule = Callable[[Levels], torch.Tensor]  # one condition's levels -> class scores [N, K]
Sweep = dict[float, Levels]


class Collected(NamedTuple):
    """What :func:`collect` gathers: the training condition, the validation sweep and (with a test limit) the test
    sweep."""

    train_condition: float
    val: Sweep
    test: Sweep


def collect(
    run_dir: Path, val_limit: int | None, pyramid: list[float] | None = None, test_limit: int | None = None
) -> Collected:
    """Every level's logits and pooled features, and the labels, per validation condition (and per test condition
    when ``test_limit`` is given); ``pyramid``: evaluate with these factors instead of the trained ones."""
    from msresnet.data import build_protocol
    from msresnet.engine.checkpoint import load_model, read_checkpoint_info
    from msresnet.evaluate import ValidationSweep
    from msresnet.layers import ImagePyramid

    model = load_model(run_dir)
    info = read_checkpoint_info(run_dir)
    if getattr(model, "pyramid", None) is None:
        raise SystemExit(f"{run_dir}: not a pyramid model with a pooled head (nothing to select between)")
    if pyramid:
        model.pyramid = ImagePyramid(pyramid, model.pyramid.min_size, model.pyramid.crop_upscaled)
    protocol = build_protocol(info.protocol, **(info.protocol_params or {}))
    sweep = ValidationSweep(protocol, val_limit)
    if sweep.train_condition is None:
        raise SystemExit(f"{protocol.name}: no single training condition to compare against")

    def levels(source: object, limit: int | None) -> Sweep:
        return {float(c): lv for c, lv in collect_levels(model, source, info, limit).items()}

    test = levels(protocol, test_limit) if test_limit else {}
    return Collected(float(sweep.train_condition), levels(sweep, None), test)


def _pick(logits: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """The logits of each image's highest-scoring level."""
    return logits[torch.arange(len(logits)), score.argmax(1)]


def _temperatures(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-level temperature minimising the NLL (grid search, 0.25 .. 21)."""
    grid = [0.25 * 1.25**k for k in range(20)]
    nll = torch.nn.functional.cross_entropy
    return torch.tensor([min(grid, key=lambda t: float(nll(logits[:, s] / t, labels))) for s in range(logits.shape[1])])


def rules(train: Levels, band: float = 0.6) -> dict[str, Rule]:
    """The selection rules; the fitted ones use the training condition's levels (and labels) only."""
    from msresnet.layers import ObjectScaleProbe, best_level_log2

    def prob(x: torch.Tensor) -> torch.Tensor:
        return x.softmax(-1)

    conf = prob(train.logits).amax(-1)
    mu_train, sd_train = conf.mean(0), conf.std(0).clamp_min(1e-6)
    temp_train = _temperatures(train.logits, train.labels)

    def fitted(stat: torch.Tensor, factors: list[float]) -> torch.Tensor:
        """Per-level statistics for the levels of ``factors`` (an fmnist-res image of another size keeps other
        levels): each level takes the fitted statistic of the training level with the nearest factor."""
        nearest = [min(range(len(train.factors)), key=lambda i: abs(math.log2(train.factors[i] / f))) for f in factors]
        return stat[nearest]

    def z_confidence(v: Levels) -> torch.Tensor:
        mu, sd = fitted(mu_train, v.factors), fitted(sd_train, v.factors)
        return _pick(v.logits, (prob(v.logits).amax(-1) - mu) / sd)

    def calibrated(v: Levels) -> torch.Tensor:
        return _pick(v.logits, (v.logits / fitted(temp_train, v.factors)[None, :, None]).softmax(-1).amax(-1))

    best_log2 = best_level_log2(train.logits, train.labels, train.factors)  # the size the trunk classifies best
    probe = ObjectScaleProbe(train.pooled.shape[1]).fit(train.pooled, train.factors, best_log2=best_log2, band=band)

    def probe_rule(v: Levels) -> torch.Tensor:
        return v.logits[torch.arange(len(v.logits)), probe.select(v.logits, v.pooled, v.factors)]

    return {
        "max prob (default)": lambda v: _pick(v.logits, prob(v.logits).amax(-1)),
        "margin": lambda v: _pick(v.logits, -prob(v.logits).topk(2, -1).values.diff(dim=-1).squeeze(-1)),
        "neg. entropy": lambda v: _pick(v.logits, (prob(v.logits) * v.logits.log_softmax(-1)).sum(-1)),
        "energy": lambda v: _pick(v.logits, v.logits.logsumexp(-1)),
        "max logit": lambda v: _pick(v.logits, v.logits.amax(-1)),
        "avg logits": lambda v: v.logits.mean(1),
        "avg probs": lambda v: prob(v.logits).mean(1),
        "z-confidence": z_confidence,
        "calibrated": calibrated,
        f"object-scale probe (band {band:g})": probe_rule,
    }


def score(sweep: Sweep, rule_set: dict[str, Rule]) -> dict[str, list[float]]:
    """Accuracy per rule and condition (sorted), and the best single level per condition (labels: the ceiling)."""
    conditions = sorted(sweep)
    table = {
        name: [float((rule(sweep[c]).argmax(-1) == sweep[c].labels).float().mean()) for c in conditions]
        for name, rule in rule_set.items()
    }
    table["best level (labels; ceiling)"] = [
        float((sweep[c].logits.argmax(-1) == sweep[c].labels[:, None]).float().mean(0).max()) for c in conditions
    ]
    return table


def print_table(title: str, conditions: list[float], table: dict[str, list[float]], train_cond: float) -> None:
    i_train = conditions.index(train_cond)
    print(f"\n{title}\n\n| rule | {' | '.join(f'{c:g}' for c in conditions)} | mean | retention |")
    print("|---" * (len(conditions) + 3) + "|")
    for name, acc in table.items():
        cells = " | ".join(f"{100 * a:.1f}" for a in acc)
        print(f"| {name} | {cells} | {100 * sum(acc) / len(acc):.1f} | {min(acc) / acc[i_train]:.2f} |")


def _factors(text: str) -> list[float]:
    """``"1,0.5,0.25"`` -> ``[1.0, 0.5, 0.25]``, for ``--pyramid``."""
    try:
        factors = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"pyramid factors must be comma-separated numbers, got {text!r}") from None
    if not factors or min(factors) <= 0:
        raise argparse.ArgumentTypeError(f"pyramid factors must be positive, got {text!r}")
    return factors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a scale-bench run directory (with checkpoints/)")
    ap.add_argument("--val-limit", type=int, default=500, help="validation images per condition (default 500)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--pyramid", type=_factors, default=None,
                    help="comma-separated pyramid factors to evaluate with (default: the trained ones)")  # fmt: skip
    ap.add_argument("--test-limit", type=int, default=0,
                    help="also score the rules (fitted on validation data) on N test images per condition")  # fmt: skip
    ap.add_argument("--band", type=float, default=0.6,
                    help="the probe rule's band around the best-classified size, in octaves (default 0.6)")  # fmt: skip
    ap.add_argument(
        "--out",
        type=Path,
        help="JSON path (default: benchmarks/results/level_selection/<run>[__pyramidN].json)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = collect(args.run, args.val_limit, args.pyramid, args.test_limit)
    rule_set = rules(data.val[data.train_condition], args.band)
    sweeps = {"validation": data.val, "test": data.test} if data.test else {"validation": data.val}
    tables = {split: score(sweep, rule_set) for split, sweep in sweeps.items()}
    for split, table in tables.items():
        title = f"{split} ({'rules fitted on validation data; ' if split == 'test' else ''}accuracy %)"
        print_table(title, sorted(sweeps[split]), table, data.train_condition)
    suffix = f"__pyramid{len(args.pyramid)}" if args.pyramid else ""
    out = args.out or ROOT / "benchmarks" / "results" / "level_selection" / f"{args.run.name}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # records written before the refined estimate have no "probe_estimate": theirs was the median over levels
    record = {"run": str(args.run), "split": "validation", "conditions": sorted(data.val), "probe_estimate": ESTIMATE}
    record["accuracy"] = tables["validation"]
    if data.test:
        record["test"] = {"conditions": sorted(data.test), "accuracy": tables["test"], "limit": args.test_limit}
    if args.pyramid:
        record["pyramid"] = args.pyramid
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
