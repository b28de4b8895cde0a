"""Ray Tune's OptunaSearch with honest trial states, a cost budget that is enforced before training,
and recovery of the Optuna trials an interrupted driver left RUNNING.

Ray's OptunaSearch tells Optuna COMPLETE with partial values when a scheduler stops a trial early,
and a NaN result makes `tell` fail and leaves the trial RUNNING. Here a trial is:
COMPLETE when it trained every epoch with finite results; PRUNED when a scheduler stopped it early
or its expected cost exceeds the budget (it is then never trained); FAIL when it raised or its
results are not finite. The reason goes to the trial's `state_reason` user attribute.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from rst_tune.config import ConfigError
from rst_tune.search.objectives import OBJECTIVES, budget_constraint
from rst_tune.search.space import DefineByRun, points_to_evaluate
from rst_tune.search.spec import SearchSpec
from rst_tune.train import EPOCH_METRICS

MAX_DRAWS = 200  # configurations drawn per trial in search of one within the budget


def build_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    startup = {} if spec.sampler.startup_trials is None else {"n_startup_trials": spec.sampler.startup_trials}
    if spec.sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed, **startup)
    if spec.sampler.name == "gp":
        return optuna.samplers.GPSampler(seed=spec.seed, **startup)
    if spec.sampler.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed)
    return optuna.samplers.RandomSampler(seed=spec.seed)


class RSTSearch(OptunaSearch):
    """OptunaSearch over a SearchSpec. `epochs` is the length of a full trial; `enqueue` adds the
    spec's points to evaluate first (not when continuing a study that has them already). `space`,
    the define-by-run function, defaults to the spec's space."""

    def __init__(self, spec: SearchSpec, storage: optuna.storages.BaseStorage, epochs: int, enqueue: bool = True,
                 space: Callable[[Any], dict[str, Any]] | None = None):
        self.objective = OBJECTIVES[spec.objective]
        self.budget, self.epochs = spec.budget, epochs
        self._failures: dict[str, str] = {}
        self._last: dict[str, dict] = {}  # the latest result of each running trial
        metric, mode = list(self.objective.metrics), list(self.objective.modes)
        if self.objective.scalar:
            metric, mode = metric[0], mode[0]
        super().__init__(space=space or DefineByRun(spec), metric=metric, mode=mode,
                         points_to_evaluate=(points_to_evaluate(spec) if enqueue else None) or None,
                         sampler=build_sampler(spec), study_name=spec.name, storage=storage)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id in self._ot_trials:
            return super().suggest(trial_id)
        for _ in range(MAX_DRAWS):
            self._ot_trials[trial_id] = self._orphan() or self._ot_study.ask()
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            cost = config["expected_cost"]
            if self.budget is not None and cost > self.budget:
                ot_trial.set_user_attr("label", config["label"])
                ot_trial.set_user_attr("state_reason", f"not trained: expected cost {cost:.3f} exceeds the budget {self.budget:g}")
                ot_trial.set_constraint("cost_over_budget", budget_constraint(cost, self.budget))
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
                del self._ot_trials[trial_id]
                continue
            for key in ("label", "expected_cost", "baseline", "configuration"):
                if key in config:
                    ot_trial.set_user_attr(key, config[key])
            ot_trial.set_user_attr("seed", config["train"]["seed"])
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            return config
        raise ConfigError(f"budget: no configuration with expected cost ≤ {self.budget:g} in {MAX_DRAWS} draws; "
                          "widen the schedule ranges or raise the budget")

    def _orphan(self) -> optuna.Trial | None:
        """An Optuna trial left RUNNING by an interrupted driver and unknown to Ray: it is reused
        (same parameters) rather than left RUNNING beside a new one."""
        known = {t.number for t in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in known:
                return optuna.Trial(self._ot_study, frozen._trial_id)
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last[trial_id] = result
        if "failure" in result:
            self._failures[trial_id] = result["failure"]
        elif self.objective.scalar and math.isfinite(result[self.metric]):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        self._completed_trials.add(trial_id)
        last = self._last.pop(trial_id, None)
        result = result or last  # a trial that raised comes without its last result
        if self._storage.get_trial(ot_trial._trial_id).state.is_finished():
            return  # told before the driver was interrupted
        state, values, reason = self._outcome(trial_id, result, error)
        for key in EPOCH_METRICS:
            if result and key in result:
                ot_trial.set_user_attr(key, result[key])
        if reason:
            ot_trial.set_user_attr("state_reason", reason)
        if state == TrialState.COMPLETE and self.budget is not None:
            ot_trial.set_constraint("cost_over_budget", budget_constraint(result["cost_ratio"], self.budget))
        self._ot_study.tell(ot_trial, values, state=state)

    def _outcome(self, trial_id: str, result: dict | None, error: bool) -> tuple[TrialState, list[float] | None, str | None]:
        failure = self._failures.pop(trial_id, None)
        if error or failure:
            return TrialState.FAIL, None, failure or "the trial raised an error (see error.txt in its folder)"
        if not result:
            return TrialState.PRUNED, None, "stopped before its first epoch ended"
        values = self.objective.values(result)
        if not all(math.isfinite(v) for v in values):
            return TrialState.FAIL, None, f"non-finite result: {dict(zip(self.objective.metrics, values))}"
        if result["epoch"] < self.epochs:
            return TrialState.PRUNED, None, f"stopped early by the scheduler after epoch {result['epoch']} of {self.epochs}"
        return TrialState.COMPLETE, values, None
