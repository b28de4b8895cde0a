"""A trial's MLflow run: its parameters with plain names, its final status, and its epochs read back."""

from __future__ import annotations

from mlflow.entities import RunTag

from rst_tune.config import method_reads
from rst_tune.methods import METHODS
from rst_tune.search.record import TrialRecord
from rst_tune.tracking.client import FAILED, GuardedClient
from rst_tune.train import EPOCH_METRICS, METRICS, EpochMetrics

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}  # Optuna state -> MLflow status


def flat_params(record: TrialRecord) -> dict[str, str]:
    """A trial's settings with plain names: `method`, `method.k`, `schedule`, `schedule.p`, `rho`,
    `grst_weight`, ... (the schedule's keys only for the methods that draw from one)."""
    train, method = record.train.model_dump(), record.train.method
    drawn = METHODS[method.name].uses_schedule
    params = {
        "method": method.name,
        **{f"method.{k}": v for k, v in method.settings().items()},
        **({"schedule": train["schedule"]["name"]} if drawn else {}),
        **{f"schedule.{k}": v for k, v in train["schedule"]["params"].items() if drawn},
        **{f"model_params.{k}": v for k, v in train["model_params"].items()},
        **{
            k: ("off" if k == "grst_weight" and v is None else v)
            for k, v in train.items()
            if k not in ("method", "schedule", "model_params") and method_reads(method.name, k)
        },
        "expected_cost": record.expected_cost,
    }
    return {k: str(v) for k, v in params.items()}


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
