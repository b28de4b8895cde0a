"""MLflow tracking against real `mlflow server` processes on 127.0.0.1, and the UI in a real browser."""

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from conftest import MlflowServer, free_port
from mlflow import MlflowClient
from ray.tune import ExperimentAnalysis

from rst_tune._train import EPOCH_METRICS, METRICS
from rst_tune.models import build_model
from rst_tune.search import parse_spec, run_search
from rst_tune.tracking import tracker_for

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
SPACE = {
    "schedule": {
        "constant": {"p": {"low": 0.0, "high": 1.0}},
        "linear": {"p_start": {"low": 0.0, "high": 1.0}, "p_end": {"low": 0.0, "high": 1.0}},
    },
    "rho": {"low": 0.01, "high": 0.2, "log": True},
    "grst_weight": {"low": 0.1, "high": 1.0, "optional": True},
    "lr": {"choices": [0.05, 1.0e-5, 1.0e6]},
}


def _children(client, experiment):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, {
        int(r.data.tags["rst.optuna_trial"]): r for r in runs if "mlflow.parentRunId" in r.data.tags
    }


PLANTED = "planted-secret-5b1c9e"


@pytest.fixture(scope="module")
def tracked(local_ray, tmp_path_factory):
    """One tracked search over HTTP, with secrets in the driver's environment, for several tests."""
    folder = tmp_path_factory.mktemp("tracked")
    server = MlflowServer(folder)
    values = {
        "name": "tracked",
        "train": {"epochs": 3, "batch_size": 128, "device": "cpu"},
        "space": SPACE,
        "points_to_evaluate": [
            {"schedule": {"name": "constant", "params": {"p": 0.5}}, "lr": 1.0e-5},
            {"schedule": {"name": "constant", "params": {"p": 0.5}}, "lr": 1.0e6},
        ],
        "early_stopping": {"rule": "pareto_fair", "grace_epochs": 1},
        "num_samples": 5,
        "seed": 2,
    }
    spec, run_dir, lines = parse_spec(values), folder / "tracked", []
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_SECRET_ACCESS_KEY", PLANTED)
            env.setenv("RST_TUNE_TEST_TOKEN", PLANTED)
            tracker = tracker_for(run_dir, spec, server.url)
            report = run_search(spec, run_dir, callbacks=[tracker], out=lines.append)
        yield SimpleNamespace(
            values=values, run_dir=run_dir, report=report, lines=lines, server=server, folder=folder
        )
    finally:
        server.kill()


@pytest.mark.slow
def test_search_logs_nested_runs_over_http(tracked, tmp_path):
    report, lines = tracked.report, tracked.lines
    assert not [line for line in lines if "not logged" in line or "warning" in line]
    client = MlflowClient(tracked.server.url)
    parents, children = _children(client, "tracked")
    assert len(parents) == 1 and len(children) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["rst.pareto_size"] == str(len(report.front))
    assert parent.data.metrics["hypervolume"] == pytest.approx(report.hypervolume)
    assert parent.data.tags["rst.version.torch"] == version("torch") and parent.data.tags[
        "rst.version.ray"
    ] == version("ray")
    assert {
        "search.yaml",
        "resolved_search.json",
        "pareto.png",
        "pareto.html",
        "pareto.csv",
        "pareto.json",
        "pareto.txt",
    } <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    front = {row.number for row in report.front}
    rows = {row.number: row for row in report.trials}
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    assert {rows[n].state for n in children} >= {"COMPLETE", "PRUNED", "FAIL"}
    for number, run in children.items():
        row, tags, params = rows[number], run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["rst.ray_trial_id"] == row.ray_trial_id and run.info.run_name == row.label
        assert run.info.status == status[row.state] and tags["rst.state"] == row.state
        assert tags["rst.pareto"] == str(number in front).lower()
        assert params["train.seed"] == str(row.seed) and params["expected_cost"] == str(row.expected_cost)
        assert params["train.lr"] == params["lr"] == str(row.params["lr"])
        assert params["train.grst_weight"] == (
            str(row.params["grst_weight"]) if row.params["grst_weight.on"] else "None"
        )
        if row.params["schedule"] == "constant":
            assert params["train.schedule.params.p"] == params["schedule.constant.p"]
        # nothing of Tune's internals; the test part only from a trial that reached its last epoch
        measured = METRICS if row.epochs == row.record.train.epochs else EPOCH_METRICS
        assert set(run.data.metrics) == set(measured) - {"epoch"}
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, row.epochs + 1))
        assert [m.value for m in history][-1] == pytest.approx(row.val_accuracy, nan_ok=True)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"schedule.png", "learning_curves.png"} <= artifacts
        if row.state == "COMPLETE":
            assert row.epochs == 3
        if row.state == "FAIL":
            assert tags["rst.state_reason"].startswith("diverged: train_loss is nan at epoch 1")
        if number in front:  # the Pareto trials' final weights load into the model
            path = client.download_artifacts(run.info.run_id, "model/model_state_dict.pt", str(tmp_path))
            build_model("digits_cnn", 10, (1, 8, 8)).load_state_dict(torch.load(path, weights_only=True))
        else:
            assert "model" not in artifacts


