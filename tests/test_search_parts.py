"""The search's parts on their own: Pareto front and hypervolume against closed forms, the
Pareto-fair stopping rule, and the searcher's trial states against a real Optuna SQLite study."""

import itertools
import math
import random

import optuna
import pytest
from optuna._hypervolume import compute_hypervolume
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from rst_tune.config import ConfigError
from rst_tune.search import hypervolume, pareto_front, parse_spec
from rst_tune.search._schedulers import ParetoFairScheduler
from rst_tune.search._searcher import RSTSearch

SPACE = {
    "schedule": {"constant": {"p": {"low": 0.0, "high": 1.0}}},
    "rho": {"low": 0.01, "high": 0.2, "log": True},
}


def test_pareto_front_of_a_known_set():
    points = [
        (0.90, 100),
        (0.95, 150),
        (0.93, 150),
        (0.99, 200),
        (0.85, 90),
        (0.95, 160),
        (0.80, 120),
        (0.99, 200),
    ]
    # (0.93,150) loses to (0.95,150); (0.95,160) to (0.95,150); (0.80,120) to (0.90,100);
    # equal points both stay
    assert pareto_front(points) == [0, 1, 3, 4, 7]


def test_pareto_front_matches_brute_force_definition():
    rng = random.Random(0)
    points = [(round(rng.random(), 2), rng.randrange(10)) for _ in range(60)]
    front = set(pareto_front(points))
    for i, (a, c) in enumerate(points):
        dominated = any(a2 >= a and c2 <= c and (a2, c2) != (a, c) for a2, c2 in points)
        assert (i in front) == (not dominated)


def test_hypervolume_closed_form_and_against_optuna():
    # two steps: [0, 0.9] x [100, 200] and [0.9, 0.95] x [150, 200]
    assert hypervolume([(0.9, 100), (0.95, 150)], (0.0, 200)) == pytest.approx(
        0.9 * 100 + 0.05 * 50, abs=1e-12
    )
    assert hypervolume([(0.5, 250)], (0.0, 200)) == 0.0  # beyond the reference point: no area
    rng = random.Random(1)
    points = [(rng.random(), rng.uniform(1, 2)) for _ in range(40)]
    front = [points[i] for i in pareto_front(points)]
    import numpy as np

    as_minimisation = np.array([[-a, c] for a, c in front], dtype=np.float64)
    assert hypervolume(front, (0.0, 2.0)) == pytest.approx(
        compute_hypervolume(as_minimisation, np.array([0.0, 2.0])), rel=1e-12
    )


def test_pareto_fair_rule_only_stops_for_cheaper_or_equal_rivals():
    scheduler = ParetoFairScheduler(grace_epochs=2, min_dominating=1)

    def result(epoch, cost, accuracy):
        return scheduler.on_trial_result(
            None, None, {"epoch": epoch, "expected_cost": cost, "val_accuracy": accuracy}
        )

    assert result(1, 1.0, 0.9) == TrialScheduler.CONTINUE  # first at epoch 1
    # beaten by a cheaper rival, but inside the grace epochs
    assert result(1, 1.5, 0.5) == TrialScheduler.CONTINUE
    assert result(2, 1.0, 0.9) == TrialScheduler.CONTINUE
    assert result(2, 2.0, 0.95) == TrialScheduler.CONTINUE  # more accurate than every cheaper rival
    assert result(2, 0.5, 0.1) == TrialScheduler.CONTINUE  # the cheapest: nobody of lower-or-equal cost
    assert result(2, 1.5, 0.85) == TrialScheduler.STOP  # 1.0 reached 0.9 at cost ≤ 1.5
    assert result(2, 1.0, 0.9) == TrialScheduler.CONTINUE  # a tie is not a defeat
    two = ParetoFairScheduler(grace_epochs=1, min_dominating=2)
    assert (
        two.on_trial_result(None, None, {"epoch": 1, "expected_cost": 1.0, "val_accuracy": 0.9}) == "CONTINUE"
    )
    assert (
        two.on_trial_result(None, None, {"epoch": 1, "expected_cost": 2.0, "val_accuracy": 0.5}) == "CONTINUE"
    )
    assert (
        two.on_trial_result(None, None, {"epoch": 1, "expected_cost": 1.0, "val_accuracy": 0.8}) == "CONTINUE"
    )
    assert two.on_trial_result(None, None, {"epoch": 1, "expected_cost": 1.2, "val_accuracy": 0.7}) == "STOP"


