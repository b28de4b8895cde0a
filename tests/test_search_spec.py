"""Search-space files: every shipped file loads, and each class of bad input gets its own clear error."""

from pathlib import Path

import optuna
import pytest
import yaml

from rst_tune.config import ConfigError
from rst_tune.search import load_spec, parse_spec
from rst_tune.search._space import Coordinates, DefineByRun, optuna_params, points_to_evaluate, trial_seed

SPACES = sorted(
    p
    for p in (Path(__file__).parent.parent / "rst_tune" / "search_spaces").glob("*.yaml")
    if not p.stem.startswith("study_")
)
GOOD = {
    "train": {"epochs": 2},
    "space": {
        "schedule": {
            "constant": {"p": {"low": 0.0, "high": 1.0}},
            "step": {"p_early": {"low": 0, "high": 1}, "p_late": 1.0, "switch": {"low": 0.1, "high": 0.9}},
        },
        "rho": {"low": 0.01, "high": 0.5, "log": True},
        "grst_weight": {"low": 0.05, "high": 1.0, "log": True, "optional": True},
        "batch_size": {"low": 32, "high": 128, "step": 32, "type": "int"},
        "adaptive": {"choices": [False, True]},
    },
}


def test_shipped_spaces_load_and_have_baselines():
    names = {path.stem for path in SPACES}
    assert {"default", "cifar10_resnet18", "cifar100_wrn28_10", "paper_six_groups"} <= names
    for path in SPACES:
        spec = load_spec(path)
        points = points_to_evaluate(spec)
        records = [DefineByRun(spec)(optuna.trial.FixedTrial(point)) for point in points[:2]]
        assert [r.baseline for r in records] == ["SGD", "SAM"], path
        assert [r.expected_cost for r in records] == [1.0, 2.0], path
        assert spec.name == path.stem


def test_paper_six_groups_evaluates_each_group_once():
    spec = load_spec(SPACES[[p.stem for p in SPACES].index("paper_six_groups")])
    families = [point["schedule"] for point in points_to_evaluate(spec)]
    assert families == [
        "constant",
        "constant",
        "constant",
        "step_up",
        "step_down",
        "two_level",
        "linear_mean",
        "linear_mirror",
    ]
    assert spec.num_samples == len(families)


def _error(values, tmp_path=None) -> str:
    with pytest.raises(ConfigError) as info:
        if tmp_path is None:
            parse_spec(values)
        else:
            path = tmp_path / "space.yaml"
            path.write_text(values)
            load_spec(path)
    return str(info.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_sample": 3}, "num_sample: unknown key"),
        ({"num_samples": "many"}, "num_samples: Input should be a valid integer"),
        ({"num_samples": 0}, "num_samples: Input should be greater than or equal to 1"),
        (
            {"objective": "speed"},
            "objective: Input should be 'pareto', 'acc_per_prop' or 'accuracy_under_budget'",
        ),
        (
            {"sampler": {"name": "cmaes"}},
            "sampler.name: Input should be 'tpe', 'nsga2', 'gp', 'random' or 'known_cost'",
        ),
        ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than or equal to 1"),
        ({"train": {"learning_rate": 0.1}}, "train.learning_rate: unknown key"),
        (
            {"train": {"device": "cuda"}},
            "train.device: trains on the GPUs Ray assigns a trial: set resources.gpu",
        ),
        ({"space": {"rh0": {"low": 0.01, "high": 0.1}}}, "space.rh0: unknown key"),
        ({"space": {"rho": {"low": 0.5, "high": 0.1}}}, "space.rho: low (0.5) must be below high (0.1)"),
        ({"space": {"rho": {"low": 0.0, "high": 0.1, "log": True}}}, "space.rho: log scale needs low > 0"),
        (
            {"space": {"rho": {"low": -0.1, "high": 0.1}}},
            "space.rho: value -0.1 is not a valid setting (rho: Input should be greater than or equal to 0",
        ),
        ({"space": {"rho": {"lo": 0.01, "high": 0.1}}}, "space.rho.lo: unknown key"),
        ({"space": {"rho": 0.05}}, "space.rho: expected a dimension (low/high or choices), got 0.05"),
        ({"space": {"schedule": {"zigzag": {"p": 0.5}}}}, "space.schedule.zigzag: unknown schedule 'zigzag'"),
        ({"space": {"schedule": {"constant": {}}}, "baselines": False}, "space.schedule.constant.p: missing"),
        (
            {"space": {"schedule": {"constant": {"p": 0.5, "q": 1}}}},
            "space.schedule.constant.q: unknown parameter",
        ),
        (
            {"space": {"schedule": {"constant": {"p": {"low": 0.0, "high": 1.5}}}}},
            "space.schedule.constant.p: schedule 'constant': parameter p=1.5 must be a number in [0, 1]",
        ),
        (
            {"space": {"schedule": {"step_up": {"switch": 0.5}}}},
            "baselines: SGD and SAM baselines need the constant schedule family",
        ),
        (
            {"space": {"schedule": {"constant": {"p": {"low": 0.2, "high": 1.0}}}}},
            "baselines.0.schedule.params.p: 0.0 is outside the searched range",
        ),
        ({"objective": "accuracy_under_budget"}, "budget: accuracy_under_budget needs a budget"),
        (
            {"objective": "accuracy_under_budget", "budget": 2.5},
            "budget: Input should be less than or equal to 2",
        ),
        ({"budget": 1.5}, "budget: only used by objective accuracy_under_budget, not pareto"),
        ({"early_stopping": {"rule": "asha"}}, "early_stopping.rule: asha needs a scalar objective"),
        ({"points_to_evaluate": [{"momentum": 0.5}]}, "points_to_evaluate.0.momentum: not a searched key"),
        (
            {"points_to_evaluate": [{"rho": 0.9}]},
            "points_to_evaluate.0.rho: 0.9 is outside the searched range",
        ),
    ],
)
def test_each_class_of_bad_input_names_its_key(change, message):
    values = {**GOOD, **change}
    if "space" in change:
        values["space"] = (
            {**GOOD["space"], **change["space"]} if "schedule" not in change["space"] else change["space"]
        )
    with pytest.raises(ConfigError) as info:
        spec = parse_spec(values)
        points_to_evaluate(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_errors_give_the_file_line(tmp_path):
    text = yaml.safe_dump(GOOD, sort_keys=False).replace("log: true\n", "log: true\n    step: 0.1\n", 1)
    message = _error(text, tmp_path)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.strip().startswith("rho:"))
    assert f"space.yaml:{line}: space.rho: log and step cannot be combined" in message
    assert "space.yaml:3: train.epochs" in _error("name: x\ntrain:\n  epochs: -1\n", tmp_path)
    assert "not valid YAML" in _error("train: [1, 2\n", tmp_path)


