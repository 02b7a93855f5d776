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
* ``calibrated``: max probability after a per-level temperature fitted (NLL) at the training condition.

Both fitted rules use the training condition only, never another scale. The last line, ``best level``, is no
rule: the best single level per condition, chosen with the labels - the ceiling of any per-condition choice.

``--pyramid`` evaluates the trained model with other pyramid factors than it was trained with (the pyramid has no
parameters, so any factors load): does a finer pyramid at test time fill the dips between the trained levels?

    python benchmarks/level_selection.py runs/bench/quick__fullmodel__fmnist-ls__msresnet_conf_sd__seed0
    python benchmarks/level_selection.py RUN --pyramid 1,0.8409,0.7071,0.5946,0.5,0.4204,0.3536,0.2973,0.25
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
Rule = Callable[[torch.Tensor], torch.Tensor]  # per-level logits [N, S, K] -> class scores [N, K]


def collect(
    run_dir: Path, val_limit: int | None, pyramid: list[float] | None = None
) -> tuple[float, dict[float, tuple[torch.Tensor, torch.Tensor]]]:
    """Every level's logits and the labels per validation condition: ``(training condition, {condition: (L, y)})``;
    ``pyramid``: evaluate with these factors instead of the trained ones."""
    from msresnet.data import build_protocol
    from msresnet.engine.checkpoint import load_model, read_checkpoint_info
    from msresnet.engine.evaluate import _condition_batches
    from msresnet.layers import ImagePyramid

    model = load_model(run_dir)
    info = read_checkpoint_info(run_dir)
    if getattr(model, "pyramid", None) is None or not model.global_pool:
        raise SystemExit(f"{run_dir}: not a pyramid model with a pooled head (nothing to select between)")
    if pyramid:
        model.pyramid = ImagePyramid(pyramid, model.pyramid.min_size, model.pyramid.crop_upscaled)
    protocol = build_protocol(info.protocol, **(info.protocol_params or {}))
    from scale_bench import ValidationSweep  # benchmarks/ is on sys.path when this script runs

    sweep = ValidationSweep(protocol, val_limit)
    if sweep.train_condition is None or protocol.val is None:
        raise SystemExit(f"{protocol.name}: no single training condition to compare against")
    out: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.no_grad():
        for cond, batches, _ in _condition_batches(sweep, info, None, 250, torch.device("cpu")):
            logits, labels = zip(*((model.forward_scales(x), y) for x, y in batches), strict=True)
            out[float(cond)] = (torch.cat(logits), torch.cat(labels))
    return float(sweep.train_condition), out


def _pick(logits: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """The logits of each image's highest-scoring level."""
    return logits[torch.arange(len(logits)), score.argmax(1)]


def _temperatures(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-level temperature minimising the NLL (grid search, 0.25 .. 21)."""
    grid = [0.25 * 1.25**k for k in range(20)]
    nll = torch.nn.functional.cross_entropy
    return torch.tensor([min(grid, key=lambda t: float(nll(logits[:, s] / t, labels))) for s in range(logits.shape[1])])


def rules(train_logits: torch.Tensor, train_labels: torch.Tensor) -> dict[str, Rule]:
    """The selection rules; the two fitted ones use the training condition's logits and labels only."""
    conf = train_logits.softmax(-1).amax(-1)
    mu, sd = conf.mean(0), conf.std(0).clamp_min(1e-6)
    temp = _temperatures(train_logits, train_labels)[None, :, None]

    def prob(x: torch.Tensor) -> torch.Tensor:
        return x.softmax(-1)

    return {
        "max prob (default)": lambda x: _pick(x, prob(x).amax(-1)),
        "margin": lambda x: _pick(x, -prob(x).topk(2, -1).values.diff(dim=-1).squeeze(-1)),
        "neg. entropy": lambda x: _pick(x, (prob(x) * x.log_softmax(-1)).sum(-1)),
        "energy": lambda x: _pick(x, x.logsumexp(-1)),
        "max logit": lambda x: _pick(x, x.amax(-1)),
        "avg logits": lambda x: x.mean(1),
        "avg probs": lambda x: prob(x).mean(1),
        "z-confidence": lambda x: _pick(x, (prob(x).amax(-1) - mu) / sd),
        "calibrated": lambda x: _pick(x, (x / temp).softmax(-1).amax(-1)),
    }


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
    ap.add_argument(
        "--out",
        type=Path,
        help="JSON path (default: benchmarks/results/level_selection/<run>[__pyramidN].json)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_cond, data = collect(args.run, args.val_limit, args.pyramid)
    conditions = sorted(data)
    table: dict[str, list[float]] = {}
    for name, rule in rules(*data[train_cond]).items():
        table[name] = [float((rule(L).argmax(-1) == y).float().mean()) for L, y in (data[c] for c in conditions)]
    table["best level (labels; ceiling)"] = [
        max(float((L[:, s].argmax(-1) == y).float().mean()) for s in range(L.shape[1]))
        for L, y in (data[c] for c in conditions)
    ]
    i_train = conditions.index(train_cond)
    print(f"| rule | {' | '.join(f'{c:g}' for c in conditions)} | mean | retention |")
    print("|---" * (len(conditions) + 3) + "|")
    for name, acc in table.items():
        cells = " | ".join(f"{100 * a:.1f}" for a in acc)
        print(f"| {name} | {cells} | {100 * sum(acc) / len(acc):.1f} | {min(acc) / acc[i_train]:.2f} |")
    suffix = f"__pyramid{len(args.pyramid)}" if args.pyramid else ""
    out = args.out or ROOT / "benchmarks" / "results" / "level_selection" / f"{args.run.name}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"run": str(args.run), "split": "validation", "conditions": conditions, "accuracy": table}
    if args.pyramid:
        record["pyramid"] = args.pyramid
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
