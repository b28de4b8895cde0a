"""The Ray Tune callback that logs a run to MLflow from the driver (workers need no MLflow access).

Trial runs are found again by their Optuna trial number, so a resumed run adds no duplicates, and
their final status follows the Optuna study: COMPLETE → FINISHED, PRUNED → KILLED, FAIL → FAILED
(reason in the `rst.state_reason` tag). Each epoch is one `log_batch`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from mlflow.entities import Metric, Param
from ray import tune

from rst_tune._train import EPOCH_METRICS, EpochMetrics
from rst_tune.search._folder import RunFolder
from rst_tune.search._record import TrialRecord
from rst_tune.search._runner import Report, RunCallback
from rst_tune.search._settings import RunSettings
from rst_tune.tracking._client import FAILED, GuardedClient
from rst_tune.tracking._parent import child_runs, close_parent, open_parent
from rst_tune.tracking._plots import plot_learning_curves, plot_schedule
from rst_tune.tracking._record import TrackingRecord, tracking_uri_of
from rst_tune.tracking._trials import flat_params, logged_history, set_status


def tracker_for(
    run_dir: str | Path,
    spec: RunSettings,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    out: Callable[[str], None] = print,
) -> RunTracker:
    """The tracker of the search or study `spec` in `run_dir`: it logs where the run logged before,
    else to `tracking_uri`, $MLFLOW_TRACKING_URI or SQLite in the run folder; experiment `experiment`,
    default the run's name."""
    folder = RunFolder(Path(run_dir), spec.kind)
    return RunTracker(folder, spec, tracking_uri_of(folder, tracking_uri), experiment or spec.name, out)


