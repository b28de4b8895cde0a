"""The trial record: one conversion each way to Ray's trial config and to Optuna's user attributes,
through a real Optuna SQLite study, and typed epoch metrics that carry their step counts."""

import json

import optuna
import pytest

from rst_tune._train import EPOCH_METRICS, EpochMetrics
from rst_tune.config import ConfigError, load_config
from rst_tune.search import TrialRecord, TrialRow
from rst_tune.search._record import trial_rows

RECORD = TrialRecord(
    load_config({"schedule": {"name": "step_up", "params": {"switch": 0.25}}, "rho": 0.1, "seed": 7}),
    "step_up(switch=0.25) · seed 7",
    4,
    None,
    configuration="step_up",
    seed_index=2,
)


def _metrics(**changes):
    values = dict(
        epoch=3,
        train_loss=0.5,
        train_accuracy=0.8,
        val_loss=0.6,
        val_accuracy=0.75,
        steps=30,
        sam_steps=12,
        propagations=42,
        expected_propagations=41.5,
        degree_sum=9.0,
        wall_s=2.0,
        devices=2.0,
        world_size=1,
    )
    return EpochMetrics.measured(**{**values, **changes})


def test_record_round_trips_through_the_ray_config_and_json():
    config = json.loads(json.dumps(RECORD.to_config()))  # Ray stores trial configs as JSON
    assert TrialRecord.from_config(config) == RECORD
    assert config["train"]["seed"] == 7 and config["configuration"] == "step_up"
    assert config["expected_cost"] == RECORD.expected_cost == 1.75  # step_up(0.25): p̄ = 0.75


def test_record_and_metrics_round_trip_through_optuna_user_attributes(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db")
    study = optuna.create_study(study_name="rows", storage=storage, directions=["maximize", "minimize"])
    trial = study.ask()
    for key, value in {**RECORD.to_user_attrs(), **_metrics(), "ray_trial_id": "abc"}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, [0.75, 42])
    row = TrialRow.from_optuna(optuna.load_study(study_name="rows", storage=storage).trials[0])
    assert row.record == TrialRecord(RECORD.train, RECORD.label, row.number, None, "step_up", 2)
    assert row.metrics == _metrics() and row.state == "COMPLETE" and row.ray_trial_id == "abc"
    assert (row.seed, row.expected_cost, row.propagations, row.epochs) == (7, 1.75, 42, 3)


def test_epoch_metrics_derive_their_ratios_from_the_counts():
    metrics = _metrics()
    assert metrics.cost_ratio == 42 / 30 and metrics.sam_fraction == 12 / 30
    assert metrics.acc_per_prop == pytest.approx(0.75 / (42 / 30), rel=1e-15)
    assert metrics.propagations == metrics.steps + metrics.sam_steps  # a SAM step is one more propagation
    assert metrics.grst_degree == 9.0 / 30 and metrics.device_seconds == 4.0
    assert tuple(metrics) == EPOCH_METRICS and dict(metrics)["steps"] == 30
    assert EpochMetrics.from_mapping({**metrics, "node_id": "x", "trial_id": "y"}) == metrics  # a Ray result
    with pytest.raises(KeyError):
        metrics["node_id"]


def test_a_study_without_trial_records_is_refused_with_a_reason(tmp_path):
    study = optuna.create_study(study_name="old", storage=f"sqlite:///{tmp_path}/study.db")
    trial = study.ask()
    trial.set_user_attr("ray_trial_id", "abc")  # trained, but written before trials had records
    study.tell(trial, 0.5)
    with pytest.raises(ConfigError, match="Optuna trial 0 has no trial record: the run was made by an older"):
        trial_rows(study)


def test_a_record_cut_short_by_a_killed_driver_reads_as_never_configured(tmp_path):
    """The attributes of a record are written one at a time: a driver SIGKILLed between two of them
    (seen in CI) leaves a RUNNING trial with part of its record, which must read as unconfigured."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db", study_name="s")
    trial = study.ask()
    attrs = RECORD.to_user_attrs()
    for key in list(attrs)[:4]:  # train, expected_cost, seed, label
        trial.set_user_attr(key, attrs[key])
    (row,) = trial_rows(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db"))
    assert row.state == "RUNNING" and row.record is None and row.label == ""
    for key in list(attrs)[4:]:
        trial.set_user_attr(key, attrs[key])
    (row,) = trial_rows(study)
    assert row.record == RECORD.__class__(**{**RECORD.__dict__, "optuna_trial": trial.number})
