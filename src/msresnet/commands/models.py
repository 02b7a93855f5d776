"""``msresnet models``: the registered models with their parameter counts, FLOPs and smallest input size."""

from __future__ import annotations

import os
from typing import Any

from msresnet.commands.common import terminal_width
from msresnet.errors import UserError

__all__ = ["count_flops", "model_rows", "print_models"]


def count_flops(model: Any, in_chans: int, size: int) -> int | None:
    """FLOPs of one forward pass on a ``size`` x ``size`` image (None when the model refuses that size)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if size < int(getattr(model, "min_input_size", 1) or 1):
        return None
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_chans, size, size))
    return int(counter.get_total_flops())


def model_rows(
    pattern: str | None,
    *,
    input_size: int,
    in_chans: int,
    num_classes: int,
    names_only: bool = False,
    flops: bool = True,
) -> list[dict[str, Any]]:
    """One row per model matching ``pattern``: ``name``, and unless ``names_only`` also ``params``,
    ``min_input_size`` and ``flops`` (None where not counted).

    Raises:
        UserError: no model matches, or the input size is not positive.
    """
    import torch

    import msresnet

    names = msresnet.list_models(pattern)
    if not names:
        raise UserError(f"no model matches {pattern!r} (see 'msresnet models')")
    if input_size < 1:
        raise UserError(f"--input-size must be positive, got {input_size}")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    rows = []
    for name in names:
        row: dict[str, Any] = {"name": name}
        if not names_only:
            model = msresnet.create_model(name, num_classes=num_classes, in_chans=in_chans).eval()
            row["params"] = sum(p.numel() for p in model.parameters())
            row["min_input_size"] = int(getattr(model, "min_input_size", 1) or 1)
            row["flops"] = count_flops(model, in_chans, input_size) if flops else None
        rows.append(row)
    return rows


def print_models(rows: list[dict[str, Any]], *, input_size: int, in_chans: int, num_classes: int) -> None:
    """The :func:`model_rows` as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    size = input_size
    table = Table(title=f"msresnet models (in_chans={in_chans}, num_classes={num_classes})")
    table.add_column("model")
    table.add_column("params", justify="right")
    table.add_column(f"GFLOPs @{size}x{size}", justify="right")
    table.add_column("min input", justify="right")
    for r in rows:
        flops = "—" if r["flops"] is None else f"{r['flops'] / 1e9:.3f}"
        table.add_row(r["name"], f"{r['params'] / 1e6:.3f}M", flops, str(r["min_input_size"]))
    Console(width=max(100, terminal_width())).print(table)
