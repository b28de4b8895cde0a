"""RST-Bench: the table format and its checks, the protocol's metric, the replay's rules and
accounting on a synthetic table whose seed means are known, and the builder's resume after SIGKILL."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from conftest import kill_mid_run, optuna_states
from rst_bench.metric import REFERENCE_COST, Truth, iqm, iqm_interval
from rst_bench.problems import PROBLEMS, design
from rst_bench.replay import Lookup, Replay
from rst_bench.searchers import SEARCHERS, searcher
from rst_bench.table import (
    CURVES,
    TableError,
    append_run,
    empty_columns,
    load_table,
    setting_columns,
    write_table,
)

from rst_tune.schedules import make_schedule
from rst_tune.search._pareto import hypervolume
from rst_tune.search._space import DefineByRun

ROOT = Path(__file__).resolve().parent.parent
EPOCHS, STEPS, SEEDS = 4, 10, 3
SYNTHETIC = dataclasses.replace(PROBLEMS["tabular"], configs=32)  # its space and design, 32 rows
OFFSETS = (-0.02, 0.0, 0.02)  # per seed; they sum to zero, so a seed mean is the known mean


def known_mean(p_bar: float, rho: float, grst: float | None) -> float:
    """The synthetic landscape: more sharpness-aware steps help, ρ near 0.15 helps, G-RST a little."""
    return 0.6 + 0.1 * p_bar - 0.02 * math.log(rho / 0.15) ** 2 + (0.01 if grst is not None else 0.0)


def synthetic(path: Path, problem=SYNTHETIC) -> tuple[list[float], list[float]]:
    """A table of `problem` in the real format (SGD, SAM and its designed rows, `SEEDS` seeds,
    `EPOCHS` epochs); returns each row's known mean accuracy and cost ratio."""
    spec = problem.spec()
    rows = [
        {"schedule": {"name": "constant", "params": {"p": p}}, "rho": 0.15, "grst_weight": None}
        for p in (0.0, 1.0)
    ] + design(spec, problem.configs, problem.design_seed)
    columns = empty_columns(setting_columns(problem.identity()))
    means, costs = [], []
    for c, row in enumerate(rows):
        built = make_schedule(row["schedule"]["name"], **row["schedule"]["params"])
        p_bar = built.expected_cost() - 1
        sam = round(p_bar * STEPS)
        means.append(known_mean(sam / STEPS, row["rho"], row["grst_weight"]))
        costs.append(1 + sam / STEPS)
        for k in range(SEEDS):
            epochs = []
            for e in range(1, EPOCHS + 1):
                metrics = {name: 0.0 for name in CURVES} | {"epoch": e, "world_size": 1}
                metrics |= {
                    "val_accuracy": means[-1] * e / EPOCHS + OFFSETS[k],
                    "test_accuracy": means[-1] * e / EPOCHS + OFFSETS[k],
                    "steps": STEPS * e,
                    "sam_steps": sam * e,
                    "propagations": (STEPS + sam) * e,
                    "cost_ratio": costs[-1],
                    "sam_fraction": sam / STEPS,
                    "device_seconds": 0.1 * e * costs[-1],
                }
                epochs.append(metrics)
            label = ["SGD", "SAM"][c] if c < 2 else f"c{c - 2:03d}"
            append_run(
                columns,
                c,
                label,
                {**row, "schedule": {**row["schedule"], "params": built.params}},
                1 + p_bar,
                (k, k),
                epochs,
            )
    write_table(
        path, columns, {"problem": problem.name, "search": problem.identity(), "machine": "synthetic"}
    )
    return means, costs


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "synthetic.parquet"
    return path, *synthetic(path)


