"""Checkpoints that survive kills and never run foreign code.

A checkpoint is a pair in ``RUN/checkpoints/``:

* ``NAME.safetensors`` — the model weights plus a JSON metadata record (:class:`CheckpointInfo`) that is enough to
  rebuild the model and its preprocessing without the run directory. safetensors cannot hold code, so loading
  weights from strangers is safe.
* ``NAME.state.pt`` — everything needed to continue training exactly: the weights again, optimizer, epoch/step,
  the metrics so far and the seed every step's randomness derives from (:mod:`msresnet.engine.state`). Saved
  with ``torch.save`` of plain tensors and containers and loaded only with ``torch.load(weights_only=True)``,
  which refuses any pickled object that is not one of those.

Both files are written atomically (temp file in the same directory, fsync, ``os.replace``), the state first and the
weights last. Resuming reads only the state file, which is complete on its own, so a kill at any moment leaves
either the new or the previous complete state; a partially written file only ever exists under a temp name.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from msresnet._atomic import atomic_write_bytes as _atomic_write_bytes
from msresnet.errors import UserError

META_KEY = "msresnet"  # safetensors metadata key holding the JSON CheckpointInfo
MAX_CLASSES = 100_000  # bounds read from metadata (see CheckpointInfo.check): far above any real label set
MAX_CHANS = 64
STATE_FORMAT = 1


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, directory unwritable); a previous one, if any, is intact."""


class NonFiniteError(UserError):
    """Values became NaN/Inf (loss, gradient, weights or buffers); nothing non-finite was written."""


