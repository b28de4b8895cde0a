"""A worker node lost mid-search, as a spot instance is lost: on a cluster of `ray start` nodes on this
machine (a head that runs no trials, workers of 1 CPU, storage they share), every process of one
worker is SIGKILLed while a trial trains on it. The trial resumes from its last checkpoint, and the
search ends as an undisturbed one run a trial at a time does."""

import json
import time
from pathlib import Path

import optuna
import pytest
from conftest import LocalCluster
from mlflow import MlflowClient
from ray.tune import ExperimentAnalysis

EPOCHS = 6
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"


def _values(name: str, resources: dict, num_samples: int, max_concurrent: int) -> dict:
    return {
        "name": name,
        "train": {"epochs": EPOCHS, "batch_size": 32, "device": "cpu"},
        "space": {"schedule": {"constant": {"p": {"low": 0.0, "high": 1.0}}}},
        "sampler": {"name": "random"},  # a trial's values depend on its number only
        "early_stopping": {"rule": "none"},
        "num_samples": num_samples,
        "max_concurrent": max_concurrent,
        "seed": 3,
        "reuse_actors": False,
        "resources": resources,
        "confirm": {"seeds": 0},
    }


def _histories(trials: Path) -> dict[str, list[dict]]:
    """Each Ray trial's reported results, in order (a line still being written is left for later)."""
    found = {}
    for file in trials.glob("*/result.json"):
        results = []
        for line in file.read_text().splitlines():
            try:
                results.append(json.loads(line))
            except json.JSONDecodeError:
                break
        found[file.parent.name] = results
    return found


def _finals(tmp_path: Path, name: str, count: int) -> dict[int, tuple]:
    """What each trial of a finished search ended with, by Optuna number, after checking that Ray,
    Optuna, MLflow and the report agree: `count` trials, each COMPLETE with every epoch once."""
    trials_dir, run_dir = tmp_path / "shared" / name / "trials", tmp_path / "runs" / name
    ray_trials = ExperimentAnalysis(str(trials_dir)).trials
    assert len(ray_trials) == count and {t.status for t in ray_trials} == {"TERMINATED"}
    histories = _histories(trials_dir)
    assert {i: [r["epoch"] for r in h] for i, h in histories.items()} == {
        t.trial_id: list(range(1, EPOCHS + 1)) for t in ray_trials
    }  # no epoch reported twice, none missing
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir}/optuna.db")
    assert len(study.trials) == count and {t.state.name for t in study.trials} == {"COMPLETE"}
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == count and {r.info.status for r in children} == {"FINISHED"}
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps == list(range(1, EPOCHS + 1))
    saved = json.loads((run_dir / "pareto.json").read_text())
    assert len(saved["trials"]) == count and saved["counts"] == {"COMPLETE": count}
    finals = {}
    for trial in study.trials:
        last = histories[trial.user_attrs["ray_trial_id"]][-1]
        assert trial.values == [last["val_accuracy"], last["propagations"]]
        finals[trial.number] = (
            trial.params,
            last["val_accuracy"],
            last["test_accuracy"],
            last["propagations"],
        )
    return finals | {"front": [row["number"] for row in saved["front"]]}


def _lose_a_node(tmp_path: Path, resources: dict, num_samples: int, replace: bool) -> dict:
    """Run the search on a head and two 1-CPU workers; kill one worker while a trial trains on it
    (after its first checkpoint), with a replacement node started if `replace`; then the same search
    undisturbed, a trial at a time. Returns the times the recovery took."""
    cluster = LocalCluster(head_cpus=0)  # as cluster.yaml's head: no trials
    try:
        lost = cluster.add(cpus=1)
        cluster.add(cpus=1)  # the survivor
        values = _values("lost", resources, num_samples, max_concurrent=2)
        search = cluster.search(tmp_path, values)
        trials_dir = tmp_path / "shared" / "lost" / "trials"
        deadline, victim = time.time() + 300, None
        while victim is None:
            assert search.poll() is None and time.time() < deadline, search.communicate()[0]
            on_node = lost.pids()
            spans = resources.get("workers", 1) > 1  # a trial's ranks are on both workers
            for trial_id, history in _histories(trials_dir).items():
                here = spans or (history and history[-1]["pid"] in on_node)
                if here and history and 1 <= history[-1]["epoch"] < EPOCHS:
                    victim, epoch = trial_id, history[-1]["epoch"]
                    break
            time.sleep(0.05)
        killed_at = time.time()
        lost.kill()  # every process of the node, as a reclaimed spot instance
        assert lost.pids() == set()
        dead_after = resumed_after = None
        while search.poll() is None and None in (dead_after, resumed_after):
            if dead_after is None and cluster.cpus() == 1:  # Ray has let the node go
                dead_after = time.time() - killed_at
                if replace:
                    cluster.add(cpus=1)
            if resumed_after is None and _histories(trials_dir)[victim][-1]["epoch"] > epoch:
                resumed_after = time.time() - killed_at
            time.sleep(0.2)
        output, _ = search.communicate(timeout=600)
        assert search.returncode == 0, output
        cluster.wait_for_cpus(2 if replace else 1)
        dead_after = dead_after or time.time() - killed_at
        history = _histories(trials_dir)[victim]
        if resources.get("workers", 1) == 1:  # its epochs after the loss ran in another process
            assert {r["pid"] for r in history[epoch:]}.isdisjoint({r["pid"] for r in history[:epoch]})
            assert f"retry  {victim}" in output and f"from the checkpoint of epoch {epoch} on" in output
        disturbed = _finals(tmp_path, "lost", num_samples)
        calm = cluster.search(tmp_path, _values("calm", resources, num_samples, 1))
        output, _ = calm.communicate(timeout=600)
        assert calm.returncode == 0, output
        assert disturbed == _finals(tmp_path, "calm", num_samples)  # every trial, and so the front
        return {"node_declared_dead_s": dead_after, "trial_resumed_s": resumed_after, "lost_epoch": epoch + 1}
    finally:
        cluster.stop()


def _record(name: str, figures: dict) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=1))


@pytest.mark.slow
def test_a_trial_on_a_lost_node_resumes_on_the_survivor_and_the_search_ends_as_undisturbed(tmp_path):
    _record("node_loss", _lose_a_node(tmp_path, {"cpu": 1}, num_samples=4, replace=False))


@pytest.mark.slow
def test_a_data_parallel_trial_across_two_nodes_resumes_on_a_replacement_node(tmp_path):
    figures = _lose_a_node(tmp_path, {"workers": 2, "cpu": 1}, num_samples=2, replace=True)
    _record("node_loss_data_parallel", figures)