def _searcher(tmp_path, **settings):
    spec = parse_spec(
        {"name": "parts", "train": {"epochs": 3}, "space": SPACE, "baselines": False, **settings}
    )
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db")
    return RSTSearch(spec, storage), storage


def _final(epoch=3, accuracy=0.9, propagations=120, cost=1.5):
    return {
        "epoch": epoch,
        "val_accuracy": accuracy,
        "propagations": propagations,
        "cost_ratio": cost,
        "acc_per_prop": accuracy / cost,
        "train_loss": 0.1,
        "val_loss": 0.2,
    }


def test_the_study_names_its_objectives_as_the_results_do(tmp_path):
    searcher, _ = _searcher(tmp_path)
    assert searcher.study.metric_names == ["val_accuracy", "propagations"]
    (tmp_path / "b").mkdir()
    budget, _ = _searcher(tmp_path / "b", objective="accuracy_under_budget", budget=1.5)
    assert budget.study.metric_names == ["val_accuracy"]


def test_searcher_tells_honest_states(tmp_path):
    searcher, _ = _searcher(tmp_path)
    for trial_id in "abcde":
        config = searcher.suggest(trial_id)
        assert config["train"]["epochs"] == 3 and "label" in config
    searcher.on_trial_complete("a", _final())
    searcher.on_trial_complete("b", _final(epoch=1))  # a scheduler stopped it
    searcher.on_trial_complete("c", {**_final(), "val_accuracy": math.nan})
    searcher.on_trial_result("d", {**_final(epoch=2), "failure": "diverged: train_loss is nan at epoch 2"})
    searcher.on_trial_complete("d", error=True)
    searcher.on_trial_complete("e", error=True)
    trials = {t.user_attrs["ray_trial_id"]: t for t in searcher.study.get_trials()}
    assert trials["a"].state == TrialState.COMPLETE and trials["a"].values == [0.9, 120]
    assert trials["a"].user_attrs["val_accuracy"] == 0.9 and trials["a"].user_attrs["epoch"] == 3
    assert trials["b"].state == TrialState.PRUNED
    assert trials["b"].user_attrs["state_reason"] == "stopped early by the scheduler after epoch 1 of 3"
    assert trials["c"].state == TrialState.FAIL and "non-finite" in trials["c"].user_attrs["state_reason"]
    assert trials["d"].state == TrialState.FAIL
    assert trials["d"].user_attrs["state_reason"] == "diverged: train_loss is nan at epoch 2"
    assert (
        trials["e"].state == TrialState.FAIL and "raised an error" in trials["e"].user_attrs["state_reason"]
    )
    assert not [t for t in searcher.study.get_trials() if t.state == TrialState.RUNNING]


def test_a_trial_is_complete_when_it_ran_its_own_epochs(tmp_path):
    """With `epochs` searched, a trial that ran the epochs it drew is COMPLETE, one stopped short of
    them PRUNED, whatever `train.epochs` says."""
    space = {**SPACE, "epochs": {"choices": [2, 4]}}
    searcher, _ = _searcher(tmp_path, space=space, train={"epochs": 3})
    drawn = {trial_id: searcher.suggest(trial_id)["train"]["epochs"] for trial_id in "abcdefgh"}
    assert set(drawn.values()) == {2, 4}
    short = next(trial_id for trial_id, epochs in drawn.items() if epochs == 4)
    for trial_id, epochs in drawn.items():
        searcher.on_trial_complete(trial_id, _final(epoch=3 if trial_id == short else epochs))
    states = {t.user_attrs["ray_trial_id"]: t.state for t in searcher.study.get_trials()}
    assert states == {t: TrialState.PRUNED if t == short else TrialState.COMPLETE for t in drawn}


def test_searcher_reuses_trials_an_interrupted_driver_left_running(tmp_path):
    searcher, storage = _searcher(tmp_path)
    searcher.suggest("a")
    orphan = searcher.study.ask()  # asked, never reached Ray: what a killed driver leaves behind
    orphan_params = {
        "schedule": "constant",
        "schedule.constant.p": orphan.suggest_float("schedule.constant.p", 0, 1),
    }
    config = searcher.suggest("b")
    assert config["train"]["schedule"]["params"]["p"] == orphan_params["schedule.constant.p"]
    assert searcher.study.trials[orphan.number].user_attrs["ray_trial_id"] == "b"
    assert len(searcher.study.trials) == 2


