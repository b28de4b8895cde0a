"""Selection and confirmation: the test part cannot steer a search; the seed-confirmed front trains the
points it names × k fresh seeds once each, resumes after SIGKILL, and its figures are its Ray results'."""

import json
import math
import statistics
from dataclasses import replace

import numpy as np
import optuna
import pytest
import yaml
from conftest import confirmation_row, kill_mid_run, optuna_states, rst_tune_process, write_cifar10
from mlflow import MlflowClient
from ray.tune import ExperimentAnalysis
from scipy import stats as scipy_stats

from rst_tune.config import ConfigError
from rst_tune.search import parse_spec, read_run, run_search
from rst_tune.search._record import trial_rows
from rst_tune.search._runner import read_search_report
from rst_tune.study._confirm import candidates, confirmation_settings, confirmed_points
from rst_tune.study._sequential import DONE, next_seed
from rst_tune.study._spec import parse_study
from rst_tune.study._stats import paired

SPACE = {
    "schedule": {"constant": {"p": {"low": 0.0, "high": 1.0}}},
    "rho": {"low": 0.01, "high": 0.3, "log": True},
}


@pytest.mark.slow
def test_the_test_part_cannot_steer_a_search(local_ray, tmp_path):
    """The same search, one trial at a time, on data whose test labels are permuted between the runs:
    the same Optuna values and trial configurations, while the recorded test accuracies differ."""
    labels = write_cifar10(tmp_path / "a", n_per_batch=40)["test_batch"][1]
    write_cifar10(tmp_path / "b", n_per_batch=40, test_labels=np.random.default_rng(1).permutation(labels))
    outcomes = []
    for data in ("a", "b"):
        values = {
            "name": "steer",
            "train": {
                "dataset": "cifar10",
                "data_dir": str(tmp_path / data),
                "val_size": 40,
                "model": "digits_cnn",
                "model_params": {"width": 4},
                "epochs": 2,
                "batch_size": 32,
                "device": "cpu",
            },
            "space": SPACE,
            "num_samples": 4,
            "max_concurrent": 1,
            "seed": 3,
            "confirm": {"seeds": 0},
        }
        run_search(parse_spec(values), tmp_path / f"run-{data}", out=lambda line: None)
        study = optuna.load_study(study_name="steer", storage=f"sqlite:///{tmp_path}/run-{data}/optuna.db")
        trained = [{k: v for k, v in t.user_attrs["train"].items() if k != "data_dir"} for t in study.trials]
        outcomes.append(
            [
                (t.values, t.params, train, t.user_attrs["test_accuracy"])
                for t, train in zip(study.trials, trained)
            ]
        )
    first, second = outcomes
    assert [o[:3] for o in first] == [o[:3] for o in second]
    assert [o[3] for o in first] != [o[3] for o in second]  # the test part did change


def test_a_search_refuses_val_size_zero_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.val_size: a search needs validation data"):
        parse_spec({"train": {"val_size": 0}, "space": SPACE})
    with pytest.raises(ConfigError, match=r"space\.val_size: a search needs validation data"):
        parse_spec({"space": {**SPACE, "val_size": {"low": 0, "high": 100, "type": "int"}}})


def test_paired_interval_matches_closed_form_float64():
    a, b = [0.91, 0.935, 0.902, 0.948], [0.88, 0.92, 0.871, 0.93]
    d = [x - y for x, y in zip(a, b)]
    mean = math.fsum(d) / 4
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / 3)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3) · sd / √4
    result = paired(a, b)
    assert result.difference == pytest.approx(mean, abs=1e-15)
    assert (result.ci_low, result.ci_high) == (
        pytest.approx(mean - half, rel=1e-12),
        pytest.approx(mean + half, rel=1e-12),
    )
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(mean / (sd / 2), 3), rel=1e-10)


