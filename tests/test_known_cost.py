"""The cost-aware search's parts: closed-form EHVI against Monte Carlo in float64, the sampler's
proposals (valid, within the budget) on a real Optuna SQLite study, the hypervolume stopping rule on
constructed learning curves, and sequential confirmation's decisions against recomputed intervals."""

import math
import random
import statistics

import numpy as np
import optuna
import pytest
from conftest import confirmation_row
from optuna.trial import TrialState
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher
from scipy import stats as scipy_stats

from rst_tune.config import load_config
from rst_tune.search import hypervolume, parse_spec
from rst_tune.search._known_cost import KnownCostSampler, ehvi
from rst_tune.search._pareto import pareto_front
from rst_tune.search._record import TrialRecord, TrialRow, trial_rows
from rst_tune.search._schedulers import HypervolumeScheduler
from rst_tune.search._searcher import RSTSearch, build_sampler
from rst_tune.search._space import Coordinates, DefineByRun
from rst_tune.study._confirm import confirmed_points
from rst_tune.study._runner import StudyPlan
from rst_tune.study._sequential import DONE, MIN_SEEDS, WAIT, next_seed
from rst_tune.study._spec import parse_study

FRONT = [(0.70, 1.0), (0.78, 1.3), (0.80, 1.6), (0.76, 1.5)]  # the last is dominated
REFERENCE = (0.65, 2.0)


def test_ehvi_equals_monte_carlo_and_the_exact_improvement():
    rng = np.random.default_rng(0)
    front = [FRONT[i] for i in pareto_front(FRONT)]
    before = hypervolume(front, REFERENCE)
    mean, sd, cost = (
        np.array([0.79, 0.74, 0.83, 0.60]),
        np.array([0.02, 0.05, 0.01, 0.03]),
        np.array([1.2, 1.05, 1.9, 1.1]),
    )
    closed = ehvi(mean, sd, cost, FRONT, REFERENCE)
    for m, s, c, value in zip(mean, sd, cost, closed):
        gains = []
        for y in rng.normal(m, s, 100_000):
            points = front + [(y, c)]
            gains.append(hypervolume([points[i] for i in pareto_front(points)], REFERENCE) - before)
        error = statistics.stdev(gains) / math.sqrt(len(gains))
        assert abs(value - statistics.fmean(gains)) < 4 * error + 1e-12
    # with no uncertainty, the improvement itself; beyond the reference cost, nothing
    exact = ehvi(np.array([0.79]), np.array([0.0]), np.array([1.2]), FRONT, REFERENCE)[0]
    points = front + [(0.79, 1.2)]
    assert exact == pytest.approx(
        hypervolume([points[i] for i in pareto_front(points)], REFERENCE) - before, abs=1e-12
    )
    assert ehvi(np.array([0.9]), np.array([0.01]), np.array([2.0]), FRONT, REFERENCE)[0] == 0.0


def _accuracy(record: TrialRecord) -> float:
    """A closed-form landscape: sharpness-aware steps help, ρ near 0.15 helps."""
    p_bar = record.expected_cost - 1
    return 0.6 + 0.15 * math.sqrt(p_bar) - 0.03 * math.log(record.train.rho / 0.15) ** 2


SPACE = {
    "schedule": {
        "constant": {"mean": {"low": 0.0, "high": 1.0}},
        "linear": {"mean": {"low": 0.0, "high": 1.0}, "tilt": {"low": -1.0, "high": 1.0}},
    },
    "rho": {"low": 0.02, "high": 0.5, "log": True},
    "grst_weight": {"low": 0.1, "high": 1.0, "log": True, "optional": True},
}


@pytest.mark.parametrize(
    "objective", ["pareto", pytest.param("accuracy_under_budget", marks=pytest.mark.slow)]
)
def test_the_sampler_proposes_valid_configurations_within_the_budget(tmp_path, objective):
    budget = {"budget": 1.4} if objective == "accuracy_under_budget" else {}
    spec = parse_spec(
        {
            "name": "known",
            "space": SPACE,
            "objective": objective,
            **budget,
            "sampler": {"name": "known_cost", "startup_trials": 4},
            "num_samples": 16,
            "baselines": False,
        }
    )
    sampler = build_sampler(spec)
    assert isinstance(sampler, KnownCostSampler)
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path}/study.db",
        sampler=sampler,
        directions=["maximize", "minimize"] if objective == "pareto" else ["maximize"],
    )
    space = DefineByRun(spec)
    coordinates = Coordinates(spec)

    def objective_function(trial):
        record = space(trial)
        accuracy = _accuracy(record)
        return (accuracy, record.expected_cost) if objective == "pareto" else accuracy

    study.optimize(objective_function, n_trials=spec.num_samples)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == spec.num_samples
    for trial in trials:
        record = coordinates.record(trial.params)  # a valid configuration of the space
        assert load_config(record.train.model_dump()) == record.train
        for name, value in trial.params.items():
            distribution = trial.distributions[name]
            if isinstance(distribution, optuna.distributions.CategoricalDistribution):
                assert value in distribution.choices
            else:
                assert distribution.low <= value <= distribution.high
        if budget:
            assert record.expected_cost <= budget["budget"]
    assert sampler.alpha(study) == 0.0  # cooled down over the search's trials


