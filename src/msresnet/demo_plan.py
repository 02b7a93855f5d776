"""The demo's plan: what it trains and evaluates for a time budget on this machine.

A throughput probe (:func:`measure_costs`) measures what a training and an evaluation image cost each model here;
:func:`plan_for_budget` turns those costs and a budget into a :class:`DemoPlan` (training images, epochs, test images
per scale), and :func:`estimate_seconds` says how long a plan takes. :mod:`msresnet.demo` runs the plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from msresnet.errors import UserError
from msresnet.models import DEFAULT_MSRESNET

__all__ = [
    "BASELINE",
    "DEFAULT_BUDGET_MIN",
    "DEMO_MODELS",
    "DemoPlan",
    "ModelCost",
    "PROTOCOL",
    "check_budget",
    "estimate_seconds",
    "measure_costs",
    "plan_for_budget",
]

BASELINE = "resnet20"
#: The multi-scale model the demo compares with the plain ResNet: the project's default.
DEMO_MSRESNET = DEFAULT_MSRESNET
DEMO_MODELS: tuple[str, ...] = (BASELINE, DEMO_MSRESNET)
PROTOCOL = "fmnist-ls"
DEFAULT_BUDGET_MIN = 15.0
TRAIN_SPLIT = 55_000  # fmnist-ls training images (the rest of the 60k are its validation split)
TEST_SPLIT = 10_000
FILL = 0.9  # share of the remaining budget the plan spends: what the probe does not see (data movement, logging)
_EPOCHS = 2  # until the whole training split is used; then the budget buys epochs
_MAX_EPOCHS = 30
_BASE_TEST_LIMIT = 500  # test images per scale at the default budget
_N_SCALES = 9
_FIXED = {
    "batch_size": 64,  # more optimizer steps for the same compute: small budgets learn faster
    "optimizer": "adamw",
    "lr": 2e-3,
    "weight_decay": 0.05,
    "schedule": "onecycle",
    "seed": 0,
    "val_limit": 500,
}


@dataclass(frozen=True)
class ModelCost:
    """Seconds per image of one model on this machine: a training step's share, an evaluation pass's share, and
    whether the model has an object-scale probe to calibrate after training."""

    train_s: float
    eval_s: float
    calibrate: bool = False


#: What :func:`plan_for_budget` assumes without a probe (the tests, a plan printed for another machine): the CPU
#: seconds per image the probe's steps took with two threads on the development machine, halved for two cores
#: (CPU time, since other jobs shared the machine and inflated the wall-clock time several times over). The
#: canonical model's costs are the plain ResNet's scaled by the ratios ``benchmarks/speed.py`` measures; it has no
#: object-scale probe to calibrate.
REFERENCE_COSTS: dict[str, ModelCost] = {
    BASELINE: ModelCost(train_s=0.058, eval_s=0.0068),
    "msresnet20": ModelCost(train_s=0.090, eval_s=0.024, calibrate=True),
    "msresnet20_canonical": ModelCost(train_s=0.060, eval_s=0.0076),
}
_PROBE_BATCH = 16  # per-image cost on CPU barely depends on the batch; a small one keeps the probe to seconds


@dataclass(frozen=True)
class DemoPlan:
    """What the demo trains and evaluates; equal plans mean reusable runs."""

    models: tuple[str, ...]
    protocol: str
    train_limit: int
    epochs: int
    test_limit: int
    train: tuple[tuple[str, Any], ...]
    calibrate: tuple[str, ...] = ()
    budget_minutes: float = DEFAULT_BUDGET_MIN

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"], d["calibrate"], d["train"] = list(self.models), list(self.calibrate), dict(self.train)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DemoPlan:
        return cls(
            tuple(d["models"]),
            str(d["protocol"]),
            int(d["train_limit"]),
            int(d["epochs"]),
            int(d["test_limit"]),
            tuple(sorted(dict(d["train"]).items())),
            tuple(d.get("calibrate", ())),
            float(d.get("budget_minutes", DEFAULT_BUDGET_MIN)),
        )

    def run_record(self, model: str) -> dict[str, Any]:
        """The part of the plan one run depends on (stored as ``RUN/demo.json``); the library version is part of
        it, since a release may change what a model name builds."""
        from msresnet import __version__

        d = self.to_json()
        del d["models"], d["calibrate"]
        d["model"] = model
        d["calibrate"] = model in self.calibrate
        d["msresnet_version"] = __version__
        return d

    def describe(self) -> str:
        cal = f"; fit {', '.join(self.calibrate)}'s object-scale probe" if self.calibrate else ""
        return (
            f"{', '.join(self.models)} on {self.protocol}: {self.train_limit} training images x {self.epochs} epochs, "
            f"sweep of {_N_SCALES} scales x {self.test_limit} test images{cal}"
        )


def check_budget(budget_minutes: float) -> None:
    """A one-line error unless the budget is a positive, finite number of minutes."""
    if not (budget_minutes > 0 and math.isfinite(budget_minutes)):
        raise UserError(f"--budget-minutes must be a positive number of minutes, got {budget_minutes}")


def _fixed_seconds(cost: ModelCost, epochs: int, test_limit: int) -> float:
    """A model's seconds besides its training steps: per-epoch validation, calibration, the test sweep."""
    val = int(_FIXED["val_limit"])
    calibration = _N_SCALES * val * cost.eval_s if cost.calibrate else 0.0
    return epochs * val * cost.eval_s + calibration + _N_SCALES * test_limit * cost.eval_s


