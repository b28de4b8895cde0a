"""RandomizedSAM against closed-form math (float64), degenerate cases, the coin, accounting, BN, dropout
and fp16 overflow."""

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from rst_tune.schedules import make_schedule
from rst_tune.sharpness import RandomizedSAM


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ---------- closed form on L(w) = ½ wᵀAw, ∇L = Aw ----------

A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, -0.3], [0.0, -0.3, 1.0]])
W0 = np.array([0.7, -1.2, 0.4])


def quadratic(lr=0.1, **kwargs):
    w = nn.Parameter(torch.tensor(W0))
    a = torch.tensor(A)
    base = torch.optim.SGD([w], lr=lr)
    opt = RandomizedSAM(base, kwargs.pop("schedule"), kwargs.pop("total_steps", 1000), **kwargs)

    def closure():
        loss = 0.5 * w @ a @ w
        loss.backward()
        return loss

    return w, opt, closure


def sam_step_until(opt, closure, w):
    """Step until a sharpness-aware step happens; return w before and after it."""
    for _ in range(1000):
        before = w.detach().numpy().copy()
        opt.step(closure)
        if opt.last_was_sam:
            return before, w.detach().numpy().copy()
    raise AssertionError("no sharpness-aware step in 1000 draws")


def test_sgd_outcome_is_a_plain_gradient_step():
    w, opt, closure = quadratic(schedule=make_schedule("constant", p=0.0))
    opt.step(closure)
    np.testing.assert_allclose(w.detach().numpy(), W0 - 0.1 * A @ W0, rtol=0, atol=1e-15)


def test_sam_outcome_matches_closed_form():
    rho = 0.2
    w, opt, closure = quadratic(schedule=make_schedule("constant", p=1.0), rho=rho)
    loss = opt.step(closure)
    g1 = A @ W0
    g2 = A @ (W0 + rho * g1 / np.linalg.norm(g1))
    np.testing.assert_allclose(w.detach().numpy(), W0 - 0.1 * g2, rtol=0, atol=1e-14)
    assert loss.item() == pytest.approx(0.5 * W0 @ A @ W0, rel=1e-15)


def test_asam_outcome_matches_closed_form():
    rho = 0.5
    w, opt, closure = quadratic(schedule=make_schedule("constant", p=1.0), rho=rho, adaptive=True)
    opt.step(closure)
    g1 = A @ W0
    e = rho * W0**2 * g1 / np.linalg.norm(np.abs(W0) * g1)
    np.testing.assert_allclose(w.detach().numpy(), W0 - 0.1 * A @ (W0 + e), rtol=0, atol=1e-14)


@pytest.mark.parametrize("p, weight, alpha_max, alpha", [(0.5, 0.3, 4.0, 0.6), (0.2, 0.9, 2.0, 2.0)])
def test_grst_outcome_matches_closed_form(p, weight, alpha_max, alpha):
    """α = λ_G / p inside the clip, and α = alpha_max at it (0.9 / 0.2 = 4.5 > 2)."""
    rho = 0.1
    w, opt, closure = quadratic(
        schedule=make_schedule("constant", p=p), rho=rho, grst_weight=weight, alpha_max=alpha_max
    )
    before, after = sam_step_until(opt, closure, w)
    g1 = A @ before
    g2 = A @ (before + rho * g1 / np.linalg.norm(g1))
    np.testing.assert_allclose(after, before - 0.1 * ((1 - alpha) * g1 + alpha * g2), rtol=0, atol=1e-14)


# ---------- inside the caller's autocast: a linear model, float32 weights, float64 reference ----------

X_LS = np.array([[1.0, -0.5, 2.0], [0.3, 1.5, -1.0], [-1.2, 0.8, 0.5], [2.0, 0.1, -0.7]])
Y_LS = np.array([[0.5, -1.0], [1.0, 0.2], [-0.3, 0.8], [0.7, -0.4]])
W_LS = np.array([[0.4, -0.9, 0.3], [1.1, 0.2, -0.6]])


