"""The scale-shift benchmark protocols: exact, named, deterministic, cached.

``build_protocol(name, root=None, **params)`` returns a :class:`Protocol` with ``train``, ``val`` and ``test`` (an
ordered mapping from test condition to dataset). Protocols (see ``docs`` / DESIGN.md):

``fmnist-ls`` (after MNIST Large Scale)
    64x64 canvas; the 28x28 Fashion-MNIST image resized by ``s`` (bilinear, antialiased, size ``round(28 s)``) and
    centred. train = the first 55k train images at ``s = 1`` (or, with ``train_scales=(lo, hi)``, each image at its
    own log-uniform ``s``, drawn once from ``seed``); val = the last ``val_size`` (5k) train images, the same way: model
    selection uses val, never test; test = the 10k test images at ``s = 2^(k/4), k = -4..4``. Condition keys are the
    scales rounded to 4 decimals (0.5, 0.5946, ..., 2.0).
``fmnist-ls-scene`` (objects in front of things, anywhere, in colour; :mod:`msresnet.data.scenes`)
    RGB 64x64; each object coloured and placed uniformly where it fits, over a background drawn afresh for every
    image at the canvas resolution (dead leaves or 1/f noise, ``backgrounds``). train = the first 55k train images
    at ``s = 1``; val = the last 5k, at ``s = 1`` and (for the validation sweep) at every test scale with fresh
    backgrounds and places; test = the 10k test images at the 9 fmnist-ls scales, each object keeping its colour
    across scales while its background and place change. Test objects are resized with ``interpolation``
    (bicubic by default: another filter than the bilinear of fmnist-ls and of the models' own resampling).
``fmnist-scale`` (SESN's MNIST-scale recipe)
    all 70k images pooled, stratified split 10k train / 2k val / 50k test from seed ``realization`` (0..5), each image
    resized once by ``s ~ U(0.3, 1.0)`` (bicubic, antialiased, size ``round(28 s)``) and centred on the 28x28 canvas.
    test is split into ``test_bins`` equal-count bins of increasing object scale, keyed by each bin's median scale
    (rounded to 4 decimals): with equal bins the mean over conditions *is* the overall test accuracy, and the worst
    bin shows the small-object end. ``test_bins=1`` gives one condition.
``fmnist-res`` (resolution shift)
    train/val native 28x28 (55k / last 5k of train; ``train_size`` resizes them, e.g. for an oracle trained at
    14 px); test = the 10k test images resized whole to 14, 21, 28, 42, 56, 84, 112 px (bilinear, antialiased);
    condition keys are the sizes.
``folder-ls`` / ``folder-res``
    the same two sweeps on any ImageFolder tree (``root``; ``root/train`` + ``root/test`` when present, otherwise a
    stratified ``test_fraction`` split), images cut to ``image_size`` squares (shorter side, centre crop). folder-res
    decodes the test images at the largest size and shrinks them (antialiased), so larger test sizes hold real detail.
    These are benchmarks (they change the images' geometry); to train on a folder as it is, use ``folder``.
``folder``
    a user's ImageFolder as it is (:mod:`msresnet.data.imagefolder`): the default of ``train --data-dir``.

Generated uint8 arrays are cached in ``<cache>/protocols/<name>-<hash>-v<VERSION>/`` keyed by the resolved parameters,
a fingerprint of the source files and :data:`PROTOCOL_VERSION` (bump it when generation changes).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from msresnet.data._cache import file_md5, stable_hash
from msresnet.data._params import LIMIT, Param, resolve_params
from msresnet.data._protocol import PROTOCOL_VERSION, Protocol, map_u8, scale_key, store_dir
from msresnet.data._store import PartStore
from msresnet.data.datasets import ImageTensorDataset, stratified_split
from msresnet.data.folder_protocols import FOLDER_COMMON, build_folder_ls, build_folder_res
from msresnet.data.idx import IDX_DATASETS, find_idx_files, load_idx_arrays
from msresnet.data.imagefolder import FOLDER_PARAMS, build_plain_folder
from msresnet.data.images import MAX_SIDE
from msresnet.data.scaling import rescale_in_canvas, resize_images, sample_scales
from msresnet.data.scenes import BACKGROUNDS, scenes
from msresnet.errors import UserError

__all__ = ["PROTOCOL_VERSION", "Protocol", "build_protocol", "list_protocols"]

LS_SCALES = [2 ** (k / 4) for k in range(-4, 5)]
RES_SIZES = [14, 21, 28, 42, 56, 84, 112]


# --------------------------------------------------------------------------------------------------------- helpers


def _idx_source(dataset: str, root: str | None) -> tuple[dict[str, Path], str]:
    files = find_idx_files(dataset, root)
    fingerprint = stable_hash(sorted((part, file_md5(p)) for part, p in files.items()), length=16)
    return files, fingerprint


class _IdxSplits:
    """Fashion-MNIST/MNIST loaded once per protocol, on first need (building a cached protocol never decodes it)."""

    def __init__(self, dataset: str, root: str | None) -> None:
        self.dataset, self.root = dataset, root
        self._arrays: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def __getitem__(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self._arrays is None:
            raw = load_idx_arrays(self.dataset, self.root)
            self._arrays = {k: (torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)) for k, (x, y) in raw.items()}
        return self._arrays[split]


def _train_val(images: torch.Tensor, labels: torch.Tensor, val_size: int, source: str):
    if val_size >= len(images):
        raise UserError(f"val_size={val_size} leaves no training images ({source} has {len(images)})")
    n = len(images) - val_size
    return (images[:n], labels[:n]), (images[n:], labels[n:])


def _limit(pair: tuple[torch.Tensor, torch.Tensor], limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    return pair if limit is None else (pair[0][:limit], pair[1][:limit])


# --------------------------------------------------------------------------------------------------------- fmnist


def _fmnist_common(params: dict[str, Any], root: str | None) -> tuple[_IdxSplits, str, list[str]]:
    _, fingerprint = _idx_source(params["dataset"], root)
    return _IdxSplits(params["dataset"], root), fingerprint, list(IDX_DATASETS[params["dataset"]].class_names)


def _build_fmnist_ls(root: str | None, p: dict[str, Any]) -> Protocol:
    data, fingerprint, names = _fmnist_common(p, root)
    canvas, mode = p["canvas"], p["interpolation"]

    def place(pair: tuple[torch.Tensor, torch.Tensor], scales: float | torch.Tensor) -> ImageTensorDataset:
        images, labels = pair
        s = scales if isinstance(scales, torch.Tensor) else torch.full((len(images),), float(scales))
        out = map_u8(images, lambda x, sl: rescale_in_canvas(x, s[sl], canvas, mode=mode))
        return ImageTensorDataset(out, labels.clone(), extras={"scale": s.float()})

    def train_part(which: int) -> Callable[[], ImageTensorDataset]:
        def make() -> ImageTensorDataset:
            pair = _limit(_train_val(*data["train"], p["val_size"], "the train split")[which], p["limit"])
            if p["train_scales"] is None:
                return place(pair, 1.0)
            # One draw per image over the *whole* train split, so val's scales do not depend on the train limit.
            g = torch.Generator().manual_seed(p["seed"])
            s_all = sample_scales(len(data["train"][0]), p["train_scales"], generator=g)
            n_train = len(data["train"][0]) - p["val_size"]
            s = s_all[:n_train] if which == 0 else s_all[n_train:]
            return place(pair, s[: len(pair[0])])

        return make

    keys = [scale_key(s) for s in p["scales"]]
    exact = dict(zip(keys, p["scales"], strict=True))
    if len(set(keys)) != len(keys):
        raise UserError(f"scales {p['scales']} collide after rounding to 4 decimals")
    gens = {"train": train_part(0), "val": train_part(1)}
    for k in keys:
        gens[f"test-{k:g}"] = lambda k=k: place(_limit(data["test"], p["limit"]), exact[k])
    store = PartStore(store_dir("fmnist-ls", p, fingerprint), gens, names)
    if p["train_scales"] is None:
        train_condition = 1.0 if 1.0 in keys else None
    else:  # the test scale nearest (in octaves) to the centre of the training range
        centre = math.sqrt(p["train_scales"][0] * p["train_scales"][1])
        train_condition = min(keys, key=lambda k: abs(math.log2(k / centre)))
    return Protocol("fmnist-ls", p, "scale", train_condition, len(names), 1, names, (canvas, canvas), store, keys,
                    lambda k: store.get(f"test-{k:g}"), root=root)  # fmt: skip


def _build_fmnist_ls_scene(root: str | None, p: dict[str, Any]) -> Protocol:
    data, fingerprint, names = _fmnist_common(p, root)
    canvas, families, seed = p["canvas"], p["backgrounds"], p["seed"]
    unknown = sorted(set(families) - set(BACKGROUNDS))
    if unknown:
        raise UserError(f"unknown backgrounds {unknown} (available: {', '.join(BACKGROUNDS)})")

    def part(which: int, scale: float, stream: int, mode: str) -> Callable[[], ImageTensorDataset]:
        def make() -> ImageTensorDataset:
            pair = data["test"] if which == 2 else _train_val(*data["train"], p["val_size"], "the train split")[which]
            images, labels = _limit(pair, p["limit"])
            # place and background: one stream per part; colour: one per split, the same at every scale
            out = scenes(images, scale, canvas, families, (seed, stream, round(scale * 1e4)), mode=mode,
                         colour_seed=(seed, which))  # fmt: skip
            return ImageTensorDataset(out, labels.clone(), extras={"scale": torch.full((len(out),), float(scale))})

        return make

    keys = [scale_key(s) for s in p["scales"]]
    exact = dict(zip(keys, p["scales"], strict=True))
    gens = {"train": part(0, 1.0, 0, "bilinear"), "val": part(1, 1.0, 1, "bilinear")}
    for k in keys:
        gens[f"test-{k:g}"] = part(2, exact[k], 2, p["interpolation"])
        gens[f"val-{k:g}"] = part(1, exact[k], 3, p["interpolation"])
    store = PartStore(store_dir("fmnist-ls-scene", p, fingerprint), gens, names)
    return Protocol("fmnist-ls-scene", p, "scale", 1.0 if 1.0 in keys else None, len(names), 3, names,
                    (canvas, canvas), store, keys, lambda k: store.get(f"test-{k:g}"), root=root,
                    val_loader=lambda k: store.get(f"val-{k:g}"))  # fmt: skip


def _build_fmnist_scale(root: str | None, p: dict[str, Any]) -> Protocol:
    data, fingerprint, names = _fmnist_common(p, root)
    sizes = [p["train_size"], p["val_size"], p["test_size"]]

    def realise() -> dict[str, ImageTensorDataset]:
        (tr_x, tr_y), (te_x, te_y) = data["train"], data["test"]
        pool_x, pool_y = torch.cat([tr_x, te_x]), torch.cat([tr_y, te_y])
        g = torch.Generator().manual_seed(p["realization"])
        parts = stratified_split(pool_y, sizes, g)
        out = {}
        for part, idx in zip(("train", "val", "test"), parts, strict=True):
            s = sample_scales(len(idx), p["scale_range"], log_uniform=False, generator=g)
            imgs = map_u8(pool_x[idx], lambda x, sl, s=s: rescale_in_canvas(x, s[sl], mode=p["interpolation"]))
            out[part] = ImageTensorDataset(imgs, pool_y[idx].clone(), extras={"scale": s.float(), "index": idx})
        return out

    cache: dict[str, dict[str, ImageTensorDataset]] = {}

    def part(name: str) -> Callable[[], ImageTensorDataset]:
        def make() -> ImageTensorDataset:
            if "all" not in cache:  # the three splits come from one random stream: generate and save them together
                cache["all"] = realise()
                for other, ds in cache["all"].items():
                    if other != name:
                        store.put(other, ds)
            return cache["all"][name]

        return make

    store = PartStore(store_dir("fmnist-scale", p, fingerprint), {n: part(n) for n in ("train", "val", "test")}, names)
    bins = p["test_bins"]
    if bins > p["test_size"]:
        raise UserError(f"test_bins={bins} is more than test_size={p['test_size']}")
    # Bin keys need the realised scales, which are data; they are stored in meta.json so listing keys is free.
    meta = store.read_meta()
    if meta.get("bin_keys_for") == bins and "bin_keys" in meta and store.is_cached("test"):
        keys = [float(k) for k in meta["bin_keys"]]
    else:
        keys = _bin_keys(store.get("test").extras["scale"], bins)
        store.write_meta(bin_keys=keys, bin_keys_for=bins)

    def test_loader(key: float) -> ImageTensorDataset:
        test = store.get("test")
        order = torch.argsort(test.extras["scale"], stable=True)
        chunks = torch.tensor_split(order, bins)
        return test.subset(torch.sort(chunks[keys.index(key)]).values)

    return Protocol("fmnist-scale", p, "scale", None, len(names), 1, names, (28, 28), store, keys, test_loader,
                    root=root)  # fmt: skip


def _bin_keys(scales: torch.Tensor, bins: int) -> list[float]:
    chunks = torch.tensor_split(torch.sort(scales.double()).values, bins)
    keys = [scale_key(float(c.median())) for c in chunks]
    # Rounding could merge two very narrow bins; nudge duplicates apart so keys stay unique and ordered.
    for i in range(1, len(keys)):
        if keys[i] <= keys[i - 1]:
            keys[i] = round(keys[i - 1] + 1e-4, 4)
    return keys


def _build_fmnist_res(root: str | None, p: dict[str, Any]) -> Protocol:
    data, fingerprint, names = _fmnist_common(p, root)

    def split(which: int) -> Callable[[], ImageTensorDataset]:
        def make() -> ImageTensorDataset:
            images, labels = _limit(_train_val(*data["train"], p["val_size"], "the train split")[which], p["limit"])
            if p["train_size"] != 28:  # an oracle trained at another resolution (e.g. 14 px)
                images = map_u8(images, lambda x, sl: resize_images(x, p["train_size"], mode=p["interpolation"]))
            return ImageTensorDataset(images.clone(), labels.clone())

        return make

    def test_at(size: int) -> Callable[[], ImageTensorDataset]:
        def make() -> ImageTensorDataset:
            images, labels = _limit(data["test"], p["limit"])
            out = map_u8(images, lambda x, sl: resize_images(x, size, mode=p["interpolation"]))
            return ImageTensorDataset(out, labels.clone())

        return make

    sizes = p["sizes"]
    gens = {"train": split(0), "val": split(1), **{f"test-{s}": test_at(s) for s in sizes}}
    store = PartStore(store_dir("fmnist-res", p, fingerprint), gens, names)
    t = p["train_size"]
    return Protocol("fmnist-res", p, "size", t if t in sizes else None, len(names), 1, names, (t, t), store,
                    sizes, lambda s: store.get(f"test-{s}"), root=root)  # fmt: skip


# --------------------------------------------------------------------------------------------------------- registry

_IDX = Param.choice(sorted(IDX_DATASETS), "fashion-mnist")

_REGISTRY: dict[str, tuple[Callable[[str | None, dict[str, Any]], Protocol], dict[str, Param], str]] = {
    "fmnist-ls": (_build_fmnist_ls, {
        "dataset": _IDX, "canvas": Param.int_(64, lo=8, hi=MAX_SIDE), "scales": Param.floats(LS_SCALES, positive=True),
        "train_scales": Param.range_(None), "val_size": Param.int_(5000, lo=0), "seed": Param.int_(0, lo=0),
        "interpolation": Param.choice(["bilinear", "bicubic", "area"], "bilinear"), "limit": LIMIT,
    }, "object rescaled by 2^(k/4), k=-4..4, in a 64x64 canvas; train at s=1"),
    "fmnist-ls-scene": (_build_fmnist_ls_scene, {
        "dataset": _IDX, "canvas": Param.int_(64, lo=16), "scales": Param.floats(LS_SCALES, positive=True),
        "backgrounds": Param.choices(sorted(BACKGROUNDS), sorted(BACKGROUNDS)), "val_size": Param.int_(5000, lo=0),
        "seed": Param.int_(0, lo=0), "interpolation": Param.choice(["bilinear", "bicubic"], "bicubic"), "limit": LIMIT,
    }, "coloured objects anywhere on dead-leaves / 1/f backgrounds, 64x64 RGB; train at s=1, fmnist-ls scales"),
    "fmnist-scale": (_build_fmnist_scale, {
        "dataset": _IDX, "realization": Param.int_(0, lo=0), "scale_range": Param.range_((0.3, 1.0), optional=False),
        "train_size": Param.int_(10000, lo=1), "val_size": Param.int_(2000, lo=0), "test_size": Param.int_(50000, lo=1),
        "test_bins": Param.int_(5, lo=1), "interpolation": Param.choice(["bilinear", "bicubic", "area"], "bicubic"),
    }, "SESN MNIST-scale recipe: 10k/2k/50k, s ~ U(0.3, 1) on the 28x28 canvas, realizations 0..5"),
    "fmnist-res": (_build_fmnist_res, {
        "dataset": _IDX, "sizes": Param.ints(RES_SIZES, lo=1, hi=MAX_SIDE),
        "train_size": Param.int_(28, lo=4, hi=MAX_SIDE), "val_size": Param.int_(5000, lo=0),
        "interpolation": Param.choice(["bilinear", "bicubic", "area"], "bilinear"), "limit": LIMIT,
    }, "train at 28x28, test with the whole image resized to 14..112 px"),
    "folder": (build_plain_folder, FOLDER_PARAMS, "an ImageFolder as it is: its own splits, channels and size"),
    "folder-ls": (build_folder_ls, {
        **FOLDER_COMMON, "canvas": Param.int_(None, lo=4, optional=True, hi=MAX_SIDE),
        "scales": Param.floats(LS_SCALES, positive=True), "train_scales": Param.range_(None),
    }, "an ImageFolder's images rescaled inside a canvas, fmnist-ls style"),
    "folder-res": (build_folder_res, {
        **FOLDER_COMMON, "sizes": Param.ints(None, lo=1, optional=True, hi=MAX_SIDE),
    }, "an ImageFolder's images resized whole, fmnist-res style"),
}  # fmt: skip


def list_protocols() -> list[str]:
    """Names accepted by :func:`build_protocol`."""
    return sorted(_REGISTRY)


def protocol_help() -> dict[str, str]:
    """``name -> one-line description`` (for ``msresnet`` listings)."""
    return {name: entry[2] for name, entry in sorted(_REGISTRY.items())}


def protocol_defaults(name: str) -> dict[str, Any]:
    """A protocol's parameters and their defaults."""
    return {k: v.default for k, v in _registry_entry(name)[1].items()}


def _registry_entry(name: str):
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown protocol {name!r}{hint} (available: {', '.join(list_protocols())})")
    return _REGISTRY[name]


def build_protocol(name: str, root: str | os.PathLike | None = None, **params: Any) -> Protocol:
    """Build (or load from the cache) a benchmark protocol.

    Args:
        name: one of :func:`list_protocols`.
        root: where the source images are: the IDX folder for ``fmnist-*`` (default: the standard search order),
            the ImageFolder tree for ``folder-*`` (required there; also accepted as ``params["root"]``).
        **params: protocol parameters (see :func:`protocol_defaults`); ``None`` means the default.

    Raises:
        UserError: unknown protocol or parameter, bad value, missing data.
    """
    builder, spec, _ = _registry_entry(name)
    params = {k: v for k, v in params.items() if v is not None}
    if name.startswith("folder"):
        if root is not None:
            params["root"] = root
        if "root" not in params:
            raise UserError(f"protocol {name!r} needs root=<ImageFolder directory>")
        resolved = resolve_params(name, spec, params)
        return builder(None, resolved)
    resolved = resolve_params(name, spec, params)
    return builder(str(Path(root).expanduser().resolve()) if root is not None else None, resolved)