def test_define_by_run_compiles_every_kind_of_dimension(tmp_path):
    spec = parse_spec(GOOD)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db")
    study = optuna.create_study(
        storage=storage, directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3)
    )
    for point in points_to_evaluate(spec):
        study.enqueue_trial(point)
    configs = []
    for _ in range(30):
        trial = study.ask()
        configs.append((trial, DefineByRun(spec)(trial).to_config()))
    (_, sgd), (_, sam) = configs[:2]
    assert sgd["baseline"] == "SGD" and sgd["expected_cost"] == 1.0 and sgd["train"]["grst_weight"] is None
    assert sam["baseline"] == "SAM" and sam["expected_cost"] == 2.0 and sam["train"]["rho"] == 0.05
    for trial, config in configs:
        train = config["train"]
        assert train["seed"] == trial_seed(spec.seed, trial.number)
        assert train["epochs"] == 2 and train["batch_size"] in (32, 64, 96, 128)
        assert 0.01 <= train["rho"] <= 0.5
        assert (train["grst_weight"] is None) == (not trial.params["grst_weight.on"])
        schedule = train["schedule"]
        if schedule["name"] == "step":
            assert schedule["params"]["p_late"] == 1.0 and 0.1 <= schedule["params"]["switch"] <= 0.9
            expected = schedule["params"]["switch"] * schedule["params"]["p_early"] + (
                1 - schedule["params"]["switch"]
            )
            assert config["expected_cost"] == pytest.approx(1 + expected, abs=1e-12)
    assert {c["train"]["schedule"]["name"] for _, c in configs} == {"constant", "step"}
    assert {c["train"]["adaptive"] for _, c in configs} == {False, True}
    assert len({c["train"]["seed"] for _, c in configs}) == len(configs)
    # a point given as training settings round-trips through Optuna's parameter names
    point = {
        "schedule": {"name": "step", "params": {"p_early": 0.3, "p_late": 1.0, "switch": 0.5}},
        "grst_weight": 0.2,
    }
    assert optuna_params(spec, point) == {
        "schedule": "step",
        "schedule.step.p_early": 0.3,
        "schedule.step.switch": 0.5,
        "grst_weight.on": True,
        "grst_weight": 0.2,
    }


