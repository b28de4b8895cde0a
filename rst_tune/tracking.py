"""MLflow tracking of a search or study from the driver: a parent run per run, a nested run per trial.

Every write happens on the driver (workers need no MLflow access), each epoch in one `log_batch`.
Trial runs are found again by their Optuna trial number, so a resumed search adds no duplicates,
and their final status comes from the Optuna study: COMPLETE → FINISHED, PRUNED → KILLED,
FAIL → FAILED (reason in the `rst.state_reason` tag). An unreachable tracking server never stops the
search: the first failure warns, calls are skipped for `RETRY_S` seconds at a time, and `finish`
returns what was not logged.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import mlflow
import optuna
import requests
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from ray import tune

from rst_tune.schedules import make_schedule
from rst_tune.search.pareto import ParetoReport
from rst_tune.search.runner import SearchCallback, study_url
from rst_tune.search.spec import SearchSpec
from rst_tune.train import EPOCH_METRICS

TRACKING_FILE = "tracking.json"  # the tracking URI, experiment and parent run of a search
RETRY_S = 30.0
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
PACKAGES = ("rst-tune", "torch", "ray", "optuna", "mlflow")
FAILED = object()  # what a tracking call returns when it could not be made


def tracking_uri_of(run_dir: Path, given: str | None = None) -> str:
    """The MLflow store of a run: the one it was started with, else `given`, else $MLFLOW_TRACKING_URI,
    else SQLite inside the run folder."""
    saved = run_dir / TRACKING_FILE
    if saved.exists():
        return json.loads(saved.read_text())["tracking_uri"]
    return given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def tracker_for(run_dir: Path, spec: SearchSpec, tracking_uri: str | None = None, experiment: str | None = None,
                out: Callable[[str], None] = print, kind: str = "search",
                settings: dict[str, Any] | None = None) -> SearchTracker:
    """The tracker of the search (or, with `kind="study"`, the study) `spec` in `run_dir` (see
    `tracking_uri_of` for where it logs); `settings` default to the spec's."""
    return SearchTracker(run_dir, tracking_uri_of(run_dir, tracking_uri), experiment or spec.name, spec.name,
                         study_url(run_dir), settings or spec.model_dump(), spec.train_config().epochs, out, kind)


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """A trial's settings with plain names: `schedule`, `schedule.p`, `rho`, `grst_weight`, ..."""
    train = config["train"]
    params = {"schedule": train["schedule"]["name"],
              **{f"schedule.{k}": v for k, v in train["schedule"]["params"].items()},
              **{f"model_params.{k}": v for k, v in train["model_params"].items()},
              **{k: ("off" if k == "grst_weight" and v is None else v) for k, v in train.items()
                 if k not in ("schedule", "model_params")},
              "expected_cost": config["expected_cost"]}
    return {k: str(v) for k, v in params.items()}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class SearchTracker(SearchCallback):
    """Logs the search (or study: `kind`) in `run_dir` to MLflow at `tracking_uri`, experiment
    `experiment`. The Optuna study (`study_name` in `study_url`) gives each trial's final state;
    `settings` is the resolved search, logged to the parent run. Pickles as its arguments but `out`
    (Ray saves its callbacks), and opens its runs in `setup`, which Ray calls when the run starts or resumes."""

    def __init__(self, run_dir: Path, tracking_uri: str, experiment: str, study_name: str, study_url: str,
                 settings: dict[str, Any], epochs: int, out: Callable[[str], None] = print, kind: str = "search"):
        self._args = (run_dir, tracking_uri, experiment, study_name, study_url, settings, epochs)
        self.run_dir, self.tracking_uri, self.experiment, self.epochs, self.out = run_dir, tracking_uri, experiment, epochs, out
        self.kind = kind
        self.settings, self.study_name, self.study_url = settings, study_name, study_url
        if tracking_uri.startswith("http"):  # fail fast on a dead server rather than retrying for minutes
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # not a line per ended run
        self.client: mlflow.MlflowClient | None = None  # made in setup: a SQLite store is created on first use
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self._study: optuna.Study | None = None
        self._down_until = 0.0
        self._missed: Counter[str] = Counter()
        self._runs: dict[int, str] = {}  # Optuna trial number -> MLflow run id
        self._logged_epochs: dict[int, int] = {}
        self._history: dict[int, dict[int, dict[str, float]]] = {}  # trial -> epoch -> metrics (a retried epoch once)

    def __getstate__(self) -> dict:
        return {"args": self._args, "kind": self.kind}

    def __setstate__(self, state: dict) -> None:
        self.__init__(*state["args"], kind=state.get("kind", "search"))  # runs saved before studies have no kind

    def setup(self, **info) -> None:
        if self.client is None:
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # not "Creating initial tables"
            self.client = mlflow.MlflowClient(self.tracking_uri)
        if self.parent_id is None:
            self.experiment_id, self.parent_id = self._open()
            if self.parent_id is not None and not info:  # on the driver, before Ray starts
                self.out(f"MLflow: {self.tracking_uri}, experiment {self.experiment!r}")

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.load_study(study_name=self.study_name, storage=self.study_url)
        return self._study

    # -- calls that may fail -------------------------------------------------------------------
    def _call(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        if time.monotonic() < self._down_until:
            self._missed[what] += 1
            return FAILED
        try:
            return fn(*args, **kwargs)
        except (MlflowException, requests.RequestException, OSError) as err:
            self._missed[what] += 1
            if self._down_until == 0.0:
                self.out(f"warning: MLflow at {self.tracking_uri} failed ({' '.join(str(err).split())[:200]}); "
                         "the search goes on and reports at the end what was not logged")
            self._down_until = time.monotonic() + RETRY_S
            return FAILED

    # -- the search's parent run ---------------------------------------------------------------
    def _open(self) -> tuple[str | None, str | None]:
        saved = self.run_dir / TRACKING_FILE
        if saved.exists():
            state = json.loads(saved.read_text())
            if state["tracking_uri"] == self.tracking_uri:
                self._call("parent status", self.client.update_run, state["parent_run_id"], status="RUNNING")
                children = self._call("run lookup", self.client.search_runs, [state["experiment_id"]],
                                      f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'", max_results=50_000)
                if children is not FAILED:
                    self._runs = {int(r.data.tags["rst.optuna_trial"]): r.info.run_id for r in children}
                return state["experiment_id"], state["parent_run_id"]
        found = self._call("experiment", self.client.get_experiment_by_name, self.experiment)
        if found is FAILED:
            return None, None
        experiment_id = found.experiment_id if found else self._call(
            "experiment", self.client.create_experiment, self.experiment,
            artifact_location=None if self.tracking_uri.startswith("http") else (self.run_dir / "mlartifacts").resolve().as_uri(),
            tags={"mlflow.experimentKind": "custom_model_development"})  # the UI opens on its runs, not on GenAI traces
        if experiment_id is FAILED:
            return None, None
        parent = self._call("parent run", self.client.create_run, experiment_id, run_name=self.run_dir.name,
                            tags={"rst.kind": self.kind, "rst.run_dir": str(self.run_dir.resolve()),
                                  **{f"rst.version.{k}": v for k, v in package_versions().items()}})
        if parent is FAILED:
            return experiment_id, None
        parent_id = parent.info.run_id
        self._call("parent artifacts", self.client.log_artifact, parent_id, str(self.run_dir / f"{self.kind}.yaml"))
        self._call("parent artifacts", self.client.log_dict, parent_id, self.settings, f"resolved_{self.kind}.json")
        saved.write_text(json.dumps({"tracking_uri": self.tracking_uri, "experiment_id": experiment_id,
                                     "parent_run_id": parent_id, "missed": {}}))
        return experiment_id, parent_id

    # -- trial runs ----------------------------------------------------------------------------
    def _trial_run(self, trial) -> str | None:
        number = trial.config["optuna_trial"]
        if number in self._runs or self.parent_id is None:
            return self._runs.get(number)
        run = self._call("trial run", self.client.create_run, self.experiment_id, run_name=trial.config["label"][:250],
                         tags={"mlflow.parentRunId": self.parent_id, "rst.ray_trial_id": trial.trial_id,
                               "rst.optuna_trial": str(number),
                               **({"rst.baseline": trial.config["baseline"]} if trial.config["baseline"] else {}),
                               **({"rst.configuration": trial.config["configuration"]} if "configuration" in trial.config else {})})
        if run is FAILED:
            return None
        self._runs[number], self._logged_epochs[number] = run.info.run_id, 0
        params = [Param(k, v) for k, v in flat_params(trial.config).items()]
        self._call("trial params", self.client.log_batch, run.info.run_id, params=params)
        return run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        run_id = self._trial_run(trial)
        if run_id is not None:  # a resumed trial: its Ray trial id may be new
            self._call("trial tags", self.client.set_tag, run_id, "rst.ray_trial_id", trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        number = trial.config["optuna_trial"]
        self._history.setdefault(number, {})[int(result["epoch"])] = {k: result[k] for k in EPOCH_METRICS if k in result}
        run_id = self._trial_run(trial)
        if run_id is None:
            self._missed["epoch metrics"] += 1
            return
        if number not in self._logged_epochs:  # a run of an earlier driver: its epochs are logged already
            logged = self._call("run lookup", self.client.get_metric_history, run_id, "val_accuracy")
            self._logged_epochs[number] = max((m.step for m in logged), default=0) if logged is not FAILED else 0
        epoch = int(result["epoch"])
        if epoch <= self._logged_epochs[number]:
            return
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), stamp, epoch) for k in EPOCH_METRICS if k != "epoch" and k in result]
        if self._call("epoch metrics", self.client.log_batch, run_id, metrics=metrics) is not FAILED:
            self._logged_epochs[number] = epoch

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end_trial(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end_trial(trial)

    def on_experiment_end(self, trials, **info):
        self.save_missed()

    def save_missed(self) -> None:
        """Add what this tracker could not log to the search's record of it."""
        saved = self.run_dir / TRACKING_FILE
        if saved.exists() and self._missed:
            state = json.loads(saved.read_text())
            state["missed"] = dict(Counter(state.get("missed", {})) + self._missed)
            saved.write_text(json.dumps(state))
            self._missed.clear()

    def _end_trial(self, trial) -> None:
        run_id = self._trial_run(trial)
        if run_id is None:
            return
        number = trial.config["optuna_trial"]
        history = [metrics for _, metrics in sorted(self._history.get(number, {}).items())]
        if len(history) < (history[-1]["epoch"] if history else 0):  # resumed: earlier epochs are in MLflow
            history = self._history_from_mlflow(run_id) or history
        if history:
            with tempfile.TemporaryDirectory() as folder:
                for name, draw in (("schedule.png", plot_schedule), ("learning_curves.png", plot_learning_curves)):
                    draw(trial.config, history, Path(folder) / name, self.epochs)
                    self._call("trial artifacts", self.client.log_artifact, run_id, str(Path(folder) / name))
        trials = self.study.get_trials(deepcopy=False)
        if number < len(trials):
            self._set_status(run_id, trials[number].state.name, trials[number].user_attrs.get("state_reason"))

    def _history_from_mlflow(self, run_id: str) -> list[dict[str, float]]:
        series = {k: self._call("run lookup", self.client.get_metric_history, run_id, k)
                  for k in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "propagations", "cost_ratio")}
        series = {k: [] if v is FAILED else v for k, v in series.items()}
        epochs = sorted({m.step for m in series["val_accuracy"]})
        by_key = {k: {m.step: m.value for m in v} for k, v in series.items()}
        return [{"epoch": e, **{k: by_key[k].get(e, float("nan")) for k in by_key}} for e in epochs]

    def _set_status(self, run_id: str, state: str, reason: str | None) -> None:
        """Mirror an Optuna trial state (and its reason) on the trial's run; unfinished ones are left."""
        if state not in STATUS:
            return
        tags = [RunTag("rst.state", state)] + ([RunTag("rst.state_reason", reason)] if reason else [])
        self._call("trial status", self.client.log_batch, run_id, tags=tags)
        self._call("trial status", self.client.set_terminated, run_id, status=STATUS[state])

    # -- the end of the search -----------------------------------------------------------------
    def finish(self, report: Any, report_files: list[Path], checkpoints: dict[str, tune.Checkpoint],
               interrupted: bool) -> str | None:
        """Close every trial run from the report's rows, log the report files to the parent and, for a
        search, tag the front and log its weights. Returns what the whole run could not log, if anything."""
        self.setup()
        if self.parent_id is not None:
            self._finish(report, report_files, checkpoints, interrupted)
        self.save_missed()
        saved = self.run_dir / TRACKING_FILE
        missed = json.loads(saved.read_text())["missed"] if saved.exists() else dict(self._missed)
        if missed:
            return f"not logged to MLflow at {self.tracking_uri}: " + ", ".join(f"{n} {k}" for k, n in sorted(missed.items()))
        return None

    def _finish(self, report: Any, report_files: list[Path], checkpoints: dict[str, tune.Checkpoint],
                interrupted: bool) -> None:
        for row in report.trials:
            run_id = self._runs.get(row.number)
            if run_id is not None:
                self._set_status(run_id, row.state, row.reason)
        for path in report_files:
            self._call("parent artifacts", self.client.log_artifact, self.parent_id, str(path))
        if isinstance(report, ParetoReport):
            self._finish_front(report, checkpoints)
        self._call("parent status", self.client.set_terminated, self.parent_id,
                   status=RunStatus.to_string(RunStatus.KILLED if interrupted else RunStatus.FINISHED))

    def _finish_front(self, report: ParetoReport, checkpoints: dict[str, tune.Checkpoint]) -> None:
        front = {row.number for row in report.front}
        for row in report.trials:
            run_id = self._runs.get(row.number)
            if run_id is None:
                continue
            self._call("trial tags", self.client.set_tag, run_id, "rst.pareto", str(row.number in front).lower())
            checkpoint = checkpoints.get(row.ray_trial_id)
            if row.number in front and checkpoint is not None:
                self._log_weights(run_id, checkpoint)
        self._call("parent artifacts", self.client.log_text, self.parent_id, report.table(), "pareto.txt")
        metrics = [Metric("hypervolume", report.hypervolume, int(time.time() * 1000), 0)] if report.hypervolume is not None else []
        self._call("parent summary", self.client.log_batch, self.parent_id, metrics=metrics,
                   tags=[RunTag("rst.pareto_size", str(len(report.front)))])

    def _log_weights(self, run_id: str, checkpoint: tune.Checkpoint) -> None:
        import torch

        from rst_tune.search.trainable import CHECKPOINT_FILE

        with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as out:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["model"]
            torch.save(state, Path(out) / "model_state_dict.pt")
            self._call("pareto weights", self.client.log_artifact, run_id, str(Path(out) / "model_state_dict.pt"), "model")


