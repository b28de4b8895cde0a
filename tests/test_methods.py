"""The methods table: each rival's rule against RIVALS.md's closed-form values and against its published
update rule written here (float64), the pass counts and expected costs, the config keys, and resume."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rst_tune._cost import pass_cost
from rst_tune._train import Trainer
from rst_tune.config import ConfigError, load_config
from rst_tune.methods import METHODS, build_method, check_method, expected_cost
from rst_tune.methods._mesa import distillation
from rst_tune.methods._rules import AdaptiveNorm, Deterministic
from rst_tune.schedules import make_schedule
from rst_tune.sharpness import RandomizedSAM


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def method_optimizer(name, params, w, lr=0.1, total=100, rho=0.1, schedule=None, model=None, momentum=0.0):
    schedule = schedule or make_schedule("constant", p=0.5)
    parts = build_method(name, check_method(name, params), schedule, model)
    base = torch.optim.SGD(w, lr=lr, momentum=momentum)
    return RandomizedSAM(base, schedule, total, rho=rho, rule=parts.rule, reuse=parts.reuse, model=model)


def diagonal_quadratic():
    w = nn.Parameter(torch.tensor([1.0, 1.0]))
    a = torch.tensor([1.0, 3.0])

    def closure():
        loss = 0.5 * (a * w * w).sum()
        loss.backward()
        return loss

    return w, closure


# ---------- the cost of passes ----------


def test_pass_cost_weighs_a_forward_a_third_and_a_backward_two_thirds():
    assert pass_cost(1, 1) == 1.0 and pass_cost(2, 1) == 4 / 3 and pass_cost(1, 0) == 1 / 3
    assert pass_cost(3000, 3000) == 3000.0  # whole counts stay whole
    assert pass_cost(2000 + 1000, 2000) == pytest.approx(2000 + 1000 / 3, rel=0, abs=1e-9)  # MESA-like


# ---------- LookSAM ----------


def test_looksam_matches_the_closed_form_of_rivals_md():
    w, closure = diagonal_quadratic()
    opt = method_optimizer("looksam", {"k": 2, "alpha": 0.7}, [w])
    opt.step(closure)
    assert opt.last_was_sam
    np.testing.assert_allclose(w.detach().numpy(), [0.8968377, 0.6715395], atol=5e-8)
    g_v = np.array([-0.0569180, 0.0189760])  # RIVALS.md's, to about 3e-6
    unit = opt.reuse.unit[0].numpy()
    np.testing.assert_allclose(unit, g_v / np.linalg.norm(g_v), atol=1e-4)
    np.testing.assert_allclose(
        unit, np.array([-3.0, 1.0]) / math.sqrt(10), rtol=0, atol=1e-13
    )  # ⟂ g = (1, 3)
    opt.step(closure)
    assert not opt.last_was_sam
    np.testing.assert_allclose(w.detach().numpy(), [0.953598, 0.421263], atol=1e-5)
    for _ in range(5):
        opt.step(closure)
    assert opt.propagations == 7 + math.ceil(7 / 2) and opt.sam_steps == 4


def tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    return model, x, y


def test_looksam_follows_its_published_rule_with_momentum():
    """The update of Leminhbinh0209/LookSAM (global decomposition), written out with autograd."""
    k, alpha, rho, lr, momentum, steps = 3, 0.7, 0.05, 0.1, 0.9, 8
    model, x, y = tiny_problem()
    ref = [p.detach().clone() for p in model.parameters()]
    opt = method_optimizer(
        "looksam", {"k": k, "alpha": alpha}, model.parameters(), lr, rho=rho, momentum=momentum
    )

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def grad_at(params):
        loss = F.cross_entropy(torch.func.functional_call(model, dict(zip(names, params)), (x,)), y)
        return torch.autograd.grad(loss, params)

    names = [n for n, _ in model.named_parameters()]
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    buf, g_v = None, None
    for t in range(steps):
        params = [p.clone().requires_grad_() for p in ref]
        g = flat(grad_at(params))
        if t % k == 0:
            e = rho * g / g.norm()
            shift = [p + s.view_as(p) for p, s in zip(params, e.split([p.numel() for p in params]))]
            g_s = flat(grad_at(shift))
            g_v = g_s - (g_s @ g / g.norm() ** 2) * g
            d = g_s
        else:
            d = g + alpha * g.norm() / g_v.norm() * g_v
        buf = d.clone() if buf is None else momentum * buf + d
        new = flat(ref) - lr * buf
        ref = [t.view_as(p) for t, p in zip(new.split([p.numel() for p in ref]), ref)]
        opt.step(closure)
    for ours, theirs in zip(model.parameters(), ref):
        torch.testing.assert_close(ours.detach(), theirs, rtol=0, atol=1e-12)


# ---------- AE-SAM ----------


def test_aesam_statistics_and_decisions_match_rivals_md():
    rule = AdaptiveNorm(delta=0.9, lambda1=1.0, lambda2=1.0)  # c ≡ 1
    seen = []
    for s in (1.0, 1.0, 4.0, 1.0):
        seen.append((rule.decide(0, 0.5, None, s), rule.mean, rule.variance))
    expected = [(0.1, 0.081), (0.19, 0.13851), (0.571, 1.300463), (0.6139, 1.185324)]
    for (_, mean, variance), (mu, var) in zip(seen, expected):
        assert mean == pytest.approx(mu, abs=1e-12) and variance == pytest.approx(var, abs=1e-6)
    assert [sam for sam, _, _ in seen] == [True, True, True, False]


def test_aesam_threshold_moves_from_lambda2_to_lambda1():
    rule = AdaptiveNorm(delta=0.5, lambda1=-2.0, lambda2=3.0)
    rule.mean, rule.variance = 1.0, 1.0
    # s = 2: μ → 1.5, σ² → 0.5·1 + 0.5·0.25 = 0.625; threshold 1.5 + c·0.790569
    for x, c in ((0.0, 3.0), (1.0, -2.0), (0.4, 0.4 * -2 + 0.6 * 3)):
        rule.mean, rule.variance = 1.0, 1.0
        assert rule.decide(0, x, None, 2.0) == (2.0 >= 1.5 + c * math.sqrt(0.625))


def test_aesam_in_the_optimizer_decides_from_the_squared_gradient_norm():
    model, x, y = tiny_problem(1)
    opt = method_optimizer(
        "aesam", {"delta": 0.8, "lambda1": -0.5, "lambda2": 0.5}, model.parameters(), total=30
    )
    mean = variance = 0.0
    for t in range(30):
        model.zero_grad()
        s = sum(g.pow(2).sum() for g in torch.autograd.grad(F.cross_entropy(model(x), y), model.parameters()))
        s = float(s)
        mean = 0.8 * mean + 0.2 * s
        variance = 0.8 * variance + 0.2 * (s - mean) ** 2
        c = (t / 30) * -0.5 + (1 - t / 30) * 0.5
        opt.step(lambda: F.cross_entropy(model(x), y).backward())
        assert opt.last_was_sam == (s >= mean + c * math.sqrt(variance))
    assert opt.propagations == 30 + opt.sam_steps == opt.expected_propagations
    assert 0 < opt.sam_steps < 30


def test_aesam_expected_cost_is_the_normal_estimate():
    assert METHODS["aesam"].estimated and not METHODS["rst"].estimated
    one = make_schedule("constant", p=0.5)
    assert expected_cost("aesam", check_method("aesam", {}), one, 10) == pytest.approx(1.5, abs=1e-12)
    # c ≡ 1: P(Z ≥ 1) = 0.158655
    at_one = check_method("aesam", {"lambda1": 1.0, "lambda2": 1.0})
    assert expected_cost("aesam", at_one, one, 10) == pytest.approx(1.1586553, abs=1e-7)


# ---------- periodic, late phase and the deterministic coin ----------


def test_periodic_sam_steps_on_composers_interval():
    w, closure = diagonal_quadratic()
    opt = method_optimizer("periodic", {"k": 4}, [w], lr=0.01)
    taken = []
    for _ in range(12):
        opt.step(closure)
        taken.append(opt.last_was_sam)
    assert [t for t, sam in enumerate(taken) if sam] == [3, 7, 11]
    assert opt.propagations == 12 + 3 == opt.expected_propagations


def test_periodic_with_interval_one_is_sam_bit_for_bit():
    trained = []
    for name, params in (("periodic", {"k": 1}), ("rst", {})):
        model, x, y = tiny_problem(2)
        schedule = make_schedule("constant", p=1.0)
        opt = method_optimizer(name, params, model.parameters(), schedule=schedule, momentum=0.9)
        for _ in range(5):
            opt.step(lambda: F.cross_entropy(model(x), y).backward())  # noqa: B023
        trained.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*trained):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (make_schedule("constant", p=0.5), [1, 3, 5, 7, 9]),
        (make_schedule("constant", p=0.1), [9]),  # ten sums of 0.1 reach 1 (rounding forgiven)
        (make_schedule("step_up", switch=0.6), [7, 8, 9]),  # x = t/10 > 0.6
    ],
)
def test_deterministic_rule_steps_whenever_the_sum_of_p_passes_a_whole_number(schedule, expected):
    rule = Deterministic(schedule)
    taken = [t for t in range(10) if rule.decide(t, t / 10, schedule(t / 10), None)]
    assert taken == expected


def test_late_phase_restarts_momentum_at_the_switch():
    """Against the official code's form: one SGD optimizer before the switch, a fresh one after."""
    model, x, y = tiny_problem(3)
    ref_model, _, _ = tiny_problem(3)
    steps, switch = 10, 0.55
    parts = build_method("late_phase", check_method("late_phase", {"switch": switch}), None, model)
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = RandomizedSAM(base, None, steps, rho=0.05, rule=parts.rule)
    before = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9)
    after = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9)
    ref = RandomizedSAM(after, make_schedule("constant", p=1.0), steps, rho=0.05)
    for t in range(steps):
        parts.hook.before_step(opt)
        opt.step(lambda: F.cross_entropy(model(x), y).backward())  # noqa: B023
        assert opt.last_was_sam == (t / steps > switch)
        if t / steps > switch:
            ref.step(lambda: F.cross_entropy(ref_model(x), y).backward())  # noqa: B023
        else:
            before.zero_grad()
            F.cross_entropy(ref_model(x), y).backward()
            before.step()
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


