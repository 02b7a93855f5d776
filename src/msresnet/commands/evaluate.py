"""``msresnet evaluate``: a checkpoint's accuracy sweep on a protocol, written beside the run and printed.

Folder protocols skip unreadable images with a ``BadImageWarning``; :func:`evaluate_checkpoint` collects those
warnings so that the command can report each skipped file and exit 1 (some inputs failed).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msresnet.commands.common import PROG, info_value, resolve_device, run_dir_of, terminal_width
from msresnet.errors import UserError
from msresnet.records import SweepResult

__all__ = ["Evaluation", "evaluate_checkpoint", "print_per_scale", "print_sweep"]


@dataclass
class Evaluation:
    """An evaluation's outcome: the sweep (``evaluate_sweep``'s dict), the files written, the images skipped."""

    result: dict[str, Any]
    written: list[Path]
    skipped: list[warnings.WarningMessage]


def evaluate_checkpoint(
    checkpoint: Path,
    *,
    protocol: str | None = None,
    protocol_params: dict[str, Any] | None = None,
    data_dir: str | None = None,
    sweep: str | None = None,
    test_limit: int | None = None,
    tta: bool = False,
    per_scale: bool = False,
    batch_size: int | None = None,
    device: str | None = "auto",
    out: str | Path | None = None,
    progress: bool = False,
) -> Evaluation:
    """Sweep ``checkpoint`` (a run directory or ``.safetensors`` file) over ``protocol``'s test conditions and write
    ``eval/<protocol>.{json,csv,png}`` into ``out`` (default: the run directory).

    The protocol defaults to the one the checkpoint was trained on, with its recorded parameters and data directory;
    ``protocol_params`` and ``data_dir`` override them. ``data_dir`` without ``protocol`` evaluates that labelled
    folder as it is (or, with ``sweep``, under object rescale or whole-image resize) through the model's own
    preprocessing. ``progress``: one line on stderr per condition as it finishes.

    Raises:
        UserError: no protocol recorded or given, a missing data directory, ``sweep`` without a folder, a
            non-positive limit or batch size.
    """
    import torch

    from msresnet.data import build_protocol
    from msresnet.data.folder import BadImageWarning
    from msresnet.engine.checkpoint import load_checkpoint, read_checkpoint_info
    from msresnet.evaluate import evaluate_sweep, write_eval

    device = resolve_device(device)
    info = read_checkpoint_info(checkpoint)
    # --data-dir without --protocol: that labelled folder as it is (or swept), through the model's preprocessing
    own_folder = data_dir is not None and not protocol
    if sweep and not own_folder:
        raise UserError("--sweep evaluates a labelled folder: pass --data-dir DIR (and no --protocol)")
    trained_on = info_value(info, "protocol")
    name = protocol or trained_on
    if not name and not own_folder:
        raise UserError(f"{checkpoint} does not record its training protocol; pass --protocol")
    params = dict(info_value(info, "protocol_params") or {}) if name == trained_on else {}
    params.update(protocol_params or {})
    # folder protocols record their directory among the parameters; --data-dir overrides it
    recorded_root = params.pop("root", None)
    root = data_dir
    if root is None and name == trained_on:
        root = info_value(info, "data_root") or recorded_root
    if root is not None and not Path(root).is_dir():
        raise UserError(f"data directory not found: {root}")
    if test_limit is not None and test_limit < 1:
        raise UserError(f"--test-limit must be at least 1, got {test_limit}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    # no_grad as a context, not a global switch: main() also runs in-process (tests, notebooks)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always", BadImageWarning)
        loaded = load_checkpoint(checkpoint, device=device)
        model = loaded.model
        if own_folder:
            from msresnet.evaluate.folder import build_folder_eval

            min_side = int(getattr(model, "min_input_size", 1) or 1)
            built = build_folder_eval(root, loaded.preprocess, loaded.class_names, sweep=sweep, min_side=min_side)
        else:
            built = build_protocol(name, root=root, **params)
        result = evaluate_sweep(
            model,
            built,
            info=info,
            test_limit=test_limit,
            tta=tta,
            batch_size=batch_size,
            device=device,
            per_scale=per_scale,
            progress=_report_progress if progress else None,
        )
    skipped = [w for w in caught if issubclass(w.category, BadImageWarning)]
    for w in caught:
        if w not in skipped:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    written = write_eval(Path(out) if out else run_dir_of(checkpoint), result)  # json, csv and the png plot
    return Evaluation(result, list(written), skipped)


def _report_progress(done: int, total: int, condition: Any, accuracy: float) -> None:
    from msresnet.engine.progress import log

    log(f"{PROG}: evaluated condition {done}/{total} ({condition}): {accuracy * 100:.2f}%")


def print_sweep(result: dict[str, Any] | SweepResult) -> None:
    """The sweep as a rich table on stdout: condition, accuracy; then mean, worst, retention."""
    from rich.console import Console
    from rich.table import Table

    from msresnet.report.plots import accuracy_percent, as_record

    sweep = as_record(result)
    name = sweep.condition_name
    n = "?" if sweep.n_per_condition is None else sweep.n_per_condition
    table = Table(title=f"{sweep.protocol} ({n} images per {name})")
    table.add_column(str(name), justify="right")
    table.add_column("accuracy %", justify="right")
    for row, a in zip(sweep.rows(), accuracy_percent(sweep.accuracy), strict=True):
        table.add_row(f"{row.condition}{' (train)' if row.is_train else ''}", f"{a:.2f}")
    console = Console(width=max(80, terminal_width()))
    console.print(table)
    mean, worst = accuracy_percent([sweep.mean, sweep.worst])
    ret = sweep.retention
    console.print(f"mean {mean:.2f}%  worst {worst:.2f}%  retention {'n/a' if ret is None else f'{ret:.3f}'}")


def print_per_scale(result: dict[str, Any] | SweepResult) -> None:
    """``--per-scale``: the accuracy of each pyramid level / scale alone next to the pooled one, per condition."""
    from rich.console import Console
    from rich.table import Table

    from msresnet.report.plots import as_record

    sweep = as_record(result)
    per = sweep.per_scale
    if per is None:
        return
    names = per.labels()
    table = Table(title="each pyramid level alone, accuracy % ('-': level dropped for that input size)")
    table.add_column(str(sweep.condition_name), justify="right")
    table.add_column("pooled", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for c, pooled, accs in zip(sweep.conditions, sweep.accuracy, per.accuracy, strict=True):
        cells = [f"{a * 100:.2f}" for a in accs] + ["-"] * (len(names) - len(accs))
        table.add_row(str(c), f"{pooled * 100:.2f}", *cells)
    Console(width=max(80, terminal_width())).print(table)
