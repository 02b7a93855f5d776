"""Validation of protocol parameters: defaults, types and ranges, with one-line :class:`UserError` messages.

Resolved values are JSON-able (lists, not tuples) so ``Protocol.params`` can go straight into a checkpoint or a
results file and rebuild the same protocol later.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msresnet.errors import UserError

__all__ = ["LIMIT", "Param", "resolve_params"]


def _as_list(value: Any) -> list:
    if isinstance(value, str):
        # From the command line: "0.5,1,2" or "[0.5, 1, 2]".
        value = [v for v in value.strip("[]() ").replace(" ", "").split(",") if v]
    if not isinstance(value, Sequence):
        raise ValueError("expected a list")
    return list(value)


def _num(value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    if kind is int:
        f = float(value)
        if not f.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(f)
    return float(value)


@dataclass(frozen=True)
class Param:
    """One protocol parameter: its default and a function normalising/validating a user value."""

    default: Any
    check: Callable[[Any], Any]
    doc: str = ""

    @staticmethod
    def int_(
        default: int | None, lo: int | None = None, optional: bool = False, doc: str = "", hi: int | None = None
    ) -> Param:
        def check(v: Any) -> int | None:
            if v is None and optional:
                return None
            v = _num(v, int)
            if lo is not None and v < lo:
                raise ValueError(f"must be >= {lo}")
            if hi is not None and v > hi:
                raise ValueError(f"must be <= {hi}")
            return v

        return Param(default, check, doc)

    @staticmethod
    def float_(default: float, lo: float | None = None, hi: float | None = None) -> Param:
        def check(v: Any) -> float:
            v = _num(v, float)
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ValueError(f"must be in [{lo}, {hi}]")
            return v

        return Param(default, check)

    @staticmethod
    def bool_(default: bool) -> Param:
        def check(v: Any) -> bool:
            if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
                return v.lower() in ("true", "1", "yes")
            if not isinstance(v, bool):
                raise ValueError("expected true or false")
            return v

        return Param(default, check)

    @staticmethod
    def choice(options: Sequence[str], default: str) -> Param:
        def check(v: Any) -> str:
            if v not in options:
                raise ValueError(f"must be one of {list(options)}")
            return v

        return Param(default, check)

    @staticmethod
    def choices(options: Sequence[str], default: Sequence[str]) -> Param:
        """A non-empty list of distinct names from ``options`` (order kept)."""

        def check(v: Any) -> list[str]:
            out = [str(x) for x in _as_list(v)]
            if not out or len(set(out)) != len(out) or set(out) - set(options):
                raise ValueError(f"needs distinct names from {list(options)}")
            return out

        return Param(list(default), check)

    @staticmethod
    def floats(default: Sequence[float], positive: bool = False) -> Param:
        def check(v: Any) -> list[float]:
            out = [_num(x, float) for x in _as_list(v)]
            if not out:
                raise ValueError("needs at least one value")
            if positive and min(out) <= 0:
                raise ValueError("values must be > 0")
            return sorted(out)

        return Param(list(default), check)

    @staticmethod
    def ints(default: Sequence[int] | None, lo: int = 1, optional: bool = False, hi: int | None = None) -> Param:
        def check(v: Any) -> list[int] | None:
            if v is None and optional:
                return None
            out = [_num(x, int) for x in _as_list(v)]
            if not out or min(out) < lo or len(set(out)) != len(out):
                raise ValueError(f"needs distinct integers >= {lo}")
            if hi is not None and max(out) > hi:
                raise ValueError(f"needs integers <= {hi}")
            return sorted(out)

        return Param(None if default is None else list(default), check)

    @staticmethod
    def range_(default: Sequence[float] | None, optional: bool = True) -> Param:
        def check(v: Any) -> list[float] | None:
            if v is None and optional:
                return None
            out = [_num(x, float) for x in _as_list(v)]
            if len(out) != 2 or not 0 < out[0] <= out[1]:
                raise ValueError("expected (lo, hi) with 0 < lo <= hi")
            return out

        return Param(None if default is None else list(default), check)

    @staticmethod
    def path() -> Param:
        def check(v: Any) -> str:
            p = Path(str(v)).expanduser()
            if not p.is_dir():
                raise ValueError(f"{p} is not a directory")
            return str(p.resolve())

        return Param(None, check)


#: The ``limit`` parameter several protocols share.
LIMIT = Param.int_(None, lo=1, optional=True, doc="keep only the first N images of each split (smoke tests)")


def resolve_params(name: str, spec: dict[str, Param], given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``given``, each value checked; unknown names are an error with a suggestion."""
    for key in given:
        if key not in spec:
            close = difflib.get_close_matches(key, list(spec), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"protocol {name!r} has no parameter {key!r}{hint} (parameters: {', '.join(spec)})")
    out = {}
    for key, param in spec.items():
        value = given.get(key, param.default)
        if key not in given:
            out[key] = value
            continue
        try:
            out[key] = param.check(value)
        except (ValueError, TypeError) as e:
            raise UserError(f"protocol {name!r}: bad {key}={value!r}: {e}") from None
    return out