def ls_grad(w):
    """∇ of L(W) = ½·mean over rows of ‖W·x − y‖², in float64."""
    return (X_LS @ w.T - Y_LS).T @ X_LS / len(X_LS)


@pytest.mark.parametrize(
    "kwargs",
    [{"rho": 0.5}, {"rho": 0.5, "grst_weight": 1.5}, {"rho": 2.0, "adaptive": True}],
    ids=["sam", "grst", "asam"],
)
def test_a_step_inside_the_callers_bf16_autocast_is_sharpness_aware(kwargs):
    """autocast caches a bf16 copy of each weight for its whole region: the perturbed pass must not
    run at the cached θ (which would make the step SGD)."""
    lin = nn.Linear(3, 2, bias=False, dtype=torch.float32)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W_LS))
    x, y = torch.tensor(X_LS, dtype=torch.float32), torch.tensor(Y_LS, dtype=torch.float32)
    opt = RandomizedSAM(
        torch.optim.SGD(lin.parameters(), lr=0.5), make_schedule("constant", p=1.0), 5, **kwargs
    )

    def closure():
        loss = 0.5 * ((lin(x).float() - y) ** 2).sum(1).mean()
        loss.backward()
        return loss

    with torch.autocast("cpu", dtype=torch.bfloat16):
        opt.step(closure)
        after_step = lin(x).detach().float()  # a forward after the step, still in the region
    g1 = ls_grad(W_LS)
    if kwargs.get("adaptive"):
        e = kwargs["rho"] * W_LS**2 * g1 / np.linalg.norm(np.abs(W_LS) * g1)
    else:
        e = kwargs["rho"] * g1 / np.linalg.norm(g1)
    alpha = kwargs.get("grst_weight", 1.0)
    sam = W_LS - 0.5 * ((1 - alpha) * g1 + alpha * ls_grad(W_LS + e))
    sgd_w = W_LS - 0.5 * g1
    stepped = lin.weight.detach().double().numpy()
    tolerance = 0.5 * np.linalg.norm(g1) * 2**-6  # bf16 carries 8 bits; a few roundings per gradient
    assert np.linalg.norm(sam - sgd_w) > 10 * tolerance
    assert np.linalg.norm(stepped - sam) < tolerance
    expected_logits = X_LS @ stepped.T
    assert np.abs(after_step.double().numpy() - expected_logits).max() < 2**-6 * np.abs(expected_logits).max()


def test_perturbation_has_norm_rho_and_restore_is_exact():
    rho = 0.37
    w = nn.Parameter(torch.tensor(W0))
    seen = []

    def closure():
        seen.append(w.detach().clone())
        loss = (w**4).sum()
        loss.backward()
        return loss

    opt = RandomizedSAM(torch.optim.SGD([w], lr=0.0), make_schedule("constant", p=1.0), 100, rho=rho)
    ptr = w.data_ptr()
    for _ in range(100):
        opt.step(closure)
    assert torch.linalg.vector_norm(seen[1] - seen[0]).item() == pytest.approx(rho, rel=1e-12)
    assert torch.equal(w.detach(), torch.tensor(W0))  # 100 perturb/restore cycles, no drift
    assert w.data_ptr() == ptr


# ---------- degeneracies on a small network ----------


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def batches(n=20):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 5, generator=g), torch.randint(0, 3, (32,), generator=g)) for _ in range(n)]


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)