def test_the_confirmed_front_drops_a_point_only_on_a_paired_interval_above_zero():
    """Trial 2 costs more than trial 1 and is less accurate at every seed (paired interval above zero):
    it leaves the front. Trial 3 is cheaper than 1 and less accurate: it stays. Trial 4 is as costly as
    1 and less accurate on average, but not at every seed by a margin the interval excludes: it stays."""
    accuracies = {
        "trial 1: a": [0.80, 0.82, 0.81],
        "trial 2: b": [0.78, 0.79, 0.785],
        "trial 3: c": [0.70, 0.71, 0.69],
        "trial 4: d": [0.79, 0.83, 0.80],
    }
    costs = {"trial 1: a": 15, "trial 2: b": 18, "trial 3: c": 10, "trial 4: d": 15}
    rows = [
        confirmation_row(n, label, k, value, costs[label])
        for n, (label, values) in enumerate(accuracies.items())
        for k, value in enumerate(values)
    ]
    points = {point.trial: point for point in confirmed_points(rows, "propagations")}
    assert {n: p.on_front for n, p in points.items()} == {1: True, 2: False, 3: True, 4: True}
    assert points[2].beaten_by == 1 and points[1].beaten_by is None
    a = accuracies["trial 1: a"]
    half = scipy_stats.t.ppf(0.975, 2) * statistics.stdev(a) / math.sqrt(3)
    assert points[1].val_accuracy_mean == pytest.approx(statistics.fmean(a), abs=1e-15)
    assert points[1].val_accuracy_ci == pytest.approx(
        (statistics.fmean(a) - half, statistics.fmean(a) + half)
    )
    assert points[1].test_accuracy_mean == pytest.approx(statistics.fmean(a) - 0.01)
    assert (points[1].seeds, points[1].label, points[1].propagations_mean) == (3, "a", 15)


def _ray_results(folder) -> list[dict]:
    return [trial.last_result for trial in ExperimentAnalysis(str((folder / "trials").resolve())).trials]


def test_a_confirmed_point_names_its_search_trial_from_its_record():
    """The source trial is a field of each confirmation trial's record, whatever its label says; a
    confirmation begun before the field existed is read from its "trial N: " label."""
    rows = [
        replace(row, record=replace(row.record, source_trial=source))
        for source, label, values in ((7, "a", [0.80, 0.82, 0.81]), (9, "b", [0.70, 0.72, 0.71]))
        for row in (confirmation_row(len(values) * source + k, label, k, v, 10) for k, v in enumerate(values))
    ]
    points = {point.trial: point for point in confirmed_points(rows, "propagations")}
    assert {n: (p.label, p.on_front, p.beaten_by) for n, p in points.items()} == {
        7: ("a", True, None),
        9: ("b", False, 7),
    }
    legacy = confirmed_points([confirmation_row(0, "trial 4: x", 0, 0.5, 10)], "propagations")
    assert [(p.trial, p.label) for p in legacy] == [(4, "x")]
    searched = [confirmation_row(7, "constant(p=0.5)", 0, 0.8, 10)]  # search trial 7
    settings = parse_study(confirmation_settings(parse_spec({"space": SPACE}), searched, set()))
    assert settings.source_trial(0) == 7 and settings.labels() == ["trial 7: constant(p=0.5)"]


