"""What a search optimises: the metrics Optuna is told, their directions, and the budget constraint.

- `pareto` (default): maximise val_accuracy and minimise the cost (`COSTS`: propagations, or
  device_seconds, the trial's training wall time × its devices); the result is a front.
- `acc_per_prop`: maximise val_accuracy / cost_ratio. It rewards cheap schedules: halving the cost
  is worth as much as doubling the accuracy, so SGD-like schedules win unless sharpness-aware steps
  buy a lot. Right when compute is the scarce resource and small accuracy differences do not matter.
- `accuracy_under_budget`: maximise val_accuracy subject to cost ≤ budget (`rst_tune.search._cost_axis`:
  compute over SGD's at train's settings). Configurations whose cost, known before training, exceeds
  the budget are never trained; the realised cost is an Optuna constraint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

COSTS = ("propagations", "device_seconds")


@dataclass(frozen=True)
class Objective:
    name: str
    metrics: tuple[str, ...]
    modes: tuple[str, ...]  # "max" or "min", one per metric

    def values(self, result: Mapping[str, float]) -> list[float]:
        return [float(result[metric]) for metric in self.metrics]

    @property
    def scalar(self) -> bool:
        return len(self.metrics) == 1


OBJECTIVES: dict[str, Objective] = {
    "pareto": Objective("pareto", ("val_accuracy", "propagations"), ("max", "min")),
    "acc_per_prop": Objective("acc_per_prop", ("acc_per_prop",), ("max",)),
    "accuracy_under_budget": Objective("accuracy_under_budget", ("val_accuracy",), ("max",)),
}


def objective_for(name: str, cost: str = "propagations") -> Objective:
    """Objective `name`; for `pareto`, against `cost` (one of `COSTS`)."""
    objective = OBJECTIVES[name]
    return replace(objective, metrics=("val_accuracy", cost)) if name == "pareto" else objective


def budget_constraint(cost: float, budget: float) -> float:
    """Optuna constraint value: feasible when ≤ 0."""
    return cost - budget
