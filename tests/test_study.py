"""Studies: the file's errors, the statistics against closed-form float64 math, and a tiny study end to
end through Ray, Optuna and a real MLflow server."""

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import kill_mid_run, optuna_states, rst_tune_process
from mlflow import MlflowClient
from ray.tune import ExperimentAnalysis
from scipy import stats as scipy_stats

from rst_tune.cli import main
from rst_tune.config import ConfigError
from rst_tune.search import load_spec
from rst_tune.study import load_study, parse_study
from rst_tune.study._runner import StudyPlan
from rst_tune.study._stats import spread, welch

SPACES = Path(__file__).parent.parent / "rst_tune" / "search_spaces"
SGD = {"label": "SGD", "schedule": {"name": "constant", "params": {"p": 0.0}}}
SAM = {"label": "SAM", "schedule": {"name": "constant", "params": {"p": 1.0}}}


def _error(path: Path, loader=load_study) -> str:
    with pytest.raises(ConfigError) as err:
        loader(path)
    return str(err.value)


@pytest.mark.parametrize("name", ["study_label_noise", "study_cifar10_resnet18", "study_cifar100_wrn28_10"])
def test_shipped_studies_are_valid(name):
    spec = load_study(SPACES / f"{name}.yaml")
    assert spec.name == name
    labels = [spec.label(i) for i in range(len(spec.configurations))]
    assert spec.seeds >= 5 and {"SGD", "SAM"} <= set(labels)
    costs = {label: 1 + spec.train_config_of(i).schedule.build().mean() for i, label in enumerate(labels)}
    assert costs["SGD"] == 1.0 and costs["SAM"] == 2.0
    assert all(cost == pytest.approx(1.5) for label, cost in costs.items() if label not in ("SGD", "SAM"))


def test_the_rivals_study_compares_the_pairs_its_claims_need():
    spec = load_study(SPACES / "study_rivals.yaml")
    methods = {spec.label(i): spec.train_config_of(i).method.name for i in range(len(spec.configurations))}
    assert set(methods.values()) == {
        "rst",
        "deterministic",
        "periodic",
        "late_phase",
        "looksam",
        "aesam",
        "mesa",
    }
    assert ("AE-SAM", "RST p=0.5") in spec.compare and ("RST p=0.5", "deterministic p=0.5") in spec.compare
    shares = {label: spec.train_config_of(i).expected_cost() for i, label in enumerate(methods)}
    assert all(shares[label] == pytest.approx(1.5) for label in ("AE-SAM", "RST p=0.5", "LookSAM k=2"))


def test_a_comparison_of_an_unknown_label_names_its_key():
    values = {"train": {"epochs": 1}, "configurations": [SGD, SAM], "compare": [["SAM", "RST"]]}
    with pytest.raises(ConfigError, match="'RST' is not a configuration's label") as caught:
        parse_study(values)
    assert [".".join(p.key) for p in caught.value.problems] == ["compare.0.1"]


def test_label_noise_study_has_the_configurations_the_issue_asks_for():
    spec = load_study(SPACES / "study_label_noise.yaml")
    configs = [spec.train_config_of(i) for i in range(len(spec.configurations))]
    assert all(c.dataset == "mnist1d" and c.label_noise == 0.3 for c in configs)
    families = {c.schedule.name for c in configs}
    assert {"constant", "step_up", "step_down", "two_level", "linear_mean", "linear_mirror"} <= families
    assert {c.grst_weight for c in configs if c.grst_weight is not None} == {0.5, 1.0, 1.5}


