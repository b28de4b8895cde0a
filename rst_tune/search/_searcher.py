"""The searcher: Ray Tune asks it for trials, it asks Optuna (ask/tell) and tells Optuna how each ended.

A trial is COMPLETE when it trained every epoch with finite results; PRUNED when a scheduler
stopped it early or its expected cost exceeds the budget (it is then never trained); FAIL when it
raised or its results are not finite. The reason goes to the trial's `state_reason` user attribute.
(Ray's own OptunaSearch tells Optuna COMPLETE with partial values when a scheduler stops a trial,
and leaves a trial RUNNING when its result is NaN.) Optuna trials an interrupted driver left RUNNING
are taken up again rather than left beside new ones.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from rst_tune._train import METRICS
from rst_tune.config import ConfigError, TrainConfig
from rst_tune.search._cost_axis import CostAxis
from rst_tune.search._known_cost import KnownCostSampler
from rst_tune.search._objectives import budget_constraint, objective_for
from rst_tune.search._optuna import take_up
from rst_tune.search._record import TrialRecord
from rst_tune.search._space import Coordinates, DefineByRun, points_to_evaluate
from rst_tune.search._spec import SearchSpec

MAX_DRAWS = 200  # configurations drawn per trial in search of one within the budget


def build_sampler(spec: SearchSpec, axis: CostAxis | None = None) -> optuna.samplers.BaseSampler:
    """The spec's sampler; `axis` prices a known_cost sampler's configurations (default: the spec's)."""
    seed, startup = spec.seed, spec.sampler.startup_trials
    if spec.sampler.name == "known_cost":
        given = {} if startup is None else {"startup_trials": startup}
        return KnownCostSampler(Coordinates(spec, axis), spec.num_samples, seed=seed, **given)
    given = {} if startup is None else {"n_startup_trials": startup}
    if spec.sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **given)
    if spec.sampler.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, **given)
    if spec.sampler.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