# ---------- MESA ----------


def test_mesa_distillation_matches_rivals_md():
    z = torch.zeros(1, 2)
    assert float(distillation(z, torch.tensor([[math.log(3), 0.0]]), 1.0)) == pytest.approx(
        0.1308120, abs=1e-7
    )
    z.requires_grad_()
    loss = distillation(z, torch.tensor([[2 * math.log(3), 0.0]]), 2.0)
    assert loss.item() == pytest.approx(0.5232481, abs=1e-7)
    (grad,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, 0.5]]), rtol=0, atol=1e-12)


def test_mesa_ema_moves_every_state_tensor_by_its_decay():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    hook = build_method("mesa", check_method("mesa", {"decay": 0.75}), None, model).hook
    start = {k: v.clone() for k, v in hook.ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(4, 2))  # moves the running statistics and num_batches_tracked
    hook.after_step(model)
    for key, value in hook.ema.state_dict().items():
        mine = model.state_dict()[key]
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * start[key] + 0.25 * mine, rtol=0, atol=1e-15)
        else:
            assert torch.equal(value, mine)


DIGITS = {"epochs": 2, "batch_size": 256, "device": "cpu"}


@pytest.fixture
def float32():
    """The Trainer's runs in the dtype its data comes in."""
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(torch.float64)