def test_the_metric_scores_the_oracle_one_and_sgd_zero(table_file):
    path, means, costs = table_file
    table = load_table(path, SYNTHETIC)
    truth = Truth.of(table)
    np.testing.assert_allclose(truth.accuracy, means, atol=1e-6)  # float32 storage
    np.testing.assert_allclose(truth.cost, costs, atol=1e-6)
    assert truth.reference == pytest.approx((means[0], REFERENCE_COST), abs=1e-6)
    assert truth.value(truth.oracle) == pytest.approx(1.0)
    assert truth.value([table.index("SGD")]) == 0.0
    assert truth.value([]) == 0.0
    # one point: the area it dominates above the reference, by hand
    c = max(range(len(means)), key=lambda i: means[i] - means[0] if costs[i] < 2 else -1)
    by_hand = (means[c] - means[0]) * (2.0 - costs[c])
    assert truth.value([c]) * truth.oracle_volume == pytest.approx(by_hand, abs=1e-5)


def test_the_hypervolume_is_optunas(table_file):
    """The project's 2-D hypervolume against Optuna's, on fronts in Optuna's minimisation form."""
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    for _ in range(20):
        points = rng.uniform(0, 1, size=(12, 2))
        front = [
            (a, c)
            for a, c in points
            if not any(a2 >= a and c2 <= c and (a2, c2) != (a, c) for a2, c2 in points)
        ]
        ours = hypervolume(front, (0.0, 1.0))
        theirs = compute_hypervolume(np.array([[-a, c] for a, c in front]), np.array([0.0, 1.0]))
        assert ours == pytest.approx(theirs, rel=1e-12)


def test_iqm_and_its_interval():
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0]
    assert iqm(values) == pytest.approx(np.mean([2.0, 3.0, 4.0, 5.0]))
    mid, low, high = iqm_interval(values)
    assert low <= mid <= high and high < 100


def test_the_off_table_rule_is_deterministic_and_stays_in_its_family(table_file):
    path, _, _ = table_file
    table = load_table(path)
    spec = PROBLEMS["tabular"].spec()
    lookup = Lookup(table, spec)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3)
    )
    space = DefineByRun(spec)
    for _ in range(60):
        config = space(study.ask()).train
        row = lookup.row(config)
        assert row == Lookup(table, spec).row(config)
        assert table.families[row] == config.schedule.name
        assert math.isnan(table.settings["grst_weight"][row]) == (config.grst_weight is None)
    for row in range(table.shape[0]):  # a row's own settings are answered by itself
        values = {k: v[row] for k, v in table.settings.items()}
        params = {
            k.split(".", 1)[1]: float(v)
            for k, v in values.items()
            if k.startswith("schedule.") and not math.isnan(v)
        }
        grst = None if math.isnan(values["grst_weight"]) else float(values["grst_weight"])
        config = spec.train_config().model_copy(
            update={
                "schedule": spec.train_config().schedule.model_copy(
                    update={"name": table.families[row], "params": params}
                ),
                "rho": float(values["rho"]),
                "grst_weight": grst,
            }
        )
        assert table.final("val_accuracy")[lookup.row(config)].mean() == pytest.approx(
            table.final("val_accuracy")[row].mean()
        )


def test_a_corrupt_or_foreign_table_is_refused_in_one_line(table_file, tmp_path):
    path, _, _ = table_file
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(TableError) as err:
        load_table(broken)
    assert "\n" not in str(err.value) and str(broken) in str(err.value)
    with pytest.raises(TableError, match=r"built for another design than tabular's \(configs differ\)"):
        load_table(path, PROBLEMS["tabular"])
    other = dataclasses.replace(SYNTHETIC, space_file=ROOT / "examples" / "tabular" / "search.yaml")
    with pytest.raises(
        TableError, match=r"built for another space than tabular's \(grst_weight, rho, schedule differ\)"
    ):
        load_table(path, other)


