"""The Python API: the example script's search, tracked and confirmed as the CLI's is, read back from its
report; a call leaves the caller's process as it was; resume; settings keep their raw values."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from rst_tune import api
from rst_tune.config import ConfigError
from rst_tune.search import ParetoReport

EXAMPLE = Path(__file__).parent.parent / "examples" / "search_from_python.py"


@pytest.mark.slow
def test_the_example_runs_a_tracked_confirmed_search_and_reads_its_report(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(tmp_path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    run_dir = Path(lines[0].removeprefix("run folder: "))
    assert run_dir.parent == tmp_path and run_dir.name == "from_python"
    saved = json.loads((run_dir / "pareto.json").read_text())
    assert lines[1] == (
        f"{len(saved['trials'])} trials, {len(saved['front'])} on the search's front, "
        f"hypervolume {saved['hypervolume']:.4f}"
    )
    confirmed = {point["trial"]: point for point in saved["confirmed"]}
    assert len(lines) == 2 + len(confirmed) and len(confirmed) >= 2  # SGD and SAM at least
    for line in lines[2:]:
        point = confirmed[int(line.split()[1])]
        assert f"val_accuracy {point['val_accuracy_mean']:.2%} over {point['seeds']} seeds" in line
        assert ("on the confirmed front" in line) == point["on_front"]
    # tracked as the CLI tracks: a parent run per run folder, a child run per trial
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "from_python"]
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trials = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    seeds = sum(point["seeds"] for point in saved["confirmed"])
    assert len(trials) == len(saved["trials"]) + seeds


def _state() -> dict:
    loggers = {name: logging.getLogger(name) for name in ("", "ray", "ray.tune", "mlflow", "optuna")}
    return {
        "environ": dict(os.environ),
        "optuna": optuna.logging.get_verbosity(),
        "loggers": {name: (log.level, list(log.handlers), log.propagate) for name, log in loggers.items()},
    }


def test_a_call_leaves_the_process_as_it_was_and_resumes(local_ray, tmp_path):
    settings = api.load(
        "search",
        "default",
        overrides={
            "name": "leaves",
            "num_samples": 3,
            "train": {"dataset": "digits", "model": "digits_cnn", "epochs": 1, "label_noise": 0.0},
            "confirm": {"seeds": 0},
        },
    )
    assert settings.raw["num_samples"] == 3 and settings.raw["train"]["epochs"] == 1
    before = _state()
    report = api.search(settings, results_dir=tmp_path, out=lambda line: None)
    assert _state() == before
    assert isinstance(report, ParetoReport) and report.run_dir == tmp_path / "leaves"
    assert len(report.trials) == 3 and (report.run_dir / "mlflow.db").is_file()
    again = api.search(resume=report.run_dir, out=lambda line: None)
    assert again.to_json() == report.to_json() and again.run_dir == report.run_dir
    with pytest.raises(ConfigError, match="resume continues a search as it was started"):
        api.search("default", resume=report.run_dir)


def test_files_are_found_by_name_and_bad_ones_name_the_shipped(tmp_path):
    assert api.find_file("rivals") == api.SPACES_DIR / "rivals.yaml"
    with pytest.raises(ConfigError, match=r"--space nope: no such file \(shipped: .*default.*rivals"):
        api.load("search", "nope", flag="--space")
    assert "configurations" in api.load("study", "study_rivals", {"seeds": 3}).raw
