"""Command-line option plumbing shared by the commands: typed argument readers, ``KEY=VALUE`` lists, and the
``train`` options generated from :class:`~msresnet.engine.config.TrainConfig` (one flag per field, its help text
read from the dataclass's docstring, so the config file and the command line cannot drift apart)."""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from msresnet.errors import UserError

__all__ = [
    "DefaultsFormatter",
    "SPECIAL_FLAGS",
    "add_train_options",
    "field_help",
    "float_arg",
    "floats",
    "int_arg",
    "kv_pairs",
    "train_overrides",
]


def field_help() -> dict[str, str]:
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
SPECIAL_FLAGS = {
    "data_root": ["--data-dir", "--data-root"],
    "out": ["--out", "-o"],
    "model": ["--model", "-m"],
    "protocol": ["--protocol", "-p"],
}


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter that leaves out the defaults that say nothing (None, False) and the options
    whose help already states their default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def _default_text(value: Any) -> str:
    """A TrainConfig default as the help shows it (``%`` escaped for argparse)."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        value = ",".join(str(v) for v in value)
    return str(value).replace("%", "%%")


def kv_pairs(items: Sequence[str] | None, what: str) -> dict[str, Any] | None:
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


def add_train_options(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, typed and documented from the dataclass."""
    from msresnet.engine.config import DEPRECATED_KEYS, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    helps = field_help()
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    p.add_argument("--config", "-c", metavar="FILE.yaml", help="YAML recipe; command-line options override it")
    for name, tp in hints.items():
        flags = SPECIAL_FLAGS.get(name, ["--" + name.replace("_", "-")])
        help_ = helps.get(name, "")
        default = defaults.get(name, dataclasses.MISSING)
        if default not in (dataclasses.MISSING, "") and "default" not in help_.lower():
            # argparse's own default stays None, so that the options the user gave can be told apart
            help_ += f" (default: {_default_text(default)})"
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        optional = origin in (typing.Union, types.UnionType) and type(None) in args
        inner = [a for a in args if a is not type(None)] if optional else [tp]
        base = inner[0] if len(inner) == 1 else tp
        kw: dict[str, Any] = {"dest": name, "default": None, "help": help_}
        if base is bool:
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(base) is Literal:
            choices = [str(c) for c in typing.get_args(base)]
            choices += ["none"] if optional and "none" not in choices else []
            p.add_argument(*flags, choices=choices, **kw)
        elif base is dict:
            kw["help"] = help_ + " Repeatable KEY=VALUE (values parsed as YAML)."
            p.add_argument(*flags, action="append", metavar="KEY=VALUE", **kw)
        elif typing.get_origin(base) is tuple:
            kw["help"] = help_ + (" 'none' turns it off." if optional else "")
            p.add_argument(*flags, metavar="LO,HI", **kw)
        elif base is int:
            p.add_argument(*flags, type=int_arg, metavar="N", **kw)
        elif base is float:
            p.add_argument(*flags, type=float_arg, metavar="X", **kw)
        else:
            p.add_argument(*flags, metavar=name.upper(), **kw)
    for old, (new, why) in DEPRECATED_KEYS.items():
        p.add_argument("--" + old.replace("_", "-"), dest=old, type=int_arg, default=None, metavar="N",
                       help=f"deprecated alias of --{new.replace('_', '-')} ({why})")  # fmt: skip


def int_arg(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None


def float_arg(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user actually gave, as TrainConfig overrides (None = not given); a deprecated option keeps
    its old name here, so that the configuration's validation warns about it once."""
    from msresnet.engine.config import DEPRECATED_KEYS, TrainConfig

    over: dict[str, Any] = {k: getattr(args, k) for k in DEPRECATED_KEYS if getattr(args, k, None) is not None}
    for name in typing.get_type_hints(TrainConfig):
        value = getattr(args, name, None)
        if value is None:
            continue
        if name in ("model_kwargs", "protocol_params"):
            value = kv_pairs(value, "--" + name.replace("_", "-"))
        elif value == "none":
            value = "none"  # the config coerces 'none' to None for optional fields
        over[name] = value
    return over


def floats(raw: str | None, what: str) -> tuple[float, ...] | None:
    """``"0.5,1,2"`` -> floats (None when not given)."""
    if raw is None:
        return None
    try:
        return tuple(float(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{what} expects comma-separated numbers, got {raw!r}") from None