@pytest.mark.parametrize(
    "train, message",
    [
        ("{lr: -1}", "train.lr: Input should be greater than 0 (got -1)"),
        ("{lr: 0.1, colour: red}", "train.colour: unknown key"),
    ],
)
def test_a_bad_train_section_reads_the_same_in_a_study_and_a_search(tmp_path, train, message):
    study, search = tmp_path / "study.yaml", tmp_path / "search.yaml"
    study.write_text(f"name: s\ntrain: {train}\nconfigurations:\n  - {{label: SGD}}\n")
    search.write_text(f"name: s\ntrain: {train}\nbaselines: false\n")
    assert _error(study) == f"{study}:2: {message}"
    assert _error(search, load_spec) == f"{search}:2: {message}"


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "configurations:\n  - {label: a}\n  - {label: b, grst_wieght: 0.5}\n",
            "4: configurations.1.grst_wieght: unknown key",
        ),
        (
            "configurations:\n  - {rho: -1}\n",
            "3: configurations.0.rho: Input should be greater than or equal to 0 (got -1)",
        ),
        (
            "configurations:\n  - {schedule: {name: cosin}}\n",
            "3: configurations.0.schedule: unknown schedule 'cosin'",
        ),
        (
            "configurations:\n  - {label: a}\n  - {label: a, rho: 0.1}\n",
            "4: configurations.1.label: 'a' is already configuration 0's label",
        ),
        (
            "configurations:\n  - {label: a, seed: 3}\n",
            "3: configurations.0.seed: a study's seeds are `seed` + 0",
        ),
        (
            "configurations:\n  - {label: a, source_trial: -1}\n",
            "3: configurations.0.source_trial: expected a trial number, got -1",
        ),
        (
            "configurations:\n  - {label: a, epochs: 3}\n",
            "3: configurations.0.epochs: every configuration trains train.epochs",
        ),
        (
            "train: {seed: 4}\nconfigurations:\n  - {label: a}\n",
            "2: train.seed: a study's seeds are `seed` + 0",
        ),
        ("configurations:\n  - 0.5\n", "3: configurations.0: Input should be a valid dictionary"),
        ("configurations: []\n", "2: configurations: List should have at least 1 item"),
        (
            "seeds: 1\nconfigurations:\n  - {label: a}\n",
            "2: seeds: Input should be greater than or equal to 2 (got 1)",
        ),
        ("configurations:\n  - {label: a}\nsampler: {name: tpe}\n", "4: sampler: unknown key"),
    ],
)
def test_a_bad_study_file_names_its_key_and_line(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\n" + body)
    assert _error(path).startswith(f"{path}:{message}")


def test_a_bad_study_file_exits_2_with_one_line_and_starts_nothing(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nconfigurations:\n  - {label: a, rho: -1}\n")
    assert main(["study", str(path), "--results-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"rst-tune: error: {path}:3: configurations.0.rho: "
        "Input should be greater than or equal to 0 (got -1)\n"
    )
    assert not (tmp_path / "runs").exists()
    assert main(["study", "no_such_study"]) == 2
    assert "FILE no_such_study: no such file (shipped: " in capsys.readouterr().err
    assert main(["study", "--resume", str(tmp_path), "--seeds", "3"]) == 2
    assert "--resume continues a study as it was started; drop --seeds" in capsys.readouterr().err


def test_the_plan_runs_every_configuration_once_per_seed_first_seeds_first():
    spec = parse_study({"seed": 10, "seeds": 3, "configurations": [SGD, SAM, {"rho": 0.1}]})

    class Trial:
        def __init__(self, number):
            self.number = number

    plan = [StudyPlan(spec)(Trial(n)).to_config() for n in range(spec.num_samples)]
    assert [(p["configuration"], p["train"]["seed"]) for p in plan] == [
        (label, seed) for seed in (10, 11, 12) for label in ("SGD", "SAM", "constant(p=0.5), rho 0.1")
    ]
    assert [p["baseline"] for p in plan[:3]] == ["SGD", "SAM", None]
    assert [p["expected_cost"] for p in plan[:3]] == [1.0, 2.0, 1.5]
    with pytest.raises(RuntimeError, match="beyond the study's 9 trials"):
        StudyPlan(spec)(Trial(9))


def test_spread_and_welch_match_closed_form_float64():
    a, b = [0.91, 0.935, 0.902, 0.948, 0.925], [0.88, 0.9, 0.871, 0.893]
    mean = math.fsum(a) / len(a)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in a) / (len(a) - 1))
    result = spread(a)
    assert (result.n, result.mean, result.sd) == (
        5,
        pytest.approx(mean, abs=1e-15),
        pytest.approx(sd, rel=1e-13),
    )
    t_975_4 = 2.7764451051977987  # t(0.975, 4)
    assert result.ci_high - mean == pytest.approx(t_975_4 * sd / math.sqrt(5), rel=1e-12)
    va, vb = sd**2 / len(a), statistics.variance(b) / len(b)
    t = (mean - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    comparison = welch(a, b)
    assert comparison.difference == pytest.approx(mean - statistics.fmean(b), abs=1e-15)
    assert comparison.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), df), rel=1e-10)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (comparison.ci_low, comparison.ci_high) == (
        pytest.approx(comparison.difference - half, rel=1e-10),
        pytest.approx(comparison.difference + half, rel=1e-10),
    )
    assert math.isnan(spread([0.5]).sd) and math.isnan(welch([0.5], b).p_value)


def _ray_results(run_dir: Path) -> dict[str, list[dict]]:
    """Every trial's last result as Ray stored it, by configuration."""
    analysis = ExperimentAnalysis(str((run_dir / "trials").resolve()))
    by_configuration: dict[str, list[dict]] = {}
    for trial in analysis.trials:
        by_configuration.setdefault(trial.config["configuration"], []).append(trial.last_result)
    return by_configuration


