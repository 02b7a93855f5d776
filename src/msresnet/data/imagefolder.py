"""A user's image folder as it is: the ``folder`` data source behind ``msresnet train --data-dir DIR``.

Layouts: ``DIR/train`` (+ ``DIR/val``, + ``DIR/test`` when present) or ``DIR/<class>/`` directly. Whatever split is
missing is carved from the training images per class (``val_fraction`` for validation, ``test_fraction`` for test;
without ``DIR/test`` but with ``DIR/val``, the val images are also the test images). A class with a single image
stays in training (a named :class:`SmallClassWarning`).

Decided from the data, and recorded in the resolved parameters (so the checkpoint's preprocessing can redo it):

* channels: grayscale when every image file is stored as grayscale, else RGB (a :class:`MixedModesWarning` when both
  occur); ``mode`` overrides.
* geometry: when all training images share one size they are used at that size; otherwise (or when ``input_size``
  asks for another size) each is fitted to ``input_size`` (shorter side, centre crop; default the median shorter
  side, at most :data:`MAX_AUTO_SIZE`).

Unreadable files are skipped, named and counted (:class:`~msresnet.data.folder.BadImageWarning`); a class folder
with no readable image, a test folder with classes the training folder lacks, or a folder with nothing to train on
is a one-line :class:`~msresnet.errors.UserError`. The single test condition is the images as they are (key
``1.0``, the training scale), so ``msresnet evaluate RUN`` reports the test accuracy.
"""

from __future__ import annotations

import statistics
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from msresnet.data._params import Param
from msresnet.data._protocol import Protocol, store_dir
from msresnet.data._store import PartStore
from msresnet.data.datasets import ImageTensorDataset
from msresnet.data.folder import folder_fingerprint, load_folder_tensors, scan_image_folder
from msresnet.data.images import DEFAULT_MAX_PIXELS, MAX_SIDE
from msresnet.errors import UserError

__all__ = ["FOLDER_PARAMS", "DataWarning", "MixedModesWarning", "SmallClassWarning", "build_plain_folder"]

MAX_AUTO_SIZE = 256  # default fitted side for folders of mixed sizes: larger photos are shrunk to this
MAX_HEADERS = 5000  # larger folders decide channels and geometry from a random sample of this many file headers
GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}

Files = list[tuple[str, int]]


class DataWarning(UserWarning):
    """Something about a user's image folder that training works around but the user should know."""


class MixedModesWarning(DataWarning):
    """A folder mixes grayscale and colour images."""


class SmallClassWarning(DataWarning):
    """A class has too few images to appear in every split."""


def _mode(v: Any) -> str | None:
    if v is None or v in ("L", "RGB"):
        return v
    raise ValueError("must be 'L' (grayscale) or 'RGB'")


FOLDER_PARAMS: dict[str, Param] = {
    "root": Param.path(),
    "val_fraction": Param.float_(0.1, lo=0.0, hi=0.9),
    "test_fraction": Param.float_(0.2, lo=0.0, hi=0.9),
    "seed": Param.int_(0, lo=0),
    "mode": Param(None, _mode, "L or RGB (default: from the data)"),
    "input_size": Param.int_(
        None, lo=4, optional=True, doc="fit images to this square size (default: native)", hi=MAX_SIDE
    ),
    "max_pixels": Param.int_(DEFAULT_MAX_PIXELS, lo=1, optional=True),
    "strict": Param.bool_(False),
}


# ------------------------------------------------------------------------------------------------------- splits


def _carve(files: Files, fraction: float, g: torch.Generator, lonely: set[str], classes: list[str]):
    """Split ``fraction`` of every class off ``files``; at least one image of each class stays (a class with a single
    image is added to ``lonely``)."""
    if fraction <= 0 or not files:
        return files, []
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in files:
        by_class.setdefault(item[1], []).append(item)
    keep, carved = [], []
    for c in sorted(by_class):
        items = by_class[c]
        order = torch.randperm(len(items), generator=g).tolist()
        k = min(round(len(items) * fraction), len(items) - 1)
        if len(items) == 1:
            lonely.add(classes[c])
        carved += [items[i] for i in order[:k]]
        keep += [items[i] for i in order[k:]]
    return sorted(keep), sorted(carved)


def _scan_known(folder: Path, classes: list[str], role: str, train_dir: Path) -> Files:
    files, names = scan_image_folder(folder)
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise UserError(f"{folder} has classes that {train_dir} lacks: {', '.join(unknown[:5])} "
                        f"({role} classes must be training classes)")  # fmt: skip
    return [(path, classes.index(names[t])) for path, t in files]


