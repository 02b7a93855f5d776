"""The ``folder-ls`` and ``folder-res`` benchmark protocols: fmnist-ls's and fmnist-res's sweeps on any ImageFolder tree
(see :mod:`msresnet.data.protocols` for what each generates; the registry there names them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from msresnet.data._params import LIMIT, Param
from msresnet.data._protocol import Protocol, map_u8, scale_key, store_dir
from msresnet.data._store import PartStore
from msresnet.data.datasets import ImageTensorDataset, stratified_split
from msresnet.data.folder import folder_fingerprint, load_folder_tensors, scan_image_folder
from msresnet.data.images import DEFAULT_MAX_PIXELS, MAX_SIDE
from msresnet.data.scaling import rescale_in_canvas, resize_images, sample_scales
from msresnet.errors import UserError

__all__ = ["FOLDER_COMMON", "build_folder_ls", "build_folder_res"]

FOLDER_COMMON = {  # the parameters folder-ls and folder-res share
    "root": Param.path(),
    "image_size": Param.int_(32, lo=4, hi=MAX_SIDE),
    "val_fraction": Param.float_(0.1, lo=0.0, hi=0.9),
    "test_fraction": Param.float_(0.2, lo=0.0, hi=0.9),
    "seed": Param.int_(0, lo=0),
    "mode": Param.choice(["L", "RGB"], "RGB"),
    "max_pixels": Param.int_(DEFAULT_MAX_PIXELS, lo=1, optional=True),
    "strict": Param.bool_(False),
    "interpolation": Param.choice(["bilinear", "bicubic", "area"], "bilinear"),
    "limit": LIMIT,
}


def _folder_splits(p: dict[str, Any]) -> tuple[dict[str, list[tuple[str, int]]], list[str], str]:
    """File lists of train / val / test and the class names; a fingerprint of every file involved."""
    root = Path(p["root"])
    g = torch.Generator().manual_seed(p["seed"])
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_all, classes = scan_image_folder(root / "train")
        test_files, test_classes = scan_image_folder(root / "test")
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise UserError(f"{root / 'test'} has classes missing from {root / 'train'}: {unknown[:5]}")
        test = [(path, classes.index(test_classes[t])) for path, t in test_files]
    else:
        all_files, classes = scan_image_folder(root)
        labels = torch.tensor([t for _, t in all_files])
        n_test = round(len(all_files) * p["test_fraction"])
        test_idx, train_idx = stratified_split(labels, [n_test, len(all_files) - n_test], g)
        test = [all_files[i] for i in sorted(test_idx.tolist())]
        train_all = [all_files[i] for i in sorted(train_idx.tolist())]
    n_val = round(len(train_all) * p["val_fraction"])
    labels = torch.tensor([t for _, t in train_all])
    val_idx, train_idx = stratified_split(labels, [n_val, len(train_all) - n_val], g)
    splits = {
        "train": [train_all[i] for i in sorted(train_idx.tolist())],
        "val": [train_all[i] for i in sorted(val_idx.tolist())],
        "test": test,
    }
    if p["limit"] is not None:
        splits = {k: v[: p["limit"]] for k, v in splits.items()}
    if not splits["train"] or not splits["test"]:
        raise UserError(f"{root}: too few images for a train and a test split ({len(train_all) + len(test)} found)")
    fingerprint = folder_fingerprint([*splits["train"], *splits["val"], *splits["test"]])
    return splits, classes, fingerprint


def _folder_loader(p: dict[str, Any], files: list[tuple[str, int]], size: int, classes: list[str]):
    return load_folder_tensors(files, size, mode=p["mode"], max_pixels=p["max_pixels"], strict=p["strict"],
                               root=p["root"], class_names=classes)  # fmt: skip


def build_folder_ls(root: str | None, p: dict[str, Any]) -> Protocol:
    splits, classes, fingerprint = _folder_splits(p)
    size, mode = p["image_size"], p["interpolation"]
    biggest = max([*p["scales"], *(p["train_scales"] or [1.0]), 1.0])
    # Default canvas: fmnist-ls proportions (its largest object, s = 2, fills 56/64 = 7/8 of the canvas).
    canvas = p["canvas"] or 2 * math.ceil(size * biggest * 8 / 7 / 2)
    p = {**p, "canvas": canvas}  # resolved before hashing: a rebuild from Protocol.params hits the same cache

    def place(files, scales: float | str) -> ImageTensorDataset:
        ds = _folder_loader(p, files, size, classes)
        if scales == "train" and p["train_scales"] is not None:
            g = torch.Generator().manual_seed(p["seed"])
            s = sample_scales(len(ds), p["train_scales"], generator=g)
        else:
            s = torch.full((len(ds),), 1.0 if scales == "train" else float(scales), dtype=torch.float64)
        out = map_u8(ds.images, lambda x, sl: rescale_in_canvas(x, s[sl], canvas, mode=mode))
        return ImageTensorDataset(out, ds.labels, extras={"scale": s.float()})

    keys = [scale_key(s) for s in p["scales"]]
    exact = dict(zip(keys, p["scales"], strict=True))
    gens = {"train": lambda: place(splits["train"], "train"), "val": lambda: place(splits["val"], "train")}
    for k in keys:
        gens[f"test-{k:g}"] = lambda k=k: place(splits["test"], exact[k])
    store = PartStore(store_dir("folder-ls", p, fingerprint), gens, classes)
    in_chans = 1 if p["mode"] == "L" else 3
    train_condition = 1.0 if p["train_scales"] is None and 1.0 in keys else None
    return Protocol("folder-ls", p, "scale", train_condition, len(classes), in_chans, classes,
                    (canvas, canvas), store, keys, lambda k: store.get(f"test-{k:g}"), root=p["root"],
                    has_val=bool(splits["val"]))  # fmt: skip


def build_folder_res(root: str | None, p: dict[str, Any]) -> Protocol:
    splits, classes, fingerprint = _folder_splits(p)
    size = p["image_size"]
    sizes = p["sizes"] or sorted({max(1, round(size * f)) for f in (0.5, 0.75, 1, 1.5, 2, 3, 4)})
    p = {**p, "sizes": sizes}  # resolved before hashing: a rebuild from Protocol.params hits the same cache
    master: dict[str, ImageTensorDataset] = {}

    def test_at(s: int) -> ImageTensorDataset:
        if "test" not in master:  # decode once at the largest size; smaller sizes are antialiased shrinks of it
            master["test"] = _folder_loader(p, splits["test"], max(sizes), classes)
        ds = master["test"]
        out = map_u8(ds.images, lambda x, sl: resize_images(x, s, mode=p["interpolation"]))
        return ImageTensorDataset(out, ds.labels)

    gens = {"train": lambda: _folder_loader(p, splits["train"], size, classes),
            "val": lambda: _folder_loader(p, splits["val"], size, classes),
            **{f"test-{s}": lambda s=s: test_at(s) for s in sizes}}  # fmt: skip
    store = PartStore(store_dir("folder-res", p, fingerprint), gens, classes)
    in_chans = 1 if p["mode"] == "L" else 3
    return Protocol("folder-res", p, "size", size if size in sizes else None, len(classes),
                    in_chans, classes, (size, size), store, sizes, lambda s: store.get(f"test-{s}"), root=p["root"],
                    has_val=bool(splits["val"]))  # fmt: skip
