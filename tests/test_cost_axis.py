"""One cost axis: the front, its plot, the budget, the schedulers, the sampler and the hypervolume
agree when epochs and batch_size are searched. Closed forms in float64, the budget on a real Optuna
SQLite study, and a search on a real local Ray."""

import itertools
import json
import sqlite3

import optuna
import pytest
from ray.tune.experiment import Trial

from rst_tune._train import EpochMetrics, load_data
from rst_tune.config import ConfigError, load_config
from rst_tune.search import hypervolume, parse_spec, run_search
from rst_tune.search._cost_axis import KEPT, CostAxis, compute
from rst_tune.search._pareto import pareto_front
from rst_tune.search._record import TrialRecord, TrialRow, trial_rows
from rst_tune.search._runner import read_search_report
from rst_tune.search._schedulers import build_scheduler, known_cost
from rst_tune.search._searcher import RSTSearch
from rst_tune.search._space import Coordinates
from rst_tune.study._confirm import confirmation_settings
from rst_tune.study._spec import parse_study


def _row(number: int, p: float, epochs: int, batch_size: int, train_size: int) -> TrialRow:
    """A trial of constant p ∈ {0, 1} as its counters would end: every step SGD or every step SAM."""
    train = load_config(
        {"epochs": epochs, "batch_size": batch_size, "schedule": {"name": "constant", "params": {"p": p}}}
    )
    steps = epochs * (train_size // batch_size)
    metrics = EpochMetrics.measured(
        steps=steps,
        sam_steps=int(p) * steps,
        propagations=(1 + p) * steps,
        val_accuracy=0.5 + 0.01 * number,
        degree_sum=p * steps,
        wall_s=1.0,
        devices=1,
        epoch=epochs,
        train_loss=0.1,
        train_accuracy=0.9,
        val_loss=0.2,
        expected_propagations=(1 + p) * steps,
        world_size=1,
    )
    return TrialRow(number, "COMPLETE", TrialRecord(train, f"t{number}", number), metrics, None, None, {})


def test_the_axis_in_closed_form():
    n, base_epochs, base_batch = 1000, 4, 100
    axis = CostAxis("propagations", base_epochs, base_batch, train_size=n)
    grid = list(itertools.product([0.0, 1.0], [2, 4, 8], [64, 100, 128]))
    rows = [_row(i, p, e, b, n) for i, (p, e, b) in enumerate(grid)]
    for row, (p, epochs, batch) in zip(rows, grid):
        examples = (n // batch) * batch  # an epoch drops its partial batch
        cost = (1 + p) * epochs * examples / (base_epochs * (n // base_batch) * base_batch)
        assert axis.cost_of(row) == pytest.approx(cost, rel=1e-12)  # the plot, the budget
        assert axis.known(row.record.train) == pytest.approx(cost, rel=1e-12)  # before training
        # the front's value: propagations over batches of 100, one factor from the cost for every trial
        assert axis.value(row) == pytest.approx((1 + p) * epochs * examples / base_batch, rel=1e-12)
        assert axis.value(row) / axis.cost_of(row) == pytest.approx(
            base_epochs * (n // base_batch), rel=1e-12
        )
        assert compute(row, "propagations") == pytest.approx(axis.value(row) * base_batch, rel=1e-12)
    sgd, sam = (rows[grid.index((p, base_epochs, base_batch))] for p in (0.0, 1.0))
    assert (axis.cost_of(sgd), axis.cost_of(sam)) == (1.0, 2.0)
    assert axis.value(sam) == sam.propagations  # at the spec's batch size, a trial's own propagations
    most = max((n // b) * b for b in (64, 100, 128))  # examples an epoch trains on, at most
    assert axis.reference(rows) == pytest.approx(2 * 8 * most / base_batch, rel=1e-12)  # SAM, dearest trial
    with pytest.raises(ValueError, match="batch size 64 differs from 100: the axis needs train_size"):
        CostAxis("propagations", base_epochs, base_batch).share(64)


SPACE = {
    "schedule": {"constant": {"p": {"choices": [0.0, 1.0]}}},
    "epochs": {"choices": [1, 2]},
    "batch_size": {"choices": [64, 128]},
}


def test_the_budget_bounds_a_trials_whole_cost(tmp_path):
    """SAM for one of two epochs costs what SGD for two does: within a budget of 1.5, which the cost
    per step (2) would exceed; SAM for two epochs (2) is never trained."""
    spec = parse_spec(
        {
            "name": "budget",
            "train": {"epochs": 2, "batch_size": 128, "device": "cpu"},
            "space": SPACE,
            "objective": "accuracy_under_budget",
            "budget": 1.5,
            "sampler": {"name": "random"},
            "baselines": False,
            "seed": 1,
        }
    )
    searcher = RSTSearch(spec, optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db"))
    n = load_data(spec.train_config()).size("train")
    assert searcher.study.user_attrs[KEPT] == {"epochs": 2, "batch_size": 128, "train_size": n}
    assert searcher.axis.train_size == n
    handed = [load_config(searcher.suggest(str(i))["train"]) for i in range(12)]
    costs = [searcher.axis.known(train) for train in handed]
    assert max(costs) <= 1.5
    assert any(train.schedule.params["p"] == 1.0 and train.epochs == 1 for train in handed)
    pruned = [t for t in searcher.study.get_trials() if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t.system_attrs["constraints:cost_over_budget"] > 0 for t in pruned)
    for trial in pruned:
        train = load_config(trial.user_attrs["train"])
        assert (train.schedule.params["p"], train.epochs) == (1.0, 2)
        assert trial.user_attrs["state_reason"].startswith(
            f"not trained: expected cost {searcher.axis.known(train):.3f} exceeds the budget 1.5"
        )
    # the sampler's price and admissibility are the same known cost
    coordinates = Coordinates(spec, searcher.axis)
    for trial in searcher.study.get_trials():
        assert coordinates.cost(trial.params) == searcher.axis.known(load_config(trial.user_attrs["train"]))
        assert coordinates.admissible(trial.params) == (trial.state != optuna.trial.TrialState.PRUNED)
    # the realised cost is the constraint: SAM for one epoch at batch 64 is within the budget
    first = next(i for i, train in enumerate(handed) if train.schedule.params["p"] == 1.0)
    train = handed[first]
    steps = train.epochs * (n // train.batch_size)
    searcher.on_trial_complete(
        str(first),
        {
            "epoch": train.epochs,
            "val_accuracy": 0.5,
            "propagations": 2.0 * steps,
            "cost_ratio": 2.0,
            "acc_per_prop": 0.25,
            "train_loss": 0.1,
            "val_loss": 0.2,
        },
    )
    told = next(t for t in searcher.study.get_trials() if t.user_attrs.get("ray_trial_id") == str(first))
    assert told.system_attrs["constraints:cost_over_budget"] == pytest.approx(
        2.0 * train.epochs / 2 * searcher.axis.share(train.batch_size) - 1.5, rel=1e-12
    )
    assert told.system_attrs["constraints:cost_over_budget"] <= 0


def test_the_search_wires_one_axis_and_refuses_what_it_cannot_price(tmp_path):
    values = {
        "name": "wired",
        "train": {"epochs": 2, "batch_size": 128, "device": "cpu"},
        "space": SPACE,
        "sampler": {"name": "known_cost"},
        "early_stopping": {"rule": "pareto_fair"},
    }
    spec = parse_spec(values)
    searcher = RSTSearch(spec, optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db"))
    assert searcher.study.sampler.space.axis is searcher.axis
    assert build_scheduler(spec, searcher.axis).axis is searcher.axis
    with pytest.raises(ConfigError, match=r"space\.val_size: every trial of a search trains .* same data"):
        parse_spec({**values, "space": {**SPACE, "val_size": {"low": 100, "high": 200, "type": "int"}}})


@pytest.mark.slow
def test_front_plot_scheduler_sampler_and_hypervolume_agree_with_epochs_and_batch_size_searched(
    local_ray, tmp_path
):
    values = {
        "name": "axis",
        "train": {"epochs": 2, "batch_size": 128, "device": "cpu"},
        "space": SPACE,
        "num_samples": 6,
        "max_concurrent": 2,
        "sampler": {"name": "known_cost", "startup_trials": 2},
        "early_stopping": {"rule": "none"},
        "seed": 5,
        "points_to_evaluate": [  # besides SGD and SAM at train's settings: each other epochs and batch size
            {"schedule": {"name": "constant", "params": {"p": 1.0}}, "epochs": 1, "batch_size": 64},
            {"schedule": {"name": "constant", "params": {"p": 0.0}}, "epochs": 2, "batch_size": 64},
        ],
    }
    spec = parse_spec(values)
    report = run_search(spec, tmp_path / "axis", out=lambda line: None)
    saved = json.loads((tmp_path / "axis" / "pareto.json").read_text())
    study = optuna.load_study(study_name="axis", storage=f"sqlite:///{tmp_path}/axis/optuna.db")
    n = load_data(spec.train_config()).size("train")
    axis = CostAxis("propagations", 2, 128, n)
    assert study.user_attrs[KEPT] == saved["axis"] == axis.to_json()
    rows = {row.number: row for row in trial_rows(study) if row.state == "COMPLETE"}
    assert len(rows) == 6
    assert {(r.record.train.epochs, r.record.train.batch_size) for r in rows.values()} >= {
        (2, 128),
        (1, 64),
        (2, 64),
    }
    coordinates = Coordinates(spec, axis)
    for entry in saved["trials"]:
        row = rows[entry["number"]]
        train = row.record.train
        examples = (n // train.batch_size) * train.batch_size
        cost = row.expected_cost * train.epochs * examples / (2 * (n // 128) * 128)
        trial = Trial("t", config={"train": train.model_dump()}, trial_id=str(row.number), stub=True)
        priced = {
            "plot": entry["cost"],
            "budget": axis.cost_of(row),
            "scheduler": known_cost(axis, trial, {"expected_cost": row.expected_cost}),
            "sampler": coordinates.cost(study.trials[row.number].params),
        }
        assert priced == pytest.approx(dict.fromkeys(priced, cost), rel=1e-12), priced
        # Optuna's objective is the front's value, one factor from the cost for every trial
        value = study.trials[row.number].values[1]
        assert value == pytest.approx(row.propagations * train.batch_size / 128, rel=1e-12)
        assert value / cost == pytest.approx(2 * (n // 128), rel=1e-12)
    # the front is the same read from the plot's x or from Optuna's values
    by_plot = {
        saved["trials"][i]["number"]
        for i in pareto_front([(t["val_accuracy"], t["cost"]) for t in saved["trials"]])
    }
    by_optuna = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    by_values = {by_optuna[i].number for i in pareto_front([(t.values[0], t.values[1]) for t in by_optuna])}
    assert {row["number"] for row in saved["front"]} == by_plot == by_values
    # the hypervolume, read in the plot's unit, and the reference point in propagations
    scale = 2 * (n // 128)
    front = [(t["val_accuracy"], t["cost"]) for t in saved["front"]]
    reference = saved["reference_point"]["propagations"]
    assert reference == pytest.approx(
        max(2 * r.metrics.steps * r.record.train.batch_size / 128 for r in rows.values())
    )
    assert saved["hypervolume"] == pytest.approx(
        hypervolume(front, (0.0, reference / scale)) / (reference / scale), rel=1e-12
    )
    assert read_search_report(tmp_path / "axis").to_json() == report.to_json() == saved
    # the confirmation trains each point at its own epochs and batch size
    points = list(rows.values())
    study_spec = parse_study(confirmation_settings(spec, points, set()))
    for index, row in enumerate(points):
        confirmed = study_spec.train_config_of(index)
        assert (confirmed.epochs, confirmed.batch_size) == (
            row.record.train.epochs,
            row.record.train.batch_size,
        )
    # a run begun before the axis was kept is not resumed in another unit
    with sqlite3.connect(tmp_path / "axis" / "optuna.db") as db:
        db.execute("DELETE FROM study_user_attributes WHERE key = ?", (KEPT,))
    with pytest.raises(ConfigError, match="begun by an older rst-tune, before its cost axis; start it again"):
        run_search(spec, tmp_path / "axis", resume=True, out=lambda line: None)