def closure_for(model, x, y, zero_grad=None):
    def closure():
        if zero_grad is not None:
            zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def test_p_zero_reproduces_the_base_optimizer_bitwise():
    plain, ours = net(), net()
    plain_opt = sgd(plain)
    plain_sched = torch.optim.lr_scheduler.StepLR(plain_opt, step_size=5, gamma=0.5)
    base = sgd(ours)
    sched = torch.optim.lr_scheduler.StepLR(base, step_size=5, gamma=0.5)
    opt = RandomizedSAM(base, make_schedule("constant", p=0.0), 20, model=ours)
    for x, y in batches():
        plain_opt.zero_grad()
        nn.functional.cross_entropy(plain(x), y).backward()
        plain_opt.step()
        plain_sched.step()
        opt.step(closure_for(ours, x, y))
        sched.step()
    assert base.param_groups[0]["lr"] == plain_opt.param_groups[0]["lr"] == 0.05 * 0.5**4
    for a, b in zip(plain.state_dict().values(), ours.state_dict().values()):
        assert torch.equal(a, b)


def reference_sam(model, base, x, y, rho):
    """SAM as davda54/sam writes it, one parameter at a time."""
    base.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
    old = [p.detach().clone() for p in params]
    for p in params:
        p.data.add_(p.grad * (rho / norm))
    momenta = [(m, m.momentum) for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    for m, _ in momenta:
        m.momentum = 0
    base.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    for m, momentum in momenta:
        m.momentum = momentum
    for p, o in zip(params, old):
        p.data.copy_(o)
    base.step()


def test_p_one_matches_reference_sam():
    ref, ours = net(), net()
    ref_opt = sgd(ref)
    opt = RandomizedSAM(sgd(ours), make_schedule("constant", p=1.0), 20, rho=0.05, model=ours)
    for x, y in batches():
        reference_sam(ref, ref_opt, x, y, 0.05)
        opt.step(closure_for(ours, x, y))
    for name, value in ref.named_parameters():
        torch.testing.assert_close(dict(ours.named_parameters())[name], value, rtol=1e-12, atol=1e-12)


def trajectory(grst_weight, zero_grad_in_closure=False):
    model = net()
    opt = RandomizedSAM(
        sgd(model), make_schedule("constant", p=0.3), 20, model=model, grst_weight=grst_weight, seed=7
    )
    coins = []
    for x, y in batches():
        opt.step(closure_for(model, x, y, opt.zero_grad if zero_grad_in_closure else None))
        coins.append(opt.last_was_sam)
    return [p.detach().clone() for p in model.parameters()], coins


def test_grst_with_weight_equal_to_p_reproduces_rst():
    rst, rst_coins = trajectory(None)
    grst, grst_coins = trajectory(0.3)
    assert rst_coins == grst_coins and any(rst_coins) and not all(rst_coins)
    assert all(torch.equal(a, b) for a, b in zip(rst, grst))
    different, _ = trajectory(0.6)
    assert not all(torch.equal(a, b) for a, b in zip(rst, different))


def test_closure_that_zeroes_gradients_itself_gives_the_same_steps():
    plain, _ = trajectory(0.5)
    zeroing, _ = trajectory(0.5, zero_grad_in_closure=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, zeroing))


# ---------- the coin ----------


def coin_run(schedule, steps, seed=0, disturb=False, opt=None):
    w = nn.Parameter(torch.zeros(1))
    opt = opt or RandomizedSAM(torch.optim.SGD([w], lr=0.0), schedule, steps, seed=seed)
    w = opt.param_groups[0]["params"][0]

    def closure():
        loss = (w * 1.0).sum()
        loss.backward()
        return loss

    coins = []
    for _ in range(steps):
        if disturb:
            torch.rand(3)
            random.random()
            np.random.rand()
        opt.step(closure)
        coins.append(opt.last_was_sam)
    return coins, opt


def test_same_seed_same_coins_and_global_rng_does_not_disturb_them():
    schedule = make_schedule("linear", p_start=0.2, p_end=0.8)
    first, _ = coin_run(schedule, 300, seed=3)
    torch.manual_seed(123)
    random.seed(5)
    second, _ = coin_run(schedule, 300, seed=3, disturb=True)
    other, _ = coin_run(schedule, 300, seed=4)
    assert first == second
    assert first != other