@pytest.mark.usefixtures("float32")
def test_mesa_in_the_trainer_costs_a_third_more_per_step_from_its_start_epoch():
    config = load_config(DIGITS | {"method": {"name": "mesa", "params": {"start": 1, "decay": 0.9}}})
    assert config.expected_cost() == pytest.approx(1 + (1 / 3) * 1 / 2, abs=1e-12)
    trainer = Trainer(config)
    first, second = list(trainer.fit())
    assert first.cost_ratio == 1.0 and first.sam_steps == 0
    assert second.propagations == pytest.approx(second.steps + first.steps / 3, abs=1e-9)
    assert second.expected_propagations == pytest.approx(second.propagations, abs=1e-9)
    # the term pulls towards the EMA: the EMA's own predictions are a different model's
    assert not torch.equal(next(trainer.hook.ema.parameters()), next(trainer.model.parameters()))


@pytest.mark.usefixtures("float32")
@pytest.mark.parametrize(
    ("method", "params"),
    [("looksam", {"k": 3}), ("aesam", {}), ("mesa", {"start": 0}), ("late_phase", {"switch": 0.3})],
)
def test_a_run_resumed_from_a_checkpoint_continues_bit_for_bit(method, params, tmp_path):
    config = load_config(DIGITS | {"epochs": 3, "method": {"name": method, "params": params}})
    straight = Trainer(config)
    list(straight.fit())
    first = Trainer(config)
    first.train_epoch()
    first.save(tmp_path / "ckpt.pt")
    resumed = Trainer(config)
    resumed.load(tmp_path / "ckpt.pt")
    list(resumed.fit())
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert straight.history[-1].propagations == resumed.history[-1].propagations