def test_a_space_in_coordinates_knows_each_trials_cost_from_its_mean():
    """The default space spells schedules as mean and shape: a trial's expected cost is 1 + its
    `schedule.mean`, shared by every family, and today's parameters still describe the same points."""
    spec = load_spec(SPACES[[p.stem for p in SPACES].index("default")])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = DefineByRun(spec)
    for _ in range(40):
        trial = study.ask()
        record = space(trial)
        assert record.expected_cost == pytest.approx(1 + trial.params["schedule.mean"], abs=1e-12)
        point = {"schedule": record.train.schedule.model_dump(), "rho": record.train.rho}
        point["grst_weight"] = record.train.grst_weight
        assert optuna_params(spec, point) == pytest.approx(trial.params)
    assert points_to_evaluate(spec)[:2] == [
        {"schedule": "constant", "schedule.mean": p, "rho": 0.2, "grst_weight.on": False} for p in (0.0, 1.0)
    ]
    with pytest.raises(ConfigError, match=r"space\.schedule\.linear\.tilt: missing"):
        parse_spec({"space": {"schedule": {"linear": {"mean": {"low": 0, "high": 1}}}}, "baselines": False})
    with pytest.raises(ConfigError, match=r"linear takes mean, tilt, or p_start, p_end"):
        parse_spec({"space": {"schedule": {"linear": {"mean": 0.5, "p_end": 1}}}, "baselines": False})


def test_the_authors_names_and_coordinates_build_the_same_schedules():
    """piecewise1 (step_up with its p) is searched in its own parameter or in coordinates; a point at
    the edge of a family's range converts to coordinates inside it; families in coordinates share
    schedule.mean, so they must give it the same range."""
    for family in ({"p": {"low": 0.1, "high": 0.9}}, {"mean": {"low": 0.1, "high": 0.9}}):
        spec = parse_spec({"space": {"schedule": {"piecewise1": family}}, "baselines": False})
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(5):
            trial = study.ask()
            record = DefineByRun(spec)(trial)
            switch = record.train.schedule.build().params["switch"]
            value = trial.params.get("schedule.piecewise1.p", trial.params.get("schedule.mean"))
            assert switch == pytest.approx(value if "p" in family else 1 - value, abs=1e-12)
            assert Coordinates(spec).features(trial.params)[0] == 1.0  # its family, by its alias
    spec = load_spec(SPACES[[p.stem for p in SPACES].index("default")])
    edge = {"schedule": {"name": "linear", "params": {"p_start": 0.1, "p_end": 1.0}}}
    assert optuna_params(spec, edge)["schedule.linear.tilt"] == 1.0
    with pytest.raises(ConfigError, match=r"space\.schedule\.linear\.mean: every family in coordinates"):
        parse_spec(
            {
                "space": {
                    "schedule": {
                        "constant": {"mean": {"low": 0, "high": 1}},
                        "linear": {"mean": {"low": 0.1, "high": 1}, "tilt": 0},
                    }
                },
                "baselines": False,
            }
        )


def test_an_error_carries_each_problem_with_its_key_and_line(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 0\n  lr: -1\n")
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    problems = [(p.key, p.line, p.source) for p in info.value.problems]
    assert problems == [(("train", "epochs"), 3, str(path)), (("train", "lr"), 4, str(path))]
    assert str(info.value) == "; ".join(
        f"{path}:{line}: train.{key}: {message}"
        for line, key, message in [
            (3, "epochs", "Input should be greater than or equal to 1 (got 0)"),
            (4, "lr", "Input should be greater than 0 (got -1)"),
        ]
    )


def test_check_warns_where_a_grst_family_can_fall_below_lambda_over_alpha_max():
    """α = min(λ/p, alpha_max) caps the applied degree p·α below λ wherever p(t) < λ/alpha_max."""
    from rst_tune.search._space import grst_warnings, summary

    step_up = parse_spec(
        {
            "train": {"grst_weight": 0.8},
            "space": {"schedule": {"step_up": {"switch": {"low": 0.2, "high": 0.8}}}},
            "baselines": False,
        }
    )
    (warning,) = grst_warnings(step_up)
    assert warning.startswith("G-RST: step_up can reach p(t) = 0") and "0.8/4" in warning
    assert "warning: G-RST: step_up" in summary(step_up)
    high_p = {
        "schedule": {"constant": {"p": {"low": 0.25, "high": 1.0}}},
        "grst_weight": {"low": 0.1, "high": 1.0},
    }
    assert grst_warnings(parse_spec({"space": high_p})) == []  # p ≥ 0.25 = 1/4 everywhere
    lower = {**high_p, "grst_weight": {"low": 0.1, "high": 1.2}}
    assert (
        "0.25, e.g. constant(p=0.25), below λ/alpha_max = 1.2/4"
        in grst_warnings(parse_spec({"space": lower}))[0]
    )
    assert grst_warnings(parse_spec({"space": {"schedule": {"constant": {"p": 0.0}}}})) == []  # plain RST