def test_replay_counts_pruned_epochs_and_confirmation_seeds(table_file):
    path, means, costs = table_file
    table = load_table(path, SYNTHETIC)
    spec = PROBLEMS["tabular"].spec()
    replay = Replay(table, spec)
    per_trial = lambda row, epochs: costs[row] / 2 * epochs / EPOCHS  # noqa: E731  closed form
    for name, stopping in (("tpe", "pareto_fair"), ("rst_tune", "asha")):
        trace = replay.run(SEARCHERS[name], stopping, workers=3, seed=1, budget=6.0, num_samples=10)
        trained = trace.trained
        assert trace.pruned > 0 and any(epochs < EPOCHS for _, _, epochs in trained)
        assert trace.compute == pytest.approx(sum(per_trial(row, epochs) for row, _, epochs in trained))
        confirmed = [t for t in trained if t[1] == "confirm"]
        if name == "rst_tune":  # SGD and SAM at least, each at every confirmation seed, in full
            assert len(confirmed) >= 2 * spec.confirm.seeds and len(confirmed) % spec.confirm.seeds == 0
            assert all(epochs == EPOCHS for _, _, epochs in confirmed)
        else:
            assert not confirmed
        assert 0.0 <= trace.final[0] <= 1.0 + 1e-9


@pytest.mark.slow
def test_the_builder_resumes_after_sigkill_without_training_a_pair_twice(tmp_path):
    """SIGKILL the builder's whole process group mid-study, run it again: every (configuration, seed)
    pair is trained by exactly one Ray trial and one Optuna trial, and the table has each epoch once."""
    work, out = tmp_path / "work", tmp_path / "table.parquet"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "rst_bench_build.py"),
        "tabular",
        "--work-dir",
        str(work),
    ]
    command += ["--out", str(out), "--configs", "2", "--seeds", "2", "--epochs", "3"]
    env = {**__import__("os").environ, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    kill_mid_run(first, work / "tabular" / "optuna.db", complete=2)
    states = optuna_states(work / "tabular" / "optuna.db")
    assert 2 <= states.count("COMPLETE") < 8 and not out.exists()

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    study = optuna.load_study(study_name="tabular", storage=f"sqlite:///{work / 'tabular' / 'optuna.db'}")
    pairs = [(t.user_attrs["configuration"], t.user_attrs["seed_index"]) for t in study.trials]
    assert len(study.trials) == 8 and len(set(pairs)) == 8
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    trained = [
        json.loads((folder / "params.json").read_text())
        for folder in (work / "tabular" / "trials").iterdir()
        if (folder / "params.json").is_file()
    ]
    assert sorted((p["configuration"], p["seed_index"]) for p in trained) == sorted(pairs)
    table = load_table(
        out,
        dataclasses.replace(
            PROBLEMS["tabular"], configs=2, seeds=2, train=(*PROBLEMS["tabular"].train, ("epochs", 3))
        ),
    )
    assert table.shape == (4, 2, 3)  # load_table checks each (configuration, seed, epoch) is there once
    log = [json.loads(line) for line in (work / "tabular.build.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log] == ["start", "start", "end"]
    assert table.meta["build"]["attempts"] == 2 and table.meta["build"]["interrupted"] == 1
    assert (
        table.meta["stores_mb"]["optuna.db"] > 0
        and yaml.safe_load((work / "tabular" / "study.yaml").read_text())["seeds"] == 2
    )


def test_searchers_by_name_and_any_optuna_sampler():
    assert isinstance(searcher("optuna:QMCSampler").sampler(None, 0), optuna.samplers.QMCSampler)
    with pytest.raises(
        ValueError, match=r"unknown searcher 'tpee'; valid: random, tpe, tpe_mv, nsga2, gp, rst_tune"
    ):
        searcher("tpee")
    with pytest.raises(ValueError, match="optuna.samplers has no sampler 'Nope'"):
        searcher("optuna:Nope")


def test_replay_time_advances_by_the_recorded_device_seconds(table_file):
    """One worker: the trials run back to back, so the replay's clock is the sum of their recorded
    seconds (0.1 s × epochs × cost ratio here); three workers overlap them."""
    path, _, costs = table_file
    replay = Replay(load_table(path), PROBLEMS["tabular"].spec())
    alone = replay.run(SEARCHERS["random"], "none", workers=1, seed=2, budget=4.0)
    assert alone.seconds == pytest.approx(sum(0.1 * epochs * costs[row] for row, _, epochs in alone.trained))
    together = replay.run(SEARCHERS["random"], "none", workers=3, seed=2, budget=4.0)
    assert together.seconds < 0.5 * sum(0.1 * epochs * costs[row] for row, _, epochs in together.trained)
