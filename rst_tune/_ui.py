"""`rst-tune ui`: the MLflow UI (and optuna-dashboard) on a search or study run, bound to 127.0.0.1
by default."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rst_tune.config import ConfigError
from rst_tune.search._folder import RunFolder
from rst_tune.tracking._parent import TRIALS_VIEW, TRIALS_VIEW_TAG
from rst_tune.tracking._record import TrackingRecord

READY_S = 120.0


def _wait_until_up(url: str, process: subprocess.Popen, name: str, log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(
                f"{name} exited with code {process.returncode} before it served {url}; see {log}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise ConfigError(f"{name} did not answer on {url} within {READY_S:.0f} s; see {log}")


def _runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the UI's model-training mode (MLflow 3.17 takes the mode from the
    URL, else from the browser's last choice, GenAI at first), on the trials view if the experiment has it
    (experiments created before rst-tune saved that view have not)."""
    url = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    try:
        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", timeout=10
        ) as answer:
            tags = {tag["key"] for tag in json.load(answer)["experiment"].get("tags", [])}
    except (OSError, ValueError, KeyError):
        return url
    return f"{url}&viewStateShareKey={TRIALS_VIEW}" if TRIALS_VIEW_TAG in tags else url


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server in its own process group, its output going to `log`."""
    with open(log, "ab") as sink:
        return subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def serve(
    run_dir: str | None, results_dir: str, *, host: str = "127.0.0.1", port: int = 5000, optuna: bool = False
) -> int:
    """Serve the run's MLflow store and print the experiment's URL; block until Ctrl-C, then stop."""
    folder = RunFolder.existing(run_dir) if run_dir else RunFolder.newest(results_dir)
    record = TrackingRecord.load(folder)
    if record is None:
        raise ConfigError(
            f"{folder.path}: no MLflow tracking record ({folder.tracking_file.name}); was the run tracked?"
        )
    run = folder.path
    processes = []
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated `rst-tune ui` stops its servers too
    try:
        if record.tracking_uri.startswith("sqlite:"):
            processes.append(
                _start(
                    [
                        sys.executable,
                        "-m",
                        "mlflow",
                        "server",
                        "--backend-store-uri",
                        record.tracking_uri,
                        "--host",
                        host,
                        "--port",
                        str(port),
                        "--workers",
                        "1",
                    ],
                    run / "mlflow_server.log",
                    env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                )
            )
            base = f"http://{host}:{port}"
            _wait_until_up(f"{base}/health", processes[-1], "mlflow server", run / "mlflow_server.log")
        else:
            base = record.tracking_uri
        print(f"MLflow: {_runs_url(base, record.experiment_id)}", flush=True)
        if optuna:
            dashboard = shutil.which(
                "optuna-dashboard",
                path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            )
            if dashboard is None:
                raise ConfigError(
                    "--optuna: optuna-dashboard is not installed (pip install optuna-dashboard)"
                )
            processes.append(
                _start(
                    [dashboard, folder.study_url, "--host", host, "--port", str(port + 1)],
                    run / "optuna_dashboard.log",
                )
            )
            _wait_until_up(
                f"http://{host}:{port + 1}/", processes[-1], "optuna-dashboard", run / "optuna_dashboard.log"
            )
            print(f"Optuna: http://{host}:{port + 1}/", flush=True)
        if not processes:
            return 0
        print("Ctrl-C stops the server" + ("s" if len(processes) > 1 else ""), flush=True)
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
