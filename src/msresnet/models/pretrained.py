"""Local pretrained weights, loaded the way timm loads its own: ``pretrained_cfg_overlay=dict(file=PATH)``.

The file is read with timm's ``load_state_dict`` (safetensors by suffix, anything else with
``torch.load(weights_only=True)``, which runs no pickled code; EMA / ``state_dict`` / ``model`` entries unwrapped,
``module.`` prefixes removed) and handed to timm's ``load_pretrained`` as the pretrained configuration's
``state_dict``. So the rules are timm's: the classifier is dropped (re-initialised) when the class count differs,
the first convolution is adapted when the input channels differ (``adapt_input_conv``), everything else must match.
What the file's class count and channels are is read from its tensors, not assumed. Nothing is ever downloaded.

A checkpoint of a wrapped model (an msresnet run of ``msresnet*`` or ``timm:NAME`` with a scale wrapper: tensors
named ``trunk.*``) also serves as pretrained weights for a trunk: its ``trunk.`` tensors are taken, the wrapper's
own ones (the scale estimator) left out.

A mismatch is one :class:`~msresnet.errors.UserError` line naming the tensors, never a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msresnet.errors import UserError

__all__ = [
    "PretrainedMismatchError",
    "fit_to_model",
    "load_pretrained_file",
    "pretrained_overlay",
    "read_weights",
    "strip_wrapper",
]

_TIMM_LOGGER = "timm.models._builder"
WRAPPER_PREFIXES = ("trunk.",)
_SIZE_MISMATCH = (  # torch's load_state_dict message, one per tensor
    r"size mismatch for ([\w.]+): copying a param with shape torch.Size\((\[.*?\])\) from checkpoint, "
    r"the shape in current model is torch.Size\((\[.*?\])\)"
)  # how the scale wrappers name their trunk's tensors


class PretrainedMismatchError(UserError):
    """Pretrained weights that do not fit the model (names the tensors)."""


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a local weights file (safetensors, or a ``weights_only`` torch file).

    Raises:
        UserError: missing, unreadable, or not a plain state dict.
    """
    from timm.models import load_state_dict

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"pretrained weights file not found: {p}")
    try:
        sd = load_state_dict(str(p), use_ema=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors, pickle and zip readers raise many types; all mean "bad file"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"cannot read pretrained weights {p}: {first} (want safetensors or a weights_only "
                        "state dict)") from None  # fmt: skip
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{p} is not a state dict of tensors")
    return dict(sd)


def fit_to_model(sd: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], int]:
    """``sd`` with a wrapped model's ``trunk.`` prefix removed when ``model`` is a bare trunk, and the number of
    tensors left out (the wrapper's own)."""
    own = set(model.state_dict())
    if not own.isdisjoint(sd):
        return sd, 0
    for prefix in WRAPPER_PREFIXES:
        sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if sub and not own.isdisjoint(sub):
            return sub, len(sd) - len(sub)
    return sd, 0


