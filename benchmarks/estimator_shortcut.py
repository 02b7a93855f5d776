"""Does the canonicaliser's scale estimator read the object or the frame? Measured directly, per design.

Each variant of the canonical wrapper (the previous design: border fill, zoom about the centre; reflection fill;
reflection fill + localisation; each image's own background (``fill="auto"``: a shrunk scene pasted over its own
full-size view) + localisation, the default) gets a fresh estimator trained alone on its own self-supervised loss
(``CanonicalClassifier.estimator_loss``) over a protocol's training images, then two measurements:

* **shortcut**: background-only images (the scene generator's backgrounds, no object) zoomed by the same random
  factors the estimator is trained on: the correlation of the estimate with the zoom. An estimator that reads the
  object has nothing to read here (correlation near 0); one that learnt the frame around a shrunk view follows the
  zoom (correlation near 1). Two probes: ``background_only_correlation``, the backgrounds zoomed with the variant's
  fill and read as at test time (``log2_scale``); ``..._training_views``, the variant's own training views of them
  (for the default, a shrink of up to 2x pasted over the background's own full-size view) read by one look;
* **scale error**: median |log2 estimate - log2 truth| (octaves) on the protocol's validation sweep, per scale.

    python -m benchmarks.estimator_shortcut                       # fmnist-ls-scene, writes the record below
    python -m benchmarks.estimator_shortcut --protocol fmnist-ls --out /tmp/ls.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

import msresnet
from benchmarks.layout import RESULTS, ROOT
from msresnet.data import build_protocol
from msresnet.data.scenes import BACKGROUNDS, scene_backgrounds
from msresnet.engine.provenance import git_revision
from msresnet.evaluate import ValidationSweep
from msresnet.preprocess import normalize
from msresnet.scale.resample import zoom

RECORD = RESULTS / "estimator_shortcut.json"
#: id -> (label in the record, the wrapper's arguments)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "previous": ("previous: border fill, centre zoom", {"fill": "border", "localise": False}),
    "reflection-centre": ("reflection fill, centre zoom", {"fill": "reflection", "localise": False}),
    "reflection-localised": ("reflection fill + localised", {"fill": "reflection"}),
    "default": ("own background: shrinks up to 2x pasted over the image's own view, + localised (default)", {}),
}


def train_estimator(model: Any, images: torch.Tensor, stats: tuple, steps: int, batch: int, seed: int) -> float:
    """Train ``model``'s estimator alone for ``steps`` on uint8 ``images``; returns the last 50 steps' mean loss."""
    opt = torch.optim.AdamW(model.estimator.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g)
        x = normalize(images[idx].float() / 255, *stats)
        torch.manual_seed(seed * 100_003 + step)
        loss = model.estimator_loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return sum(losses[-50:]) / len(losses[-50:])


@torch.no_grad()
def shortcut(
    model: Any, in_chans: int, canvas: int, stats: tuple, n: int, seed: int, training_views: bool = False
) -> float:
    """Correlation of the estimate with the training zoom on background-only images, zoomed as at test time or
    (``training_views``) as the estimator's training views are made (see the module docstring)."""
    bg = scene_backgrounds(n, canvas, sorted(BACKGROUNDS), (seed, 17))
    if in_chans == 1:
        bg = bg.mean(1, keepdim=True)
    lo, hi = model.estimator_range
    g = lo + (hi - lo) * torch.rand(n, generator=torch.Generator().manual_seed(seed))
    model.eval()
    x = normalize(bg, *stats)
    if training_views:
        view = model._estimator_view(x, torch.exp2(-g), None)[0]
        est = model.estimator.decode(model.estimator.logits(view))
    else:
        est = model.log2_scale(zoom(x, torch.exp2(-g), padding=model.fill))
    return float(torch.corrcoef(torch.stack([est, g]))[0, 1])


@torch.no_grad()
def scale_errors(model: Any, sweep: ValidationSweep, stats: tuple, train_condition: float) -> dict[str, float]:
    """Median |error| (octaves) of the estimate per validation condition."""
    model.eval()
    out = {}
    for cond, ds in sweep.test.items():
        est = torch.cat([model.log2_scale(normalize(x.float() / 255, *stats)) for x in ds.images.split(256)])
        out[f"{float(cond):g}"] = round(float((est - math.log2(float(cond) / train_condition)).abs().median()), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", default="fmnist-ls-scene", help="a protocol trained at one scale")
    ap.add_argument("--limit", type=int, default=3000, help="images per split of the protocol")
    ap.add_argument("--steps", type=int, default=600, help="estimator training steps per variant")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--val-limit", type=int, default=300, help="validation images per condition")
    ap.add_argument("--probe-images", type=int, default=512, help="background-only images of the shortcut probe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--out", default=str(RECORD))
    args = ap.parse_args(argv)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown} (available: {', '.join(VARIANTS)})")
    torch.set_num_threads(args.threads)
    protocol = build_protocol(args.protocol, limit=args.limit)
    stats = (protocol.mean, protocol.std)
    sweep = ValidationSweep(protocol, args.val_limit)
    images = protocol.train.images
    out = Path(args.out).resolve()
    shown = str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)
    record: dict[str, Any] = {"protocol": args.protocol, "args": {**vars(args), "out": shown}, "variants": {}}
    if out.exists():  # a re-measured variant replaces its entry; the others keep theirs
        stored = json.loads(out.read_text())
        if stored.get("protocol") == args.protocol and stored.get("args", {}).get("limit") == args.limit:
            record["variants"] = stored.get("variants", {})
    for name, kwargs in (VARIANTS[v] for v in args.variants.split(",")):
        torch.manual_seed(args.seed)
        model = msresnet.create_model("msresnet8_canonical", num_classes=protocol.num_classes,
                                      in_chans=protocol.in_chans, **kwargs)  # fmt: skip
        t0 = time.perf_counter()
        loss = train_estimator(model, images, stats, args.steps, args.batch_size, args.seed)
        probe = (model, protocol.in_chans, protocol.input_size[0], stats, args.probe_images, args.seed + 1)
        record["variants"][name] = {
            "kwargs": kwargs,
            "final_loss": round(loss, 4),
            "background_only_correlation": round(shortcut(*probe), 3),
            "background_only_correlation_training_views": round(shortcut(*probe, training_views=True), 3),
            "median_abs_error_octaves": scale_errors(model, sweep, stats, float(protocol.train_condition)),
            "seconds": round(time.perf_counter() - t0, 1),
            "git": git_revision(ROOT),
        }
        print(name, json.dumps(record["variants"][name]), flush=True)
    record["torch"] = torch.__version__
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