def plan_for_budget(
    budget_minutes: float = DEFAULT_BUDGET_MIN,
    costs: Mapping[str, ModelCost] | None = None,
    spent_seconds: float = 0.0,
) -> DemoPlan:
    """The demo's plan for a time budget in minutes, given what an image costs each model (:func:`measure_costs`;
    default :data:`REFERENCE_COSTS`) and the seconds already spent (data preparation, the probe).

    Test images per scale grow linearly with the budget (rounded to 100, between 100 and the 10k test split).
    Training images fill :data:`FILL` of the rest (rounded down to 500, between 500 and the 55k training split);
    a budget that covers the whole split several times over buys epochs instead. A pure function of its arguments.
    """
    check_budget(budget_minutes)
    costs = costs or REFERENCE_COSTS
    # a model without reference costs (the demo switched to another one): the dearest known costs, and no probe to
    # fit unless a measurement says it has one
    fallback = ModelCost(max(c.train_s for c in costs.values()), max(c.eval_s for c in costs.values()))
    model_costs = {m: costs.get(m, fallback) for m in DEMO_MODELS}
    ratio = budget_minutes / DEFAULT_BUDGET_MIN
    n_test = int(min(TEST_SPLIT, max(100, round(_BASE_TEST_LIMIT * ratio / 100) * 100)))
    available = FILL * (budget_minutes * 60 - spent_seconds)
    per_image = sum(c.train_s for c in model_costs.values())  # one training image through every model
    train_time = available - sum(_fixed_seconds(c, _EPOCHS, n_test) for c in model_costs.values())
    n_train = int(min(TRAIN_SPLIT, max(500, math.floor(train_time / (_EPOCHS * per_image) / 500) * 500)))
    epochs = _EPOCHS
    if n_train == TRAIN_SPLIT:
        epochs = max(_EPOCHS, min(_MAX_EPOCHS, math.floor(train_time / (TRAIN_SPLIT * per_image))))
    calibrate = tuple(m for m, c in model_costs.items() if c.calibrate)
    return DemoPlan(
        DEMO_MODELS, PROTOCOL, n_train, epochs, n_test, tuple(sorted(_FIXED.items())), calibrate, budget_minutes
    )


def _probe(model_name: str, device: str, batch_size: int, protocol: Any) -> ModelCost:
    """Seconds per training and per evaluation image of ``model_name`` here: two training steps (the first pays for
    allocation and kernel selection, the second is timed) and one timed evaluation pass."""
    import msresnet

    torch.manual_seed(0)
    shape = (protocol.in_chans, *protocol.input_size)
    model = msresnet.create_model(model_name, num_classes=protocol.num_classes, in_chans=shape[0]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, *shape, device=device)
    y = torch.randint(0, protocol.num_classes, (batch_size,), device=device)

    def timed(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    timed(step)
    train = timed(step)
    model.eval()
    with torch.no_grad():
        evaluate = timed(lambda: model(x))
    calibrate = getattr(model, "scale_probe", None) is not None and protocol.train_condition in protocol.test
    return ModelCost(train / batch_size, evaluate / batch_size, calibrate)


def measure_costs(device: str, protocol: Any, models: tuple[str, ...] = DEMO_MODELS) -> dict[str, ModelCost]:
    """The throughput probe: what a training and an evaluation image cost each model on this machine."""
    return {name: _probe(name, device, _PROBE_BATCH, protocol) for name in models}


def estimate_seconds(
    plan: DemoPlan, costs: Mapping[str, ModelCost], models: tuple[str, ...] | None = None
) -> dict[str, float]:
    """Estimated seconds per model under ``plan``: training, validation, calibration and the test sweep."""
    out = {}
    for name in models or plan.models:
        cost = costs.get(name) or max(costs.values(), key=lambda c: c.train_s)
        out[name] = plan.epochs * plan.train_limit * cost.train_s + _fixed_seconds(cost, plan.epochs, plan.test_limit)
    return out