@dataclass
class CheckpointInfo:
    """What a checkpoint says about its model and data; stored as JSON in the safetensors metadata.

    Attributes:
        model: registered model name.
        model_kwargs: extra ``create_model`` keyword arguments.
        num_classes: classifier outputs.
        in_chans: input channels.
        class_names: one name per class index.
        mean: per-channel normalisation mean of images in [0, 1].
        std: per-channel normalisation std.
        protocol: protocol the model was trained on (None for foreign weights).
        protocol_params: that protocol's resolved parameters.
        data_root: dataset directory the run used (None: the protocol's default location).
        train_condition: test condition matching the training data (scale or size; None when it varies).
        condition_name: ``"scale"`` or ``"size"``.
        input_size: training image ``(H, W)``.
        epoch: epochs completed when saved.
        step: optimizer steps completed when saved.
        val_acc: validation accuracy of these weights (None before the first validation).
        msresnet_version: library version that wrote the file.
        scale_probe: the calibration record of the object-scale probe (``msresnet calibrate``), None before.
        preprocess: the raw-image preprocessing (:meth:`msresnet.preprocess.Preprocess.to_dict`); None in older
            checkpoints, whose preprocessing is derived from the protocol.
        path: where the checkpoint was read from (not stored).
    """

    model: str
    model_kwargs: dict = field(default_factory=dict)
    num_classes: int = 10
    in_chans: int = 1
    class_names: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    protocol: str | None = None
    protocol_params: dict = field(default_factory=dict)
    data_root: str | None = None
    train_condition: float | int | None = None
    condition_name: str | None = None
    input_size: tuple[int, int] | None = None
    epoch: int = 0
    step: int = 0
    val_acc: float | None = None
    msresnet_version: str = ""
    scale_probe: dict | None = None
    preprocess: dict | None = None
    path: Path | None = None

    def to_json(self) -> str:
        """JSON for the safetensors metadata (``path`` is left out: it is where the file is, not what it is)."""
        d = asdict(self)
        d.pop("path")
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: Path | None = None) -> CheckpointInfo:
        """Parse :meth:`to_json` output, ignoring keys written by other versions.

        Raises:
            ValueError: not JSON, or a value out of its bounds (:meth:`check`).
        """
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "path"}
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(known[k])
        if known.get("input_size") is not None:
            known["input_size"] = tuple(known["input_size"])
        info = cls(**known, path=path)
        info.check()
        return info

    def check(self) -> None:
        """Refuse values no model of this library is built from: metadata is input like any file a user hands in,
        and every size in it bounds an allocation (classes, channels, image sides, the preprocessing's canvas).

        Raises:
            ValueError: the first value out of bounds, in words.
        """
        from msresnet.data.images import MAX_SIDE
        from msresnet.engine.config import RESERVED_MODEL_KWARGS
        from msresnet.preprocess import Preprocess

        if not isinstance(self.model, str) or not self.model:
            raise ValueError("no model name")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError("model_kwargs is not a mapping")
        clash = [k for k in RESERVED_MODEL_KWARGS if k in self.model_kwargs]
        if clash:
            raise ValueError(f"model_kwargs sets {clash[0]}, which the checkpoint records on its own")
        for name, hi in (("num_classes", MAX_CLASSES), ("in_chans", MAX_CHANS)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise ValueError(f"{name} {v!r} is not an integer from 1 to {hi}")
        if self.input_size is not None:
            sides = list(self.input_size)
            if len(sides) != 2 or not all(isinstance(v, int) and 1 <= v <= MAX_SIDE for v in sides):
                raise ValueError(f"input_size {self.input_size!r} is not two sides of 1 to {MAX_SIDE} px")
        if self.preprocess:
            if not isinstance(self.preprocess, dict):
                raise ValueError("preprocess is not a mapping")
            try:
                Preprocess.from_dict(self.preprocess)
            except (UserError, TypeError, ValueError) as e:
                raise ValueError(str(e)) from None


# --------------------------------------------------------------------------------------------------- atomic files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one (the package's one
    writer, :func:`msresnet._atomic.atomic_write`).

    Raises:
        CheckpointWriteError: the write failed (e.g. disk full); ``path`` is untouched and the temp file removed.
    """
    try:
        _atomic_write_bytes(Path(path), data)
    except OSError as e:
        reason = e.strerror or str(e)
        noun = "checkpoint" if path.suffix in (".safetensors", ".pt") else "file"
        kept = f"the previous {noun} is intact" if path.exists() else "nothing was written"
        raise CheckpointWriteError(f"cannot write {path}: {reason}; {kept}") from None


def remove_stale_temp_files(directory: Path) -> None:
    """Delete temp files left by a process killed mid-write (they are never read)."""
    if directory.is_dir():
        for p in directory.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------- weights


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor], allowed: Collection[str] = ()) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an Inf, except the ``allowed`` ones.

    The one finiteness rule of checkpoints: the writer applies it to every tensor it saves (parameters and buffers
    alike: a BatchNorm's running variance overflows while the loss is still finite) and the loader to every tensor
    it reads, so a diverged model is never kept as "last good" and never silently evaluated. ``allowed`` names the
    buffers whose NaN is a marker (:func:`allowed_nonfinite`).
    """
    return [
        k
        for k, v in tensors.items()
        if k not in allowed and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def allowed_nonfinite(model: nn.Module) -> set[str]:
    """State-dict names of the buffers a module declares may hold NaN as a marker, in a ``nonfinite_buffers``
    class attribute (e.g. an unfitted object-scale probe's ``centre_log2``)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in getattr(module, "nonfinite_buffers", ())
    }


def require_finite(tensors: Mapping[str, torch.Tensor], what: str, allowed: Collection[str] = ()) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` when a tensor of ``tensors`` is not finite."""
    bad = nonfinite_tensors(tensors, allowed)
    if bad:
        raise NonFiniteError(f"{what} holds non-finite values in {len(bad)} tensor(s), e.g. {bad[0]}")


def describe_kept(ckdir: Path) -> str:
    """Which checkpoint survives a stop: the words for a message (it names what is on disk now)."""
    last = Path(ckdir) / "last.safetensors"
    return f"last good checkpoint {last}" if last.is_file() else "no checkpoint was written yet"


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies of the model's tensors (safetensors refuses shared storage)."""
    return _plain(model.state_dict())


def save_weights(
    path: Path, model: nn.Module | Mapping[str, torch.Tensor], info: CheckpointInfo, allowed: Collection[str] = ()
) -> None:
    """Atomically write the weights (a model, or a state dict with the ``allowed`` NaN markers of its model) and
    ``info`` as a safetensors file.

    Raises:
        NonFiniteError: a parameter or buffer is NaN/Inf (nothing is written).
    """
    if isinstance(model, nn.Module):
        tensors, allowed = plain_state_dict(model), allowed_nonfinite(model)
    else:
        tensors = _plain(model)
    require_finite(tensors, f"the model to be saved as {path}", allowed)
    data = st_save(tensors, metadata={META_KEY: info.to_json(), "format": "pt"})
    atomic_write_bytes(Path(path), data)


def _plain(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def resolve_checkpoint(path: str | Path) -> Path:
    """Find the weights file for a run directory (``best``, else ``last``), its ``checkpoints/`` dir or a file.

    Raises:
        UserError: nothing loadable there.
    """
    p = Path(path)
    if p.is_dir():
        for d in (p / "checkpoints", p):
            for name in ("best.safetensors", "last.safetensors"):
                if (d / name).is_file():
                    return d / name
        raise UserError(f"no checkpoint in {p} (expected checkpoints/best.safetensors or last.safetensors)")
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist")
    if p.suffix != ".safetensors":
        raise UserError(f"{p} is not a .safetensors checkpoint (pass a run directory or a .safetensors file)")
    return p


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Read the :class:`CheckpointInfo` of a run directory or ``.safetensors`` file without loading the weights.

    Raises:
        UserError: missing, not a safetensors file, or written by something other than msresnet.
    """
    file = resolve_checkpoint(path)
    try:
        with safe_open(str(file), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file} is not a readable safetensors checkpoint: {str(e).splitlines()[0]}") from None
    if META_KEY not in meta:
        raise UserError(f"{file} has no msresnet metadata (not written by msresnet train)")
    try:
        return CheckpointInfo.from_json(meta[META_KEY], path=file)
    except (ValueError, TypeError) as e:
        raise UserError(f"{file} has corrupt msresnet metadata: {e}") from None


def load_weights_into(
    model: nn.Module, weights: dict[str, torch.Tensor], file: Path, expected: str, got: str | None = None
) -> None:
    """``load_state_dict`` with the mismatch turned into a one-line UserError naming both architectures (``got``:
    the name the model was built as, default its class name)."""
    own = model.state_dict()
    shapes = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    missing: list[str] = []
    unexpected: list[str] = []
    if not shapes:
        # the modules' own load hooks settle optional tensors (an object-scale probe absent from older weights
        # loads unfitted), so what they still report missing or unexpected is a real mismatch
        result = model.load_state_dict(weights, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected or shapes:
        got = got or type(model).__name__
        if expected and expected != got:
            raise UserError(f"checkpoint {file} is for model {expected}, not {got}")
        if shapes:
            k = shapes[0]
            detail = f"shape mismatch for {k}: checkpoint {tuple(weights[k].shape)}, model {tuple(own[k].shape)}"
        else:
            detail = f"{len(missing)} missing and {len(unexpected)} unexpected tensors"
            detail += f" (e.g. {(missing or unexpected)[0]})"
        raise UserError(f"checkpoint {file} does not match model {got}: {detail}")


@dataclass
class LoadedCheckpoint:
    """A trained model with what it needs to be used: its preprocessing, class names and training record.

    Attributes:
        model: the rebuilt model, in eval mode.
        preprocess: raw image -> model input (:class:`~msresnet.preprocess.Preprocess`); None for a model that
            takes neither 1 nor 3 channels (its images cannot be prepared from files).
        class_names: one name per output index.
        info: the checkpoint's :class:`CheckpointInfo` (``info.path``: the file it was read from).
        name: the registered model name it was built as.
    """

    model: nn.Module
    preprocess: Any
    class_names: list[str]
    info: CheckpointInfo
    name: str


def _check_model_size(
    name: str, kwargs: dict[str, Any], info: CheckpointInfo, weights: Mapping[str, torch.Tensor], file: Path
) -> None:
    """Refuse metadata that describes a model much larger than the weights the file holds (``model_kwargs`` such as
    a crafted width are sizes too): the model is first built on the ``meta`` device, which allocates nothing."""
    from msresnet import create_model

    try:
        with torch.device("meta"):
            probe = create_model(name, num_classes=info.num_classes, in_chans=info.in_chans, **kwargs)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - a model that computes in __init__ cannot be probed; it is built for real
        return
    need = sum(t.numel() for t in probe.state_dict().values())
    have = sum(t.numel() for t in weights.values())
    if need > 2 * have + 1_000_000:
        raise UserError(
            f"{file} has corrupt msresnet metadata: it describes a model of {need:,} values, the file holds {have:,}"
        )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", model: str | None = None) -> LoadedCheckpoint:
    """Rebuild a trained model from a run directory or a ``.safetensors`` checkpoint, with its preprocessing,
    class names and info as one typed record.

    Args:
        path: run directory (uses ``checkpoints/best``, else ``last``), its ``checkpoints`` directory, or a file.
        device: where to put the model.
        model: expected model name; a checkpoint of another architecture is then refused by name.

    Raises:
        UserError: missing/unreadable file, unknown model, or weights that do not fit the architecture.
    """
    from msresnet import create_model
    from msresnet.preprocess import preprocess_from_info

    info = read_checkpoint_info(path)
    file = info.path
    name = model or info.model
    try:
        weights = st_load(Path(file).read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file} is not a readable safetensors checkpoint: {str(e).splitlines()[0]}") from None
    kwargs = dict(info.model_kwargs)
    if "scale_pool.beta" in weights and "scale_pool" not in kwargs:
        # written before msresnet* defaulted to scale_pool="confidence": its head is the softmax over levels
        kwargs.update(scale_pool="softmax", scale_dropout=kwargs.get("scale_dropout", 0.0))
    _check_model_size(name, kwargs, info, weights, file)
    net = create_model(name, num_classes=info.num_classes, in_chans=info.in_chans, **kwargs)
    bad = nonfinite_tensors(weights, allowed_nonfinite(net))
    if bad:
        raise NonFiniteError(
            f"checkpoint {file} holds non-finite values in {len(bad)} tensor(s), e.g. {bad[0]}: the run diverged "
            "and these weights cannot classify anything"
        )
    load_weights_into(net, weights, file, expected=info.model, got=name)
    try:
        prep = preprocess_from_info(info)
    except UserError:
        prep = None
    cfg = getattr(net, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg["label_names"] = list(info.class_names)  # where timm users look for them
    return LoadedCheckpoint(net.to(device).eval(), prep, list(info.class_names), info, name)


def load_model(path: str | Path, device: str | torch.device = "cpu", model: str | None = None) -> nn.Module:
    """The model of :func:`load_checkpoint` alone (the timm-style loader: a module in eval mode).

    For backward compatibility the module also carries ``checkpoint_info``, ``preprocess`` and ``class_names``;
    new code reads them from :func:`load_checkpoint`'s typed record instead.

    Raises:
        UserError: missing/unreadable file, unknown model, or weights that do not fit the architecture.
    """
    loaded = load_checkpoint(path, device=device, model=model)
    net = loaded.model
    net.checkpoint_info, net.preprocess, net.class_names = loaded.info, loaded.preprocess, loaded.class_names
    return net


# --------------------------------------------------------------------------------------------------- training state


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a training-state dict of plain tensors/containers (see :func:`load_state`)."""
    buf = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    """Load a training-state file with ``torch.load(weights_only=True)``: plain data only, never code.

    Raises:
        UserError: the file is unreadable, truncated, or holds pickled objects other than tensors/containers
            (e.g. a planted malicious pickle); it is refused by name, nothing in it is executed.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's notes about pickle protocols: the refusal below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise UserError(f"cannot read training state {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - whatever the unpickler trips on, the file is refused, nothing runs
        raise UserError(
            f"refusing training state {path}: not a plain tensor file ({_unpickle_reason(e)}); nothing in it was "
            "run; delete it or start a new run directory"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"refusing training state {path}: unknown format")
    return state


def _unpickle_reason(e: Exception) -> str:
    """The specific reason in torch's refusal (``Unsupported global: ...``), not its general advice."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        if detail and detail[0].strip():
            return detail[0].strip().rstrip(".")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0].rstrip(".") if lines and len(lines[0]) <= 120 else type(e).__name__
