"""The sharpness-aware methods as one table (`METHODS`), as the schedule families are.

Each entry names its parameters (default and check), its expected cost per step before training (an
estimate where only training can tell: AE-SAM), the baselines it reduces to, and what it is;
`build_method` makes its strategies for the two-pass core (`rst_tune.sharpness`): when to take a
sharpness-aware step, what a refresh leaves for the plain steps, and a Trainer hook. Every method reads
the shared `rho` and `adaptive` (how to perturb: SAM or ASAM); `rst` and `deterministic` draw from the
config's `schedule` and mix by `grst_weight`. What a run really cost the core counts in passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from rst_tune._cost import FORWARD_COST
from rst_tune.methods._hook import MomentumRestart, TrainerHook
from rst_tune.methods._looksam import LookSAMReuse
from rst_tune.methods._mesa import MESA
from rst_tune.methods._rules import AdaptiveNorm, Deterministic, Every
from rst_tune.schedules import Schedule, make_schedule
from rst_tune.sharpness import Reuse, Rule

__all__ = [
    "METHODS",
    "Method",
    "MethodError",
    "Param",
    "Parts",
    "build_method",
    "check_method",
    "describe",
    "expected_cost",
]


class MethodError(ValueError):
    """A method or parameter that cannot be built; `key` names the parameter, if one is to blame."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Param:
    """A method parameter: its default, its type (int, float or bool) and the interval it lies in
    (`closed`: which ends it may take)."""

    default: Any
    kind: type = float
    low: float = -math.inf
    high: float = math.inf
    closed: tuple[bool, bool] = (True, True)

    def check(self, value: Any) -> Any:
        """`value` as this parameter takes it; ValueError saying what it must be."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false (got {value!r})")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number (got {value!r})")
        if not math.isfinite(value):
            raise ValueError(f"must be finite (got {value!r})")
        if self.kind is int and not float(value).is_integer():
            raise ValueError(f"must be an integer (got {value!r})")
        above = value >= self.low if self.closed[0] else value > self.low
        below = value <= self.high if self.closed[1] else value < self.high
        if not (above and below):
            ends = (
                "[" if self.closed[0] and math.isfinite(self.low) else "(",
                "]" if self.closed[1] and math.isfinite(self.high) else ")",
            )
            raise ValueError(f"must lie in {ends[0]}{self.low:g}, {self.high:g}{ends[1]} (got {value!r})")
        return self.kind(value)


@dataclass(frozen=True)
class Parts:
    """A method's strategies: `rule` (None: RST's coin on the schedule), `reuse`, `hook`."""

    rule: Rule | None = None
    reuse: Reuse | None = None
    hook: TrainerHook | None = None


@dataclass(frozen=True)
class Method:
    """One row of the table. `build(params, schedule, model)` makes its Parts; `extra(params,
    schedule, epochs)` is its expected cost per step beyond one SGD step; `baseline(params, schedule)`
    names what it reduces to ("SGD", "SAM") or None."""

    description: str
    reference: str
    build: Callable[..., Parts]
    extra: Callable[..., float]
    params: dict[str, Param] = field(default_factory=dict)
    baseline: Callable[..., str | None] = lambda params, schedule: None
    estimated: bool = False  # the expected cost is an estimate: only training tells
    uses_schedule: bool = False  # draws from the config's schedule (and may mix by G-RST)
    perturbs: bool = True  # takes sharpness-aware steps (reads rho and adaptive)


def _by_schedule(params: Mapping[str, Any], schedule: Schedule) -> str | None:
    if schedule.name == "constant" and schedule.params["p"] in (0.0, 1.0):
        return "SAM" if schedule.params["p"] else "SGD"
    return None


def _one_in_k(params: Mapping[str, Any], schedule: Schedule, epochs: int) -> float:
    """The extra cost of a sharpness-aware step every k steps."""
    return 1 / params["k"]


def _sam_at_k1(params: Mapping[str, Any], schedule: Schedule) -> str | None:
    """A sharpness-aware step every step is SAM."""
    return "SAM" if params["k"] == 1 else None


def _late(params: Mapping[str, Any]) -> Schedule:
    """Late-phase SAM's p(t): 0 up to `switch`, 1 after it."""
    return make_schedule("step_up", switch=params["switch"])


def _share_above(low: float, high: float) -> float:
    """The mean over x in [0, 1] of P(Z ≥ x·low + (1 − x)·high), Z standard normal: AE-SAM's share
    of sharpness-aware steps were ‖g‖² normal about its running mean."""

    def integral(c: float) -> float:  # ∫ Φ(c) dc = cΦ(c) + φ(c)
        return c * 0.5 * (1 + math.erf(c / math.sqrt(2))) + math.exp(-c * c / 2) / math.sqrt(2 * math.pi)

    if low == high:
        return 0.5 * math.erfc(low / math.sqrt(2))
    return 1 - (integral(low) - integral(high)) / (low - high)