@pytest.mark.slow
def test_a_searched_parameter_has_one_name_from_the_search_file_to_pareto_json(tracked):
    """Each searched value is named by its path under the search file's `space`, and by that name alone
    in Optuna, Ray's trial config, MLflow and pareto.json; the settings trained are `train.<path>`."""
    space = tracked.values["space"]
    in_file = {"rho", "lr", "grst_weight"} | {
        f"schedule.{family}.{key}" for family, keys in space["schedule"].items() for key in keys
    }
    run_dir = tracked.run_dir
    study = optuna.load_study(study_name="tracked", storage=f"sqlite:///{run_dir}/optuna.db")
    ray_configs = {t.trial_id: t.config for t in ExperimentAnalysis(str(run_dir / "trials")).trials}
    saved = {row["number"]: row for row in json.loads((run_dir / "pareto.json").read_text())["trials"]}
    _, children = _children(MlflowClient(tracked.server.url), "tracked")
    assert len(study.trials) == len(saved) == len(children) == 5
    seen = set()
    for trial in study.trials:
        searched, logged = trial.params, children[trial.number].data.params
        assert set(searched) - {"schedule", "grst_weight.on"} <= in_file
        assert (
            ray_configs[trial.user_attrs["ray_trial_id"]]["params"]
            == saved[trial.number]["params"]
            == searched
        )
        own = {k: v for k, v in logged.items() if not k.startswith("train.") and k != "expected_cost"}
        assert own == {k: str(v) for k, v in searched.items()}
        # what was trained: the `train:` section's paths, in MLflow as in pareto.json
        assert logged["train.rho"] == str(saved[trial.number]["train"]["rho"]) == str(searched["rho"])
        seen |= set(searched)
    assert {"rho", "lr", "schedule.constant.p", "grst_weight.on", "grst_weight"} <= seen


@pytest.mark.slow
def test_environment_secrets_are_never_logged(tracked):
    client = MlflowClient(tracked.server.url)
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert len(runs) == 6
    for run in runs:
        logged = (
            list(run.data.params.values())
            + list(run.data.tags.values())
            + list(run.data.params)
            + list(run.data.tags)
        )
        assert not [value for value in logged if PLANTED in value]
    texts = [
        p
        for p in (tracked.folder / "artifacts").rglob("*")
        if p.suffix in (".json", ".yaml", ".txt", ".csv", ".html")
    ]
    assert {"search.yaml", "resolved_search.json", "pareto.json", "pareto.html"} <= {p.name for p in texts}
    assert not [p for p in texts if PLANTED in p.read_text()]