def strip_wrapper(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """The trunk's tensors of a wrapped model's checkpoint (``trunk.*``, prefix removed) and how many of the
    wrapper's own were left out; ``sd`` itself when it is not such a checkpoint."""
    for prefix in WRAPPER_PREFIXES:
        sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if sub:
            return sub, len(sd) - len(sub)
    return sd, 0


def _names(cfg: dict[str, Any], key: str) -> tuple[str, ...]:
    v = cfg.get(key)
    return (v,) if isinstance(v, str) else tuple(v or ())


def pretrained_overlay(sd: dict[str, torch.Tensor], cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``pretrained_cfg`` entries that describe ``sd`` itself: its class count (from the classifier's weight;
    -1 when it has none, so a classifier is never taken from it) and input channels (from the first convolution)."""
    classes = next((sd[f"{c}.weight"].shape[0] for c in _names(cfg, "classifier") if f"{c}.weight" in sd), -1)
    conv = next((sd[f"{c}.weight"] for c in _names(cfg, "first_conv") if f"{c}.weight" in sd), None)
    size = tuple(cfg.get("input_size") or (3, 224, 224))
    chans = int(conv.shape[1]) if conv is not None and conv.ndim == 4 else size[0]
    # source/url/hub cleared: the state dict is the only place timm may take weights from, never the network
    return {"state_dict": sd, "num_classes": int(classes), "input_size": (chans, *size[1:]), "source": "",
            "url": "", "hf_hub_id": None, "file": None}  # fmt: skip


class _Collect(logging.Handler):
    """Collects what timm's loader reports as missing / unexpected tensors."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.missing: list[str] = []
        self.unexpected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"(Missing|Unexpected) keys \((.*?)\)", record.getMessage())
        if m:
            names = [n.strip() for n in m.group(2).split(",") if n.strip()]
            (self.missing if m.group(1) == "Missing" else self.unexpected).extend(names)


@contextmanager
def timm_load_report(what: str, classifier: tuple[str, ...]) -> Iterator[None]:
    """Run a timm pretrained load and turn any mismatch into one :class:`PretrainedMismatchError` line.

    Missing classifier tensors are expected (timm drops the classifier when the class count differs); anything else
    missing or unexpected, or a shape mismatch, is an error.
    """
    logger = logging.getLogger(_TIMM_LOGGER)
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        try:
            yield
        except RuntimeError as e:
            text = str(e)
            shapes = re.findall(_SIZE_MISMATCH, text)
            if shapes:
                detail = "; ".join(f"{n}: file {a}, model {b}" for n, a, b in shapes[:3])
                more = f" (and {len(shapes) - 3} more)" if len(shapes) > 3 else ""
                raise PretrainedMismatchError(f"{what}: shape mismatch {detail}{more}") from None
            missing = re.findall(r'"([\w.]+)"', text.split("Unexpected key(s)")[0]) if "Missing key(s)" in text else []
            unexpected = re.findall(r'"([\w.]+)"', text.split("Unexpected key(s)")[-1]) if "Unexpected" in text else []
            if missing or unexpected:
                raise PretrainedMismatchError(f"{what}: {_describe(missing, unexpected)}") from None
            raise PretrainedMismatchError(f"{what}: {(text.strip().splitlines() or ['?'])[0][:200]}") from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    heads = {f"{c}.{p}" for c in classifier for p in ("weight", "bias")}
    missing = [k for k in handler.missing if k not in heads]
    if missing or handler.unexpected:
        raise PretrainedMismatchError(f"{what}: {_describe(missing, handler.unexpected)}")


def _describe(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    for label, names in (("missing from the file", missing), ("not in the model", unexpected)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{len(names)} tensors {label} ({', '.join(names[:3])}{more})")
    return "; ".join(parts)


def load_pretrained_file(
    model: nn.Module, path: str | Path, num_classes: int, in_chans: int, *, label: str = ""
) -> str:
    """Load a local weights file into ``model`` (or into its ``trunk`` when the file holds a bare trunk) with timm's
    ``load_pretrained``; returns a one-line summary for the log.

    Raises:
        UserError: unreadable file; :class:`PretrainedMismatchError` when the tensors do not fit.
    """
    from timm.models import load_pretrained

    sd = read_weights(path)
    target = model
    trunk = getattr(model, "trunk", None)
    if isinstance(trunk, nn.Module) and set(model.state_dict()).isdisjoint(sd):
        target = trunk  # a bare trunk's weights for a wrapped model: the wrapper's own parts start fresh
    sd, left_out = fit_to_model(sd, target)
    cfg = dict(getattr(target, "pretrained_cfg", None) or {})
    cfg.update(pretrained_overlay(sd, cfg))
    what = f"--pretrained-file {path} does not fit {label or type(model).__name__}"
    with timm_load_report(what, _names(cfg, "classifier")):
        load_pretrained(target, pretrained_cfg=cfg, num_classes=num_classes, in_chans=in_chans, strict=True)
    return summary(path, cfg, num_classes, in_chans, left_out, into_trunk=target is not model)


def summary(path: str | Path, cfg: dict[str, Any], num_classes: int, in_chans: int, left_out: int,
            *, into_trunk: bool = False) -> str:  # fmt: skip
    """One log line saying what a pretrained load did."""
    notes = []
    if cfg["num_classes"] != num_classes:
        had = f"{cfg['num_classes']} classes" if cfg["num_classes"] >= 0 else "no classifier"
        notes.append(f"classifier re-initialised ({had} in the file, {num_classes} here)")
    if cfg["input_size"][0] != in_chans:
        notes.append(f"first convolution adapted from {cfg['input_size'][0]} to {in_chans} channels")
    if left_out:
        notes.append(f"{left_out} tensors of the file's scale wrapper not used")
    where = " into the trunk" if into_trunk else ""
    return f"pretrained weights{where} from {path}" + (f": {'; '.join(notes)}" if notes else "")
