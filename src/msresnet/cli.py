"""The ``msresnet`` command line: models, train, evaluate, report, scan, predict, export, demo.

Error contract: a mistake the user can make (``UserError``, a bad option, a missing or unreadable file, an
unwritable directory) prints one line ``msresnet: error: ...`` on stderr and exits with code 2, without a
traceback. Anything else is a bug and keeps its traceback (set ``MSRESNET_DEBUG=1`` to see tracebacks for user
errors too). ``predict`` exits 1 when some inputs failed and others were classified.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import types
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

from msresnet import __version__
from msresnet.errors import UserError

PROG = "msresnet"


class _ArgumentError(UserError):
    """A command-line syntax error (argparse's), reported like any other user error."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so every user error looks the same."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------------------------------- train options


def _field_help() -> dict[str, str]:
    """Per-field help text, read from TrainConfig's docstring (one source of truth for config and CLI)."""
    from msresnet.engine.config import TrainConfig

    doc = TrainConfig.__doc__ or ""
    out: dict[str, str] = {}
    current = None
    in_attrs = False
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            in_attrs = True
            continue
        if not in_attrs:
            continue
        m = re.match(r"^\s{8}(\w+): (.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return {k: v.replace("%", "%%") for k, v in out.items()}


# Fields with hand-written flags; every other TrainConfig field becomes --field-name automatically.
_SPECIAL_FLAGS = {
    "data_root": ["--data-dir", "--data-root"],
    "out": ["--out", "-o"],
    "model": ["--model", "-m"],
    "protocol": ["--protocol", "-p"],
}


def _kv_pairs(items: Sequence[str] | None, what: str) -> dict[str, Any] | None:
    """``KEY=VALUE`` strings -> dict, values read as YAML scalars (numbers, booleans, lists)."""
    import yaml

    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{what} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, typed and documented from the dataclass."""
    from msresnet.engine.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    helps = _field_help()
    p.add_argument("--config", "-c", metavar="FILE.yaml", help="YAML recipe; command-line options override it")
    for name, tp in hints.items():
        flags = _SPECIAL_FLAGS.get(name, ["--" + name.replace("_", "-")])
        help_ = helps.get(name, "")
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        optional = origin in (typing.Union, types.UnionType) and type(None) in args
        inner = [a for a in args if a is not type(None)] if optional else [tp]
        base = inner[0] if len(inner) == 1 else tp
        kw: dict[str, Any] = {"dest": name, "default": None, "help": help_}
        if base is bool:
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(base) is Literal:
            choices = [str(c) for c in typing.get_args(base)] + (["none"] if optional else [])
            p.add_argument(*flags, choices=choices, **kw)
        elif base is dict:
            kw["help"] = help_ + " Repeatable KEY=VALUE (values parsed as YAML)."
            p.add_argument(*flags, action="append", metavar="KEY=VALUE", **kw)
        elif typing.get_origin(base) is tuple:
            kw["help"] = help_ + (" 'none' turns it off." if optional else "")
            p.add_argument(*flags, metavar="LO,HI", **kw)
        elif base is int:
            p.add_argument(*flags, type=_int_arg, metavar="N", **kw)
        elif base is float:
            p.add_argument(*flags, type=_float_arg, metavar="X", **kw)
        else:
            p.add_argument(*flags, metavar=name.upper(), **kw)


def _int_arg(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None


def _float_arg(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user actually gave, as TrainConfig overrides (None = not given)."""
    from msresnet.engine.config import TrainConfig

    over: dict[str, Any] = {}
    for name in typing.get_type_hints(TrainConfig):
        value = getattr(args, name, None)
        if value is None:
            continue
        if name in ("model_kwargs", "protocol_params"):
            value = _kv_pairs(value, "--" + name.replace("_", "-"))
        elif value == "none":
            value = "none"  # the config coerces 'none' to None for optional fields
        over[name] = value
    return over


def _precheck(cfg: Any) -> None:
    """Fail in milliseconds on a wrong model name, protocol name or data directory, before any data is built."""
    import msresnet
    from msresnet.data import build_protocol, list_protocols

    if cfg.model not in msresnet.list_models():
        msresnet.create_model(cfg.model)  # raises the UserError with a close-match suggestion
        raise UserError(f"unknown model {cfg.model!r} (see 'msresnet models')")
    if cfg.protocol not in list_protocols():
        build_protocol(cfg.protocol)  # raises the UserError with a close-match suggestion
        raise UserError(f"unknown protocol {cfg.protocol!r}; known: {', '.join(list_protocols())}")
    if cfg.data_root is not None and not Path(cfg.data_root).is_dir():
        raise UserError(f"data directory not found: {cfg.data_root}")


def cmd_train(args: argparse.Namespace) -> int:
    from msresnet.engine.config import load_train_config
    from msresnet.engine.train import train

    overrides = _train_overrides(args)
    config = args.config
    if config is not None and not Path(config).is_file():
        raise UserError(f"config file not found: {config}")
    # `train --out RUN --resume` alone picks up the run's own config
    if config is None and overrides.get("resume") and overrides.get("out"):
        saved = Path(overrides["out"]) / "config.yaml"
        config = saved if saved.is_file() else None
    cfg = load_train_config(config, overrides)
    _precheck(cfg)
    run_dir = train(cfg)
    print(f"run directory: {run_dir}")
    return 0


# --------------------------------------------------------------------------------------------------------- models


def _count_flops(model: Any, in_chans: int, size: int) -> int | None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if size < int(getattr(model, "min_input_size", 1) or 1):
        return None
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_chans, size, size))
    return int(counter.get_total_flops())


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    import msresnet

    names = msresnet.list_models(args.pattern)
    if not names:
        raise UserError(f"no model matches {args.pattern!r} (see 'msresnet models')")
    if args.input_size < 1:
        raise UserError(f"--input-size must be positive, got {args.input_size}")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    rows = []
    for name in names:
        row: dict[str, Any] = {"name": name}
        if not args.names_only:
            model = msresnet.create_model(name, num_classes=args.num_classes, in_chans=args.in_chans).eval()
            row["params"] = sum(p.numel() for p in model.parameters())
            row["min_input_size"] = int(getattr(model, "min_input_size", 1) or 1)
            row["flops"] = None if args.no_flops else _count_flops(model, args.in_chans, args.input_size)
        rows.append(row)
    if args.json:
        print(json.dumps({"input_size": args.input_size, "in_chans": args.in_chans, "models": rows}, indent=2))
        return 0
    if args.names_only:
        print("\n".join(names))
        return 0
    from rich.console import Console
    from rich.table import Table

    size = args.input_size
    table = Table(title=f"msresnet models (in_chans={args.in_chans}, num_classes={args.num_classes})")
    table.add_column("model")
    table.add_column("params", justify="right")
    table.add_column(f"GFLOPs @{size}x{size}", justify="right")
    table.add_column("min input", justify="right")
    for r in rows:
        flops = "—" if r["flops"] is None else f"{r['flops'] / 1e9:.3f}"
        table.add_row(r["name"], f"{r['params'] / 1e6:.3f}M", flops, str(r["min_input_size"]))
    Console(width=max(100, _terminal_width())).print(table)
    return 0


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((100, 20)).columns