def _curve(final: float, epochs: int) -> list[float]:
    """Every trial gains the same from epoch e to the last: 0.2 · (1 − e / epochs)."""
    return [final - 0.2 * (1 - e / epochs) for e in range(1, epochs + 1)]


def test_early_stopping_never_stops_a_trial_that_could_still_add_hypervolume():
    """Constructed curves where every trial's gain to its last epoch is the same function of the
    epoch: the rule's bound is then exact, so a stopped trial is one whose final accuracy would not
    have beaten the complete trials that cost no more when it was stopped."""
    epochs, rng = 6, random.Random(0)
    trials = [(rng.uniform(0.6, 0.9), rng.choice([1.0, 1.2, 1.5, 1.8, 2.0])) for _ in range(40)]
    scheduler = HypervolumeScheduler(epochs, grace_epochs=1, margin=0.0, min_complete=4)
    complete: list[tuple[float, float]] = []
    stopped = 0
    for number, (final, cost) in enumerate(trials):
        trial = Trial("t", config={"train": {"epochs": epochs}}, trial_id=str(number), stub=True)
        scheduler.on_trial_add(None, trial)
        for epoch, accuracy in enumerate(_curve(final, epochs), 1):
            result = {"epoch": epoch, "val_accuracy": accuracy, "expected_cost": cost}
            decision = scheduler.on_trial_result(None, trial, result)
            if decision == TrialScheduler.STOP:
                break
        scheduler.on_trial_complete(None, trial, result)
        if decision == TrialScheduler.STOP:
            stopped += 1
            best = max((a for a, c in complete if c <= cost), default=-math.inf)
            assert final <= best, f"trial {number} would have added hypervolume"
        else:
            assert epoch == epochs
            complete.append((final, cost))
    assert stopped >= 10  # and it stops the others
    assert len(complete) + stopped == len(trials)


def _confirm(truth: dict[str, tuple[list[float], int]], seeds: int, workers: int = 1) -> list[TrialRow]:
    """Run sequential confirmation to its end with `workers` trials at a time, each (point, seed)
    answered by `truth`: label -> (val_accuracy per seed index, propagations)."""
    labels, rows, running = list(truth), [], []
    while True:
        while len(running) < workers and not isinstance(
            following := next_seed(rows, labels, seeds, "propagations", 0.95), str
        ):
            index, seed = following
            running.append(len(rows))
            rows.append(confirmation_row(len(rows), labels[index], seed, 0.0, 0, "RUNNING"))
        if not running:
            assert following == DONE
            return rows
        n = running.pop(0)
        label, seed = rows[n].configuration, rows[n].record.seed_index
        rows[n] = confirmation_row(n, label, seed, truth[label][0][seed], truth[label][1], "COMPLETE")