def plot_schedule(config: dict[str, Any], history: list[dict[str, float]], path: Path, epochs: int) -> None:
    """p(t) of the trial's schedule, with the realised SAM fraction of every epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = config["train"]["schedule"]
    schedule = make_schedule(spec["name"], **spec["params"])
    xs = [i / 400 for i in range(401)]
    # the counters are cumulative: steps = propagations / cost_ratio, SAM steps = propagations − steps
    steps = [0.0] + [h["propagations"] / h["cost_ratio"] for h in history]
    sam = [0.0] + [h["propagations"] - s for h, s in zip(history, steps[1:])]
    fraction = [(sam[i + 1] - sam[i]) / (steps[i + 1] - steps[i]) for i in range(len(history))]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.plot([x * epochs for x in xs], [schedule(x) for x in xs], color="tab:blue", label=f"p(t) = {schedule}")
    ax.stairs(fraction, [h["epoch"] - 1 for h in history[:1]] + [h["epoch"] for h in history], color="tab:red",
              label="realised SAM fraction per epoch")
    ax.set(xlabel="epoch", ylabel="probability of a SAM step", ylim=(-0.05, 1.05), xlim=(0, epochs))
    ax.set_title(f"p̄ = {schedule.mean():.3f}, expected cost {schedule.expected_cost():.3f}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_learning_curves(config: dict[str, Any], history: list[dict[str, float]], path: Path, epochs: int) -> None:
    """Loss and accuracy per epoch, training and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epoch = [h["epoch"] for h in history]
    fig, (loss, accuracy) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=110)
    for ax, key in ((loss, "loss"), (accuracy, "accuracy")):
        ax.plot(epoch, [h[f"train_{key}"] for h in history], marker=".", label="train")
        ax.plot(epoch, [h[f"val_{key}"] for h in history], marker=".", label="validation")
        ax.set(xlabel="epoch", ylabel=key, xlim=(0.5, epochs + 0.5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(config["label"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
