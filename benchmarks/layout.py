"""Where the benchmarks' files live and the training budgets their records are kept apart by.

The leaf of the ``benchmarks`` package: every other module reads its paths and budgets from here, and this module
imports nothing from the package (so the package has no import cycle).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "bench"
ROWS_FILE = CONFIGS / "rows.yaml"
TARGETS_FILE = CONFIGS / "targets.yaml"
RESULTS = ROOT / "benchmarks" / "results"
PUBLISHED = RESULTS / "scale"  # one JSON record per scale-benchmark run
SUMMARY = RESULTS / "summary.csv"  # every record x test condition: the source of the published pages
TRAIN_COST = RESULTS / "train_cost.json"
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PROTOCOLS = ("fmnist-ls", "fmnist-ls-scene", "fmnist-scale", "fmnist-res")
CALIBRATED = "+calibrate"  # row id suffix of a pyramid run as `msresnet calibrate` leaves it


class Budget(str, Enum):
    """A training budget: which recipe section (full or ``quick``) and which model (the row's own or its depth-8
    ``quick_model``). Records, the summary's rows and the pages of different budgets are never mixed."""

    FULL = "full"  # the recipe's training budget with each row's own model: the table the targets are defined on
    DEPTH8 = "depth8"  # that budget with each row's depth-8 model (sized for a CPU)
    QUICK_DEPTH20 = "quick-depth20"  # the reduced budget with each row's own model
    QUICK = "quick"  # the reduced budget with the depth-8 models

    @classmethod
    def of(cls, quick: bool = False, full_model: bool = False, depth8: bool = False) -> Budget:
        """The budget of the command-line flags (``--quick``, ``--full-models``, ``--depth8``)."""
        if quick:
            return cls.QUICK_DEPTH20 if full_model else cls.QUICK
        return cls.DEPTH8 if depth8 else cls.FULL

    @classmethod
    def of_job(cls, job: dict[str, Any]) -> Budget:
        """The budget a stored record's ``job`` was run with."""
        return cls.of(bool(job.get("quick")), bool(job.get("full_model")), bool(job.get("depth8")))

    @property
    def quick(self) -> bool:
        """Whether the run trains on the recipe's ``quick`` section."""
        return self in (Budget.QUICK, Budget.QUICK_DEPTH20)

    @property
    def full_model(self) -> bool:
        """With ``quick``: the row's own (full-depth) model instead of its ``quick_model``."""
        return self is Budget.QUICK_DEPTH20

    @property
    def depth8(self) -> bool:
        """Without ``quick``: the full recipe with the row's depth-8 ``quick_model``."""
        return self is Budget.DEPTH8

    @property
    def small_model(self) -> bool:
        """Whether the runs use each row's depth-8 ``quick_model``."""
        return self in (Budget.QUICK, Budget.DEPTH8)

    @property
    def key_prefix(self) -> str:
        """The prefix of a run's record name (``quick__``, ``quick__fullmodel__``, ``depth8__``, none)."""
        return (
            ("quick__" if self.quick else "")
            + ("fullmodel__" if self.full_model else "")
            + ("depth8__" if self.depth8 else "")
        )

    @property
    def suffix(self) -> str:
        """The suffix of the budget's plots (``-quick``, ``-quick-fullmodel``, ``-depth8``, none)."""
        return "".join(f"-{name}" for on, name in self._variant() if on)

    @property
    def flags(self) -> str:
        """The ``scale_bench`` flags that make the budget (leading space; empty for the full budget)."""
        flags = {"quick": "--quick", "fullmodel": "--full-models", "depth8": "--depth8"}
        return "".join(f" {flags[name]}" for on, name in self._variant() if on)

    @property
    def page(self) -> str:
        """The budget's page in ``docs/``."""
        return f"results{self.suffix or '-full'}.md"

    def _variant(self) -> list[tuple[bool, str]]:
        return [(self.quick, "quick"), (self.full_model, "fullmodel"), (self.depth8, "depth8")]


BUDGETS = tuple(b.value for b in Budget)  # most training first: the headline takes the first present
SMALL_MODEL_BUDGETS = tuple(b.value for b in Budget if b.small_model)
