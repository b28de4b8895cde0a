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
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import optuna
from mlflow.entities import Metric, Param, RunStatus, RunTag
from ray import tune

from rst_tune.search.folder import RunFolder
from rst_tune.search.record import TrialRecord, TrialRow
from rst_tune.search.runner import Report, RunCallback
from rst_tune.search.settings import RunSettings
from rst_tune.search.trainable import saved_weights
from rst_tune.tracking.client import FAILED, GuardedClient
from rst_tune.tracking.plots import plot_learning_curves, plot_schedule
from rst_tune.tracking.record import TrackingRecord, tracking_uri_of
from rst_tune.train import EPOCH_METRICS, EpochMetrics

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
PACKAGES = ("rst-tune", "torch", "ray", "optuna", "mlflow")


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


def flat_params(record: TrialRecord) -> dict[str, str]:
    """A trial's settings with plain names: `schedule`, `schedule.p`, `rho`, `grst_weight`, ..."""
    train = record.train.model_dump()
    params = {
        "schedule": train["schedule"]["name"],
        **{f"schedule.{k}": v for k, v in train["schedule"]["params"].items()},
        **{f"model_params.{k}": v for k, v in train["model_params"].items()},
        **{
            k: ("off" if k == "grst_weight" and v is None else v)
            for k, v in train.items()
            if k not in ("schedule", "model_params")
        },
        "expected_cost": record.expected_cost,
    }
    return {k: str(v) for k, v in params.items()}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


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
        self.epochs = settings.train_config().epochs
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
            self.record = self._open()
            if self.record is not None and not info:  # on the driver, before Ray starts
                self.out(f"MLflow: {self.mlflow.tracking_uri}, experiment {self.experiment!r}")

    # -- the run's parent run ------------------------------------------------------------------
    def _open(self) -> TrackingRecord | None:
        record = TrackingRecord.load(self.folder)
        if record is not None and record.tracking_uri == self.mlflow.tracking_uri:
            self.mlflow.call("parent status", "update_run", record.parent_run_id, status="RUNNING")
            self._runs |= self._child_runs(record)
            return record
        found = self.mlflow.call("experiment", "get_experiment_by_name", self.experiment)
        if found is FAILED:
            return None
        local = not self.mlflow.tracking_uri.startswith("http")
        # tagged as a model-development experiment, the UI opens on its runs, not on GenAI traces
        experiment_id = (
            found.experiment_id
            if found
            else self.mlflow.call(
                "experiment",
                "create_experiment",
                self.experiment,
                artifact_location=self.folder.artifacts_dir.resolve().as_uri() if local else None,
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        )
        if experiment_id is FAILED:
            return None
        kind = self.folder.kind
        parent = self.mlflow.call(
            "parent run",
            "create_run",
            experiment_id,
            run_name=self.folder.name,
            tags={
                "rst.kind": kind,
                "rst.run_dir": str(self.folder.path.resolve()),
                **{f"rst.version.{k}": v for k, v in package_versions().items()},
            },
        )
        if parent is FAILED:
            return None
        record = TrackingRecord(self.mlflow.tracking_uri, experiment_id, parent.info.run_id)
        self.mlflow.call("parent artifacts", "log_artifact", record.parent_run_id, str(self.folder.spec_file))
        self.mlflow.call(
            "parent artifacts",
            "log_dict",
            record.parent_run_id,
            self.settings.model_dump(),
            f"resolved_{kind}.json",
        )
        record.save(self.folder)
        return record

    def _child_runs(self, record: TrackingRecord) -> dict[int, str]:
        """The trial runs under the parent run, by Optuna trial number."""
        children = self.mlflow.call(
            "run lookup",
            "search_runs",
            [record.experiment_id],
            f"tags.`mlflow.parentRunId` = '{record.parent_run_id}'",
            max_results=50_000,
        )
        return (
            {}
            if children is FAILED
            else {int(r.data.tags["rst.optuna_trial"]): r.info.run_id for r in children}
        )

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
            history = self._history_from_mlflow(run_id) or history
        if history:
            with tempfile.TemporaryDirectory() as folder:
                for name, draw in (
                    ("schedule.png", plot_schedule),
                    ("learning_curves.png", plot_learning_curves),
                ):
                    draw(record, history, Path(folder) / name, self.epochs)
                    self.mlflow.call("trial artifacts", "log_artifact", run_id, str(Path(folder) / name))
        trials = self.study.get_trials(deepcopy=False)
        if record.optuna_trial < len(trials):
            optuna_trial = trials[record.optuna_trial]
            self._set_status(run_id, optuna_trial.state.name, optuna_trial.user_attrs.get("state_reason"))

    def _history_from_mlflow(self, run_id: str) -> list[EpochMetrics]:
        series = {
            name: self.mlflow.call("run lookup", "get_metric_history", run_id, name)
            for name in EPOCH_METRICS
            if name != "epoch"
        }
        if any(values is FAILED for values in series.values()):
            return []
        by_epoch: dict[int, dict[str, float]] = {}
        for name, values in series.items():
            for metric in values:
                by_epoch.setdefault(metric.step, {"epoch": metric.step})[name] = metric.value
        return [
            EpochMetrics.from_mapping(values)
            for _, values in sorted(by_epoch.items())
            if len(values) == len(EPOCH_METRICS)
        ]

    def _set_status(self, run_id: str, state: str, reason: str | None) -> None:
        """Mirror an Optuna trial state (and its reason) on the trial's run; unfinished ones are left."""
        if state not in STATUS:
            return
        tags = [RunTag("rst.state", state)] + ([RunTag("rst.state_reason", reason)] if reason else [])
        self.mlflow.call("trial status", "log_batch", run_id, tags=tags)
        self.mlflow.call("trial status", "set_terminated", run_id, status=STATUS[state])

    # -- the end of the run --------------------------------------------------------------------
    def finish(
        self, report: Report, checkpoints: dict[str, tune.Checkpoint], interrupted: bool
    ) -> str | None:
        """Close every trial run from the report's rows, log the report's files to the parent and, when
        the report has a front, tag it and log its weights. Returns what the whole run could not log."""
        self.setup()
        if self.record is not None:
            self._runs |= self._child_runs(self.record)  # after a restore, Ray's own copy opened them
            self._finish(report, checkpoints, interrupted)
        self._save_missed()
        saved = TrackingRecord.load(self.folder)
        missed = saved.missed if saved is not None else dict(self.mlflow.missed)
        if missed:
            what = ", ".join(f"{n} {k}" for k, n in sorted(missed.items()))
            return f"not logged to MLflow at {self.mlflow.tracking_uri}: {what}"
        return None

    def _finish(self, report: Report, checkpoints: dict[str, tune.Checkpoint], interrupted: bool) -> None:
        parent = self.record.parent_run_id
        for row in report.trials:
            if row.number in self._runs:
                self._set_status(self._runs[row.number], row.state, row.reason)
        for name in report.files:
            self.mlflow.call("parent artifacts", "log_artifact", parent, str(self.folder.path / name))
        if report.front is not None:
            self._finish_front(report.front, report.trials, checkpoints)
        stamp = int(time.time() * 1000)
        metrics = [Metric(name, value, stamp, 0) for name, value in report.summary_metrics().items()]
        if metrics:
            self.mlflow.call("parent summary", "log_batch", parent, metrics=metrics)
        status = RunStatus.KILLED if interrupted else RunStatus.FINISHED
        self.mlflow.call("parent status", "set_terminated", parent, status=RunStatus.to_string(status))

    def _finish_front(
        self, front: list[TrialRow], trials: list[TrialRow], checkpoints: dict[str, tune.Checkpoint]
    ) -> None:
        on_front = {row.number for row in front}
        for row in trials:
            run_id = self._runs.get(row.number)
            if run_id is None:
                continue
            self.mlflow.call(
                "trial tags", "set_tag", run_id, "rst.pareto", str(row.number in on_front).lower()
            )
            checkpoint = checkpoints.get(row.ray_trial_id)
            if row.number in on_front and checkpoint is not None:
                self._log_weights(run_id, checkpoint)
        self.mlflow.call(
            "parent summary", "set_tag", self.record.parent_run_id, "rst.pareto_size", str(len(front))
        )

    def _log_weights(self, run_id: str, checkpoint: tune.Checkpoint) -> None:
        import torch

        with tempfile.TemporaryDirectory() as out:
            torch.save(saved_weights(checkpoint), Path(out) / "model_state_dict.pt")
            self.mlflow.call(
                "pareto weights", "log_artifact", run_id, str(Path(out) / "model_state_dict.pt"), "model"
            )