@pytest.mark.usefixtures("float32")
@pytest.mark.parametrize(
    ("method", "params", "extra"), [("looksam", {"k": 4}, 0.25), ("periodic", {"k": 5}, 0.2)]
)
def test_realised_cost_ratio_meets_the_expected_cost_within_one_step(method, params, extra):
    config = load_config(DIGITS | {"epochs": 1, "method": {"name": method, "params": params}})
    assert config.expected_cost() == 1 + extra
    (metrics,) = Trainer(config).fit()
    assert abs(metrics.cost_ratio - config.expected_cost()) <= 1 / metrics.steps


# ---------- the config ----------


@pytest.mark.parametrize(
    ("values", "key", "match"),
    [
        ({"method": {"name": "esam"}}, "method.name", "unknown method 'esam'"),
        ({"method": {"name": "looksam", "params": {"k": 0}}}, "method.params.k", r"\[1, inf\)"),
        ({"method": {"name": "looksam", "params": {"k": 2.5}}}, "method.params.k", "integer"),
        ({"method": {"name": "aesam", "params": {"delta": 1.0}}}, "method.params.delta", r"\(0, 1\)"),
        ({"method": {"name": "mesa", "params": {"lambda": 1}}}, "method.params.lambda", "valid: weight"),
        ({"method": {"name": "mesa", "params": {"tau": math.inf}}}, "method.params.tau", "finite"),
        ({"method": {"name": "looksam"}, "grst_weight": 0.3}, "grst_weight", "looksam has none"),
        (
            {"method": {"name": "periodic"}, "schedule": {"name": "constant", "params": {"p": 0.2}}},
            "schedule",
            "does not draw from a schedule",
        ),
    ],
)
def test_a_bad_method_names_its_key(values, key, match):
    with pytest.raises(ConfigError, match=match) as caught:
        load_config(values)
    assert [".".join(problem.key) for problem in caught.value.problems] == [key]


def test_the_old_keys_still_load_as_rst():
    old = load_config(
        {"schedule": {"name": "constant", "params": {"p": 0.3}}, "grst_weight": 0.2, "rho": 0.1}
    )
    assert old.method.name == "rst" and old.expected_cost() == pytest.approx(1.3)
    assert old == load_config({**old.model_dump()})  # a dumped config loads as itself
    periodic = load_config({"method": {"name": "periodic", "params": {"k": 3}}})
    assert load_config(periodic.model_dump()) == periodic


def test_every_method_declares_a_description_a_reference_and_checked_defaults():
    for name, method in METHODS.items():
        assert method.description and method.reference, name
        defaults = check_method(name, {})
        assert set(defaults) == set(method.params)
        assert 1.0 <= expected_cost(name, defaults, make_schedule("constant", p=0.5), 10) <= 2.0


# ---------- methods in a search file and a study file ----------


def method_spec(**extra):
    from rst_tune.search import parse_spec

    return parse_spec(
        {
            "name": "methods",
            "train": {"epochs": 2, "batch_size": 128, "device": "cpu"},
            "space": {
                "method": {
                    "rst": {},
                    "looksam": {"k": {"low": 2, "high": 6, "type": "int"}, "alpha": 0.5},
                    "mesa": {"weight": {"low": 0.1, "high": 1.0}},
                },
                "schedule": {"constant": {"mean": {"low": 0.0, "high": 1.0}}},
                "rho": {"low": 0.01, "high": 0.2, "log": True},
                "grst_weight": {"low": 0.1, "high": 1.0, "optional": True},
            },
            "sampler": {"name": "known_cost", "balance_methods": True},
            **extra,
        }
    )


