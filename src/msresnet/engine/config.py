"""Training configuration: one dataclass, loaded from a YAML recipe plus overrides, validated strictly.

Every field a run depends on lives in :class:`TrainConfig`, so ``RUN/config.yaml`` (written by :func:`to_yaml`)
is enough to reproduce it: ``msresnet train --config RUN/config.yaml``. Validation turns every mistake a user can
make (unknown key, wrong type, value out of range) into a one-line :class:`~msresnet.errors.UserError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from msresnet.errors import UserError


class DeprecatedOptionWarning(UserWarning):
    """A configuration key or option under its old name (it still works, under its new meaning's name)."""


# old key -> (new key, why it was renamed); the old name still works, with a one-line warning
DEPRECATED_KEYS = {
    "num_workers": ("threads", "it sets torch threads; loader processes are 'workers'"),
}

# Keys of RUN/config.yaml that describe the run rather than configure it; ignored when a config is loaded back.
PROVENANCE_KEY = "provenance"


@dataclass
class TrainConfig:
    """Everything one training run depends on.

    Attributes:
        model: registered model name (``msresnet.list_models()``), or ``timm:NAME`` for any timm classifier as the
            trunk (built by ``timm.create_model``; nothing is downloaded).
        model_kwargs: extra keyword arguments for ``msresnet.create_model`` (for ``timm:NAME``: for
            ``timm.create_model``, e.g. ``drop_path_rate``).
        wrap: the scale wrapper put around the model, ``"canonical"``, ``"pyramid"`` or ``"none"``; ``"default"``:
            for ``timm:NAME`` the scale method of the library's default model (``msresnet.DEFAULT_WRAP``), for the
            project's own names none (they are configured already).
        pretrained_file: start from these weights (safetensors, or a state dict that loads with
            ``torch.load(weights_only=True)``), loaded into the trunk as timm loads pretrained weights: the
            classifier is re-initialised when the class count differs and the first convolution adapted to the
            input channels. Never downloads.
        trunk_lr_scale: learning rate of everything but the classifier, relative to ``lr`` (e.g. 0.1 when
            fine-tuning from ``pretrained_file``: the new head learns faster than the pretrained trunk).
        protocol: benchmark protocol name (``msresnet.data.list_protocols()``); default ``folder`` (the images of
            ``data_root`` as they are) when ``data_root`` is given, else ``fmnist-ls``.
        protocol_params: protocol parameters (e.g. ``{"realization": 0}``).
        data_root: an ImageFolder to train on (``DIR/train`` [+ ``val``, ``test``] or ``DIR/<class>/``), or a
            non-default Fashion-MNIST location with an ``fmnist-*`` protocol.
        input_size: image folders: fit every image to this square size (shorter side, centre crop); default: the
            images' own size when they share one, else their median shorter side.
        mode: image folders: ``"L"`` (grayscale) or ``"RGB"``; default: from the images.
        out: run directory.
        resume: continue the run in ``out`` from its last good checkpoint.
        epochs: number of passes over the training images.
        train_limit: use only N training images (a class-stratified N by default, see ``limit_mode``).
        limit_mode: ``"stratified"`` (balanced classes, first images of each class) or ``"first"``.
        val_limit: validate on at most N images each epoch (None: all of them).
        batch_size: images per optimizer step (per process under torchrun).
        optimizer: ``"adamw"`` or ``"sgd"`` (Nesterov momentum).
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        schedule: ``"cosine"``, ``"onecycle"`` or ``"constant"``, stepped every iteration.
        warmup_epochs: linear warm-up length in epochs (fractions allowed); one-cycle uses 30% when 0.
        label_smoothing: cross-entropy label smoothing.
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        rescale_aug: ``[lo, hi]`` object-scale range of random-rescale augmentation (None: off).
        rescale_fill: what surrounds an image the augmentation shrinks: ``"zeros"`` (a black canvas, as objects on
            black are made) or ``"reflect"`` (the image mirrored: scenes continue instead of gaining a frame).
        degrade_aug: ``[lo, hi]`` down-up resampling factor range of detail-loss augmentation (None: off).
        degrade_p: probability that an image gets the detail-loss augmentation.
        si_weight: weight of the scale-invariance consistency term (0: plain cross-entropy).
        si_scale_range: ``[lo, hi]`` scale range of the second view for the consistency term (None: loss default).
        si_feature_weight: weight of the pooled-feature consistency term.
        si_view: second view of the consistency term: ``"resize"`` (whole-image random rescale in ``si_scale_range``)
            or ``"degrade"`` (down-up resampling at the same size, in ``degrade_aug``'s range or [0.5, 1]; for
            protocols where the object size must not be augmented, e.g. fmnist-ls trained at s = 1 only).
        amp: autocast dtype, ``"bf16"`` or ``"fp16"`` (None: full float32).
        channels_last: run the model in channels-last memory format.
        compile: wrap the model in ``torch.compile``.
        seed: seed of weights, batch order and augmentation.
        deterministic: ``torch.use_deterministic_algorithms(True)``; resume is then bit-exact on CPU.
        device: ``"auto"`` (cuda when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        threads: CPU threads for intra-op parallelism (``torch.set_num_threads``; 0 keeps torch's default).
        workers: loader worker processes that decode streamed image folders (0: decode in the training process).
        loader: ``"stream"`` (decode each image when its batch comes, in ``workers`` processes; memory does not grow
            with the folder) or ``"memory"`` (decode the whole data set once into one tensor: fastest for the small
            benchmark protocols). Default: ``stream`` for the ``folder`` protocol, else ``memory``.
        augment: streamed folders: comma-separated augmentations from torchvision's transforms v2, applied in this
            order: ``rrc`` (random-resized-crop: itself a scale augmentation), ``flip``, ``trivialaugment`` or
            ``randaugment``, ``mixup`` and/or ``cutmix`` (on batches; also for in-memory data). None: off.
        ema_decay: keep an exponential moving average of the weights (``timm.utils.ModelEmaV3``) with this decay;
            validation and the saved weights use the average. None: off.
        tensorboard: also write TensorBoard scalars to ``RUN/tensorboard``.
        log_every: plain log line every N steps when stderr is not a terminal.
        checkpoint_every: also checkpoint ``last`` every N steps (0: at the end of every epoch only).
        nan_policy: on a non-finite loss or gradient, ``"stop"`` the run or ``"skip"`` the step.
        calibrate_probe: after training, fit the pyramid model's object-scale probe on validation images and keep
            it in the best and last checkpoints where validation improves (``msresnet calibrate``).
        dist_timeout: under torchrun, seconds a rank waits for the others in one collective before it gives up, so
            a rank that hangs ends the whole job in bounded time (one that dies is noticed at once).
    """

    model: str = ""
    model_kwargs: dict = field(default_factory=dict)
    wrap: Literal["default", "canonical", "pyramid", "none"] = "default"
    pretrained_file: str | None = None
    trunk_lr_scale: float = 1.0
    protocol: str = ""
    protocol_params: dict = field(default_factory=dict)
    data_root: str | None = None
    input_size: int | None = None
    mode: Literal["L", "RGB"] | None = None
    out: str = ""
    resume: bool = False
    epochs: int = 10
    train_limit: int | None = None
    limit_mode: Literal["stratified", "first"] = "stratified"
    val_limit: int | None = 1000
    batch_size: int = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    rescale_aug: tuple[float, float] | None = None
    rescale_fill: Literal["zeros", "reflect"] = "zeros"
    degrade_aug: tuple[float, float] | None = None
    degrade_p: float = 0.5
    si_weight: float = 0.0
    si_scale_range: tuple[float, float] | None = None
    si_feature_weight: float = 0.0
    si_view: Literal["resize", "degrade"] = "resize"
    amp: Literal["bf16", "fp16"] | None = None
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    threads: int = 0
    workers: int = 2
    loader: Literal["stream", "memory"] | None = None
    augment: str | None = None
    ema_decay: float | None = None
    tensorboard: bool = False
    log_every: int = 50
    checkpoint_every: int = 0
    nan_policy: Literal["stop", "skip"] = "stop"
    calibrate_probe: bool = False
    dist_timeout: float = 600.0

    def __post_init__(self) -> None:
        if not self.protocol:  # a folder of images trains as it is; no folder means the default benchmark
            self.protocol = "folder" if self.data_root else "fmnist-ls"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# Fields that are paths: written absolute into RUN/config.yaml (relative ones mean the directory it was run from).
PATH_KEYS = ("data_root", "out")

# Fields that may differ between a run and its resumption: how long it trains and how this process runs and reports.
# Every other field defines what the run computes, so ``--resume`` refuses a different value for it. A change of one
# of these is recorded in ``config.yaml`` as a resume event; the fields there keep describing the original launch.
RESUME_MUTABLE = (
    "out",
    "resume",
    "epochs",
    "device",
    "threads",
    "workers",
    "tensorboard",
    "log_every",
    "checkpoint_every",
    "nan_policy",
    "calibrate_probe",
    "dist_timeout",
    "compile",
    "channels_last",
    "deterministic",
)

# Keyword arguments every model gets from the data; a recipe may not set them through model_kwargs.
RESERVED_MODEL_KWARGS = ("num_classes", "in_chans")

MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64-bit seeds; the step seeds are derived modulo 2**63 - 1

# Range checks: field -> (predicate, description used in the error message).
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "epochs": (lambda v: v >= 1, ">= 1"),
    "train_limit": (lambda v: v >= 1, ">= 1"),
    "input_size": (lambda v: v >= 4, ">= 4"),
    "val_limit": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "grad_clip": (lambda v: v > 0, "> 0"),
    "rescale_aug": (lambda v: 0 < v[0] <= v[1], "a range 0 < lo <= hi"),
    "degrade_aug": (lambda v: 0 < v[0] <= v[1] <= 1, "a range 0 < lo <= hi <= 1"),
    "degrade_p": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "si_weight": (lambda v: v >= 0, ">= 0"),
    "si_scale_range": (lambda v: 0 < v[0] <= v[1], "a range 0 < lo <= hi"),
    "si_feature_weight": (lambda v: v >= 0, ">= 0"),
    "seed": (lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]"),
    "threads": (lambda v: v >= 0, ">= 0"),
    "workers": (lambda v: v >= 0, ">= 0"),
    "trunk_lr_scale": (lambda v: v >= 0, ">= 0"),
    "ema_decay": (lambda v: 0 < v < 1, "in (0, 1)"),
    "log_every": (lambda v: v >= 1, ">= 1"),
    "checkpoint_every": (lambda v: v >= 0, ">= 0"),
    "dist_timeout": (lambda v: v > 0, "> 0"),
}

