"""Early stopping: ASHA on a scalar objective, and a Pareto-fair rule for the accuracy-cost front.

The Pareto-fair rule stops a trial at an epoch only when, at that same epoch, at least
`min_dominating` trials of no higher expected cost (1 + p̄) reached a higher val_accuracy: a cheap
schedule is never stopped for losing to an expensive one. Ray has no such scheduler.
"""

from __future__ import annotations

from collections import defaultdict

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from rst_tune.search.objectives import OBJECTIVES
from rst_tune.search.spec import SearchSpec

# A result with a `failure` is the trainable's last before it raises: neither scheduler stops a
# trial there, so that it ends in ERROR with its reason rather than as stopped early.


class ASHA(ASHAScheduler):
    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "failure" in result:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class ParetoFairScheduler(FIFOScheduler):
    def __init__(self, grace_epochs: int = 1, min_dominating: int = 1):
        super().__init__()
        self.grace_epochs, self.min_dominating = grace_epochs, min_dominating
        # epoch -> (expected cost, val_accuracy) of every result at that epoch
        self._seen: dict[int, list[tuple[float, float]]] = defaultdict(list)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if "failure" in result:
            return TrialScheduler.CONTINUE
        epoch, cost, accuracy = result["epoch"], result["expected_cost"], result["val_accuracy"]
        rivals = self._seen[epoch]
        beaten_by = sum(c <= cost and a > accuracy for c, a in rivals)
        rivals.append((cost, accuracy))
        if epoch >= self.grace_epochs and beaten_by >= self.min_dominating:
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def build_scheduler(spec: SearchSpec, epochs: int) -> TrialScheduler:
    rule = spec.early_stopping
    if rule.rule == "pareto_fair":
        return ParetoFairScheduler(rule.grace_epochs, rule.min_dominating)
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
