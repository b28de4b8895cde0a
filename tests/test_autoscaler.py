"""Nodes added on demand: a search on Ray's autoscaler with its local test provider (`fake_multinode`,
which starts and stops real Ray nodes on this machine), from zero workers as `cluster.yaml` starts;
and a search that asks for more than the cluster can ever give, refused before it starts."""

import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import LocalCluster
from ray.tune import ExperimentAnalysis

ROOT = Path(__file__).parent.parent
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())
ARTIFACTS = ROOT / "test-artifacts"


def _fake_cluster() -> dict:
    """`cluster.yaml`'s head and first worker type on the local provider: the head keeps its
    resources (no CPU: it runs no trials); the workers, from min_workers (0) to 2, have 1 CPU each."""
    head = CLUSTER["head_node_type"]
    worker = next(name for name in CLUSTER["available_node_types"] if name != head)
    return {
        "cluster_name": "fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {},
        "docker": {},
        "available_node_types": {
            head: {**CLUSTER["available_node_types"][head], "node_config": {}, "max_workers": 0},
            worker: {
                "resources": {"CPU": 1},
                "node_config": {},
                "min_workers": CLUSTER["available_node_types"][worker]["min_workers"],
                "max_workers": 2,
            },
        },
        "head_node_type": head,
        **{key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{
            key: []
            for key in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
        },
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@pytest.mark.slow
def test_workers_come_as_trials_ask_and_go_when_the_search_ends(tmp_path):
    assert CLUSTER["available_node_types"][CLUSTER["head_node_type"]]["resources"] == {"CPU": 0}
    cluster = LocalCluster(head_cpus=0, autoscaling=_fake_cluster())
    try:
        assert cluster.cpus() == 0  # no worker yet
        values = {
            "name": "scaled",
            "train": {"epochs": 3, "batch_size": 64, "device": "cpu"},
            "space": {"schedule": {"constant": {"p": {"low": 0.0, "high": 1.0}}}},
            "sampler": {"name": "random"},
            "early_stopping": {"rule": "none"},
            "num_samples": 4,
            "max_concurrent": 2,
            "reuse_actors": False,
            "shared_storage": True,  # the nodes share this machine's disk
            "confirm": {"seeds": 0},
        }
        # more than 2 workers of 1 CPU can ever hold: one line, nothing started
        train = {**values["train"], "batch_size": 96}  # 32 a rank
        search = cluster.search(
            tmp_path,
            {**values, "train": train, "resources": {"workers": 3, "cpu": 1}},
            "--cluster-config",
            str(cluster.config),
        )
        output, _ = search.communicate(timeout=120)
        assert search.returncode == 2 and len(output.strip().splitlines()) == 1, output
        assert "resources: a trial asks for 3 × {CPU: 1}" in output and "which hold 2" in output
        assert not (tmp_path / "runs").exists() and cluster.cpus() == 0

        started, seen, first_worker = time.time(), 0.0, None
        search = cluster.search(tmp_path, values, "--cluster-config", str(cluster.config))
        while search.poll() is None:
            cpus = cluster.cpus() or 0.0
            if cpus and first_worker is None:
                first_worker = time.time() - started
            seen = max(seen, cpus)
            time.sleep(0.5)
        output, _ = search.communicate()
        assert search.returncode == 0, output
        ended = time.time()
        assert seen == 2  # both workers came, and no more
        trials = ExperimentAnalysis(str(tmp_path / "shared" / "scaled" / "trials")).trials
        assert len(trials) == 4 and {t.status for t in trials} == {"TERMINATED"}
        nodes = {t.last_result["node_id"] for t in trials}
        assert len(nodes) == 2 and all(node.startswith("ffff") for node in nodes)  # the provider's nodes
        study = optuna.load_study(study_name="scaled", storage=f"sqlite:///{tmp_path}/runs/scaled/optuna.db")
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
        cluster.wait_for_cpus(0, timeout=120)  # idle workers are released
        released = time.time() - ended
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "autoscaler.txt").write_text(
            f"first worker after {first_worker:.1f} s; search {ended - started:.1f} s; "
            f"workers released {released:.1f} s after it ended\n"
        )
    finally:
        cluster.stop()
