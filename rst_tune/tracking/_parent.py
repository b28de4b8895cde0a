"""The parent MLflow run of a search or study: opened, or found again on resume, when the run starts;
closed with the report when it ends."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mlflow.entities import Metric, RunStatus
from ray import tune

from rst_tune.search._folder import RunFolder
from rst_tune.search._record import TrialRow
from rst_tune.search._runner import Report
from rst_tune.search._settings import RunSettings
from rst_tune.search._trainable import saved_weights
from rst_tune.tracking._client import FAILED, GuardedClient
from rst_tune.tracking._record import TrackingRecord
from rst_tune.tracking._trials import set_status

PACKAGES = ("rst-tune", "torch", "ray", "optuna", "mlflow")
TRIALS_VIEW = "rst-trials"
"""The id of the saved runs-table view (MLflow 3.17's "Views" menu) each experiment gets and `rst-tune ui`
opens: `#/experiments/ID/runs?viewStateShareKey=rst-trials`."""
TRIALS_VIEW_TAG = f"mlflow.sharedViewState.{TRIALS_VIEW}"
VIEW_METRICS = ("val_accuracy", "test_accuracy", "cost_ratio", "device_seconds")


def trials_view() -> str:
    """The trials view, as the experiment tag's value: a metric sort lists the trial runs flat, not nested
    under the parent's collapsed row, best val_accuracy first; the columns are `VIEW_METRICS`."""
    columns = [f"metrics.`{name}`" for name in VIEW_METRICS]
    state = {
        "orderByKey": columns[0],
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", "duration", *columns],
    }
    now = int(time.time() * 1000)
    return json.dumps({"name": "Trials", "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def open_parent(
    mlflow: GuardedClient, folder: RunFolder, settings: RunSettings, experiment: str
) -> TrackingRecord | None:
    """The run's parent run, marked RUNNING again if the folder's record names one in this store,
    else created in `experiment` (created too if need be) with the run's settings; None if MLflow
    could not be reached."""
    record = TrackingRecord.load(folder)
    if record is not None and record.tracking_uri == mlflow.tracking_uri:
        mlflow.call("parent status", "update_run", record.parent_run_id, status="RUNNING")
        return record
    found = mlflow.call("experiment", "get_experiment_by_name", experiment)
    if found is FAILED:
        return None
    local = not mlflow.tracking_uri.startswith("http")
    # the kind is for MLflow UIs that read it; 3.17 takes its GenAI or model-training mode from the URL
    # (`rst-tune ui` sets it)
    experiment_id = (
        found.experiment_id
        if found
        else mlflow.call(
            "experiment",
            "create_experiment",
            experiment,
            artifact_location=folder.artifacts_dir.resolve().as_uri() if local else None,
            tags={"mlflow.experimentKind": "custom_model_development", TRIALS_VIEW_TAG: trials_view()},
        )
    )
    if experiment_id is FAILED:
        return None
    tags = {"rst.kind": folder.kind, "rst.run_dir": str(folder.path.resolve())}
    tags |= {f"rst.version.{k}": v for k, v in package_versions().items()}
    parent = mlflow.call("parent run", "create_run", experiment_id, run_name=folder.name, tags=tags)
    if parent is FAILED:
        return None
    record = TrackingRecord(mlflow.tracking_uri, experiment_id, parent.info.run_id)
    mlflow.call("parent artifacts", "log_artifact", record.parent_run_id, str(folder.spec_file))
    resolved = settings.model_dump()
    mlflow.call(
        "parent artifacts", "log_dict", record.parent_run_id, resolved, f"resolved_{folder.kind}.json"
    )
    record.save(folder)
    return record


def child_runs(mlflow: GuardedClient, record: TrackingRecord) -> dict[int, str]:
    """The trial runs under the parent run, by Optuna trial number."""
    children = mlflow.call(
        "run lookup",
        "search_runs",
        [record.experiment_id],
        f"tags.`mlflow.parentRunId` = '{record.parent_run_id}'",
        max_results=50_000,
    )
    return (
        {} if children is FAILED else {int(r.data.tags["rst.optuna_trial"]): r.info.run_id for r in children}
    )


def close_parent(
    mlflow: GuardedClient,
    record: TrackingRecord,
    folder: RunFolder,
    report: Report,
    checkpoints: dict[str, tune.Checkpoint],
    interrupted: bool,
) -> None:
    """Close every trial run from the report's rows, log the report's files and figures to the parent
    and, when the report has a front, tag it and log its weights; then close the parent."""
    runs = child_runs(mlflow, record)
    for row in report.trials:
        if row.number in runs:
            set_status(mlflow, runs[row.number], row.state, row.reason)
    _log_files(mlflow, record, folder, report)
    if report.front is not None:
        _tag_front(mlflow, record, runs, report.front, report.trials, checkpoints)
    stamp = int(time.time() * 1000)
    metrics = [Metric(name, value, stamp, 0) for name, value in report.summary_metrics().items()]
    if metrics:
        mlflow.call("parent summary", "log_batch", record.parent_run_id, metrics=metrics)
    status = RunStatus.to_string(RunStatus.KILLED if interrupted else RunStatus.FINISHED)
    mlflow.call("parent status", "set_terminated", record.parent_run_id, status=status)


def _log_files(mlflow: GuardedClient, record: TrackingRecord, folder: RunFolder, report: Report) -> None:
    for name in report.files:
        mlflow.call("parent artifacts", "log_artifact", record.parent_run_id, str(folder.path / name))


def log_report_files(folder: RunFolder, report: Report, out: Callable[[str], None] = print) -> None:
    """Log the report's files again to the run's parent run, after they were rewritten (a search's,
    with its confirmed front); nothing when the run was not tracked."""
    record = TrackingRecord.load(folder)
    if record is not None:
        _log_files(GuardedClient(record.tracking_uri, out), record, folder, report)


def _tag_front(
    mlflow: GuardedClient,
    record: TrackingRecord,
    runs: dict[int, str],
    front: list[TrialRow],
    trials: list[TrialRow],
    checkpoints: dict[str, tune.Checkpoint],
) -> None:
    on_front = {row.number for row in front}
    for row in trials:
        if row.number not in runs:
            continue
        mlflow.call(
            "trial tags", "set_tag", runs[row.number], "rst.pareto", str(row.number in on_front).lower()
        )
        checkpoint = checkpoints.get(row.ray_trial_id)
        if row.number in on_front and checkpoint is not None:
            _log_weights(mlflow, runs[row.number], checkpoint)
    mlflow.call("parent summary", "set_tag", record.parent_run_id, "rst.pareto_size", str(len(front)))


def _log_weights(mlflow: GuardedClient, run_id: str, checkpoint: tune.Checkpoint) -> None:
    import torch

    with tempfile.TemporaryDirectory() as out:
        torch.save(saved_weights(checkpoint), Path(out) / "model_state_dict.pt")
        mlflow.call("pareto weights", "log_artifact", run_id, str(Path(out) / "model_state_dict.pt"), "model")