def test_sam_fraction_is_within_four_sigma_of_mean_p():
    schedule = make_schedule("cosine", p_start=0.9, p_end=0.1)
    n = 5000
    coins, opt = coin_run(schedule, n, seed=11)
    ps = np.array([schedule(s / n) for s in range(n)])
    sigma = np.sqrt(np.sum(ps * (1 - ps))) / n
    assert abs(np.mean(coins) - schedule.mean()) < 4 * sigma
    assert opt.expected_propagations == pytest.approx(n + ps.sum(), rel=1e-12)


@pytest.mark.parametrize(
    "family, params, weight",
    [
        ("step_up", {"switch": 0.5}, 0.8),  # p = 0 for half the run: degree 0.4, not 0.8
        ("linear", {"p_start": 1.0, "p_end": 0.0}, 1.0),  # p·α = min(λ, 4p) falls below λ at p < 0.25
        ("constant", {"p": 0.5}, 1.0),  # λ/p = 2 ≤ alpha_max: exactly λ
        ("cosine", {"p_start": 0.9, "p_end": 0.1}, None),  # plain RST: p̄
    ],
)
def test_degree_sum_adds_up_p_times_alpha(family, params, weight):
    """Σ p(t)·α_t with α = min(λ/p, alpha_max) (G-RST) or 1 (RST), against the schedule in closed form."""
    schedule = make_schedule(family, **params)
    n = 400
    w, opt, closure = quadratic(schedule=schedule, total_steps=n, grst_weight=weight, alpha_max=4.0, seed=2)
    for _ in range(n):
        opt.step(closure)
    ps = np.array([schedule(s / n) for s in range(n)])
    if weight is None:
        expected = ps.sum()
    else:
        expected = np.where(ps > 0, np.minimum(weight, ps * 4.0), 0.0).sum()
    assert opt.degree_sum == pytest.approx(expected, rel=1e-12)
    if family == "step_up":
        assert opt.degree_sum / n == pytest.approx(0.4, abs=0.005)


def test_state_dict_round_trip_continues_the_same_sequence():
    schedule = make_schedule("constant", p=0.5)
    _, opt = coin_run(schedule, 50, seed=2)
    state = copy.deepcopy(opt.state_dict())
    straight, _ = coin_run(schedule, 50, opt=opt)
    w = nn.Parameter(torch.zeros(1))
    fresh = RandomizedSAM(torch.optim.SGD([w], lr=0.0), schedule, 50, seed=99)
    fresh.load_state_dict(state)
    assert (fresh.steps, fresh.sam_steps, fresh.propagations) == (
        state["steps"],
        state["sam_steps"],
        state["propagations"],
    )
    resumed, _ = coin_run(schedule, 50, opt=fresh)
    assert resumed == straight


def test_a_loaded_state_sets_the_groups_the_optimizer_reads():
    """torch's load_state_dict makes new param groups: the wrapper must read those (the saved lr)."""
    w = nn.Parameter(torch.zeros(1))
    saved = RandomizedSAM(torch.optim.SGD([w], lr=0.3), make_schedule("constant", p=0.5), 5)
    fresh = RandomizedSAM(torch.optim.SGD([w], lr=0.1), make_schedule("constant", p=0.5), 5)
    fresh.load_state_dict(saved.state_dict())
    assert fresh.param_groups is fresh.base_optimizer.param_groups
    assert fresh.param_groups[0]["lr"] == 0.3


def test_state_dict_holds_no_parameter_sized_buffers():
    model = net()
    opt = RandomizedSAM(sgd(model), make_schedule("constant", p=1.0), 5, model=model)
    x, y = batches(1)[0]
    opt.step(closure_for(model, x, y))
    state = opt.state_dict()
    tensors = [k for k, v in state.items() if k != "base" and isinstance(v, torch.Tensor)]
    assert tensors == []
    assert set(state["base"]["state"]) == set(range(len(list(model.parameters()))))  # momentum only
    assert all(set(s) == {"momentum_buffer"} for s in state["base"]["state"].values())