def plain_splits(p: dict[str, Any]) -> tuple[dict[str, Files], list[str], dict[str, str]]:
    """File lists of train / val / test, the class names and where each split came from (for the log)."""
    root = Path(p["root"])
    if any(root.glob("*-idx?-ubyte*")):
        raise UserError(f"{root} holds IDX files, not class folders: pass --protocol fmnist-ls (or another fmnist-* "
                        "protocol) to train on them")  # fmt: skip
    g = torch.Generator().manual_seed(p["seed"])
    where: dict[str, str] = {}
    lonely: set[str] = set()
    if (root / "train").is_dir():
        train, classes = scan_image_folder(root / "train")
        has_val, has_test = (root / "val").is_dir(), (root / "test").is_dir()
        val = _scan_known(root / "val", classes, "val", root / "train") if has_val else None
        test = _scan_known(root / "test", classes, "test", root / "train") if has_test else None
        where["train"] = str(root / "train")
        if test is None and val is not None:
            test, where["test"] = val, f"{root / 'val'} (no {root / 'test'})"
        elif test is None:
            train, test = _carve(train, p["test_fraction"], g, lonely, classes)
            where["test"] = f"{p['test_fraction']:.0%} of {root / 'train'}"
        else:
            where["test"] = str(root / "test")
        if val is None:
            train, val = _carve(train, p["val_fraction"], g, lonely, classes)
            where["val"] = f"{p['val_fraction']:.0%} of {root / 'train'}"
        else:
            where["val"] = str(root / "val")
    else:
        everything, classes = scan_image_folder(root)
        train, test = _carve(everything, p["test_fraction"], g, lonely, classes)
        train, val = _carve(train, p["val_fraction"], g, lonely, classes)
        where = {"train": str(root), "val": f"{p['val_fraction']:.0%} of {root}",
                 "test": f"{p['test_fraction']:.0%} of {root}"}  # fmt: skip
    if lonely:
        names = sorted(lonely)
        message = (
            f"{len(names)} class(es) of {where['train']} have a single image, kept for training and so never "
            f"validated or tested: {', '.join(names[:5])}"
        )
        warnings.warn(message, SmallClassWarning, stacklevel=2)
    empty = [classes[c] for c in range(len(classes)) if not any(t == c for _, t in train)]
    if empty:
        raise UserError(f"class folder {Path(where['train']) / empty[0]} has no image files"
                        + (f" (nor {len(empty) - 1} other class folders)" if len(empty) > 1 else ""))  # fmt: skip
    return {"train": train, "val": val, "test": test}, classes, where


# ------------------------------------------------------------------------------------------------- data facts


def _header(path: str) -> tuple[bool, tuple[int, int]] | None:
    """(grayscale?, (width, height)) from the file header, or None when it cannot be opened (reported later)."""
    try:
        with Image.open(path) as im:
            gray = im.mode in GRAY_MODES
            if im.mode == "P":  # a palette image is grayscale when its palette is
                pal = im.getpalette() or []
                gray = all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))
            return gray, im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _header_sample(files: Files, seed: int) -> Files:
    """The files whose headers decide channels and geometry: all of them up to :data:`MAX_HEADERS`, else a seeded
    random :data:`MAX_HEADERS` plus the first file of every class (so the first training step of a streamed folder
    does not wait for a pass over every file)."""
    if len(files) <= MAX_HEADERS:
        return files
    g = torch.Generator().manual_seed(seed)
    pick = set(torch.randperm(len(files), generator=g)[:MAX_HEADERS].tolist())
    firsts = {t: i for i, (_, t) in reversed(list(enumerate(files)))}
    return [files[i] for i in sorted(pick | set(firsts.values()))]


