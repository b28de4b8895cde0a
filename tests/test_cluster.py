"""`cluster.yaml` against the installed Ray, and a search on a real 2-node Ray cluster on this machine."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import LocalCluster
from mlflow import MlflowClient
from mlflow.cli import cli as mlflow_cli
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import cli as ray_cli
from ray.tune import ExperimentAnalysis

from rst_tune.config import ConfigError
from rst_tune.search._capacity import check_capacity
from rst_tune.search._settings import Resources

ROOT = Path(__file__).parent.parent
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema():
    validate_config(prepare_config(CLUSTER))  # what `ray up` does before it starts anything
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config({**CLUSTER, "max_worker": 8}))
    assert (
        CLUSTER["docker"]["worker_image"].startswith("rayproject/ray:")
        and "-gpu" in CLUSTER["docker"]["worker_image"]
    )
    assert "ray-ml" not in json.dumps(CLUSTER)
    assert CLUSTER["available_node_types"]["head"]["resources"] == {"CPU": 0}
    for node in CLUSTER["available_node_types"].values():
        assert "IamInstanceProfile" in node["node_config"]


def _commands():
    keys = ("setup_commands", "head_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    for key in keys:
        for line in CLUSTER.get(key, []):
            for part in re.split(r";|&&|\|\|", line):
                words = shlex.split(part.replace(">", " > ").replace("&", " "))
                while words and ("=" in words[0] or words[0] in ("nohup", "ulimit")):
                    words = words[1:] if words[0] != "ulimit" else []
                if words:
                    yield words


def test_every_command_in_cluster_yaml_exists():
    seen = set()
    for words in _commands():
        program, *rest = words
        if program in ("ray", "mlflow"):
            group = ray_cli if program == "ray" else mlflow_cli
            assert rest[0] in group.commands, f"{program} {rest[0]}"
            options = {name for param in group.commands[rest[0]].params for name in param.opts}
            for flag in (w.split("=")[0] for w in rest[1:] if w.startswith("--")):
                assert flag in options, f"{program} {rest[0]} {flag}"
            seen.add(f"{program} {rest[0]}")
        else:
            assert program in ("pip", "mkdir"), words
    assert {"ray start", "ray stop", "mlflow server"} <= seen
    dashboard = [w for words in _commands() for w in words if w.startswith("--dashboard-host")]
    assert dashboard == ["--dashboard-host=127.0.0.1"]  # not exposed to the world


@pytest.mark.slow
def test_search_on_a_two_node_cluster_uses_both_nodes_and_shared_storage(tmp_path):
    cluster = LocalCluster(head_cpus=1)
    try:
        cluster.add(cpus=1)
        address, env = cluster.address, cluster.env
        space = {
            "name": "cluster",
            "train": {"epochs": 2, "batch_size": 128, "device": "cpu"},
            "space": {"schedule": {"constant": {"p": {"low": 0.0, "high": 1.0}}}},
            "num_samples": 4,
            "max_concurrent": 2,
            "reuse_actors": False,
            "confirm": {"seeds": 0},
        }
        (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
        shared = tmp_path / "shared"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "rst_tune.cli",
                "search",
                "--space",
                str(tmp_path / "space.yaml"),
                "--results-dir",
                str(tmp_path / "runs"),
                "--address",
                address,
                "--storage",
                str(shared),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        trials = ExperimentAnalysis(str(shared / "cluster" / "trials")).trials
        assert len(trials) == 4 and all(t.status == "TERMINATED" for t in trials)
        node_ids = {t.last_result["node_id"] for t in trials}
        assert len(node_ids) == 2  # the trials ran on both nodes
        assert all((shared / "cluster" / "trials" / t.trial_id / "result.json").exists() for t in trials)
        client = MlflowClient(f"sqlite:///{tmp_path}/runs/cluster/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name("cluster").experiment_id])
        assert sorted(
            r.data.tags.get("rst.ray_trial_id", "") for r in runs if "mlflow.parentRunId" in r.data.tags
        ) == sorted(t.trial_id for t in trials)
    finally:
        cluster.stop()


def test_a_trial_no_node_of_the_cluster_config_holds_is_refused_in_one_line(tmp_path):
    gpus = sum(
        min(t.get("max_workers", CLUSTER["max_workers"]), CLUSTER["max_workers"])
        * t["resources"].get("GPU", 0)
        for name, t in CLUSTER["available_node_types"].items()
        if name != CLUSTER["head_node_type"]
    )
    check_capacity(ROOT / "cluster.yaml", Resources(workers=gpus, gpu=1))  # every GPU it scales to
    with pytest.raises(ConfigError) as refused:
        check_capacity(ROOT / "cluster.yaml", Resources(workers=gpus + 1, gpu=1))
    assert str(refused.value).count("\n") == 0 and str(refused.value).startswith(
        f"resources: a trial asks for {gpus + 1} × {{CPU: 1, GPU: 1}}, but "
    )
    assert f"which hold {gpus}; raise max_workers" in str(refused.value)
    detected = {**CLUSTER, "available_node_types": {"gpu": {"resources": {}, "max_workers": 1}}}
    (tmp_path / "detected.yaml").write_text(yaml.safe_dump({**detected, "head_node_type": "gpu"}))
    check_capacity(tmp_path / "detected.yaml", Resources(workers=64, gpu=1))  # Ray detects: can't tell
    with pytest.raises(
        ConfigError, match="cluster_config: .*missing.yaml: not a readable Ray cluster config"
    ):
        check_capacity(tmp_path / "missing.yaml", Resources())
