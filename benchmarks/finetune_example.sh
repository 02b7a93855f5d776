#!/usr/bin/env bash
# Fine-tuning a timm backbone from a local file (docs/own-data.md shows its output). Task A: timm:resnet10t trained
# briefly on fmnist-ls (grayscale clothing, 10 classes). Task B: a small RGB folder of another labelling (4 groups:
# tops, bottoms, footwear, bags) drawn from Fashion-MNIST's *test* images on a tinted 48-px canvas. The same budget
# on task B from the task-A weights (--pretrained-file: 10 -> 4 classes, 1 -> 3 input channels) and from scratch.
# Usage: bash benchmarks/finetune_example.sh [WORK_DIR]   (CPU, a few minutes)
set -eu
W=${1:-/tmp/msresnet-finetune}
MS=${MS:-msresnet}
PY=${PY:-python}
mkdir -p "$W"
"$PY" - "$W/folder" <<'PYEOF'
import gzip, sys, numpy as np
from pathlib import Path
from PIL import Image
src = Path("/usr/share/datasets/fashion-mnist")
imgs = np.frombuffer(gzip.open(src / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28)
labs = np.frombuffer(gzip.open(src / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
group = {0: "tops", 2: "tops", 4: "tops", 6: "tops", 1: "bottoms", 3: "bottoms", 5: "footwear", 7: "footwear",
         9: "footwear", 8: "bags"}
out, rng, count = Path(sys.argv[1]), np.random.default_rng(0), {}
for i in rng.permutation(len(imgs)):
    g = group[int(labs[i])]; k = count.get(g, 0); count[g] = k + 1
    split = "train" if k < 50 else ("test" if k < 150 else None)
    if split is None:
        continue
    tint = rng.uniform(0.3, 1.0, 3)
    canvas = np.zeros((48, 48, 3)); dx, dy = rng.integers(4, 17, 2)
    canvas[dy:dy + 28, dx:dx + 28] = imgs[i][..., None] * tint
    d = out / split / g; d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.astype(np.uint8)).save(d / f"{i}.png")
PYEOF
"$MS" train --model timm:resnet10t --wrap none --protocol fmnist-ls --train-limit 3000 --val-limit 500 --epochs 2 \
    --batch-size 64 --out "$W/pretrain" --threads 2 2>&1 | grep -v "^step"
for start in pretrained scratch; do
    extra=()
    [ "$start" = pretrained ] && extra=(--pretrained-file "$W/pretrain/checkpoints/best.safetensors")
    "$MS" train --model timm:resnet10t --wrap none --data-dir "$W/folder" --epochs 6 --batch-size 32 --lr 1e-3 \
        --augment flip --workers 1 --threads 2 --seed 0 --out "$W/$start" "${extra[@]}" 2>&1 | grep -v "^step"
    "$MS" evaluate "$W/$start" --threads 2 2>&1 | grep -i "accuracy\|mean\|1.0" | head -3
done