# ------------------------------------------------------------------------------------------------------- evaluate


def _checkpoint_path(raw: str) -> Path:
    """A run directory or a .safetensors file given on the command line, checked to exist."""
    p = Path(raw)
    if not p.exists():
        raise UserError(f"no such run directory or checkpoint: {p}")
    if p.is_file() and p.suffix != ".safetensors":
        raise UserError(f"{p} is not a .safetensors checkpoint or a run directory")
    return p


def _run_dir_of(path: Path) -> Path:
    """Where eval results go: the run directory for a run or one of its checkpoints, else the checkpoint's folder."""
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").exists():
        return path.parent.parent
    return path.parent


def _info_value(info: Any, name: str, default: Any = None) -> Any:
    return getattr(info, name, default) if not isinstance(info, dict) else info.get(name, default)


def print_sweep(result: dict[str, Any]) -> None:
    """The sweep as a rich table on stdout: condition, accuracy; then mean, worst, retention."""
    from rich.console import Console
    from rich.table import Table

    from msresnet.report.plots import accuracy_percent

    name = result.get("condition_name", "condition")
    table = Table(title=f"{result.get('protocol')} ({result.get('n_per_condition', '?')} images per {name})")
    table.add_column(str(name), justify="right")
    table.add_column("accuracy %", justify="right")
    train = result.get("train_condition")
    for c, a in zip(result["conditions"], accuracy_percent(result["accuracy"]), strict=True):
        mark = " (train)" if train is not None and str(c) == str(train) else ""
        table.add_row(f"{c}{mark}", f"{a:.2f}")
    console = Console(width=max(80, _terminal_width()))
    console.print(table)
    mean, worst = accuracy_percent([result["mean"], result["worst"]])
    ret = result.get("retention")
    console.print(f"mean {mean:.2f}%  worst {worst:.2f}%  retention {'n/a' if ret is None else f'{ret:.3f}'}")


