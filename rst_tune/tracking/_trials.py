"""A trial's MLflow run: its parameters with plain names, its final status, and its epochs read back."""

from __future__ import annotations

from typing import Any

from mlflow.entities import RunTag

from rst_tune._train import EPOCH_METRICS, METRICS, EpochMetrics
from rst_tune.config import method_reads
from rst_tune.search._record import TrialRecord
from rst_tune.tracking._client import FAILED, GuardedClient

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}  # Optuna state -> MLflow status


def flat_params(record: TrialRecord) -> dict[str, str]:
    """A trial's MLflow parameters, named as in its search file: its searched values as Optuna and
    pareto.json name them (`TrialRecord.params`: `rho`, `schedule.linear.tilt`, `grst_weight.on`), and
    the training settings its method reads at their path in a `train:` section (`train.rho`,
    `train.schedule.params.p_start`, `train.method.params.k`), the method's own defaults filled in."""
    method = record.train.method.name
    train = {
        **{k: v for k, v in record.train.model_dump().items() if method_reads(method, k)},
        "method": {"name": method, "params": record.train.method.settings()},
    }
    return {
        **{k: str(v) for k, v in record.params.items()},
        **{f"train.{k}": str(v) for k, v in _dotted(train).items()},
        "expected_cost": str(record.expected_cost),
    }


def _dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one, their keys joined by dots; an empty mapping is left out."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_status(mlflow: GuardedClient, run_id: str, state: str, reason: str | None) -> None:
    """Mirror an Optuna trial state (and its reason) on the trial's run; unfinished ones are left."""
    if state not in STATUS:
        return
    tags = [RunTag("rst.state", state)] + ([RunTag("rst.state_reason", reason)] if reason else [])
    mlflow.call("trial status", "log_batch", run_id, tags=tags)
    mlflow.call("trial status", "set_terminated", run_id, status=STATUS[state])


def logged_history(mlflow: GuardedClient, run_id: str) -> list[EpochMetrics]:
    """The epochs a trial's run holds (an earlier driver logged them), in order; [] if unreadable."""
    series = {
        name: mlflow.call("run lookup", "get_metric_history", run_id, name)
        for name in METRICS
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
        if all(name in values for name in EPOCH_METRICS)
    ]
