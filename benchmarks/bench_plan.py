"""The scale benchmark's plan: the recipes and rows files, the runs a benchmark makes (``Job``) and the engine
configuration of each run. No training here: ``scale_bench`` runs the plan, ``pipeline`` renders its records."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.layout import CONFIGS, PROTOCOLS, Budget


@dataclass
class Job:
    """One training run: a row of the table on one protocol with one seed (or an oracle run), at one budget."""

    protocol: str
    row: str
    seed: int
    budget: Budget = Budget.FULL
    oracle_condition: float | int | None = None

    @property
    def quick(self) -> bool:
        return self.budget.quick

    @property
    def small_model(self) -> bool:
        """Whether the run uses the depth-8 ``quick_model`` (the reduced table, or ``depth8``)."""
        return self.budget.small_model

    @property
    def key(self) -> str:
        tag = f"__oracle{self.oracle_condition}" if self.oracle_condition is not None else ""
        return f"{self.budget.key_prefix}{self.protocol}__{self.row}{tag}__seed{self.seed}"

    def record(self) -> dict[str, Any]:
        """The job as run records store it (the budget as its three flags, the records' format)."""
        return {"protocol": self.protocol, "row": self.row, "seed": self.seed, "quick": self.budget.quick,
                "oracle_condition": self.oracle_condition, "full_model": self.budget.full_model,
                "depth8": self.budget.depth8}  # fmt: skip

    @classmethod
    def from_record(cls, job: dict[str, Any]) -> Job:
        """The job a record (or a ``--run-job`` spec) stores."""
        return cls(job["protocol"], job["row"], int(job["seed"]), Budget.of_job(job), job.get("oracle_condition"))


def load_plan() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    recipes = yaml.safe_load((CONFIGS / "recipes.yaml").read_text())
    rows = yaml.safe_load((CONFIGS / "rows.yaml").read_text())["rows"]
    return recipes, rows


def make_jobs(
    protocols: list[str],
    rows: list[dict],
    recipes: dict,
    seeds: list[int],
    budget: Budget,
    explicit_seeds: bool = False,
    explicit_rows: bool = False,
    oracles: bool = True,
    oracle_conditions: Collection[float] | None = None,
) -> list[Job]:
    """The runs to do at ``budget``. A quick budget takes the rows marked ``quick: true`` unless ``--rows`` names rows
    itself (then those rows run at the reduced budget with their ``quick_model``, or their own model at
    ``Budget.QUICK_DEPTH20``).
    ``Budget.DEPTH8``: every row, or the ``--rows`` ones, on the full budget with its ``quick_model``.
    ``oracles``: also each protocol's oracle runs (the plain ResNet trained at a test condition), all of the
    recipe's conditions or only ``oracle_conditions``."""
    jobs = []
    quick = budget.quick
    only = None if oracle_conditions is None else {float(c) for c in oracle_conditions}
    use_recipe = quick and not explicit_seeds  # --quick takes the recipe's seeds unless --seeds says otherwise
    per_protocol = {p: (recipes[p]["quick"].get("seeds", seeds) if use_recipe else seeds) for p in protocols}
    for seed in sorted({s for v in per_protocol.values() for s in v}):
        for p in protocols:
            wanted = per_protocol[p]
            if seed not in wanted:
                continue
            for r in rows:
                if quick and not (explicit_rows or r.get("quick") is True or p in (r.get("quick") or ())):
                    continue
                jobs.append(Job(p, r["id"], seed, budget))
            conds = [c for c in recipes[p].get("oracle", []) if only is None or float(c) in only] if oracles else []
            for cond in conds:
                jobs.append(Job(p, "oracle", seed, budget, oracle_condition=cond))

    def cost(j: Job) -> float:
        return relative_cost(job_config(j, rows, recipes, "cpu", Path(".")))

    if quick:  # everything runs: longest first, so that parallel runs finish together
        return sorted(jobs, key=lambda j: -cost(j))
    # Seed 0 of everything first, then the fmnist-scale realizations the protocol needs (>= 3), then the other
    # seeds: a benchmark cut short by a time budget still covers every row once. Longest first within each group.
    return sorted(jobs, key=lambda j: (j.seed > 0, j.seed > 0 and j.protocol != "fmnist-scale", j.seed, -cost(j)))


def relative_cost(cfg: dict[str, Any]) -> float:
    """A rough training cost of a run's engine config (for ordering runs only): images x input pixels x model
    factor, x 2 with the scale-invariance loss (a second view)."""
    pixels = 64 * 64 if cfg["protocol"].startswith("fmnist-ls") else 28 * 28
    model = cfg["model"]
    factors = {"sesn": 8.0, "scalechannel": 4.0, "canonical": 1.2, "msresnet": 3.0}  # first match counts
    factor = next((f for key, f in factors.items() if key in model), 1.0)
    loss = 2.0 if cfg.get("si_weight") else 1.0
    return float(cfg.get("train_limit") or 50_000) * cfg["epochs"] * pixels * factor * loss


def job_config(job: Job, rows: list[dict], recipes: dict, device: str, runs: Path) -> dict[str, Any]:
    """The engine overrides for ``job``: the protocol's recipe, then the row's changes."""
    recipe = recipes[job.protocol]
    cfg: dict[str, Any] = dict(recipe["train"])
    if job.quick:
        cfg.update({k: v for k, v in recipe["quick"].items() if k not in ("test_limit", "seeds")})
    params: dict[str, Any] = {}
    if job.protocol == "fmnist-scale":
        params["realization"] = job.seed
    if job.row == "oracle":
        model = "resnet8" if job.small_model else "resnet20"
        c = job.oracle_condition
        if job.protocol == "fmnist-ls":
            params["train_scales"] = [float(c), float(c)]
        else:
            params["train_size"] = int(c)
        cfg["degrade_aug"] = None  # the oracle sees sharp images at the test condition itself
    else:
        row = next(r for r in rows if r["id"] == job.row)
        model = row.get("quick_model", row["model"]) if job.small_model else row["model"]
        quick_kwargs = row.get("quick_kwargs", {}) if job.small_model else {}
        row_kwargs = (recipe.get("row_kwargs") or {}).get(job.row, {})  # the row's options on this protocol
        cfg["model_kwargs"] = {**row.get("model_kwargs", {}), **quick_kwargs, **row_kwargs}
        if row.get("rescale_aug"):
            cfg["rescale_aug"] = list(recipe["rescale_aug"])
        overrides = dict(row.get("overrides", {}))
        if overrides.get("si_weight") and recipe.get("si_view"):
            overrides.setdefault("si_view", recipe["si_view"])
        cfg.update(overrides)
    cfg.update(model=model, protocol=job.protocol, protocol_params=params, seed=job.seed, device=device,
               out=str(runs / job.key), log_every=10**9)  # fmt: skip
    return cfg


def full_table_runs() -> int:
    """How many runs the full table plans (every row on every protocol, seeds 0-2, oracles included)."""
    recipes, rows = load_plan()
    return len(make_jobs(list(PROTOCOLS), rows, recipes, [0, 1, 2], Budget.FULL, False, explicit_rows=False))