@pytest.mark.slow
def test_sequential_confirmation_trains_each_point_and_seed_once_and_resumes_after_sigkill(tmp_path):
    """Confirmation (sequential, the default) killed mid-way and resumed: every named point has two or
    three fresh seeds, the first ones, no (point, seed) trained twice, and the seeds stop where the
    rule says the front is decided; the intervals are those of the Ray results."""
    path = tmp_path / "space.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "confirmed",
                "train": {"epochs": 3, "batch_size": 128, "device": "cpu"},
                "space": SPACE,
                "num_samples": 3,
                "seed": 4,
                "confirm": {"seeds": 3, "margin": 0.0, "max_points": 1},
            }
        )
    )
    run_dir = tmp_path / "runs" / "confirmed"
    first = rst_tune_process("search", "--space", str(path), "--results-dir", str(tmp_path / "runs"))
    kill_mid_run(first, run_dir / "confirm" / "optuna.db", complete=2, timeout=400)
    assert 2 <= optuna_states(run_dir / "confirm" / "optuna.db").count("COMPLETE") < 6  # killed mid-way

    second = rst_tune_process("search", "--resume", str(run_dir))
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    assert "Confirmed front" in output

    spec = read_run(run_dir)
    report = read_search_report(run_dir)  # not rewritten: pareto.json keeps the confirmed points
    named = candidates(report, spec.confirm.margin, spec.confirm.max_points)
    assert {row.baseline for row in named} >= {"SGD", "SAM"}
    confirmation = yaml.safe_load((run_dir / "confirm" / "study.yaml").read_text())
    first_seed = confirmation["seed"]
    fresh = {first_seed + k for k in range(3)}
    assert fresh.isdisjoint(row.seed for row in report.trials)  # none of the seeds that selected them
    results = _ray_results(run_dir / "confirm")
    trained = sorted((r["config"]["configuration"], r["config"]["train"]["seed"]) for r in results)
    labels = [f"trial {row.number}: {row.label}" for row in named]
    assert len(trained) == len(set(trained))  # no (point, seed) twice
    for label in labels:  # the first two fresh seeds, then the third only where undecided
        seeds = sorted(seed for name, seed in trained if name == label)
        assert seeds in ([first_seed, first_seed + 1], [first_seed, first_seed + 1, first_seed + 2])
    confirm_rows = trial_rows(
        optuna.load_study(study_name="confirmed-confirm", storage=f"sqlite:///{run_dir}/confirm/optuna.db")
    )
    assert next_seed(confirm_rows, labels, 3, "propagations", 0.95) == DONE
    for row, label in zip(named, labels):  # the same training settings as the trial it confirms
        settings = {r["config"]["train"]["rho"] for r in results if r["config"]["configuration"] == label}
        assert settings == {row.record.train.rho}
    assert all(r["epoch"] == 3 for r in results)

    confirmed = {
        point["trial"]: point for point in json.loads((run_dir / "pareto.json").read_text())["confirmed"]
    }
    assert set(confirmed) == {row.number for row in named}
    for row, label in zip(named, labels):
        mine = [r for r in results if r["config"]["configuration"] == label]
        val = [r["val_accuracy"] for r in mine]
        half = scipy_stats.t.ppf(0.975, len(val) - 1) * statistics.stdev(val) / math.sqrt(len(val))
        point = confirmed[row.number]
        assert point["seeds"] == len(val)
        assert point["val_accuracy_mean"] == pytest.approx(statistics.fmean(val), abs=1e-12)
        if half > 0:
            assert point["val_accuracy_ci"] == pytest.approx(
                [statistics.fmean(val) - half, statistics.fmean(val) + half]
            )
        test = [r["test_accuracy"] for r in mine]
        assert point["test_accuracy_mean"] == pytest.approx(statistics.fmean(test), abs=1e-12)
        assert point["cost_ratio_mean"] == pytest.approx(statistics.fmean(r["cost_ratio"] for r in mine))
    assert all(isinstance(point["on_front"], bool) for point in confirmed.values())
    front = json.loads((run_dir / "pareto.json").read_text())["front"]
    assert all(
        {"val_accuracy", "test_accuracy", "propagations", "cost_ratio", "device_seconds"} <= set(entry)
        for entry in front
    )

    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("confirmed").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags and "rst.configuration" in r.data.tags]
    assert sorted((r.data.tags["rst.configuration"], r.data.params["train.seed"]) for r in children) == [
        (label, str(seed)) for label, seed in trained
    ]
    assert all(r.info.status == "FINISHED" for r in runs)
