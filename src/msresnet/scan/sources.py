"""Model specs -> one uniform predictor: an msresnet run or checkpoint, ``timm:NAME``, ``torchvision:NAME`` or an
``.onnx`` file, each turned into a :class:`ModelSource` that takes images in [0, 1] and returns probabilities.

Nothing is ever downloaded: timm and torchvision models are built with ``pretrained=False`` / ``weights=None``;
weights come only from a local ``--checkpoint`` (safetensors, or a plain state dict read with
``torch.load(weights_only=True)``). Without one the model has random weights and says so (:attr:`random_init`).

Preprocessing, per model: channel conversion to the model's input channels (grey -> RGB by repetition, RGB -> grey
by luma), a resize to the model's input size only where the model needs a fixed one (timm's ``fixed_input_size``,
an ONNX graph with static height/width, or a given ``input_size``), and the model's own normalisation: msresnet
checkpoint metadata; timm's ``pretrained_cfg`` and torchvision's weight transforms when weights are given; the
data's own statistics for randomly initialised models; none for ONNX files (msresnet exports include it).
Everything else (``--mean``, ``--std``, ``--interpolation``, ``--input-size``) can be given and then wins.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msresnet.errors import UserError
from msresnet.scale.contracts import scale_estimator

__all__ = ["ModelSource", "PreprocessOverrides", "load_source", "read_state_dict"]

SPEC_HELP = "an msresnet run directory or .safetensors checkpoint, timm:NAME, torchvision:NAME or an .onnx file"


@dataclass
class PreprocessOverrides:
    """The preprocessing options given on the command line (``--input-size``, ``--mean``, ``--std``,
    ``--interpolation``), each overriding the model's own; ``None`` keeps the model's. Not a preprocessing itself:
    that is :class:`msresnet.preprocess.Preprocess`, the one a checkpoint stores."""

    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None


@dataclass
class ModelSource:
    """One model ready to scan: ``predict(x)`` maps images ``[B, C, H, W]`` in [0, 1] to ``(probs [B, K], object
    scale estimate [B] or None)``.

    Attributes:
        label: short name in plots and tables.
        spec: the MODEL argument as given.
        kind: ``msresnet``, ``timm``, ``torchvision`` or ``onnx``.
        num_classes: outputs.
        in_chans: channels the model takes.
        random_init: no weights were loaded.
        fixed_size: ``(H, W)`` every image is resized to, or None (fed at each condition's own size).
        mean, std: normalisation applied before the model (None: images go in as [0, 1]).
        interpolation: resize mode for ``fixed_size``.
        weights: where the weights came from.
        notes: facts the report states about this model (channel adaptation, preprocessing choices).
        module: the torch module (None for ONNX), e.g. to wrap it.
        untrained_wrapper: the number of parameters a scale wrapper (``--wrap``) added around the model that are
            freshly initialised, never trained (0: none); the report flags such a model.
    """

    label: str
    spec: str
    kind: str
    num_classes: int
    in_chans: int
    random_init: bool
    fixed_size: tuple[int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    interpolation: str
    weights: str
    notes: list[str] = field(default_factory=list)
    module: nn.Module | None = None
    runner: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    scale_aware: bool = False
    untrained_wrapper: int = 0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Channels, fixed size and normalisation of images in [0, 1]."""
        from msresnet.data.scaling import match_channels, resize_images
        from msresnet.preprocess import normalize

        x = match_channels(x, self.in_chans)
        if self.fixed_size is not None and tuple(x.shape[-2:]) != self.fixed_size:
            x = resize_images(x, self.fixed_size, mode=self.interpolation)
        if self.mean is not None and self.std is not None:
            x = normalize(x, self.mean, self.std)
        return x

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Softmax probabilities and, for scale-aware models, each image's estimated object scale."""
        xin = self.prepare(x)
        assert self.runner is not None
        probs = self.runner(xin).float()
        if not (probs.min() >= 0 and torch.allclose(probs.sum(-1), torch.ones(1), atol=1e-3)):
            probs = probs.softmax(-1)
        est = None
        if self.scale_aware and self.module is not None:
            est = estimate_object_scale(self.module, xin)
        return probs, est


def estimate_object_scale(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``model.estimate_scale(x)`` as a float ``[B]`` tensor on the CPU, or None when the model has none (or cannot
    estimate yet, e.g. an unfitted probe)."""
    estimator = scale_estimator(model)
    if estimator is None:
        return None
    try:
        with torch.no_grad():
            est = estimator.estimate_scale(x)
    except (UserError, RuntimeError, ValueError, NotImplementedError):
        return None
    if est is None:
        return None
    return torch.as_tensor(est).detach().float().flatten().cpu()


# ---------------------------------------------------------------------------------------------- weights files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a ``.safetensors`` file or a plain state dict (``torch.load(weights_only=True)``; a dict
    holding it under ``state_dict``/``model``/``model_state_dict`` is unwrapped, a ``module.`` prefix dropped).

    Raises:
        UserError: missing file, not a weights file, or a pickle holding more than tensors and containers.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load as st_load

        try:
            sd: Any = st_load(p.read_bytes())
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{p} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
    else:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"refusing {p}: not a plain state dict ({first[:160]})") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{p} holds no state dict (a mapping of parameter names to tensors)")
    if all(str(k).startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _check_classes(sd: dict[str, torch.Tensor], key: str | None, num_classes: int, spec: str, file: str) -> None:
    w = sd.get(f"{key}.weight") if key else None
    if w is not None and w.ndim >= 1 and int(w.shape[0]) != num_classes:
        raise UserError(f"{spec}: checkpoint {file} has {int(w.shape[0])} classes but the data has {num_classes}")


def _first_module(model: nn.Module, kind: type, last: bool = False) -> str | None:
    names = [n for n, m in model.named_modules() if isinstance(m, kind)]
    return (names[-1] if last else names[0]) if names else None


def _replace_conv(model: nn.Module, name: str, in_chans: int) -> None:
    """Swap the conv ``name`` for one taking ``in_chans`` channels (same geometry, fresh weights)."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    old.groups if old.groups == 1 else 1, bias=old.bias is not None)  # fmt: skip
    setattr(parent, attr, new)


def _load(model: nn.Module, sd: dict[str, torch.Tensor], file: str, spec: str) -> None:
    from msresnet.engine.checkpoint import load_weights_into

    load_weights_into(model, sd, Path(file), expected="", got=spec)  # the spec names the model in mismatch messages


def _mean_std(mean: Sequence[float], std: Sequence[float], in_chans: int) -> tuple[tuple[float, ...], ...]:
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return mean, std


# ---------------------------------------------------------------------------------------------- the four kinds


def _timm(name: str, spec: str, ckpt: str | None, k: int, chans: int) -> tuple[nn.Module, dict[str, Any]]:
    import timm

    if not timm.is_model(name):
        raise UserError(f"{spec}: timm has no model {name!r} (see timm.list_models())")
    sd = read_state_dict(ckpt) if ckpt else None
    cfg = dict(timm.models.get_pretrained_cfg(name).to_dict()) if timm.models.get_pretrained_cfg(name) else {}
    first, classifier = cfg.get("first_conv"), cfg.get("classifier")
    in_chans = chans
    if sd is not None:
        _check_classes(sd, classifier if isinstance(classifier, str) else None, k, spec, str(ckpt))
        w = sd.get(f"{first}.weight") if isinstance(first, str) else None
        in_chans = int(w.shape[1]) if w is not None and w.ndim == 4 else chans
    try:
        model = timm.create_model(name, pretrained=False, num_classes=k, in_chans=in_chans)
    except (RuntimeError, ValueError, TypeError, AssertionError) as e:
        raise UserError(f"{spec}: timm cannot build it with {k} classes, {in_chans} channels: {e}") from None
    if sd is not None:
        _load(model, sd, str(ckpt), spec)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    size = tuple(data_cfg["input_size"][-2:]) if pcfg.get("fixed_input_size") else None
    return model, {"mean": data_cfg["mean"], "std": data_cfg["std"], "interpolation": data_cfg["interpolation"],
                   "fixed_size": size, "in_chans": in_chans}  # fmt: skip


def _torchvision(name: str, spec: str, ckpt: str | None, k: int, chans: int) -> tuple[nn.Module, dict[str, Any]]:
    from torchvision import models as tvm

    if name.lower() not in tvm.list_models():
        raise UserError(f"{spec}: torchvision has no model {name!r} (see torchvision.models.list_models())")
    sd = read_state_dict(ckpt) if ckpt else None
    try:
        model = tvm.get_model(name.lower(), weights=None, num_classes=k)
    except (RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{spec}: torchvision cannot build it with {k} classes: {e}") from None
    first = _first_module(model, nn.Conv2d)
    in_chans = chans
    if sd is not None:
        _check_classes(sd, _first_module(model, nn.Linear, last=True), k, spec, str(ckpt))
        w = sd.get(f"{first}.weight")
        in_chans = int(w.shape[1]) if w is not None and w.ndim == 4 else 3
    info: dict[str, Any] = {"in_chans": in_chans, "fixed_size": None, "mean": None, "std": None}
    if first is not None and in_chans != 3:
        _replace_conv(model, first, in_chans)
        info["note"] = f"first convolution ({first}) built for {in_chans} input channel(s) instead of 3"
    if sd is not None:
        _load(model, sd, str(ckpt), spec)
        weights = tvm.get_model_weights(name.lower()).DEFAULT  # metadata only: nothing is downloaded
        t = weights.transforms()
        info |= {"mean": t.mean, "std": t.std, "interpolation": str(t.interpolation.value)}
        if "vit" in name.lower() or "swin" in name.lower() or "maxvit" in name.lower():
            info["fixed_size"] = (int(t.crop_size[0]),) * 2
    return model, info


def _onnx(path: Path, spec: str, k: int, chans: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("onnxruntime is needed to scan .onnx files: pip install 'msresnet[onnx]'") from None
    if not path.is_file():
        raise UserError(f"{spec}: no such ONNX file")
    ort.set_default_logger_severity(3)
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        raise UserError(f"{spec}: not a loadable ONNX model ({str(e).splitlines()[0][:160]})") from None
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    shape = list(inputs[0].shape) if inputs else []
    if len(inputs) != 1 or len(shape) != 4:
        raise UserError(f"{spec}: expected one image input [B, C, H, W], got {[i.shape for i in inputs]}")
    in_chans = shape[1] if isinstance(shape[1], int) else chans
    out_shape = list(outputs[0].shape)
    if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] != k:
        raise UserError(f"{spec}: the model has {out_shape[1]} outputs but the data has {k} classes")
    fixed = (shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
    name = inputs[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        out = sess.run(None, {name: x.detach().cpu().numpy().astype("float32")})[0]
        y = torch.from_numpy(out)
        if y.ndim != 2 or y.shape[1] != k:
            raise UserError(f"{spec}: output of shape {tuple(y.shape)}, expected [B, {k}] class scores")
        return y

    return run, {"in_chans": in_chans, "fixed_size": fixed}


def load_source(
    spec: str,
    *,
    num_classes: int,
    in_chans: int,
    data_stats: tuple[tuple[float, ...], tuple[float, ...]],
    checkpoint: str | None = None,
    given: PreprocessOverrides | None = None,
    device: str | torch.device = "cpu",
    class_names: Sequence[str] | None = None,
) -> ModelSource:
    """Build the :class:`ModelSource` for one MODEL argument.

    Args:
        spec: the MODEL argument (see module docstring).
        num_classes: the data's class count (new heads get it; a checkpoint must match it).
        in_chans: the data's channel count (new models take it).
        data_stats: ``(mean, std)`` of the data, used to normalise randomly initialised models.
        checkpoint: weights for a ``timm:``/``torchvision:`` model.
        given: preprocessing given on the command line (wins over the model's own).
        device: where torch models run (ONNX runs on the CPU).
        class_names: the data's classes; an msresnet checkpoint must have the same, index for index.

    Raises:
        UserError: unknown model, missing or unreadable file, class-count mismatch.
    """
    given = given or PreprocessOverrides()
    device = torch.device(device)
    notes: list[str] = []
    module: nn.Module | None = None
    if spec.startswith(("timm:", "torchvision:")):
        kind, _, name = spec.partition(":")
        if not name:
            raise UserError(f"model {spec!r}: give a name after '{kind}:'")
        build = _timm if kind == "timm" else _torchvision
        module, info = build(name, spec, checkpoint, num_classes, in_chans)
        random_init = checkpoint is None
        weights = str(checkpoint) if checkpoint else "random (no checkpoint given)"
        if info.get("note"):
            notes.append(info["note"])
        if random_init:
            info["mean"], info["std"] = data_stats
            notes.append("normalised with the data's own mean/std (random weights have no statistics of their own)")
        label = spec
    elif checkpoint is not None:
        raise UserError(f"--checkpoint applies to timm:/torchvision: models, not {spec}")
    elif spec.lower().endswith(".onnx"):
        kind, path = "onnx", Path(spec)
        run, info = _onnx(path, spec, num_classes, in_chans)
        random_init, weights, label = False, str(path), path.name
        info |= {"mean": None, "std": None}
        notes.append("images fed in [0, 1], unnormalised (msresnet exports include it; else give --mean/--std)")
    else:
        kind = "msresnet"
        from msresnet.engine.checkpoint import load_checkpoint
        from msresnet.evaluate import require_same_classes

        p = Path(spec)
        if not p.exists():
            raise UserError(f"model {spec}: no such file or directory (expected {SPEC_HELP})")
        loaded = load_checkpoint(p, device="cpu")
        module, ci = loaded.model, loaded.info
        if int(ci.num_classes) != num_classes:
            raise UserError(f"{spec}: the checkpoint has {ci.num_classes} classes but the data has {num_classes}")
        require_same_classes(loaded.class_names, class_names, "the scan's data")
        info = {"in_chans": int(ci.in_chans), "mean": ci.mean, "std": ci.std, "fixed_size": None}
        random_init, weights = False, str(ci.path)
        label = p.name if p.is_dir() else p.parent.parent.name if p.parent.name == "checkpoints" else p.stem
        notes.append(f"{ci.model} trained on {ci.protocol or 'its own data'}; normalised with its stored mean/std")
    mean, std = given.mean or info.get("mean"), given.std or info.get("std")
    if mean is not None and std is not None:
        mean, std = _mean_std(mean, std, int(info["in_chans"]))
    fixed = (given.input_size,) * 2 if given.input_size else info.get("fixed_size")
    src = ModelSource(
        label=label, spec=spec, kind=kind, num_classes=num_classes, in_chans=int(info["in_chans"]),
        random_init=random_init, fixed_size=tuple(fixed) if fixed else None, mean=mean, std=std,
        interpolation=given.interpolation or _mode(info.get("interpolation")), weights=weights, notes=notes,
    )  # fmt: skip
    if module is not None:
        src.module = module.to(device).eval()
        src.runner = src.module
        if kind in ("timm", "torchvision"):  # NHWC convolutions: faster on CPUs and GPUs for these CNNs
            src.module.to(memory_format=torch.channels_last)
            src.runner = _channels_last(src.module)
        src.scale_aware = scale_estimator(module) is not None
    else:
        src.runner = run
    if src.fixed_size:
        notes.append(f"every image resized to {src.fixed_size[0]}x{src.fixed_size[1]} (fixed input size)")
    return src


def wrapped_source(src: ModelSource, method: str) -> ModelSource:
    """``src`` with its torch module wrapped by ``msresnet.wrap(module, method)`` (same preprocessing)."""
    from msresnet import wrap

    if src.module is None:
        raise UserError(f"--wrap {method}: {src.spec} is not a torch model (ONNX files cannot be wrapped)")
    module = wrap(src.module, method=method).eval()
    notes = [*src.notes, f"wrapped: msresnet.wrap(model, method={method!r})"]
    known = {id(p) for p in src.module.parameters()}
    added = sum(p.numel() for p in module.parameters() if id(p) not in known)
    if added:
        notes.append(f"UNTRAINED WRAPPER: the {added} parameters the wrapper adds are freshly initialised, so these "
                     "scores are not those of a trained scale-aware model (train it: msresnet train)")  # fmt: skip
    out = ModelSource(**{**src.__dict__, "notes": notes})
    out.label, out.module, out.runner = f"{src.label} +{method}", module, module
    out.scale_aware = scale_estimator(module) is not None
    out.untrained_wrapper = added
    return out


def _channels_last(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        return module(x.contiguous(memory_format=torch.channels_last))

    return run


def _mode(value: Any) -> str:
    """A torch resize mode from timm/torchvision interpolation names (``bicubic``, ``bilinear``, ...)."""
    v = str(value or "bilinear").lower()
    return v if v in ("bilinear", "bicubic", "nearest", "area") else "bilinear"
