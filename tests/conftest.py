"""Shared fixtures: one local Ray for the tests that search in-process, real MLflow servers, and Ray
clusters of `ray start` nodes on this machine."""

import os
import pickle
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ["RAY_AUTH_MODE"] = "disabled"  # local test clusters: no token under ~/.ray


@pytest.fixture(scope="session")
def local_ray():
    import ray

    # log_to_driver=False: the raylet's own warnings (a full disk, say) would otherwise land in the
    # stderr that in-process CLI tests read.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Crash(Exception):
    """Stands for the process dying right after a mid-epoch checkpoint."""


def crash_after_saving(path, epoch, step):
    """An `on_steps` callback that writes the checkpoint, and dies after the one at (epoch, step)."""

    def on_steps(trainer):
        trainer.save(path)
        if (trainer.epoch, trainer.step_in_epoch) == (epoch, step):
            raise Crash

    return on_steps


def rst_tune_process(*args: str) -> subprocess.Popen:
    """`rst-tune ARGS` in its own process group, output (both streams) on `stdout`."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen(
        [sys.executable, "-m", "rst_tune.cli", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def optuna_states(db) -> list[str]:
    """Trial states of a study that another process is writing; opening it through Optuna here could
    race the driver's creation of the schema."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            return [state for (state,) in connection.execute("SELECT state FROM trials")]
    except sqlite3.OperationalError:  # not created yet
        return []


def kill_mid_run(process: subprocess.Popen, db, complete: int = 2, timeout: float = 240) -> None:
    """SIGKILL the run's whole process group once `complete` trials are COMPLETE and one is RUNNING."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1)
        assert process.poll() is None, process.stdout.read()
        states = optuna_states(db)
        if states.count("COMPLETE") >= complete and "RUNNING" in states:
            break
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class MlflowServer:
    """A real `mlflow server` process on 127.0.0.1 with its own SQLite store and artifact folder."""

    def __init__(self, folder):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{folder}/server.db",
                "--artifacts-destination",
                str(folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                assert self.process.poll() is None, "mlflow server exited"
                time.sleep(0.5)
        raise TimeoutError("mlflow server did not start")

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    yield server
    server.kill()


def write_cifar10(root, n_per_batch=6, test_labels=None):
    """Tiny CIFAR-10 in the official python format: pickled dicts of bytes keys, rows of 3072 uint8;
    `test_labels` replace test_batch's labels. Returns each file's (data, labels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        if name == "test_batch" and test_labels is not None:
            labels = [int(v) for v in test_labels]
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    b"batch_label": name.encode(),
                    b"labels": labels,
                    b"data": data,
                    b"filenames": [b"x.png"] * n_per_batch,
                },
                f,
            )
        written[name] = (data, labels)
    return written


def confirmation_row(number, configuration, seed_index, val, propagations, state="COMPLETE"):
    """A confirmation trial as the study records it (only what the rules read is real); a trial not
    COMPLETE has no metrics."""
    from rst_tune._train import EpochMetrics
    from rst_tune.config import load_config
    from rst_tune.search._record import TrialRecord, TrialRow

    record = TrialRecord(
        load_config({"seed": seed_index}), configuration, number, None, configuration, seed_index
    )
    if state != "COMPLETE":
        return TrialRow(number, state, record, None, None, None, {})
    metrics = EpochMetrics.measured(
        epoch=1,
        train_loss=0.1,
        train_accuracy=0.9,
        val_loss=0.2,
        val_accuracy=val,
        steps=10,
        sam_steps=propagations - 10,
        propagations=propagations,
        expected_propagations=float(propagations),
        degree_sum=0.0,
        wall_s=1.0,
        devices=1.0,
        world_size=1,
        test_loss=0.3,
        test_accuracy=val - 0.01,
    )
    return TrialRow(number, state, record, metrics, None, None, {})


class RayNode:
    """`ray start --block` in its own process group."""

    def __init__(self, *args, cpus: float, env):
        self.process = subprocess.Popen(
            ["ray", "start", "--block", "--num-cpus", f"{cpus:g}", "--disable-usage-stats", *args],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    def pids(self) -> set[int]:
        """The node's processes: its `ray start` and every process descended from it."""
        parents = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        found, grown = {self.process.pid}, True
        while grown:
            more = {pid for pid, parent in parents.items() if parent in found} - found
            found, grown = found | more, bool(more)
        return found & set(parents)  # the live ones

    def kill(self) -> None:
        """SIGKILL every process of the node at once, by id, as a lost machine would vanish."""
        for _ in range(10):  # again, for any a dying process started meanwhile
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not pids:
                break
            time.sleep(0.2)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # `ray start --block` drains the node and stops its processes
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of the node is left
        except ProcessLookupError:
            pass


class LocalCluster:
    """A Ray cluster of `ray start` nodes on this machine: a head with `head_cpus` CPUs, then the
    nodes `add` starts; or, given a Ray cluster config whose provider is Ray's `fake_multinode`,
    the nodes Ray's autoscaler starts and stops on this machine. It stops only what it started."""

    def __init__(self, head_cpus: float = 1, autoscaling: dict | None = None):
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths: at most 107 characters
        scaling = []
        if autoscaling is not None:
            self.config = Path(self.temp) / "autoscaling.yaml"
            provider = {**autoscaling["provider"], "gcs_address": self.address}
            self.config.write_text(yaml.safe_dump({**autoscaling, "provider": provider}))
            scaling = [f"--autoscaling-config={self.config}"]
            self.env |= {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        self.head = RayNode(
            "--head",
            "--port",
            str(port),
            "--temp-dir",
            self.temp,
            "--include-dashboard=false",
            *scaling,
            cpus=head_cpus,
            env=self.env,
        )
        self.nodes = [self.head]
        self.wait_for_cpus(head_cpus)

    def search(self, tmp_path: Path, values: dict, *flags: str) -> subprocess.Popen:
        """`rst-tune search` of `values` on this cluster, its runs under tmp_path/runs and Ray's trials
        under tmp_path/shared."""
        file = tmp_path / f"{values['name']}.yaml"
        file.write_text(yaml.safe_dump(values))
        command = ["search", "--space", str(file), "--results-dir", str(tmp_path / "runs")]
        command += ["--address", self.address, "--storage", str(tmp_path / "shared"), *flags]
        return subprocess.Popen(
            [sys.executable, "-m", "rst_tune.cli", *command],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def cpus(self) -> float | None:
        """The CPUs of the cluster's live nodes, as `ray status` counts them (None: no answer)."""
        status = subprocess.run(
            ["ray", "status", "--address", self.address], env=self.env, capture_output=True, text=True
        )
        if status.returncode != 0:
            return None
        found = re.search(r"/([0-9.]+) CPU", status.stdout)
        return float(found[1]) if found else 0.0

    def wait_for_cpus(self, cpus: float, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while self.cpus() != cpus:
            assert self.head.process.poll() is None, "the head node exited"
            assert time.time() < deadline, f"the cluster did not reach {cpus:g} CPUs (has {self.cpus()})"
            time.sleep(1)

    def add(self, cpus: float = 1) -> RayNode:
        before = self.cpus()
        node = RayNode("--address", self.address, cpus=cpus, env=self.env)
        self.nodes.append(node)
        self.wait_for_cpus(before + cpus)
        return node

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.temp, ignore_errors=True)