def test_tiny_study_end_to_end_matches_the_statistics_of_its_ray_results(
    local_ray, tmp_path, mlflow_server, capsys
):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "train": {"epochs": 3, "batch_size": 64, "device": "cpu"},
                "configurations": [SGD, SAM],
                "seeds": 3,
                "compare": [["SAM", "SGD"]],
            }
        )
    )
    code = main(
        [
            "study",
            str(path),
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--results-dir",
            str(tmp_path / "runs"),
            "--tracking-uri",
            mlflow_server.url,
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    run_dir = tmp_path / "runs" / "tiny"
    results = _ray_results(run_dir)
    assert {k: len(v) for k, v in results.items()} == {"SGD": 2, "SAM": 2}
    assert {r["config"]["train"]["seed"] for r in results["SAM"]} == {0, 1}
    assert {r["epoch"] for v in results.values() for r in v} == {1}  # --epochs 1 won over the file's 3
    assert {r["propagations"] for r in results["SGD"]} == {
        1150 // 64
    }  # one epoch of digits' 1,150 training images
    accuracy = {k: [r["val_accuracy"] for r in v] for k, v in results.items()}
    with open(run_dir / "study.csv") as f:
        rows = {row["configuration"]: row for row in csv.DictReader(f)}
    for name, values in accuracy.items():
        row = rows[name]
        assert float(row["seeds"]) == 2
        assert float(row["val_accuracy_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert float(row["val_accuracy_sd"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
        costs = [r["cost_ratio"] for r in results[name]]
        assert float(row["cost_ratio_mean"]) == pytest.approx(statistics.fmean(costs), abs=1e-12)
    sam, sgd = accuracy["SAM"], accuracy["SGD"]
    expected = scipy_stats.ttest_ind(sam, sgd, equal_var=False)
    assert float(rows["SAM"]["difference_vs_SGD"]) == pytest.approx(
        statistics.fmean(sam) - statistics.fmean(sgd), abs=1e-12
    )
    if math.isnan(expected.pvalue):
        assert rows["SAM"]["p_value_vs_SGD"] == "nan"
    else:
        assert float(rows["SAM"]["p_value_vs_SGD"]) == pytest.approx(expected.pvalue, rel=1e-9)
    assert float(rows["SGD"]["cost_ratio_mean"]) == 1.0 and float(rows["SAM"]["cost_ratio_mean"]) == 2.0
    table = (run_dir / "study.md").read_text()
    assert table.split("\n", 2)[2] in printed  # the printed table is the Markdown one
    assert (
        f"{statistics.fmean(sam):.2%}".replace("%", "") in table
        and (run_dir / "study.png").stat().st_size > 10_000
    )

    by_seed = {k: {r["config"]["train"]["seed"]: r["val_accuracy"] for r in v} for k, v in results.items()}
    (pair,) = json.loads((run_dir / "study.json").read_text())["paired"]
    expected = scipy_stats.ttest_rel([by_seed["SAM"][s] for s in (0, 1)], [by_seed["SGD"][s] for s in (0, 1)])
    assert (pair["a"], pair["b"], pair["seeds"]) == ("SAM", "SGD", 2)
    assert pair["comparison"]["difference"] == pytest.approx(
        statistics.fmean(sam) - statistics.fmean(sgd), abs=1e-12
    )
    if not math.isnan(expected.pvalue):
        assert pair["comparison"]["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert "Paired by seed" in table

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.data.tags["rst.kind"] == "study" and parent.info.status == "FINISHED"
    assert {"study.yaml", "resolved_study.json", "study.md", "study.csv", "study.json", "study.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    logged = {(c.data.tags["rst.configuration"], c.data.params["train.seed"]): c for c in children}
    assert set(logged) == {(name, seed) for name in ("SGD", "SAM") for seed in ("0", "1")}
    for name, results_of in results.items():
        for result in results_of:
            child = logged[(name, str(result["config"]["train"]["seed"]))]
            assert child.info.status == "FINISHED"
            assert child.data.metrics["val_accuracy"] == pytest.approx(result["val_accuracy"])


@pytest.mark.slow
def test_study_resumed_after_sigkill_trains_every_configuration_seed_pair_once(tmp_path):
    path = tmp_path / "resume.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "resume",
                "train": {"epochs": 4, "batch_size": 128, "device": "cpu"},
                "configurations": [SGD, SAM],
                "seeds": 3,
                "seed": 5,
            }
        )
    )
    run_dir = tmp_path / "runs" / "resume"
    kill_mid_run(
        rst_tune_process("study", str(path), "--results-dir", str(tmp_path / "runs")), run_dir / "optuna.db"
    )
    assert 2 <= optuna_states(run_dir / "optuna.db").count("COMPLETE") < 6  # killed mid-study

    second = rst_tune_process("study", "--resume", str(run_dir))
    output, _ = second.communicate(timeout=400)
    assert second.returncode == 0, output
    results = _ray_results(run_dir)
    pairs = sorted((name, r["config"]["train"]["seed"]) for name, rows in results.items() for r in rows)
    assert pairs == sorted((name, seed) for name in ("SGD", "SAM") for seed in (5, 6, 7))
    assert all(r["epoch"] == 4 for rows in results.values() for r in rows)
    assert optuna_states(run_dir / "optuna.db") == ["COMPLETE"] * 6
    with open(run_dir / "study.csv") as f:
        rows = {row["configuration"]: row for row in csv.DictReader(f)}
    assert rows["SGD"]["seeds"] == rows["SAM"]["seeds"] == "3"
    assert float(rows["SAM"]["val_accuracy_mean"]) == pytest.approx(
        statistics.fmean(r["val_accuracy"] for r in results["SAM"]), abs=1e-12
    )
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 7 and sorted(
        (r.data.tags["rst.configuration"], r.data.params["train.seed"]) for r in children
    ) == sorted((name, str(seed)) for name in ("SGD", "SAM") for seed in (5, 6, 7))
    assert all(r.info.status == "FINISHED" for r in runs)