_TYPES = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise UserError; accepts the string forms a CLI passes."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0]) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise UserError(f"config key {key!r}: {value!r} is not one of {choices}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, float)):
            raise UserError(f"config key {key!r}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"config key {key!r}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UserError(f"config key {key!r}: expected a number, got {value!r}")
        try:
            # YAML 1.1 reads "1e-3" as a string, so strings are accepted here too.
            number = float(value)
        except (ValueError, OverflowError):
            raise UserError(f"config key {key!r}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise UserError(f"config key {key!r}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"config key {key!r}: expected a string, got {value!r}")
        return str(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"config key {key!r}: expected {len(args)} values like [0.5, 2.0], got {value!r}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args, strict=True))
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # a bug in this module, not user input


def validate_config(values: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from a plain dict, raising UserError on the first problem."""
    known = list(_TYPES)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        norm = str(key).replace("-", "_")
        if norm in DEPRECATED_KEYS:
            new, why = DEPRECATED_KEYS[norm]
            warnings.warn(f"{norm!r} is deprecated ({why}): use {new!r}", DeprecatedOptionWarning, stacklevel=2)
            if new in values or new.replace("_", "-") in values:
                continue  # the new name wins
            norm = new
        if norm not in _TYPES:
            close = difflib.get_close_matches(norm, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown config key {key!r}{hint}")
        v = _coerce(norm, value, _TYPES[norm])
        if v is not None and norm in _RANGES:
            ok, desc = _RANGES[norm]
            if not ok(v):
                raise UserError(f"config key {norm!r} must be {desc}, got {value!r}")
        kwargs[norm] = v
    cfg = TrainConfig(**kwargs)
    clash = [k for k in RESERVED_MODEL_KWARGS if k in cfg.model_kwargs]
    if clash:
        raise UserError(
            f"config key 'model_kwargs' may not set {clash[0]}: it comes from the data "
            f"({', '.join(RESERVED_MODEL_KWARGS)} are taken from the protocol or folder)"
        )
    if not cfg.model:
        raise UserError("no model given (set 'model', e.g. --model resnet8)")
    if not cfg.out:
        raise UserError("no run directory given (set 'out', e.g. --out runs/my-run)")
    if cfg.device != "auto" and not (cfg.device in ("cpu", "cuda", "mps") or cfg.device.startswith("cuda:")):
        raise UserError(f"config key 'device': {cfg.device!r} is not auto, cpu, cuda or cuda:N")
    for key in PATH_KEYS:  # relative paths mean the working directory now: resolved once, stored absolute
        if getattr(cfg, key):
            setattr(cfg, key, str(Path(getattr(cfg, key)).expanduser().resolve()))
    return cfg


def model_build_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """``create_model`` keyword arguments of the run's model beyond classes and channels: ``model_kwargs`` plus the
    resolved scale wrapper (what a checkpoint records so that ``load_model`` rebuilds the same model)."""
    from msresnet.models.timm_trunk import DEFAULT_WRAP, is_timm_spec

    kw = dict(cfg.model_kwargs)
    if is_timm_spec(cfg.model):
        kw["wrap"] = DEFAULT_WRAP if cfg.wrap == "default" else cfg.wrap
    elif cfg.wrap not in ("default", "none"):
        kw["wrap"] = cfg.wrap
    return kw


# --input-size / --mode as each folder protocol names them
_FOLDER_OPTIONS = {"folder": "input_size", "folder-ls": "image_size", "folder-res": "image_size"}


def protocol_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.protocol_params`` with ``input_size`` / ``mode`` under the protocol's own parameter names.

    Raises:
        UserError: ``input_size`` or ``mode`` with a protocol that is not built from an image folder.
    """
    kw = dict(cfg.protocol_params)
    if cfg.input_size is None and cfg.mode is None:
        return kw
    if cfg.protocol not in _FOLDER_OPTIONS:
        raise UserError(f"--input-size / --mode apply to image folders (--data-dir), not to protocol {cfg.protocol!r}")
    if cfg.input_size is not None:
        kw[_FOLDER_OPTIONS[cfg.protocol]] = cfg.input_size
    if cfg.mode is not None:
        kw["mode"] = cfg.mode
    return kw


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a small file the user hands in (a recipe, a run's ``config.yaml``).

    Raises:
        UserError: unreadable, or not UTF-8 text.
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}); is it a YAML file?") from None


def load_train_config(yaml_path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML recipe (optional), apply ``overrides`` on top, validate.

    Overrides whose value is None are ignored, so a command line can pass every option it has and only the ones
    the user set take effect. The ``provenance`` section of a ``RUN/config.yaml`` is skipped, so a run's config can
    be fed back in.

    Raises:
        UserError: unreadable or malformed YAML, unknown key (with a close-match suggestion), wrong type,
            out-of-range value, missing model or run directory.
    """
    values: dict[str, Any] = read_recipe(yaml_path) if yaml_path is not None else {}
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = v
    return validate_config(values)


def read_recipe(yaml_path: str | Path) -> dict[str, Any]:
    """The keys of a YAML recipe (or of a run's ``config.yaml``, without its ``provenance``), not yet validated.

    Raises:
        UserError: unreadable, not UTF-8, malformed YAML, or not a mapping.
    """
    path = Path(yaml_path)
    text = read_text(path, "config")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UserError(f"config {path} is not valid YAML{line}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise UserError(f"config {path} must be a mapping of keys to values, not {type(loaded).__name__}")
    loaded.pop(PROVENANCE_KEY, None)
    return loaded


def to_yaml(cfg: TrainConfig, prov: dict[str, Any] | None = None) -> str:
    """The resolved config as YAML (loadable by :func:`load_train_config`), with a ``provenance`` section.

    Paths (``data_root``, ``out``) are written absolute, so that ``msresnet train --config RUN/config.yaml``
    reproduces the run from any working directory."""
    d = cfg.to_dict()
    d.pop("resume", None)  # how this process was started, not what the run is
    for key in PATH_KEYS:
        if d.get(key):
            d[key] = str(Path(d[key]).expanduser().resolve())
    if prov is not None:
        d[PROVENANCE_KEY] = prov
    return yaml.safe_dump(d, sort_keys=False)
