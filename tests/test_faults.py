"""Faults: a trial's worker killed mid-epoch, storage a cluster cannot share, and random bad input to the
search-space loader and the CLI."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from ray.tune import ExperimentAnalysis

from rst_tune.cli import main
from rst_tune.config import ConfigError
from rst_tune.search import load_spec, parse_spec, run_search
from rst_tune.search._cluster import check_shared, filesystem_type, spans_machines
from rst_tune.search._space import points_to_evaluate
from rst_tune.tracking import tracker_for

DEFAULT = Path(__file__).parent.parent / "rst_tune" / "search_spaces" / "default.yaml"


def _kill_worker_mid_run(trials_dir: Path, killed: list):
    """Kill the trial's worker process once it has reported epoch 2."""
    deadline = time.time() + 120
    while time.time() < deadline and not killed:
        for result in trials_dir.glob("*/result.json"):
            lines = [yaml.safe_load(line) for line in result.read_text().splitlines() if line.strip()]
            if any(r.get("epoch", 0) >= 2 for r in lines):
                os.kill(lines[-1]["pid"], signal.SIGKILL)
                killed.append(lines[-1]["epoch"])
                return
        time.sleep(0.02)


@pytest.mark.slow
def test_a_killed_worker_resumes_from_its_checkpoint_with_the_same_result(local_ray, tmp_path):
    values = {
        "name": "kill",
        "train": {"epochs": 6, "batch_size": 64, "device": "cpu"},
        "space": {"schedule": {"constant": {"p": {"low": 0.0, "high": 1.0}}}},
        "baselines": False,
        "points_to_evaluate": [{"schedule": {"name": "constant", "params": {"p": 0.5}}}],
        "num_samples": 1,
        "max_failures": 1,
        "reuse_actors": False,
        "seed": 9,
    }
    finals = {}
    for name in ("clean", "killed"):
        spec, run_dir, killed = parse_spec(values), tmp_path / name, []
        if name == "killed":
            threading.Thread(
                target=_kill_worker_mid_run, args=(run_dir / "trials", killed), daemon=True
            ).start()
        run_search(
            spec,
            run_dir,
            callbacks=[tracker_for(run_dir, spec, out=lambda line: None)],
            out=lambda line: None,
        )
        (trial,) = ExperimentAnalysis(str(run_dir / "trials")).trials
        finals[name] = trial.last_result
        if name == "killed":
            assert killed and trial.run_metadata.num_failures == 1 and trial.status == "TERMINATED"
            epochs = [
                yaml.safe_load(line)["epoch"]
                for line in (run_dir / "trials" / trial.trial_id / "result.json").read_text().splitlines()
                if line.strip()
            ]
            assert epochs.count(1) == 1 and epochs[-1] == 6  # it went on from a checkpoint, not from scratch
            client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
            runs = client.search_runs([client.get_experiment_by_name("kill").experiment_id])
            (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
            assert child.info.status == "FINISHED"
            assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [
                1,
                2,
                3,
                4,
                5,
                6,
            ]
    for key in ("val_accuracy", "val_loss", "train_loss", "train_accuracy", "propagations", "sam_fraction"):
        assert finals["killed"][key] == finals["clean"][key], key


def test_local_storage_is_refused_for_a_cluster_that_spans_machines(local_ray, tmp_path):
    nodes = ray.nodes()
    here = ray.util.get_node_ip_address()
    assert not spans_machines(nodes, here)  # this test's Ray: one machine
    elsewhere = [{**nodes[0], "NodeManagerAddress": "10.0.0.7"}]
    assert spans_machines(nodes + elsewhere, here)
    head_running_nothing = [{**nodes[0], "Resources": {"CPU": 0.0, "memory": 1.0}}]
    assert spans_machines(head_running_nothing, here)  # its workers are still to come
    assert not spans_machines(head_running_nothing + nodes, here)  # they came, on this machine
    with pytest.raises(
        ConfigError,
        match=f"--storage: {tmp_path} is a local .* path, but this cluster runs trials on other machines",
    ):
        check_shared(str(tmp_path))
    check_shared("s3://bucket/prefix")  # remote storage is fine
    assert filesystem_type("/proc/self") == "proc"


_keys = st.sampled_from(
    [
        "name",
        "train",
        "space",
        "objective",
        "budget",
        "sampler",
        "seed",
        "num_samples",
        "max_concurrent",
        "resources",
        "early_stopping",
        "baselines",
        "points_to_evaluate",
        "schedule",
        "constant",
        "step",
        "p",
        "low",
        "high",
        "log",
        "choices",
        "optional",
        "rho",
        "grst_weight",
        "epochs",
        "lr",
        "type",
        "step",
        "name",
        "params",
    ]
) | st.text(min_size=1, max_size=6)
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=6))
def test_random_search_settings_get_a_clear_error_or_validate(values):
    try:
        points_to_evaluate(parse_spec(values))
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=st.lists(_keys, min_size=1, max_size=3), value=_values)
def test_the_cli_answers_a_corrupted_space_with_one_line(tmp_path, capsys, path, value):
    values = yaml.safe_load(DEFAULT.read_text())
    node = values
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node.get(key), dict) or key not in node else node
        if not isinstance(node, dict):
            break
    if isinstance(node, dict):
        node[path[-1]] = value
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(values))
    code = main(["search", "--space", str(space), "--check"])
    out, err = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        assert err.startswith("rst-tune: error: ") and err.count("\n") == 1 and "Traceback" not in err
    else:
        assert "valid;" in out and not err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_random_text_as_a_space_file(tmp_path, text):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    try:
        load_spec(space)
    except ConfigError as err:
        assert "\n" not in str(err)