METHODS: dict[str, Method] = {
    "rst": Method(
        "Randomized SAM (RST; SS-SAM in its first version): a sharpness-aware step with probability "
        "p(t) each step, by a coin of its own; G-RST mixes in gradient-norm regularisation (grst_weight)",
        "Zhao et al., Randomized Sharpness-Aware Training (the paper in shared/seeds)",
        lambda params, schedule, model: Parts(),
        lambda params, schedule, epochs: schedule.mean(),
        baseline=_by_schedule,
        uses_schedule=True,
    ),
    "deterministic": Method(
        "RST's schedule without the coin: a sharpness-aware step whenever ⌊Σ p⌋ rises",
        "rst-tune (the coin's control)",
        lambda params, schedule, model: Parts(rule=Deterministic(schedule)),
        lambda params, schedule, epochs: schedule.mean(),
        baseline=_by_schedule,
        uses_schedule=True,
    ),
    "periodic": Method(
        "A sharpness-aware step every k steps, when (t + 1) mod k = 0, as Composer's SAM(interval=k); "
        "rho is not scaled with k (Composer's README suggests scaling it by hand)",
        "mosaicml/composer composer/algorithms/sam/sam.py",
        lambda params, schedule, model: Parts(rule=Every(params["k"], offset=1)),
        _one_in_k,
        {"k": Param(2, int, 1)},
        baseline=_sam_at_k1,
    ),
    "late_phase": Method(
        "Plain steps until progress `switch`, sharpness-aware steps after it; the momentum buffer "
        "starts afresh at the switch (restart_momentum), as the official code's second optimizer",
        "Zhou et al., ICLR 2025; zzp1012/SAM-in-Late-Phase script/ERM_to_SAM.py",
        lambda params, schedule, model: Parts(
            rule=Deterministic(_late(params)),
            hook=MomentumRestart(params["switch"]) if params["restart_momentum"] else None,
        ),
        lambda params, schedule, epochs: _late(params).mean(),
        {"switch": Param(0.75, float, 0.0, 1.0), "restart_momentum": Param(True, bool)},
        baseline=lambda params, schedule: "SGD" if params["switch"] == 1.0 else None,
    ),
    "looksam": Method(
        "A sharpness-aware refresh every k steps (t mod k = 0) keeps g_v, the part of g2 orthogonal to "
        "g1; each step between adds alpha·‖g‖·g_v/‖g_v‖ to its gradient",
        "Liu et al., CVPR 2022; the rule of Leminhbinh0209/LookSAM and MarlonBecker/MSAM",
        lambda params, schedule, model: Parts(
            rule=Every(params["k"], offset=0), reuse=LookSAMReuse(params["alpha"])
        ),
        _one_in_k,
        {"k": Param(5, int, 1), "alpha": Param(0.7, float, 0.0)},
        baseline=_sam_at_k1,
    ),
    "aesam": Method(
        "AE-SAM: a sharpness-aware step when ‖g‖² ≥ μ + c_t·σ, μ and σ² its running mean and variance "
        "(decay delta), c_t moving linearly from lambda2 to lambda1; its cost is known after training only",
        "Jiang et al., An Adaptive Policy to Employ Sharpness-Aware Minimization, ICLR 2023; rule and "
        "defaults as junaidaliop/zij's notes give them, not yet checked against the paper's text",
        lambda params, schedule, model: Parts(
            rule=AdaptiveNorm(params["delta"], params["lambda1"], params["lambda2"])
        ),
        lambda params, schedule, epochs: _share_above(params["lambda1"], params["lambda2"]),
        {
            "delta": Param(0.9, float, 0.0, 1.0, (False, False)),
            "lambda1": Param(-1.0),
            "lambda2": Param(1.0),
        },
        estimated=True,
    ),
    "mesa": Method(
        "MESA: plain steps with a loss term weight·tau²·KL(softmax(z_ema/tau) ‖ softmax(z/tau)) towards "
        "an EMA of the model (decay), from epoch `start` (0-based); one EMA forward pass per step",
        "Du et al., Sharpness-Aware Training for Free, NeurIPS 2022; AngusDujw/SAF MESA_train.py",
        lambda params, schedule, model: Parts(
            rule=Deterministic(make_schedule("constant", p=0.0)),
            hook=MESA(model, params["weight"], params["tau"], params["decay"], params["start"]),
        ),
        lambda params, schedule, epochs: (
            FORWARD_COST * max(epochs - params["start"], 0) / epochs if params["weight"] > 0 else 0.0
        ),
        {
            "weight": Param(0.8, float, 0.0),
            "tau": Param(5.0, float, 0.0, closed=(False, True)),
            "decay": Param(0.9998, float, 0.0, 1.0, (True, False)),
            "start": Param(6, int, 0),
        },
        baseline=lambda params, schedule: "SGD" if params["weight"] == 0 else None,
        perturbs=False,
    ),
}


def check_method(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The method's parameters with its defaults filled in; MethodError naming an unknown method or
    the parameter to blame."""
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    known = METHODS[name].params
    for key in params:
        if key not in known:
            raise MethodError(f"unknown for method {name}; valid: {', '.join(known) or 'none'}", key)
    checked = {}
    for key, param in known.items():
        try:
            checked[key] = param.check(params.get(key, param.default))
        except ValueError as err:
            raise MethodError(str(err), key) from None
    return checked


def build_method(name: str, params: Mapping[str, Any], schedule: Schedule, model: nn.Module) -> Parts:
    """The strategies of method `name` (parameters as `check_method` gives them) for `model`."""
    return METHODS[name].build(params, schedule, model)


def describe(name: str, params: Mapping[str, Any], schedule: Schedule) -> str:
    """A method in words: RST by its schedule (`step(p_early=0, p_late=1, switch=0.5)`), the others by
    name and parameters (`looksam(k=5, alpha=0.7)`)."""
    if name == "rst":
        return str(schedule)
    if METHODS[name].uses_schedule:
        return f"{name} {schedule}"
    words = (f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    return f"{name}({', '.join(words)})"


def expected_cost(name: str, params: Mapping[str, Any], schedule: Schedule, epochs: int) -> float:
    """Expected cost per step in SGD steps (`rst_tune._cost`) before training: RST 1 + p̄; an estimate
    where `METHODS[name].estimated`."""
    return 1 + METHODS[name].extra(params, schedule, epochs)
