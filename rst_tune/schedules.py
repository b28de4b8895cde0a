"""Scheduling functions p(x): the probability of a sharpness-aware step at training progress x.

The six groups of the RST paper (constant, step_up, step_down, two_level, linear_mean,
linear_mirror), their generalisations (linear, cosine, step), and the authors' names for the six
(piecewise1-3, linear1-2). Every schedule knows its exact mean p̄ = ∫₀¹ p(x) dx, so the expected
cost of a run, 1 + p̄ propagation pairs per step, is known before it starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class _Family:
    params: tuple[str, ...]
    value: Callable[..., float]  # value(x, **params)
    mean: Callable[..., float]  # mean(**params)


def _linear_mean(x: float, p: float) -> float:
    return 2 * p * x if p <= 0.5 else (2 * p - 1) + 2 * (1 - p) * x


def _cosine(x: float, p_start: float, p_end: float) -> float:
    return p_end + (p_start - p_end) * (1 + math.cos(math.pi * x)) / 2


_FAMILIES: dict[str, _Family] = {
    "constant": _Family(("p",), lambda x, p: p, lambda p: p),
    "step_up": _Family(("switch",), lambda x, switch: 0.0 if x <= switch else 1.0, lambda switch: 1 - switch),
    "step_down": _Family(("switch",), lambda x, switch: 1.0 if x <= switch else 0.0, lambda switch: switch),
    "two_level": _Family(("p",), lambda x, p: p if x <= 0.5 else 1 - p, lambda p: 0.5),
    "linear_mean": _Family(("p",), _linear_mean, lambda p: p),
    "linear_mirror": _Family(("p",), lambda x, p: p + 2 * (0.5 - p) * x, lambda p: 0.5),
    "linear": _Family(
        ("p_start", "p_end"),
        lambda x, p_start, p_end: p_start + (p_end - p_start) * x,
        lambda p_start, p_end: (p_start + p_end) / 2,
    ),
    "cosine": _Family(("p_start", "p_end"), _cosine, lambda p_start, p_end: (p_start + p_end) / 2),
    "step": _Family(
        ("p_early", "p_late", "switch"),
        lambda x, p_early, p_late, switch: p_early if x <= switch else p_late,
        lambda p_early, p_late, switch: switch * p_early + (1 - switch) * p_late,
    ),
}

# The authors' names: alias -> (our family, the name their single parameter `p` takes there).
ALIASES: dict[str, tuple[str, str]] = {
    "piecewise1": ("step_up", "switch"),
    "piecewise2": ("step_down", "switch"),
    "piecewise3": ("two_level", "p"),
    "linear1": ("linear_mean", "p"),
    "linear2": ("linear_mirror", "p"),
}

SCHEDULES: tuple[str, ...] = tuple(_FAMILIES)
"""Canonical schedule names; `make_schedule` also accepts the names in `ALIASES`."""


def schedule_params(name: str) -> tuple[str, ...]:
    """The parameter names a schedule (or alias) takes."""
    if name in ALIASES:
        return ("p",)
    if name not in _FAMILIES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES + tuple(ALIASES))}")
    return _FAMILIES[name].params


@dataclass(frozen=True)
class Schedule:
    """A validated scheduling function; call it with progress x in [0, 1] to get p in [0, 1]."""

    name: str
    params: Mapping[str, float]

    def __call__(self, x: float) -> float:
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"training progress x={x} is outside [0, 1]")
        return _FAMILIES[self.name].value(x, **self.params)

    def mean(self) -> float:
        """Exact p̄ = ∫₀¹ p(x) dx."""
        return _FAMILIES[self.name].mean(**self.params)

    def expected_cost(self) -> float:
        """Expected propagation pairs per step, 1 + p̄: SGD 1, SAM 2."""
        return 1 + self.mean()

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v:.3g}' for k, v in self.params.items())})"


def make_schedule(name: str, **params: float) -> Schedule:
    """Build a schedule by name; unknown names, missing or extra parameters and values outside
    [0, 1] raise ValueError naming them."""
    expected = schedule_params(name)
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing or extra:
        problems = [f"missing parameter {k!r}" for k in missing] + [
            f"unexpected parameter {k!r}" for k in extra
        ]
        raise ValueError(f"schedule {name!r}: {'; '.join(problems)} (takes {', '.join(expected)})")
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"schedule {name!r}: parameter {key}={value!r} must be a number in [0, 1]")
    if name in ALIASES:
        name, key = ALIASES[name]
        params = {key: params["p"]}
    return Schedule(name, {k: float(params[k]) for k in _FAMILIES[name].params})