class RunTracker(RunCallback):
    """Logs the run in `folder` with settings `settings` to MLflow at `tracking_uri`, experiment
    `experiment`. Pickles as its arguments but `out` (Ray saves its callbacks), and opens its runs in
    `setup`, which Ray calls when the run starts or resumes."""

    def __init__(
        self,
        folder: RunFolder,
        settings: RunSettings,
        tracking_uri: str,
        experiment: str,
        out: Callable[[str], None] = print,
    ):
        self._args = (folder, settings, tracking_uri, experiment)
        self.folder, self.settings, self.experiment, self.out = folder, settings, experiment, out
        self.mlflow = GuardedClient(tracking_uri, out)
        self.record: TrackingRecord | None = None
        self._study: optuna.Study | None = None
        self._runs: dict[int, str] = {}  # Optuna trial number -> MLflow run id
        self._records: dict[str, TrialRecord] = {}  # Ray trial id -> its record
        self._logged_epochs: dict[int, int] = {}
        # trial -> epoch -> metrics (a retried epoch once)
        self._history: dict[int, dict[int, EpochMetrics]] = {}

    def __getstate__(self) -> dict:
        return {"args": self._args}

    def __setstate__(self, state: dict) -> None:
        self.__init__(*state["args"])

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.load_study(study_name=self.settings.name, storage=self.folder.study_url)
        return self._study

    def setup(self, **info) -> None:
        if self.record is None:
            # not "Creating initial tables"
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
            self.record = open_parent(self.mlflow, self.folder, self.settings, self.experiment)
            if self.record is not None:
                self._runs |= child_runs(self.mlflow, self.record)
            if self.record is not None and not info:  # on the driver, before Ray starts
                self.out(f"MLflow: {self.mlflow.tracking_uri}, experiment {self.experiment!r}")

    # -- trial runs ----------------------------------------------------------------------------
    def _record(self, trial) -> TrialRecord:
        """The record of a Ray trial, validated once."""
        if trial.trial_id not in self._records:
            self._records[trial.trial_id] = TrialRecord.from_config(trial.config)
        return self._records[trial.trial_id]

    def _trial_run(self, trial) -> str | None:
        record = self._record(trial)
        number = record.optuna_trial
        if number in self._runs or self.record is None:
            return self._runs.get(number)
        tags = {
            "mlflow.parentRunId": self.record.parent_run_id,
            "rst.ray_trial_id": trial.trial_id,
            "rst.optuna_trial": str(number),
        }
        tags |= {
            f"rst.{key}": getattr(record, key)
            for key in ("baseline", "configuration")
            if getattr(record, key)
        }
        run = self.mlflow.call(
            "trial run", "create_run", self.record.experiment_id, run_name=record.label[:250], tags=tags
        )
        if run is FAILED:
            return None
        self._runs[number], self._logged_epochs[number] = run.info.run_id, 0
        params = [Param(k, v) for k, v in flat_params(record).items()]
        self.mlflow.call("trial params", "log_batch", run.info.run_id, params=params)
        return run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        run_id = self._trial_run(trial)
        if run_id is not None:  # a resumed trial: its Ray trial id may be new
            self.mlflow.call("trial tags", "set_tag", run_id, "rst.ray_trial_id", trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not all(name in result for name in EPOCH_METRICS):
            return  # not an epoch of the trainable's (a callback must never stop the run)
        number, metrics = self._record(trial).optuna_trial, EpochMetrics.from_mapping(result)
        self._history.setdefault(number, {})[metrics.epoch] = metrics
        run_id = self._trial_run(trial)
        if run_id is None:
            self.mlflow.missed["epoch metrics"] += 1
            return
        if number not in self._logged_epochs:  # a run of an earlier driver: its epochs are logged already
            logged = self.mlflow.call("run lookup", "get_metric_history", run_id, "val_accuracy")
            self._logged_epochs[number] = (
                max((m.step for m in logged), default=0) if logged is not FAILED else 0
            )
        if metrics.epoch <= self._logged_epochs[number]:
            return
        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, metrics.epoch) for k, v in metrics.items() if k != "epoch"]
        if self.mlflow.call("epoch metrics", "log_batch", run_id, metrics=batch) is not FAILED:
            self._logged_epochs[number] = metrics.epoch

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end_trial(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end_trial(trial)

    def on_experiment_end(self, trials, **info):
        self._save_missed()

    def _save_missed(self) -> None:
        """Add what this tracker could not log to the run's tracking record."""
        record = TrackingRecord.load(self.folder)
        if record is not None and self.mlflow.missed:
            record.add_missed(self.mlflow.missed)
            record.save(self.folder)
            self.mlflow.missed.clear()

    def _end_trial(self, trial) -> None:
        run_id = self._trial_run(trial)
        if run_id is None:
            return
        record = self._record(trial)
        history = [metrics for _, metrics in sorted(self._history.get(record.optuna_trial, {}).items())]
        if len(history) < (history[-1].epoch if history else 0):  # resumed: earlier epochs are in MLflow
            history = logged_history(self.mlflow, run_id) or history
        if history:
            with tempfile.TemporaryDirectory() as folder:
                for name, draw in (
                    ("schedule.png", plot_schedule),
                    ("learning_curves.png", plot_learning_curves),
                ):
                    draw(record, history, Path(folder) / name, record.train.epochs)
                    self.mlflow.call("trial artifacts", "log_artifact", run_id, str(Path(folder) / name))
        trials = self.study.get_trials(deepcopy=False)
        if record.optuna_trial < len(trials):
            optuna_trial = trials[record.optuna_trial]
            set_status(
                self.mlflow, run_id, optuna_trial.state.name, optuna_trial.user_attrs.get("state_reason")
            )

    # -- the end of the run --------------------------------------------------------------------
    def finish(
        self, report: Report, checkpoints: dict[str, tune.Checkpoint], interrupted: bool
    ) -> str | None:
        """Close every trial run from the report's rows, log the report's files to the parent and, when
        the report has a front, tag it and log its weights. Returns what the whole run could not log."""
        self.setup()
        if self.record is not None:
            close_parent(self.mlflow, self.record, self.folder, report, checkpoints, interrupted)
        self._save_missed()
        saved = TrackingRecord.load(self.folder)
        missed = saved.missed if saved is not None else dict(self.mlflow.missed)
        if missed:
            what = ", ".join(f"{n} {k}" for k, n in sorted(missed.items()))
            return f"not logged to MLflow at {self.mlflow.tracking_uri}: {what}"
        return None
