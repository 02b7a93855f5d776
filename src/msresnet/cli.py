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
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from msresnet import __version__
from msresnet.commands.common import PROG, as_paths, checkpoint_path
from msresnet.commands.options import (
    DefaultsFormatter,
    add_train_options,
    float_arg,
    floats,
    int_arg,
    kv_pairs,
    train_overrides,
)
from msresnet.errors import UserError


class _ArgumentError(UserError):
    """A command-line syntax error (argparse's), reported like any other user error."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so every user error looks the same; abbreviated
    options are refused (``--check 5`` must not silently mean ``--checkpoint-every 5``) and ``--help`` shows the
    defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------------------------------------- commands
# One thin function per command: read the options, call the library function in msresnet.commands, print.


def cmd_train(args: argparse.Namespace) -> int:
    from msresnet.commands.train import precheck, train_config
    from msresnet.engine.train import train

    cfg = train_config(args.config, train_overrides(args))
    precheck(cfg)
    run_dir = train(cfg)
    if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun: once for the job, not once per rank
        print(f"run directory: {run_dir}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from msresnet.commands.models import model_rows, print_models

    shape = {"input_size": args.input_size, "in_chans": args.in_chans, "num_classes": args.num_classes}
    rows = model_rows(args.pattern, **shape, names_only=args.names_only, flops=not args.no_flops)
    if args.json:
        print(json.dumps({"input_size": args.input_size, "in_chans": args.in_chans, "models": rows}, indent=2))
    elif args.names_only:
        print("\n".join(r["name"] for r in rows))
    else:
        print_models(rows, **shape)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from msresnet.commands.evaluate import evaluate_checkpoint, print_per_scale, print_sweep

    run = evaluate_checkpoint(
        checkpoint_path(args.checkpoint),
        protocol=args.protocol,
        protocol_params=kv_pairs(args.protocol_param, "--protocol-param"),
        data_dir=args.data_dir,
        sweep=args.sweep,
        test_limit=args.test_limit,
        tta=args.tta,
        per_scale=args.per_scale,
        batch_size=args.batch_size,
        device=args.device,
        out=args.out,
        progress=True,
    )
    print_sweep(run.result)
    if run.result.get("per_scale"):
        print_per_scale(run.result)
    print(f"wrote {', '.join(str(p) for p in as_paths(run.written))}")
    for w in run.skipped:
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    return 1 if run.skipped else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from msresnet.commands.calibrate import calibrate_command
    from msresnet.engine.calibrate import format_calibration, remove_calibration

    path = checkpoint_path(args.checkpoint)
    if args.remove:
        print(f"removed the object-scale probe from {remove_calibration(path)}")
        return 0
    file, result = calibrate_command(path, band=args.band, val_limit=args.val_limit, keep=args.keep, device=args.device)
    print(format_calibration(result))
    print(f"wrote {file}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from msresnet.report import write_report
    from msresnet.report.report import collect_runs

    _, skipped = collect_runs(args.runs)
    for s in skipped:
        print(f"{PROG}: warning: skipped {s}", file=sys.stderr)
    written = write_report(args.runs, args.out)
    print(f"wrote {written['markdown']} and {written['html']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from msresnet.commands.predict import predict_checkpoint, print_predictions, stream_prediction

    result = predict_checkpoint(
        checkpoint_path(args.checkpoint),
        args.images,
        topk=args.topk,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
        max_side=args.max_side,
        native_size=args.native_size,
        on_prediction=None if args.json else stream_prediction,  # text: each image's lines as soon as it is done
    )
    print_predictions(result, as_json=args.json, streamed=not args.json)
    return result.exit_code


def cmd_scan(args: argparse.Namespace) -> int:
    from msresnet.commands.common import resolve_device
    from msresnet.scan import PreprocessOverrides, run_scan
    from msresnet.scan.sweep import DEFAULT_RESOLUTIONS, DEFAULT_SCALES

    given = PreprocessOverrides(
        args.input_size, floats(args.mean, "--mean"), floats(args.std, "--std"), args.interpolation
    )
    written = run_scan(
        args.models, args.out, data_dir=args.data_dir, protocol=args.protocol,
        protocol_params=kv_pairs(args.protocol_param, "--protocol-param"), checkpoints=args.checkpoint or [],
        wrap=args.wrap or [], given=given, image_size=args.image_size, limit=args.limit or None,
        scales=floats(args.scales, "--scales") or DEFAULT_SCALES,
        resolutions=floats(args.resolutions, "--resolutions") or DEFAULT_RESOLUTIONS,
        batch_size=args.batch_size, device=resolve_device(args.device),
    )  # fmt: skip
    print(f"wrote {written['html']}, {written['markdown']}, {written['json']} and {written['csv']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from msresnet.commands.export import export_checkpoint, input_description
    from msresnet.export import ExportMismatchError

    path = checkpoint_path(args.checkpoint)
    try:
        checks, model = export_checkpoint(path, args.out, format=args.format, opset=args.opset, check=not args.no_check)
    except ExportMismatchError as exc:
        print(f"{PROG}: export failed: {exc}", file=sys.stderr)
        return 1
    for c in checks:
        h, w = c.size
        print(f"check {h}x{w}: max abs diff {c.max_abs_diff:.2e} (tolerance {c.tolerance:.1e}) ok")
    print(f"wrote {args.out} ({args.format}; input: {input_description(model)})")
    return 0


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
    p.add_argument("--input-size", type=int_arg, default=64, metavar="PX", help="square input size for FLOPs")
    p.add_argument("--in-chans", type=int_arg, default=1, metavar="N", help="input channels (Fashion-MNIST: 1)")
    p.add_argument("--num-classes", type=int_arg, default=10, metavar="N", help="classes (Fashion-MNIST: 10)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (faster)")
    p.add_argument("--names-only", action="store_true", help="print the names only")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a model on a protocol or a folder of images")
    add_train_options(p)
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
    p.add_argument("--test-limit", type=int_arg, metavar="N", help="first N test images per condition")
    p.add_argument("--tta", action="store_true", help="average predictions over whole-image rescalings")
    p.add_argument("--per-scale", action="store_true",
                   help="also the accuracy of each pyramid level alone (which scale recognises the object where; "
                        "models with a scale axis: msresnet*, scale-channel)")  # fmt: skip
    p.add_argument("--batch-size", type=int_arg, default=None, metavar="N",
                   help="images per forward pass (default: 32 on CPU, 256 on a GPU)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", metavar="DIR", help="write eval/ here instead of the run directory")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="fit a pyramid model's object-scale probe; kept where validation improves")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--band", type=float_arg, default=0.6, metavar="OCTAVES",
                   help="levels this many octaves around the best-classified size compete (default 0.6)")  # fmt: skip
    p.add_argument("--val-limit", type=int_arg, default=1000, metavar="N",
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
    p.add_argument("--topk", type=int_arg, default=5, metavar="K")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.add_argument("--tta", action="store_true", help="average predictions over whole-image rescalings")
    p.add_argument("--max-side", type=int_arg, default=1024, metavar="PX", help="shrink larger images (0: never)")
    p.add_argument("--native-size", action="store_true",
                   help="feed every image at its own size instead of the checkpoint's training geometry")  # fmt: skip
    p.add_argument("--batch-size", type=int_arg, default=64, metavar="N")
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
    p.add_argument("--image-size", type=int_arg, metavar="PX",
                   help="cut folder images to PX squares: the native condition (default: median side)")  # fmt: skip
    p.add_argument("--input-size", type=int_arg, metavar="PX", help="resize every image to PX x PX for the models")
    p.add_argument("--mean", metavar="M[,M,M]", help="normalisation mean (default: each model's own)")
    p.add_argument("--std", metavar="S[,S,S]", help="normalisation std (default: each model's own)")
    p.add_argument("--interpolation", choices=["bilinear", "bicubic", "area", "nearest"],
                   help="resampling of the sweeps and of --input-size (default bilinear)")  # fmt: skip
    p.add_argument("--scales", metavar="S,S,...", help="object scales (default 2^(k/4), k=-4..4)")
    p.add_argument("--resolutions", metavar="R,R,...", help="resolution factors (default 0.5,0.75,1,1.5,2,3,4)")
    p.add_argument("--limit", type=int_arg, metavar="N", help="class-stratified N images (default: all)")
    p.add_argument("--batch-size", type=int_arg, default=None, metavar="N", help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("export", help="export to ONNX or torch.export (.pt2), verified against the eager model")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--format", "-f", choices=["onnx", "pt2"], default="onnx")
    p.add_argument("--out", "-o", required=True, metavar="FILE")
    p.add_argument("--opset", type=int_arg, default=18, metavar="N", help="ONNX opset version")
    p.add_argument("--no-check", action="store_true", help="skip the parity check (not recommended)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the main job: plain vs multi-scale ResNet on fmnist-ls, report and table")
    p.add_argument("--out", "-o", default="runs/demo", metavar="DIR")
    p.add_argument("--budget-minutes", "--budget", dest="budget", type=float_arg, default=15.0, metavar="MINUTES",
                   help="time the whole demo may take here; a throughput probe sizes the plan to fill it "
                        "(default 15)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--force", action="store_true", help="retrain even if finished runs exist")
    p.set_defaults(func=cmd_demo)
    for name, p in sub.choices.items():
        if name != "train":  # train's --threads is a TrainConfig field (it also goes into the run's config.yaml)
            p.add_argument("--threads", type=int_arg, default=0, metavar="N",
                           help="CPU threads for torch's intra-op parallelism (0: torch's default)")  # fmt: skip
    return parser


def _set_threads(args: argparse.Namespace) -> None:
    """``--threads N`` of the commands other than train (train applies its own for the run's duration)."""
    if getattr(args, "threads", 0) and args.command != "train":
        import torch

        torch.set_num_threads(args.threads)


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


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file descriptor (in-process use): nothing to flush there
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 partial failure, 2 user error, 130 interrupted)."""
    debug = bool(os.environ.get("MSRESNET_DEBUG"))
    try:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(warnings.showwarning)
            _set_threads(args)
            return int(args.func(args) or 0)
    except SystemExit as exc:  # --help / --version, or a command that chose its exit code
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except UserError as exc:
        if debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`msresnet predict ... | head`): stop quietly, as Unix tools do
        _silence_stdout()
        return 1
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