@pytest.mark.usefixtures("float32")
def test_a_trial_of_a_searched_method_sets_only_what_the_method_reads():
    import optuna

    from rst_tune.search._space import Coordinates, DefineByRun
    from rst_tune.tracking._trials import flat_params

    spec = method_spec()
    fixed = optuna.trial.FixedTrial({"method": "looksam", "method.looksam.k": 4, "rho": 0.1})
    record = DefineByRun(spec)(fixed)
    assert record.train.method.name == "looksam" and record.train.method.settings() == {"k": 4, "alpha": 0.5}
    assert record.train.rho == 0.1 and record.train.grst_weight is None  # G-RST is RST's alone
    assert record.label == "looksam(k=4, alpha=0.5), rho 0.1" and record.expected_cost == 1.25
    logged = flat_params(record)
    assert (logged["method"], logged["method.looksam.k"], logged["train.method.params.k"]) == (
        "looksam",
        "4",
        "4",
    )
    assert logged["train.method.params.alpha"] == "0.5"  # the method's default, filled in
    assert not [k for k in logged if k.startswith(("schedule", "train.schedule", "train.grst_weight"))]
    mesa = DefineByRun(spec)(optuna.trial.FixedTrial({"method": "mesa", "method.mesa.weight": 0.5}))
    assert mesa.train.rho == spec.train_config().rho and "rho" not in mesa.label  # MESA takes no SAM step
    rst = {"method": "rst", "schedule": "constant", "schedule.mean": 0.3, "rho": 0.1, "grst_weight.on": False}
    coordinates = Coordinates(spec)
    assert len(coordinates.features(rst)) == len(coordinates.features(fixed.params))
    assert coordinates.cost(fixed.params) == 1.25 and coordinates.cost(rst) == pytest.approx(1.3)  # SGD 1


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"space": {"method": {"esam": {}}}}, "space.method.esam"),
        (
            {"space": {"method": {"looksam": {"k": {"low": 0, "high": 3, "type": "int"}}}}},
            "space.method.looksam.k",
        ),
        ({"space": {"method": {"looksam": {"beta": 1.0}}}}, "space.method.looksam.beta"),
        ({"space": {"method": {"looksam": {}}, "schedule": {"constant": {"p": 0.5}}}}, "baselines"),
        ({"space": {"rho": {"low": 0.01, "high": 0.2}}}, "sampler.balance_methods"),
        (
            {"space": {"method": {"rst": {}, "periodic": {"k": {"low": 2, "high": 5}}}}},
            "space.method.periodic.k",
        ),
        ({"train": {"grst_weight": 0.3}, "space": {"method": {"rst": {}, "mesa": {}}}}, "space.method.mesa"),
        (
            {
                "space": {"method": {"looksam": {"k": {"low": 2, "high": 4, "type": "int"}}}},
                "objective": "accuracy_under_budget",
                "budget": 1.2,  # below looksam(k=4)'s 1.25
                "baselines": False,
            },
            "budget",
        ),
    ],
)
def test_a_bad_method_in_a_search_file_names_its_key(change, key):
    from rst_tune.search import parse_spec

    values = {
        "train": {"epochs": 1, "device": "cpu", **change.pop("train", {})},
        "space": {"schedule": {"constant": {"p": {"low": 0.0, "high": 1.0}}}, **change.pop("space", {})},
        "sampler": {"name": "known_cost", "balance_methods": True},
        **change,
    }
    with pytest.raises(ConfigError) as caught:
        parse_spec(values)
    assert [".".join(p.key) for p in caught.value.problems] == [key]


def test_balanced_proposals_give_every_method_the_same_number_of_trials(tmp_path):
    import optuna

    from rst_tune.search._known_cost import KnownCostSampler
    from rst_tune.search._space import Coordinates, DefineByRun, points_to_evaluate

    spec = method_spec(num_samples=13)
    sampler = KnownCostSampler(Coordinates(spec), spec.num_samples, startup_trials=3, seed=0)
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path}/balance.db", sampler=sampler, directions=["maximize", "minimize"]
    )
    for point in points_to_evaluate(spec):  # SGD and SAM: two of rst's
        study.enqueue_trial(point)
    space = DefineByRun(spec)
    for _ in range(spec.num_samples):
        trial = study.ask()
        record = space(trial)
        # accuracy rising with cost and with LookSAM's k: the model has something to learn
        study.tell(
            trial, [0.5 + 0.1 * record.expected_cost + 0.01 * trial.params.get("method.looksam.k", 0), 1.0]
        )
    counts = {name: sum(t.params["method"] == name for t in study.trials) for name in spec.method}
    assert sorted(counts.values()) == [4, 4, 5], counts