def test_accounting_counts_every_closure_call():
    model = net()
    schedule = make_schedule("linear_mirror", p=0.1)
    opt = RandomizedSAM(sgd(model), schedule, 20, model=model, seed=5)
    calls = 0
    for x, y in batches():
        inner = closure_for(model, x, y)

        def counted():
            nonlocal calls
            calls += 1
            return inner()  # noqa: B023 (called within this iteration)

        opt.step(counted)
    assert opt.steps == 20
    assert opt.propagations == calls == opt.steps + opt.sam_steps
    assert 0 < opt.sam_steps < 20
    assert opt.expected_propagations == pytest.approx(sum(1 + schedule(s / 20) for s in range(20)), rel=1e-12)


# ---------- BatchNorm ----------


def test_batchnorm_statistics_come_from_the_clean_pass_only():
    model = net()
    clean = copy.deepcopy(model)
    x, y = batches(1)[0]
    clean.train()
    clean(x)
    opt = RandomizedSAM(sgd(model), make_schedule("constant", p=1.0), 5, model=model, rho=0.5)
    opt.step(closure_for(model, x, y))
    bn, clean_bn = model[1], clean[1]
    assert torch.equal(bn.running_mean, clean_bn.running_mean)
    assert torch.equal(bn.running_var, clean_bn.running_var)
    assert bn.num_batches_tracked.item() == 1


def test_batchnorm_tracking_is_restored_when_the_closure_raises():
    model = net()
    opt = RandomizedSAM(sgd(model), make_schedule("constant", p=1.0), 5, model=model)
    x, y = batches(1)[0]
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("boom")
        return closure_for(model, x, y)()

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure)
    assert model[1].track_running_stats is True


# ---------- dropout ----------