def test_budget_objective_never_suggests_over_budget(tmp_path):
    searcher, _ = _searcher(
        tmp_path, objective="accuracy_under_budget", budget=1.3, sampler={"name": "random"}
    )
    costs = [searcher.suggest(f"t{i}")["expected_cost"] for i in range(6)]
    assert all(cost <= 1.3 for cost in costs)
    skipped = [t for t in searcher.study.get_trials() if t.state == TrialState.PRUNED]
    assert skipped and all(
        t.user_attrs["state_reason"].startswith("not trained: expected cost") for t in skipped
    )
    assert all(t.system_attrs["constraints:cost_over_budget"] > 0 for t in skipped)
    searcher.on_trial_complete("t0", _final(cost=1.31))  # realised cost beyond the budget: infeasible
    searcher.on_trial_complete("t1", _final(cost=1.2))
    by_id = {t.user_attrs.get("ray_trial_id"): t for t in searcher.study.get_trials()}
    assert by_id["t0"].system_attrs["constraints:cost_over_budget"] == pytest.approx(0.01)
    assert by_id["t1"].system_attrs["constraints:cost_over_budget"] == pytest.approx(-0.1)
    assert [t.number for t in searcher.study.best_trials] == [by_id["t1"].number]


def test_budget_that_no_schedule_meets_is_a_clear_error():
    space = {
        "schedule": {
            "constant": {"p": {"low": 0.5, "high": 1.0}},
            "step": {
                "p_early": {"low": 0.3, "high": 1.0},
                "p_late": 0.6,
                "switch": {"low": 0.25, "high": 0.5},
            },
        }
    }
    settings = {"name": "x", "space": space, "baselines": False, "objective": "accuracy_under_budget"}
    # cheapest corner: step(p_early=0.3, p_late=0.6, switch=0.5), p̄ = 0.45
    assert parse_spec({**settings, "budget": 1.45}).cheapest_schedule()[0] == pytest.approx(1.45)
    with pytest.raises(
        ConfigError,
        match=r"budget: 1.4 is below the cheapest expected cost in the space \(1.45, step\(p_early=0.3",
    ):
        parse_spec({**settings, "budget": 1.4})


def test_samplers_are_selectable_and_seeded(tmp_path):
    for name, expected in [
        ("tpe", optuna.samplers.TPESampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("gp", optuna.samplers.GPSampler),
        ("random", optuna.samplers.RandomSampler),
    ]:
        runs = []
        for run in range(2):
            folder = tmp_path / f"{name}{run}"
            folder.mkdir()
            searcher, _ = _searcher(folder, sampler={"name": name}, seed=7)
            assert isinstance(searcher.study.sampler, expected)
            runs.append([searcher.suggest(f"t{i}")["train"]["rho"] for i in range(3)])
        assert runs[0] == runs[1], name
    assert len(set(itertools.chain(runs[0]))) == 3


def test_optuna_takes_up_a_running_trial(tmp_path):
    """What the one adapter relies on: a handle made from a RUNNING trial's number acts on that trial,
    and the study then asks for a new one."""
    from rst_tune.search._optuna import take_up

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db")
    study = optuna.create_study(
        study_name="adopt", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    left = study.ask()
    value = left.suggest_float("x", 0.0, 1.0)
    again = take_up(optuna.load_study(study_name="adopt", storage=storage), storage, left.number)
    assert again.number == left.number and again.suggest_float("x", 0.0, 1.0) == value  # the same parameter
    again.set_user_attr("taken_up", True)
    study.tell(again, 0.5)
    (trial,) = study.get_trials()
    assert (
        trial.state == TrialState.COMPLETE and trial.value == 0.5 and trial.user_attrs == {"taken_up": True}
    )
    assert study.ask().number == left.number + 1


def test_searcher_saved_and_restored_goes_on_where_it_was(tmp_path):
    """What Ray does on resume: a new searcher restores the saved one's state."""
    searcher, storage = _searcher(tmp_path)
    configs = {trial_id: searcher.suggest(trial_id) for trial_id in "ab"}
    searcher.on_trial_complete("a", _final())
    searcher.save(str(tmp_path / "searcher.pkl"))
    spec = parse_spec({"name": "parts", "train": {"epochs": 3}, "space": SPACE, "baselines": False})
    restored = RSTSearch(spec, storage, enqueue=False)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("b") == configs["b"]  # Ray asks again for a trial it had
    restored.on_trial_complete("a", _final(accuracy=0.5))  # completed before the save: ignored
    restored.on_trial_complete("b", _final(accuracy=0.8))
    restored.suggest("c")
    trials = {t.user_attrs["ray_trial_id"]: t for t in restored.study.get_trials()}
    assert trials["a"].values == [0.9, 120] and trials["b"].values == [0.8, 120]
    assert trials["c"].number == 2 and trials["c"].state == TrialState.RUNNING