def test_a_dead_tracking_server_does_not_stop_the_search(local_ray, tmp_path, mlflow_server):
    values = {
        "name": "dead",
        "train": {"epochs": 2, "batch_size": 128, "device": "cpu"},
        "space": SPACE,
        "num_samples": 4,
        "seed": 4,
    }
    spec, run_dir, lines = parse_spec(values), tmp_path / "dead", []

    def out(line):
        lines.append(line)
        if line.startswith("[1/"):  # the first trial is done: the server dies
            mlflow_server.kill()

    report = run_search(
        spec, run_dir, callbacks=[tracker_for(run_dir, spec, mlflow_server.url, out=out)], out=out
    )
    assert len(report.trials) == 4 and all(
        row.state in ("COMPLETE", "FAIL", "PRUNED") for row in report.trials
    )
    assert sum("warning: MLflow at" in line for line in lines) == 1
    assert re.search(
        r"not logged to MLflow at http://127.0.0.1:\d+: .*\d+ epoch metrics", lines[-2] + lines[-1]
    )
    assert (run_dir / "pareto.json").exists()


def _headers_on_screen(browser) -> set[str]:
    """The runs table's column headers a user sees: those on top at their centre, not scrolled away."""
    return set(
        browser.execute_script(
            """return [...document.querySelectorAll("[role=columnheader]")].filter(cell => {
                const box = cell.getBoundingClientRect();
                const top = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
                return box.width > 0 && cell.contains(top);
            }).map(cell => cell.innerText.trim());"""
        )
    )


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromedriver") is None and not os.environ.get("RST_TUNE_REQUIRE_BROWSER"),
    reason="needs chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
def test_rst_tune_ui_shows_the_trial_runs_in_a_browser(local_ray, tmp_path):
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    values = {
        "name": "browsed",
        "train": {"epochs": 1, "batch_size": 128, "device": "cpu"},
        "space": SPACE,
        "num_samples": 3,
        "seed": 6,
    }
    spec, run_dir = parse_spec(values), tmp_path / "browsed"
    report = run_search(spec, run_dir, callbacks=[tracker_for(run_dir, spec)], out=lambda line: None)
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "rst_tune.cli", "ui", str(run_dir), "--port", str(port), "--optuna"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        line, dashboard = ui.stdout.readline(), ui.stdout.readline()
        assert line.startswith(f"MLflow: http://127.0.0.1:{port}/#/experiments/"), line
        assert dashboard.strip() == f"Optuna: http://127.0.0.1:{port + 1}/"
        with urllib.request.urlopen(f"http://127.0.0.1:{port + 1}/api/studies", timeout=10) as answer:
            assert "browsed" in answer.read().decode()  # optuna-dashboard serves the run's study
        options = webdriver.ChromeOptions()
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--window-size=1600,1000",
        ):
            options.add_argument(flag)
        options.binary_location = shutil.which("chromium") or options.binary_location
        browser = webdriver.Chrome(
            options=options, service=webdriver.ChromeService(shutil.which("chromedriver"))
        )
        try:
            browser.get(line.split(" ", 1)[1].strip())
            names = [row.label for row in report.trials]
            columns = {"val_accuracy", "test_accuracy", "cost_ratio", "device_seconds"}

            def shown(b) -> bool:  # nothing clicked: the trials are rows, the metric columns on screen
                text = b.find_element("tag name", "body").text
                return all(name in text for name in names) and columns <= _headers_on_screen(b)

            try:
                WebDriverWait(browser, 60, poll_frequency=1).until(shown)
            except TimeoutException:
                pass  # the asserts below say what is missing
            finally:
                ARTIFACTS.mkdir(exist_ok=True)
                browser.save_screenshot(str(ARTIFACTS / "mlflow_ui.png"))
            text = browser.find_element("tag name", "body").text
            assert [name for name in names if name not in text] == [], "trial rows missing"
            assert columns - _headers_on_screen(browser) == set(), "metric columns not on screen"
            assert "workflowType=machine_learning" in browser.current_url  # not the GenAI pages
            assert "browsed" in browser.find_element("tag name", "body").text
        finally:
            browser.quit()
    finally:
        ui.terminate()  # SIGTERM: `rst-tune ui` stops the server it started
        ui.wait(timeout=30)
    for url in (f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{port + 1}/"):
        with pytest.raises(OSError):  # the servers it started are gone with it
            urllib.request.urlopen(url, timeout=5)