def test_the_cheapest_cost_of_a_space_of_methods_is_its_cheapest_corner():
    from rst_tune.search import parse_spec

    space = {
        "method": {"looksam": {"k": {"low": 2, "high": 8, "type": "int"}}, "mesa": {"start": 5}},
    }
    spec = parse_spec({"train": {"epochs": 10}, "space": space, "baselines": False})
    assert spec.cheapest() == (pytest.approx(1.125), "looksam(k=8, alpha=0.7)")
    fine = {"objective": "accuracy_under_budget", "budget": 1.13, "baselines": False}
    assert parse_spec({"train": {"epochs": 10}, "space": space, **fine}).budget == 1.13


def test_a_point_naming_an_unsearched_method_parameter_names_its_key():
    from rst_tune.search._space import optuna_params

    point = {"method": {"name": "looksam", "params": {"k": 3, "beta": 0.2}}}
    with pytest.raises(ConfigError, match="not searched for looksam") as caught:
        optuna_params(method_spec(), point)
    assert [".".join(p.key) for p in caught.value.problems] == ["point.method.params.beta"]
    assert optuna_params(method_spec(), {"method": {"name": "looksam", "params": {"k": 3}}}) == {
        "method": "looksam",
        "method.looksam.k": 3,
    }


def test_a_looksam_refresh_that_overflows_keeps_the_previous_direction():
    from rst_tune.methods._looksam import LookSAMReuse

    reuse = LookSAMReuse(0.7)
    reuse.refreshed([torch.tensor([1.0, 3.0])], [torch.tensor([1.0, 4.0])])
    kept = reuse.unit[0].clone()
    reuse.refreshed([torch.tensor([1.0, 3.0])], [torch.tensor([math.inf, 4.0])])
    assert torch.equal(reuse.unit[0], kept) and torch.allclose(
        kept, torch.tensor([-3.0, 1.0]) / math.sqrt(10)
    )


def test_an_optimizer_state_from_before_pass_counting_loads_its_propagations():
    w, closure = diagonal_quadratic()
    opt = method_optimizer("rst", {}, [w])
    for _ in range(3):
        opt.step(closure)
    state = opt.state_dict()
    older = {k: v for k, v in state.items() if k not in ("forwards", "backwards")}
    fresh = method_optimizer("rst", {}, [nn.Parameter(torch.tensor([1.0, 1.0]))])
    fresh.load_state_dict(older)
    assert fresh.propagations == opt.propagations and (fresh.forwards, fresh.backwards) == (
        opt.propagations,
        opt.propagations,
    )


@pytest.mark.slow
def test_a_method_with_nothing_affordable_leaves_the_balanced_proposals_to_the_others(tmp_path):
    import optuna

    from rst_tune.search import parse_spec
    from rst_tune.search._known_cost import KnownCostSampler
    from rst_tune.search._space import Coordinates, DefineByRun

    spec = parse_spec(
        {
            "train": {"epochs": 2, "device": "cpu"},
            "space": {
                "method": {"rst": {}, "mesa": {"start": 0}},  # MESA costs 4/3 a step: over the budget
                "schedule": {"constant": {"mean": {"low": 0.0, "high": 1.0}}},
            },
            "objective": "accuracy_under_budget",
            "budget": 1.3,
            "baselines": False,
            "num_samples": 8,
            "sampler": {"name": "known_cost", "balance_methods": True, "startup_trials": 2},
        }
    )
    sampler = KnownCostSampler(Coordinates(spec), spec.num_samples, startup_trials=2, seed=1)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/starved.db", sampler=sampler)
    space = DefineByRun(spec)
    for _ in range(spec.num_samples):
        trial = study.ask()
        record = space(trial)
        study.tell(trial, 0.5 + 0.1 * record.expected_cost)
    assert [t.params["method"] for t in study.trials] == ["rst"] * spec.num_samples
    assert all(t.user_attrs == {} and t.params["schedule.mean"] <= 0.3 for t in study.trials)