class MaskRecorder(nn.Module):
    """A linear layer behind dropout; keeps every dropout mask it applied."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(5, 3)
        self.masks = []

    def forward(self, x):
        mask = nn.functional.dropout(torch.ones_like(x), p=0.5, training=self.training)
        self.masks.append(mask)
        return self.linear(x * mask)


ACCELERATORS = [
    pytest.param(name, marks=pytest.mark.skipif(not available(), reason=f"needs {name}"))
    for name, available in (("cuda", torch.cuda.is_available), ("mps", torch.backends.mps.is_available))
]


@pytest.mark.parametrize("device", ["cpu", *ACCELERATORS])
def test_both_passes_of_a_sharpness_aware_step_draw_the_same_dropout_mask(device):
    """On the device's own generator too (dropout on CUDA and MPS draws from it, not the CPU's)."""
    model = MaskRecorder().to(device, torch.float32)  # MPS has no float64
    opt = RandomizedSAM(sgd(model), make_schedule("constant", p=1.0), 5, model=model)
    for x, y in batches(2):
        opt.step(closure_for(model, x.to(device, torch.float32), y.to(device)))
    first, perturbed, second, _ = model.masks
    assert (first == 0).any() and (first == 2).any()
    assert torch.equal(first, perturbed)
    assert not torch.equal(first, second)  # fresh masks from step to step


def test_sharpness_aware_and_sgd_steps_consume_the_same_randomness():
    """With ρ = 0 and the same masks, g2 = g1: a SAM step is then the SGD step, bit for bit."""
    x, y = batches(1)[0]
    torch.manual_seed(5)
    start = torch.get_rng_state()
    outcomes = []
    for p in (0.0, 1.0):
        model = MaskRecorder()
        opt = RandomizedSAM(sgd(model), make_schedule("constant", p=p), 5, model=model, rho=0.0)
        torch.set_rng_state(start)
        opt.step(closure_for(model, x, y))
        assert opt.last_was_sam == (p == 1.0)
        outcomes.append((torch.get_rng_state(), [q.detach().clone() for q in model.parameters()]))
    (sgd_state, sgd_params), (sam_state, sam_params) = outcomes
    assert torch.equal(sgd_state, sam_state)
    assert all(torch.equal(a, b) for a, b in zip(sgd_params, sam_params))


# ---------- clipping and loss scaling ----------


def test_gradient_clipping_bounds_the_update():
    w = nn.Parameter(torch.tensor(W0))
    opt = RandomizedSAM(torch.optim.SGD([w], lr=1.0), make_schedule("constant", p=0.0), 5, max_grad_norm=0.5)

    def closure():
        loss = 100.0 * w.sum()
        loss.backward()
        return loss

    opt.step(closure)
    # torch's clip_grad_norm_ divides by (norm + 1e-6)
    assert torch.linalg.vector_norm(w.detach() - torch.tensor(W0)).item() == pytest.approx(0.5, rel=1e-7)


def test_grad_scaler_gives_the_unscaled_sam_update_and_skips_overflow():
    rho = 0.2
    w = nn.Parameter(torch.tensor(W0))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = RandomizedSAM(
        torch.optim.SGD([w], lr=0.1), make_schedule("constant", p=1.0), 5, rho=rho, grad_scaler=scaler
    )
    a = torch.tensor(A)
    poison = False

    def closure():
        loss = 0.5 * w @ a @ w
        scaler.scale(loss * (torch.inf if poison else 1.0)).backward()
        return loss

    opt.step(closure)
    g1 = A @ W0
    expected = W0 - 0.1 * A @ (W0 + rho * g1 / np.linalg.norm(g1))
    np.testing.assert_allclose(w.detach().numpy(), expected, rtol=0, atol=1e-13)
    poison = True
    before = w.detach().clone()
    opt.step(closure)
    assert torch.equal(w.detach(), before)  # overflow: step skipped, θ restored
    assert scaler.get_scale() < 2.0**10


@pytest.mark.parametrize("kwargs", [{}, {"adaptive": True}, {"grst_weight": 0.5}])
def test_fp16_overflow_without_model_leaves_batchnorm_statistics_finite(kwargs):
    """An overflowing g1 gives a zero ascent scale; e = g1·0 must not carry its inf as NaN into BN."""
    model = net().float()  # autocast leaves float64 alone
    x, y = batches(1)[0]
    x = x.float()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)  # overflows fp16 in backward
    opt = RandomizedSAM(  # no `model`: the perturbed pass moves the BN statistics
        torch.optim.SGD(model.parameters(), lr=0.1),
        make_schedule("constant", p=1.0),
        5,
        grad_scaler=scaler,
        **kwargs,
    )
    grads = []

    def closure():
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    opt.step(closure)
    assert opt.last_was_sam
    assert not all(torch.isfinite(g).all() for g in grads[0])  # the overflow did happen in g1
    assert torch.isfinite(model[1].running_mean).all() and torch.isfinite(model[1].running_var).all()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # step skipped
    assert scaler.get_scale() < 2.0**20


# ---------- bad input ----------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": -0.1}, "rho=-0.1"),
        ({"total_steps": 0}, "total_steps=0"),
        ({"alpha_max": 0.0}, "alpha_max=0.0"),
        ({"grst_weight": -1.0}, "grst_weight=-1.0"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, match):
    w = nn.Parameter(torch.zeros(1))
    args = {"total_steps": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        RandomizedSAM(
            torch.optim.SGD([w], lr=0.1), make_schedule("constant", p=0.5), args.pop("total_steps"), **args
        )


def test_schedule_value_outside_unit_interval_is_an_error():
    w = nn.Parameter(torch.zeros(1))
    opt = RandomizedSAM(torch.optim.SGD([w], lr=0.1), lambda x: 1.5, 10)
    with pytest.raises(ValueError, match="p=1.5"):
        opt.step(lambda: (w.sum()).backward())