def test_sequential_confirmation_spends_seeds_only_where_the_front_is_undecided():
    """cheap is behind everyone (decided at 2 seeds); better is ahead of the dearer close by a
    consistent 1.5 points, which 2 seeds cannot show but 3 do (close leaves the front); better and
    toss are a toss-up no budget of 5 seeds could decide (futile: 2 seeds each)."""
    truth = {
        "trial 1: cheap": ([0.700, 0.705, 0.702, 0.701, 0.703], 100),
        "trial 2: better": ([0.800, 0.806, 0.803, 0.801, 0.804], 150),
        "trial 3: close": ([0.780, 0.796, 0.788, 0.790, 0.789], 160),
        "trial 4: toss": ([0.796, 0.809, 0.790, 0.815, 0.798], 170),
    }
    for workers in (1, 2):
        rows = _confirm(truth, seeds=5, workers=workers)
        pairs = [(r.configuration, r.record.seed_index) for r in rows]
        assert len(pairs) == len(set(pairs))  # no (point, seed) twice
        spent = {label: sum(1 for c, _ in pairs if c == label) for label in truth}
        assert spent == {"trial 1: cheap": 2, "trial 2: better": 3, "trial 3: close": 3, "trial 4: toss": 2}
        points = {p.trial: p for p in confirmed_points(rows, "propagations")}
        assert {n: p.on_front for n, p in points.items()} == {1: True, 2: True, 3: False, 4: True}
        for label, (values, _) in truth.items():  # intervals as recomputed from the seeds it got
            got = values[: spent[label]]
            half = scipy_stats.t.ppf(0.975, len(got) - 1) * statistics.stdev(got) / math.sqrt(len(got))
            point = points[int(label.split()[1][0])]
            assert point.seeds == len(got)
            assert point.val_accuracy_ci == pytest.approx(
                (statistics.fmean(got) - half, statistics.fmean(got) + half), abs=1e-12
            )
    decided = {"trial 1: a": ([0.70, 0.705, 0.71], 100), "trial 2: b": ([0.80, 0.806, 0.81], 150)}
    rows = _confirm(decided, seeds=3)
    assert len(rows) == 2 * MIN_SEEDS  # decided at two seeds each: the third is never spent
    assert next_seed(rows[:3], list(decided), 3, "propagations", 0.95) == (1, 1)
    running = [*rows[:3], confirmation_row(3, "trial 2: b", 1, 0.0, 0, "RUNNING")]
    assert next_seed(running, list(decided), 3, "propagations", 0.95) == WAIT
    # a failed seed is not trained again: the pair is open without two common seeds, seed 2 follows
    failed = [*rows[:3], confirmation_row(3, "trial 2: b", 1, 0.0, 0, "FAIL")]
    assert next_seed(failed, list(decided), 3, "propagations", 0.95) == (1, 2)  # b needs a 2nd result
    a_only = [row for row in rows if row.configuration == "trial 1: a"]
    both = a_only + [confirmation_row(n, "trial 2: b", n - 2, 0.0, 0, "FAIL") for n in (2, 3)]
    assert next_seed(both, list(decided), 3, "propagations", 0.95) == (1, 2)
    # two points of equal cost: either may beat the other, so the one ahead gets the seeds
    tie = {"trial 1: a": ([0.70, 0.72, 0.71], 100), "trial 2: b": ([0.73, 0.74, 0.735], 100)}
    assert len(_confirm(tie, seeds=3)) == 2 * MIN_SEEDS + 2


def test_a_sequential_study_ends_and_prunes_a_trial_a_killed_driver_left_unconfigured(tmp_path):
    """Through the searcher Ray drives: a sequential study hands out its seeds, waits while they run,
    and once the front is decided says FINISHED, pruning a trial an interrupted driver had asked but
    never configured (it would otherwise stay RUNNING and block every resume)."""
    study = parse_study(
        {
            "name": "sequential",
            "train": {"epochs": 1},
            "configurations": [
                {"label": label, "schedule": {"name": "constant", "params": {"p": p}}}
                for label, p in (("a", 0.0), ("b", 1.0))
            ],
            "seeds": 3,
            "sequential": True,
        }
    )
    plan = StudyPlan(study)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db")
    searcher = RSTSearch(study.search_spec(), storage, enqueue=False, space=plan, more=plan.more)
    configs = {trial_id: searcher.suggest(trial_id) for trial_id in "wxyz"}
    assert sorted((c["configuration"], c["seed_index"]) for c in configs.values()) == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("b", 1),
    ]
    assert searcher.suggest("v") is None  # all four in flight: wait
    orphan = searcher.study.ask()  # asked by a driver killed before it wrote the trial's record
    for trial_id, config in configs.items():  # b, dearer, is far ahead: nothing is left to decide
        accuracy = (0.6 if config["configuration"] == "a" else 0.8) + 0.01 * config["seed_index"]
        cost = 100 if config["configuration"] == "a" else 200
        row = confirmation_row(0, config["configuration"], config["seed_index"], accuracy, cost)
        searcher.on_trial_complete(trial_id, dict(row.metrics))
    assert searcher.suggest("u") == Searcher.FINISHED
    left = searcher.study.trials[orphan.number]
    assert left.state == TrialState.PRUNED and "interrupted driver" in left.user_attrs["state_reason"]
    assert plan.finished(trial_rows(searcher.study))
