"""Searches on a real local Ray with a real Optuna SQLite study: the front against one computed by
hand from Ray's results, honest PRUNED and FAIL states, the cost budget, and resume after SIGKILL."""

import json
import math

import optuna
import pytest
import yaml
from conftest import kill_mid_run, rst_tune_process
from mlflow import MlflowClient
from optuna.trial import TrialState
from ray.tune import ExperimentAnalysis

from rst_tune.cli import main
from rst_tune.search import parse_spec, run_search
from rst_tune.search._space import trial_seed


def _space(**extra):
    return {
        "schedule": {
            "constant": {"p": {"low": 0.0, "high": 1.0}},
            "linear": {"p_start": {"low": 0.0, "high": 1.0}, "p_end": {"low": 0.0, "high": 1.0}},
        },
        "rho": {"low": 0.01, "high": 0.2, "log": True},
        **extra,
    }


def _ray_finals(run_dir):
    analysis = ExperimentAnalysis(str(run_dir / "trials"))
    return {trial.trial_id: trial for trial in analysis.trials}


def _study(run_dir, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir}/optuna.db")


def test_pareto_search_front_matches_one_computed_from_ray_results(local_ray, tmp_path, capsys):
    values = {
        "name": "e2e",
        "train": {"epochs": 2, "batch_size": 128, "device": "cpu"},
        "space": _space(),
        "num_samples": 5,
        "max_concurrent": 2,
        "seed": 3,
    }
    lines = []
    report = run_search(parse_spec(values), tmp_path / "e2e", out=lines.append)
    trials = _ray_finals(tmp_path / "e2e")
    assert len(trials) == 5 and all(t.status == "TERMINATED" for t in trials.values())
    finals = {tid: t.last_result for tid, t in trials.items()}
    by_hand = {
        tid
        for tid, r in finals.items()
        if not any(
            o["val_accuracy"] >= r["val_accuracy"]
            and o["propagations"] <= r["propagations"]
            and (o["val_accuracy"], o["propagations"]) != (r["val_accuracy"], r["propagations"])
            for o in finals.values()
        )
    }
    saved = json.loads((tmp_path / "e2e" / "pareto.json").read_text())
    assert {row["ray_trial_id"] for row in saved["front"]} == by_hand
    for row in saved["front"]:
        assert row["val_accuracy"] == finals[row["ray_trial_id"]]["val_accuracy"]
        assert row["propagations"] == finals[row["ray_trial_id"]]["propagations"]
    # hypervolume by hand: rectangles of the front sorted by accuracy, reference (0, 2 × steps)
    steps = finals[next(iter(by_hand))]["propagations"] / finals[next(iter(by_hand))]["cost_ratio"]
    reference = 2 * steps
    front = sorted((finals[t]["val_accuracy"], finals[t]["propagations"]) for t in by_hand)
    area = sum(
        (a - below) * (reference - c) for (a, c), below in zip(front, [0.0] + [a for a, _ in front[:-1]])
    )
    assert saved["reference_point"] == {"val_accuracy": 0.0, "propagations": round(reference)}
    assert saved["hypervolume"] == pytest.approx(area / reference, rel=1e-12)
    # baselines first, with their exact costs; each trial's seed derives from the search seed and trial
    study = _study(tmp_path / "e2e", "e2e")
    assert [t.user_attrs["baseline"] for t in study.trials[:2]] == ["SGD", "SAM"]
    assert [t.user_attrs["cost_ratio"] for t in study.trials[:2]] == [1.0, 2.0]
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        config = trials[t.user_attrs["ray_trial_id"]].config
        assert config["train"]["seed"] == t.user_attrs["seed"] == trial_seed(3, t.number)
        assert t.values == [
            finals[t.user_attrs["ray_trial_id"]]["val_accuracy"],
            finals[t.user_attrs["ray_trial_id"]]["propagations"],
        ]
    assert len(report.front) == len(by_hand)
    assert main(["pareto", str(tmp_path / "e2e"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == saved
    assert sum(line.startswith("[") for line in lines) == 5
    assert (tmp_path / "e2e" / "pareto.png").stat().st_size > 10_000
    assert len((tmp_path / "e2e" / "pareto.csv").read_text().splitlines()) == 1 + len(by_hand)


@pytest.mark.slow
def test_stopped_and_diverged_trials_are_pruned_and_failed_and_the_search_goes_on(local_ray, tmp_path):
    values = {
        "name": "states",
        "train": {"epochs": 3, "batch_size": 128, "device": "cpu"},
        "space": _space(lr=dict(choices=[0.05, 1.0e-5, 1.0e6])),
        "points_to_evaluate": [
            {"schedule": {"name": "constant", "params": {"p": 0.5}}, "lr": 1.0e-5},
            {"schedule": {"name": "constant", "params": {"p": 0.5}}, "lr": 1.0e6},
        ],
        "early_stopping": {"rule": "pareto_fair", "grace_epochs": 1},
        "num_samples": 5,
        "max_concurrent": 2,
    }
    report = run_search(parse_spec(values), tmp_path / "states", out=lambda line: None)
    study = _study(tmp_path / "states", "states")
    trials = _ray_finals(tmp_path / "states")
    by_lr = {t.params.get("lr"): t for t in study.trials[2:4]}
    slow, diverged = by_lr[1.0e-5], by_lr[1.0e6]
    assert slow.state == TrialState.PRUNED and slow.user_attrs["state_reason"].startswith(
        "stopped early by the scheduler after epoch 1"
    )
    assert trials[slow.user_attrs["ray_trial_id"]].last_result["epoch"] == 1
    assert diverged.state == TrialState.FAIL
    assert diverged.user_attrs["state_reason"].startswith("diverged: train_loss is nan at epoch 1")
    assert trials[diverged.user_attrs["ray_trial_id"]].status == "ERROR"
    assert len(study.trials) == 5 and not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert study.trials[4].state.is_finished()  # the search went on after both
    front_ids = {row.ray_trial_id for row in report.front}
    assert front_ids and all(
        study.trials[n].state == TrialState.COMPLETE for n in [r.number for r in report.front]
    )
    assert (
        slow.user_attrs["ray_trial_id"] not in front_ids
        and diverged.user_attrs["ray_trial_id"] not in front_ids
    )
    for t in study.trials:
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["epoch"] < 3


@pytest.mark.slow
def test_budget_search_trains_nothing_over_budget(local_ray, tmp_path):
    values = {
        "name": "budget",
        "train": {"epochs": 1, "batch_size": 128, "device": "cpu"},
        "space": _space(),
        "objective": "accuracy_under_budget",
        "budget": 1.3,
        "baselines": False,
        "num_samples": 3,
        "sampler": {"name": "random"},
        "seed": 5,
    }
    run_search(parse_spec(values), tmp_path / "budget", out=lambda line: None)
    trials = _ray_finals(tmp_path / "budget")
    assert len(trials) == 3
    assert all(t.config["expected_cost"] <= 1.3 for t in trials.values())
    study = _study(tmp_path / "budget", "budget")
    skipped = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert skipped and all("ray_trial_id" not in t.user_attrs for t in skipped)
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 3


@pytest.mark.slow
def test_resume_after_sigkill_keeps_exactly_num_samples_trials(tmp_path):
    space = {
        "name": "resume",
        "train": {"epochs": 4, "batch_size": 128, "device": "cpu"},
        "space": _space(),
        "num_samples": 6,
        "max_concurrent": 2,
        "seed": 11,
        "confirm": {"seeds": 0},  # confirmation's own resume is tested in test_confirm.py
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    run_dir = tmp_path / "runs" / "resume"
    kill_mid_run(
        rst_tune_process(
            "search", "--space", str(tmp_path / "space.yaml"), "--results-dir", str(tmp_path / "runs")
        ),
        run_dir / "optuna.db",
    )
    at_kill = [t.state for t in _study(run_dir, "resume").trials]
    assert 2 <= at_kill.count(TrialState.COMPLETE) < 6 and TrialState.RUNNING in at_kill  # killed mid-trial

    second = rst_tune_process("search", "--resume", str(run_dir))
    output, _ = second.communicate(timeout=400)
    assert second.returncode == 0, output
    trials = _ray_finals(run_dir)
    ended = {i: t.status for i, t in trials.items()}
    errors = {p.parent.name: p.read_text()[-800:] for p in (run_dir / "trials").glob("*/error.txt")}
    assert len(trials) == 6 and set(ended.values()) == {"TERMINATED"}, (ended, errors, output[-3000:])
    study = _study(run_dir, "resume")
    assert len(study.trials) == 6
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {t.user_attrs["ray_trial_id"] for t in study.trials} == set(trials)
    for t in study.trials:  # every trial trained all its epochs, and Optuna holds Ray's final values
        final = trials[t.user_attrs["ray_trial_id"]].last_result
        assert final["epoch"] == 4 and t.values == [final["val_accuracy"], final["propagations"]]
    saved = json.loads((run_dir / "pareto.json").read_text())
    assert len(saved["trials"]) == 6 and saved["counts"] == {"COMPLETE": 6}
    assert not math.isnan(saved["hypervolume"])
    # MLflow (the default store in the run folder): one run per trial, none left RUNNING, no epoch twice
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(r.data.tags["rst.optuna_trial"]) for r in children) == list(range(6))
    assert all(r.info.status == "FINISHED" for r in children)
    front = {row["number"] for row in saved["front"]}  # tagged by the tracker Ray restored, too
    assert {
        int(r.data.tags["rst.optuna_trial"]) for r in children if r.data.tags["rst.pareto"] == "true"
    } == front
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3, 4]
