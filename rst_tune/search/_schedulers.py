"""Early stopping: ASHA on a scalar objective, and two rules for the accuracy-cost front.

Both price a trial by what its training costs, known before it trains, on the search's cost axis
(`rst_tune.search._cost_axis`); without an axis, trials share their epochs and batch size and the
expected cost per step prices them.

The Pareto-fair rule stops a trial at an epoch only when, at that same epoch, at least
`min_dominating` trials of no higher cost reached a higher val_accuracy: a cheap schedule is never
stopped for losing to an expensive one.

The hypervolume rule stops a trial only when an optimistic bound on its final val_accuracy can no
longer add hypervolume at its own known cost: the bound is its accuracy now plus the largest gain
from this epoch to the last that any complete trial made, plus `margin`, and it must beat the best
final accuracy of the complete trials that cost no more. It stops nothing before `min_complete`
trials are complete. A trial of the front is therefore never stopped while the trials seen so far say
it could still get there. Ray has neither rule.
"""

from __future__ import annotations

import math
from collections import defaultdict

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from rst_tune.search._cost_axis import CostAxis
from rst_tune.search._objectives import OBJECTIVES
from rst_tune.search._spec import SearchSpec

# A result with a `failure` is the trainable's last before it raises: neither scheduler stops a
# trial there, so that it ends in ERROR with its reason rather than as stopped early.


def known_cost(axis: CostAxis | None, trial, result: dict) -> float:
    """What training `trial` costs on `axis`: its expected cost per step (`result`) over its epochs at
    its batch size (its config's)."""
    if axis is None:
        return result["expected_cost"]
    train = trial.config["train"]
    return axis.cost(result["expected_cost"], train["epochs"], train["batch_size"])


class ASHA(ASHAScheduler):
    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "failure" in result:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class ParetoFairScheduler(FIFOScheduler):
    def __init__(self, grace_epochs: int = 1, min_dominating: int = 1, axis: CostAxis | None = None):
        super().__init__()
        self.grace_epochs, self.min_dominating, self.axis = grace_epochs, min_dominating, axis
        # epoch -> (known cost, val_accuracy) of every result at that epoch
        self._seen: dict[int, list[tuple[float, float]]] = defaultdict(list)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "failure" in result:
            return TrialScheduler.CONTINUE
        epoch, accuracy = result["epoch"], result["val_accuracy"]
        cost = known_cost(self.axis, trial, result)
        rivals = self._seen[epoch]
        beaten_by = sum(c <= cost and a > accuracy for c, a in rivals)
        rivals.append((cost, accuracy))
        if epoch >= self.grace_epochs and beaten_by >= self.min_dominating:
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


class HypervolumeScheduler(FIFOScheduler):
    def __init__(
        self,
        epochs: int,
        grace_epochs: int = 1,
        margin: float = 0.01,
        min_complete: int = 4,
        axis: CostAxis | None = None,
    ):
        super().__init__()
        self.epochs, self.grace_epochs, self.min_complete = epochs, grace_epochs, min_complete
        self.margin, self.axis = margin, axis
        self._curves: dict[str, dict[int, float]] = {}  # trial id -> epoch -> val_accuracy
        self._complete: list[tuple[float, float, dict[int, float]]] = []  # (cost, final, curve)

    def _epochs(self, trial) -> int:
        return int((trial.config or {}).get("train", {}).get("epochs", self.epochs))

    def _cost(self, trial, result: dict) -> float:
        return known_cost(self.axis, trial, result)

    def bound(self, epoch: int, accuracy: float) -> float:
        """The most a trial at `accuracy` after `epoch` epochs may end at, by the complete trials."""
        gains = [final - curve[epoch] for _, final, curve in self._complete if epoch in curve]
        return accuracy + max(gains, default=math.inf) + self.margin

    def best_within(self, cost: float) -> float:
        """The best final val_accuracy of a complete trial of cost ≤ `cost`."""
        return max((final for at, final, _ in self._complete if at <= cost), default=-math.inf)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "failure" in result:
            return TrialScheduler.CONTINUE
        epoch, accuracy = int(result["epoch"]), result["val_accuracy"]
        self._curves.setdefault(trial.trial_id, {})[epoch] = accuracy
        if (
            epoch < self.grace_epochs
            or len(self._complete) < self.min_complete
            or epoch >= self._epochs(trial)
        ):
            return TrialScheduler.CONTINUE
        if self.bound(epoch, accuracy) <= self.best_within(self._cost(trial, result)):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        curve = self._curves.pop(trial.trial_id, {})
        if result and "failure" not in result and int(result["epoch"]) >= self._epochs(trial):
            self._complete.append((self._cost(trial, result), result["val_accuracy"], curve))

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._curves.pop(trial.trial_id, None)


def build_scheduler(spec: SearchSpec, axis: CostAxis) -> TrialScheduler:
    rule, epochs = spec.early_stopping, spec.train_config().epochs
    if rule.rule == "hypervolume":
        return HypervolumeScheduler(epochs, rule.grace_epochs, rule.margin, axis=axis)
    if rule.rule == "pareto_fair":
        return ParetoFairScheduler(rule.grace_epochs, rule.min_dominating, axis=axis)
    if rule.rule == "asha":
        objective = OBJECTIVES[spec.objective]
        return ASHA(
            time_attr="epoch",
            metric=objective.metrics[0],
            mode=objective.modes[0],
            max_t=epochs,
            grace_period=rule.grace_epochs,
            reduction_factor=rule.reduction_factor,
        )
    return FIFOScheduler()