def print_per_scale(result: dict[str, Any]) -> None:
    """``--per-scale``: the accuracy of each pyramid level / scale alone next to the pooled one, per condition."""
    from rich.console import Console
    from rich.table import Table

    from msresnet.engine.evaluate import scale_labels

    per = result["per_scale"]
    names = scale_labels(per)
    table = Table(title="each pyramid level alone, accuracy % ('-': level dropped for that input size)")
    table.add_column(str(result.get("condition_name", "condition")), justify="right")
    table.add_column("pooled", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for c, pooled, accs in zip(result["conditions"], result["accuracy"], per["accuracy"], strict=True):
        cells = [f"{a * 100:.2f}" for a in accs] + ["-"] * (len(names) - len(accs))
        table.add_row(str(c), f"{pooled * 100:.2f}", *cells)
    Console(width=max(80, _terminal_width())).print(table)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from msresnet.data import build_protocol
    from msresnet.engine.checkpoint import load_model, read_checkpoint_info
    from msresnet.engine.evaluate import evaluate_sweep, write_eval

    path = _checkpoint_path(args.checkpoint)
    device = _device(args.device)
    info = read_checkpoint_info(path)
    # --data-dir without --protocol: that labelled folder as it is (or swept), through the model's preprocessing
    own_folder = args.data_dir is not None and not args.protocol
    if args.sweep and not own_folder:
        raise UserError("--sweep evaluates a labelled folder: pass --data-dir DIR (and no --protocol)")
    trained_on = _info_value(info, "protocol")
    name = args.protocol or trained_on
    if not name and not own_folder:
        raise UserError(f"{path} does not record its training protocol; pass --protocol")
    params = dict(_info_value(info, "protocol_params") or {}) if name == trained_on else {}
    params.update(_kv_pairs(args.protocol_param, "--protocol-param") or {})
    # folder protocols record their directory among the parameters; --data-dir overrides it
    recorded_root = params.pop("root", None)
    root = args.data_dir
    if root is None and name == trained_on:
        root = _info_value(info, "data_root") or recorded_root
    if root is not None and not Path(root).is_dir():
        raise UserError(f"data directory not found: {root}")
    if args.test_limit is not None and args.test_limit < 1:
        raise UserError(f"--test-limit must be at least 1, got {args.test_limit}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    from msresnet.data.folder import BadImageWarning

    # folder protocols skip unreadable images with a BadImageWarning: report them and exit 1 (some inputs failed)
    # no_grad as a context, not a global switch: main() also runs in-process (tests, notebooks)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always", BadImageWarning)
        model = load_model(path, device=device)
        if own_folder:
            from msresnet.data.folder_eval import build_folder_eval

            min_side = int(getattr(model, "min_input_size", 1) or 1)
            protocol = build_folder_eval(root, model.preprocess, model.class_names, sweep=args.sweep, min_side=min_side)
        else:
            protocol = build_protocol(name, root=root, **params)
        result = evaluate_sweep(
            model,
            protocol,
            info=info,
            test_limit=args.test_limit,
            tta=args.tta,
            batch_size=args.batch_size,
            device=device,
            per_scale=args.per_scale,
        )
    skipped = [w for w in caught if issubclass(w.category, BadImageWarning)]
    for w in caught:
        if w not in skipped:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    out_dir = Path(args.out) if args.out else _run_dir_of(path)
    written = write_eval(out_dir, result)  # json, csv and the png plot
    print_sweep(result)
    if result.get("per_scale"):
        print_per_scale(result)
    print(f"wrote {', '.join(str(p) for p in _as_paths(written))}")
    for w in skipped:
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    return 1 if skipped else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from msresnet.engine.calibrate import calibrate_checkpoint, format_calibration, remove_calibration

    path = _checkpoint_path(args.checkpoint)
    if args.remove:
        print(f"removed the object-scale probe from {remove_calibration(path)}")
        return 0
    if not args.band > 0:
        raise UserError(f"--band must be > 0 octaves, got {args.band}")
    if args.val_limit is not None and args.val_limit < 10:
        raise UserError(f"--val-limit must be at least 10, got {args.val_limit}")
    file, result = calibrate_checkpoint(
        path, band=args.band, val_limit=args.val_limit, keep=args.keep, device=_device(args.device)
    )
    print(format_calibration(result))
    print(f"wrote {file}")
    return 0


def _as_paths(written: Any) -> list[Path]:
    if written is None:
        return []
    if isinstance(written, (str, Path)):
        return [Path(written)]
    if isinstance(written, dict):
        return [Path(v) for v in written.values()]
    return [Path(v) for v in written]


def _device(name: str | None) -> str:
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available")
    return name


# --------------------------------------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from msresnet.report import write_report
    from msresnet.report.report import collect_runs

    _, skipped = collect_runs(args.runs)
    for s in skipped:
        print(f"{PROG}: warning: skipped {s}", file=sys.stderr)
    written = write_report(args.runs, args.out)
    print(f"wrote {written['markdown']} and {written['html']}")
    return 0


# -------------------------------------------------------------------------------------------------------- predict


def _predict_preprocess(model: Any, native: bool) -> Any:
    """The checkpoint's preprocessing; with ``--native-size`` its geometry is dropped (images at their own size)."""
    import dataclasses

    prep = getattr(model, "preprocess", None)
    return dataclasses.replace(prep, policy="native", size=None, canvas=None) if prep and native else prep


def cmd_predict(args: argparse.Namespace) -> int:
    from msresnet.engine.checkpoint import load_model
    from msresnet.predict import format_text, predict_files

    path = _checkpoint_path(args.checkpoint)
    device = _device(args.device)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    model = load_model(path, device=device).eval()
    info = model.checkpoint_info
    result = predict_files(
        model,
        args.images,
        in_chans=int(_info_value(info, "in_chans")),
        mean=_info_value(info, "mean"),
        std=_info_value(info, "std"),
        class_names=list(_info_value(info, "class_names") or []),
        topk=args.topk,
        tta=args.tta,
        device=device,
        batch_size=args.batch_size,
        max_side=args.max_side or None,
        preprocess=_predict_preprocess(model, args.native_size),
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    elif result.predictions:
        print(format_text(result))
    for f in result.failures:
        print(f"{PROG}: error: {f.path}: {f.reason}", file=sys.stderr)
    if result.ignored:
        print(f"{PROG}: note: ignored {len(result.ignored)} file(s) without an image extension", file=sys.stderr)
    if result.failures:
        n_ok, n_bad = len(result.predictions), len(result.failures)
        print(f"{PROG}: {n_ok} classified, {n_bad} failed", file=sys.stderr)
    return result.exit_code


# ----------------------------------------------------------------------------------------------------------- scan


def _floats(raw: str | None, what: str) -> tuple[float, ...] | None:
    """``"0.5,1,2"`` -> floats (None when not given)."""
    if raw is None:
        return None
    try:
        return tuple(float(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{what} expects comma-separated numbers, got {raw!r}") from None


def cmd_scan(args: argparse.Namespace) -> int:
    from msresnet.scan import Preprocess, run_scan
    from msresnet.scan.sweep import DEFAULT_RESOLUTIONS, DEFAULT_SCALES

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    given = Preprocess(args.input_size, _floats(args.mean, "--mean"), _floats(args.std, "--std"), args.interpolation)
    written = run_scan(
        args.models, args.out, data_dir=args.data_dir, protocol=args.protocol,
        protocol_params=_kv_pairs(args.protocol_param, "--protocol-param"), checkpoints=args.checkpoint or [],
        wrap=args.wrap or [], given=given, image_size=args.image_size, limit=args.limit or None,
        scales=_floats(args.scales, "--scales") or DEFAULT_SCALES,
        resolutions=_floats(args.resolutions, "--resolutions") or DEFAULT_RESOLUTIONS,
        batch_size=args.batch_size, device=_device(args.device),
    )  # fmt: skip
    print(f"wrote {written['html']}, {written['markdown']}, {written['json']} and {written['csv']}")
    return 0


# --------------------------------------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from msresnet.engine.checkpoint import load_model
    from msresnet.export import ExportMismatchError, export_model

    path = _checkpoint_path(args.checkpoint)
    model = load_model(path, device="cpu").eval()
    info = model.checkpoint_info
    try:
        checks = export_model(
            model,
            args.out,
            format=args.format,
            in_chans=int(_info_value(info, "in_chans")),
            mean=_info_value(info, "mean"),
            std=_info_value(info, "std"),
            opset=args.opset,
            check=not args.no_check,
            preprocess=getattr(model, "preprocess", None),
        )
    except ExportMismatchError as exc:
        print(f"{PROG}: export failed: {exc}", file=sys.stderr)
        return 1
    for c in checks:
        h, w = c.size
        print(f"check {h}x{w}: max abs diff {c.max_abs_diff:.2e} (tolerance {c.tolerance:.1e}) ok")
    prep = getattr(model, "preprocess", None)
    inside = f"; inside: {prep.describe()}, normalised" if prep is not None else ""
    print(
        f"wrote {args.out} ({args.format}; input: float32 [B, {_info_value(info, 'in_chans')}, H, W] in [0, 1]{inside})"
    )
    return 0


# ----------------------------------------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from msresnet.demo import run_demo

    run_demo(out=args.out, budget_minutes=args.budget, device=args.device, force=args.force)
    return 0


# --------------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The full ``msresnet`` argument parser (subcommands included)."""
    parser = _Parser(
        prog=PROG,
        description="Multi-scale ResNets: train, evaluate across scales, report, predict, export.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("models", help="list registered models with parameters and FLOPs")
    p.add_argument("pattern", nargs="?", help="glob pattern, e.g. 'msresnet*'")
    p.add_argument("--input-size", type=_int_arg, default=64, metavar="PX", help="square input size for FLOPs")
    p.add_argument("--in-chans", type=_int_arg, default=1, metavar="N", help="input channels (Fashion-MNIST: 1)")
    p.add_argument("--num-classes", type=_int_arg, default=10, metavar="N", help="classes (Fashion-MNIST: 10)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (faster)")
    p.add_argument("--names-only", action="store_true", help="print the names only")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a model on a protocol or a folder of images")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy sweep across scales; writes RUN/eval/<protocol>.{json,csv,png}")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--protocol", "-p", help="protocol to sweep (default: the one the checkpoint was trained on)")
    p.add_argument("--protocol-param", action="append", metavar="KEY=VALUE", help="protocol parameter (repeatable)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="a labelled folder DIR/<class>/<image> to evaluate on, with the model's own preprocessing "
        "(with --protocol: the folder-* benchmark's images / a non-default Fashion-MNIST directory)",
    )
    p.add_argument(
        "--sweep",
        choices=["scale", "resolution"],
        help="with --data-dir: object rescale inside each image's canvas, or whole-image resize",
    )
    p.add_argument("--test-limit", type=_int_arg, metavar="N", help="first N test images per condition")
    p.add_argument("--tta", action="store_true", help="average predictions over whole-image rescalings")
    p.add_argument("--per-scale", action="store_true",
                   help="also the accuracy of each pyramid level alone (which scale recognises the object where; "
                        "models with a scale axis: msresnet*, scale-channel)")  # fmt: skip
    p.add_argument("--batch-size", type=_int_arg, default=None, metavar="N",
                   help="images per forward pass (default: 32 on CPU, 256 on a GPU)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", metavar="DIR", help="write eval/ here instead of the run directory")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="fit a pyramid model's object-scale probe; kept where validation improves")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--band", type=_float_arg, default=0.6, metavar="OCTAVES",
                   help="levels this many octaves around the best-classified size compete (default 0.6)")  # fmt: skip
    p.add_argument("--val-limit", type=_int_arg, default=1000, metavar="N",
                   help="validation images per condition (default 1000)")  # fmt: skip
    p.add_argument("--keep", choices=["auto", "always"], default="auto",
                   help="auto: keep it only if the validation mean rises and the worst does not fall")  # fmt: skip
    p.add_argument("--remove", action="store_true", help="drop the probe again (back to the most confident level)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("report", help="compare evaluated runs: report.md and a self-contained report.html")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", "-o", required=True, metavar="DIR")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("predict", help="classify image files (any size and mode) or folders of images")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--topk", type=_int_arg, default=5, metavar="K")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.add_argument("--tta", action="store_true", help="average predictions over whole-image rescalings")
    p.add_argument("--max-side", type=_int_arg, default=1024, metavar="PX", help="shrink larger images (0: never)")
    p.add_argument("--native-size", action="store_true",
                   help="feed every image at its own size instead of the checkpoint's training geometry")  # fmt: skip
    p.add_argument("--batch-size", type=_int_arg, default=64, metavar="N")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("scan", help="scale-robustness report of any classifier (msresnet, timm:, torchvision:, .onnx)")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="run dir or .safetensors checkpoint, timm:NAME, torchvision:NAME or FILE.onnx")  # fmt: skip
    p.add_argument("--data-dir", help="labelled image folder (DIR/<class>/<image>), or the protocol's data directory")
    p.add_argument("--protocol", "-p", help="scan this protocol's test split instead of a folder")
    p.add_argument("--protocol-param", action="append", metavar="KEY=VALUE", help="protocol parameter (repeatable)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="where report.html, report.md, scan.json go")
    p.add_argument("--checkpoint", action="append", metavar="FILE",
                   help="weights (safetensors / state dict) of the timm:/torchvision: models, in order")  # fmt: skip
    p.add_argument("--wrap", action="append", metavar="METHOD",
                   help="also scan each torch model wrapped by msresnet.wrap(model, METHOD) (repeatable)")  # fmt: skip
    p.add_argument("--image-size", type=_int_arg, metavar="PX",
                   help="cut folder images to PX squares: the native condition (default: median side)")  # fmt: skip
    p.add_argument("--input-size", type=_int_arg, metavar="PX", help="resize every image to PX x PX for the models")
    p.add_argument("--mean", metavar="M[,M,M]", help="normalisation mean (default: each model's own)")
    p.add_argument("--std", metavar="S[,S,S]", help="normalisation std (default: each model's own)")
    p.add_argument("--interpolation", choices=["bilinear", "bicubic", "area", "nearest"],
                   help="resampling of the sweeps and of --input-size (default bilinear)")  # fmt: skip
    p.add_argument("--scales", metavar="S,S,...", help="object scales (default 2^(k/4), k=-4..4)")
    p.add_argument("--resolutions", metavar="R,R,...", help="resolution factors (default 0.5,0.75,1,1.5,2,3,4)")
    p.add_argument("--limit", type=_int_arg, metavar="N", help="class-stratified N images (default: all)")
    p.add_argument("--batch-size", type=_int_arg, default=None, metavar="N", help="images per forward pass")
    p.add_argument("--threads", type=_int_arg, default=0, metavar="N", help="CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("export", help="export to ONNX or torch.export (.pt2), verified against the eager model")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--format", "-f", choices=["onnx", "pt2"], default="onnx")
    p.add_argument("--out", "-o", required=True, metavar="FILE")
    p.add_argument("--opset", type=_int_arg, default=18, metavar="N", help="ONNX opset version")
    p.add_argument("--no-check", action="store_true", help="skip the parity check (not recommended)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the main job: plain vs multi-scale ResNet on fmnist-ls, report and table")
    p.add_argument("--out", "-o", default="runs/demo", metavar="DIR")
    p.add_argument("--budget", type=_float_arg, default=15.0, metavar="MINUTES", help="time budget on 2 CPU cores")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--force", action="store_true", help="retrain even if finished runs exist")
    p.set_defaults(func=cmd_demo)
    return parser


def _user_os_error(exc: OSError) -> str | None:
    """One-line message for an OSError a user causes (missing/unreadable path, full disk), else None."""
    user_errnos = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EISDIR, errno.ENOTDIR}
    user_errnos.add(getattr(errno, "EDQUOT", errno.ENOSPC))  # quota exceeded reads like a full disk
    if exc.errno not in user_errnos:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def _show_warning(default: Any) -> Any:
    """Our own warnings about the user's data (skipped files, mixed modes, ...) as one ``msresnet: warning:`` line."""

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, UserWarning) and category.__module__.startswith("msresnet"):
            print(f"{PROG}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, *args, **kwargs)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 partial failure, 2 user error, 130 interrupted)."""
    debug = bool(os.environ.get("MSRESNET_DEBUG"))
    try:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(warnings.showwarning)
            return int(args.func(args) or 0)
    except SystemExit as exc:  # --help / --version, or a command that chose its exit code
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except UserError as exc:
        if debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        msg = _user_os_error(exc)
        if msg is None or debug:
            raise
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
