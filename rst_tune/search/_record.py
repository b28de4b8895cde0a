"""The trial record: what a trial trains (`TrialRecord`) and what it ended as (`TrialRow`).

A record travels from the define-by-run function (search) or the plan (study) to Ray as the trial's
config, to Optuna as user attributes, and back from either; each way has one conversion here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from rst_tune._train import EPOCH_METRICS, EpochMetrics
from rst_tune.config import ConfigError, TrainConfig, load_config

_PLAIN_FIELDS = ("label", "baseline", "configuration", "seed_index")  # every field but train and the number


@dataclass(frozen=True)
class TrialRecord:
    """What one trial trains: its whole training config (seed included), a readable label, its
    baseline name ("SGD", "SAM", "ASAM", or None) and its Optuna trial number. In a search, also its
    searched values (`params`) under their one name, which Optuna, Ray, MLflow and pareto.json share:
    the key's path under the search file's `space` (`rho`, `schedule.linear.tilt`, `grst_weight.on`;
    `schedule.mean`, p̄, is one parameter for every family). In a study, also the configuration it is
    a seed of and the index of that seed."""

    train: TrainConfig
    label: str
    optuna_trial: int
    baseline: str | None = None
    configuration: str | None = None
    seed_index: int | None = None
    source_trial: int | None = None  # in a search's confirmation: the search trial it trains again
    params: dict[str, Any] = field(default_factory=dict)  # a search's: Optuna's params of the trial

    @property
    def expected_cost(self) -> float:
        """Cost per step in SGD steps, known before training (RST: 1 + p̄; an estimate for AE-SAM)."""
        return self.train.expected_cost()

    def to_config(self) -> dict[str, Any]:
        """The Ray trial config."""
        return {
            "train": self.train.model_dump(),
            "expected_cost": self.expected_cost,
            "optuna_trial": self.optuna_trial,
            "source_trial": self.source_trial,
            "params": self.params,
            **{name: getattr(self, name) for name in _PLAIN_FIELDS},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialRecord:
        return cls(
            load_config(config["train"]),
            optuna_trial=config["optuna_trial"],
            source_trial=config.get("source_trial"),
            params=config.get("params", {}),
            **{name: config[name] for name in _PLAIN_FIELDS},
        )

    def to_user_attrs(self) -> dict[str, Any]:
        """The Optuna user attributes (the trial number and params are Optuna's own)."""
        return {
            "train": self.train.model_dump(),
            "expected_cost": self.expected_cost,
            "seed": self.train.seed,
            "source_trial": self.source_trial,
            **{name: getattr(self, name) for name in _PLAIN_FIELDS},
        }

    @classmethod
    def from_user_attrs(cls, number: int, attrs: dict[str, Any], params: dict[str, Any]) -> TrialRecord:
        return cls(
            load_config(attrs["train"]),
            optuna_trial=number,
            source_trial=attrs.get("source_trial"),  # absent from trials recorded before 2026-12-06
            params=params,
            **{name: attrs[name] for name in _PLAIN_FIELDS},
        )


@dataclass(frozen=True)
class TrialRow:
    """One Optuna trial as it ended: its state (COMPLETE, PRUNED, FAIL, RUNNING...), its record (None if
    it was never configured), its last epoch's metrics (None if it trained none), its Ray trial id, the
    reason for a PRUNED or FAIL state, and its Optuna parameters."""

    number: int
    state: str
    record: TrialRecord | None
    metrics: EpochMetrics | None
    ray_trial_id: str | None
    reason: str | None
    params: dict[str, Any]

    @classmethod
    def from_optuna(cls, trial: optuna.trial.FrozenTrial) -> TrialRow:
        attrs = trial.user_attrs
        if "ray_trial_id" in attrs and "train" not in attrs:
            raise ConfigError(
                f"Optuna trial {trial.number} has no trial record: the run was made by an older "
                "rst-tune; start it again"
            )
        # a driver killed while writing a record leaves part of it: the trial counts as never configured
        configured = all(name in attrs for name in ("train", *_PLAIN_FIELDS))
        record = TrialRecord.from_user_attrs(trial.number, attrs, trial.params) if configured else None
        metrics = EpochMetrics.from_mapping(attrs) if all(name in attrs for name in EPOCH_METRICS) else None
        return cls(
            trial.number,
            trial.state.name,
            record,
            metrics,
            attrs.get("ray_trial_id"),
            attrs.get("state_reason"),
            trial.params,
        )

    @property
    def label(self) -> str:
        return self.record.label if self.record else ""

    @property
    def baseline(self) -> str | None:
        return self.record.baseline if self.record else None

    @property
    def method(self) -> str | None:
        return self.record.train.method.name if self.record else None

    @property
    def configuration(self) -> str | None:
        return self.record.configuration if self.record else None

    @property
    def seed(self) -> int | None:
        return self.record.train.seed if self.record else None

    @property
    def expected_cost(self) -> float | None:
        return self.record.expected_cost if self.record else None

    @property
    def val_accuracy(self) -> float | None:
        return self.metrics.val_accuracy if self.metrics else None

    @property
    def cost_ratio(self) -> float | None:
        return self.metrics.cost_ratio if self.metrics else None

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.test_accuracy if self.metrics else None

    @property
    def propagations(self) -> float | None:
        return self.metrics.propagations if self.metrics else None

    @property
    def device_seconds(self) -> float | None:
        return self.metrics.device_seconds if self.metrics else None

    @property
    def grst_degree(self) -> float | None:
        return self.metrics.grst_degree if self.metrics else None

    @property
    def epochs(self) -> int | None:
        return int(self.metrics.epoch) if self.metrics else None

    def to_json(self) -> dict[str, Any]:
        """The row as pareto.json and study.json list it."""
        return {
            "number": self.number,
            "state": self.state,
            "label": self.label,
            "method": self.method,
            "baseline": self.baseline,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "cost_ratio": self.cost_ratio,
            "propagations": self.propagations,
            "device_seconds": self.device_seconds,
            "grst_degree": self.grst_degree,
            "expected_cost": self.expected_cost,
            "epochs": self.epochs,
            "seed": self.seed,
            "ray_trial_id": self.ray_trial_id,
            "reason": self.reason,
            "params": self.params,
            "train": self.record.train.model_dump() if self.record else None,
            "configuration": self.configuration,
        }


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """Every trial of a run's Optuna study, in order."""
    return [TrialRow.from_optuna(trial) for trial in study.get_trials(deepcopy=False)]