def _facts(p: dict[str, Any], splits: dict[str, Files], classes: list[str], train_dir: Path) -> dict[str, Any]:
    """Channel mode and geometry decided from the training and validation images' headers."""
    files = _header_sample(splits["train"] + splits["val"], p["seed"])
    with ThreadPoolExecutor(4) as pool:
        heads = list(pool.map(_header, [f for f, _ in files], chunksize=64))
    readable = Counter(t for (_, t), h in zip(files, heads, strict=True) if h is not None)
    checked = {t for _, t in files}
    dead = [c for c in range(len(classes)) if not readable[c] and c in checked]
    if dead:
        raise UserError(f"class folder {train_dir / classes[dead[0]]} has no readable image"
                        + (f" (nor {len(dead) - 1} other class folders)" if len(dead) > 1 else ""))  # fmt: skip
    ok = [(f, h) for (f, _), h in zip(files, heads, strict=True) if h is not None]
    gray = [f for f, h in ok if h[0]]
    colour = [f for f, h in ok if not h[0]]
    mode = p["mode"] or ("RGB" if colour else "L")
    if gray and colour:
        what = "grayscale" if mode == "RGB" else "colour"
        odd = gray if mode == "RGB" else colour
        into, other = ("RGB", "L") if mode == "RGB" else ("grayscale", "RGB")
        message = (
            f"{train_dir} mixes {len(gray)} grayscale and {len(colour)} colour images; training in {into}, "
            f"the {what} ones converted (e.g. {Path(odd[0]).name}); --mode {other} chooses the other"
        )
        warnings.warn(message, MixedModesWarning, stacklevel=3)
    sizes = Counter(h[1] for _, h in ok)
    native = next(iter(sizes)) if len(sizes) == 1 else None
    size = p["input_size"]
    if native is not None and (size is None or native == (size, size)):
        size = None  # used as they are
    elif size is None:
        size = min(MAX_AUTO_SIZE, int(statistics.median(min(s) for s in sizes.elements())))
    return {"mode": mode, "input_size": size, "native": native, "sizes": sizes, "gray": len(gray), "n": len(ok)}


def _describe(facts: dict[str, Any], where: dict[str, str], n: dict[str, int], classes: list[str]) -> str:
    chans = "grayscale" if facts["mode"] == "L" else "RGB"
    if facts["input_size"] is None:
        w, h = facts["native"]
        geo = f"images used at their own size {w}x{h}"
    else:
        s = facts["input_size"]
        (w0, h0), (w1, h1) = min(facts["sizes"]), max(facts["sizes"])
        had = f"sizes {w0}x{h0} .. {w1}x{h1}" if len(facts["sizes"]) > 1 else f"size {w0}x{h0}"
        geo = f"{had} -> shorter side to {s} px + centre crop {s}x{s} (--input-size)"
    parts = ", ".join(f"{k} {n[k]} ({where[k]})" for k in ("train", "val", "test"))
    return f"image folder: {len(classes)} classes; {parts}; {chans}; {geo}"


# ------------------------------------------------------------------------------------------------------ builder


def build_plain_folder(_root: str | None, p: dict[str, Any]):
    """The ``folder`` protocol for the resolved parameters ``p`` (see the module docstring)."""
    splits, classes, where = plain_splits(p)
    if not splits["test"]:
        raise UserError(f"{p['root']}: too few images for a test split; add DIR/test or more images per class")
    facts = _facts(p, splits, classes, Path(where["train"]))
    p = {**p, "mode": facts["mode"], "input_size": facts["input_size"]}  # resolved before hashing
    size = facts["input_size"]

    def load(part: str) -> ImageTensorDataset:
        ds = load_folder_tensors(splits[part], size, mode=p["mode"], max_pixels=p["max_pixels"], strict=p["strict"],
                                 root=where[part], class_names=classes)  # fmt: skip
        if part == "train":
            seen = set(ds.labels.tolist())
            lost = [c for c in classes if classes.index(c) not in seen]
            if lost:
                raise UserError(f"class folder {Path(where['train']) / lost[0]} has no readable training image")
        return ds

    fingerprint = folder_fingerprint([*splits["train"], *splits["val"], *splits["test"]])
    store = PartStore(store_dir("folder", p, fingerprint), {k: (lambda k=k: load(k)) for k in splits}, classes)
    in_chans = 1 if p["mode"] == "L" else 3
    input_size = (size, size) if size else (facts["native"][1], facts["native"][0])
    protocol = Protocol("folder", p, "scale", 1.0, len(classes), in_chans, classes, input_size, store, [1.0],
                        lambda _k: store.get("test"), root=p["root"], has_val=bool(splits["val"]))  # fmt: skip
    protocol.summary = _describe(facts, where, {k: len(v) for k, v in splits.items()}, classes)  # type: ignore[attr-defined]
    protocol.files = splits  # type: ignore[attr-defined]  # what a streamed run reads, file by file
    protocol.fingerprint = fingerprint  # type: ignore[attr-defined]  # the files' identity without decoding them
    return protocol