class RSTSearch(Searcher):
    """Trials of `spec` from the Optuna study `spec.name` in `storage`; `enqueue` adds the spec's
    points to evaluate first (not when continuing a study that has them already). `space`, the
    define-by-run function that makes a trial's record, defaults to the spec's space; `more`, when
    given, says whether a new trial may start now (True), later (None) or never (False)."""

    def __init__(
        self,
        spec: SearchSpec,
        storage: optuna.storages.BaseStorage,
        enqueue: bool = True,
        space: Callable[[optuna.Trial], TrialRecord] | None = None,
        more: Callable[[optuna.Study], bool | None] | None = None,
    ):
        self.objective = objective_for(spec.objective, spec.cost)
        metric, mode = list(self.objective.metrics), list(self.objective.modes)
        super().__init__(
            metric=metric[0] if self.objective.scalar else metric,
            mode=mode[0] if self.objective.scalar else mode,
        )
        self.budget = spec.budget
        self.space, self.more = space or DefineByRun(spec), more
        self.storage = storage
        kept = spec.name in optuna.get_all_study_names(storage)
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(spec.name)) if kept else {}
        self.axis = CostAxis.of(spec, attrs=attrs)
        self.study = optuna.create_study(
            storage=storage,
            sampler=build_sampler(spec, self.axis),
            pruner=optuna.pruners.NopPruner(),
            study_name=spec.name,
            load_if_exists=True,
            directions=["maximize" if m == "max" else "minimize" for m in self.objective.modes],
        )
        self._study_id = storage.get_study_id_from_name(spec.name)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what optuna-dashboard shows
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names(list(self.objective.metrics))
        self.axis.keep(self.study)
        for point in points_to_evaluate(spec) if enqueue else []:
            self.study.enqueue_trial(point)
        self._trials: dict[str, optuna.Trial] = {}  # Ray trial id -> its Optuna trial
        self._records: dict[str, TrialRecord] = {}
        self._last: dict[str, dict] = {}  # the latest result of each running trial
        self._failures: dict[str, str] = {}
        self._completed: set[str] = set()

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self._records:
            return self._records[trial_id].to_config()
        for _ in range(MAX_DRAWS):
            trial = self._orphan()
            if self.more is not None and (trial is None or "train" not in trial.user_attrs):
                allowed = self.more(self.study)
                if allowed is not True and trial is not None:  # left unconfigured, and nothing to give it
                    trial.set_user_attr("state_reason", "not trained: an interrupted driver left it")
                    self.study.tell(trial, state=TrialState.PRUNED)
                    continue
                if allowed is not True:
                    return None if allowed is None else Searcher.FINISHED
            trial = trial or self.study.ask()
            record = self.space(trial)
            for key, value in record.to_user_attrs().items():
                trial.set_user_attr(key, value)
            known = self.axis.known(record.train)
            if self.budget is not None and known > self.budget:
                trial.set_user_attr(
                    "state_reason",
                    f"not trained: expected cost {known:.3f} exceeds the budget {self.budget:g}",
                )
                trial.set_constraint("cost_over_budget", budget_constraint(known, self.budget))
                self.study.tell(trial, state=TrialState.PRUNED)
                continue
            trial.set_user_attr("ray_trial_id", trial_id)
            self._trials[trial_id], self._records[trial_id] = trial, record
            return record.to_config()
        raise ConfigError(
            f"no configuration with expected cost ≤ {self.budget:g} in {MAX_DRAWS} draws; "
            "widen the schedule ranges or raise the budget",
            key="budget",
        )

    def _orphan(self) -> optuna.Trial | None:
        """An Optuna trial left RUNNING by an interrupted driver and unknown to Ray."""
        known = {trial.number for trial in self._trials.values()}
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in known:
                return take_up(self.study, self.storage, frozen.number)
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last[trial_id] = result
        if "failure" in result:
            self._failures[trial_id] = result["failure"]
        elif self.objective.scalar and trial_id in self._trials and math.isfinite(result[self.metric]):
            self._trials[trial_id].report(result[self.metric], step=int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed or trial_id not in self._trials:
            return
        self._completed.add(trial_id)
        trial, failure = self._trials[trial_id], self._failures.pop(trial_id, None)
        last = self._last.pop(trial_id, None)
        result = result or last  # a trial that raised comes without its last result
        if self._told(trial):
            return  # told before the driver was interrupted
        train = self._records[trial_id].train
        state, values, reason = self._outcome(result, error, failure, train)
        for key in METRICS:
            if result and key in result:
                trial.set_user_attr(key, result[key])
        if reason:
            trial.set_user_attr("state_reason", reason)
        if state == TrialState.COMPLETE and self.budget is not None:
            cost = self.axis.cost(result["cost_ratio"], result["epoch"], train.batch_size)
            trial.set_constraint("cost_over_budget", budget_constraint(cost, self.budget))
        self.study.tell(trial, values, state=state)

    def _told(self, trial: optuna.Trial) -> bool:
        """Whether Optuna has the trial's end already."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, trial.number)
        return self.storage.get_trial(trial_id).state.is_finished()

    def _outcome(
        self, result: dict | None, error: bool, failure: str | None, train: TrainConfig
    ) -> tuple[TrialState, list[float] | None, str | None]:
        """The state to tell Optuna of a trial of `train` whose last result (an epoch's metrics) is
        `result`: complete when it ran its own epochs, which a search may have drawn; its values with
        the cost on the axis."""
        if error or failure:
            return TrialState.FAIL, None, failure or "the trial raised an error (see error.txt in its folder)"
        if not result:
            return TrialState.PRUNED, None, "stopped before its first epoch ended"
        values = self.objective.values(self.axis.result(result, train.batch_size))
        if not all(math.isfinite(v) for v in values):
            return TrialState.FAIL, None, f"non-finite result: {dict(zip(self.objective.metrics, values))}"
        if result["epoch"] < train.epochs:
            reason = f"stopped early by the scheduler after epoch {result['epoch']} of {train.epochs}"
            return TrialState.PRUNED, None, reason
        return TrialState.COMPLETE, values, None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
