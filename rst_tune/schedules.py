"""Scheduling functions p(x): the probability of a sharpness-aware step at training progress x.

The six groups of the RST paper (constant, step_up, step_down, two_level, linear_mean,
linear_mirror), their generalisations (linear, cosine, step), and the authors' names for the six
(piecewise1-3, linear1-2). Every schedule knows its exact mean p̄ = ∫₀¹ p(x) dx, so the expected
cost of a run, 1 + p̄ propagation pairs per step, is known before it starts.

Each family also has coordinates in which its cost is one of them (`schedule_coordinates`): `mean` (p̄), and
shape parameters that leave p̄ unchanged: `tilt` in [-1, 1] (0 flat; 1 as many sharpness-aware steps
late as the family allows at that mean, -1 as many early) and a step's `switch`. The paper's
two_level and linear_mirror have p̄ = 0.5 whatever their `p`, which is all their coordinates.
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
    coordinates: tuple[str, ...] = ("mean",)
    from_coordinates: Callable[..., dict[str, float]] | None = None  # (**coordinates) -> params
    to_coordinates: Callable[..., dict[str, float]] | None = None  # (**params) -> coordinates


def _linear_mean(x: float, p: float) -> float:
    return 2 * p * x if p <= 0.5 else (2 * p - 1) + 2 * (1 - p) * x


def _cosine(x: float, p_start: float, p_end: float) -> float:
    return p_end + (p_start - p_end) * (1 + math.cos(math.pi * x)) / 2


def _unit(value: float) -> float:
    return min(max(value, 0.0), 1.0)  # rounding only: the maps below stay in [0, 1] exactly


def _tilt(value: float) -> float:
    return min(max(value, -1.0), 1.0)  # rounding only, as _unit


def _ramp(mean: float, tilt: float) -> dict[str, float]:
    """Ends of a ramp of mean `mean`: tilt 1 rises as steeply as [0, 1] allows, -1 falls so."""
    half = tilt * min(mean, 1 - mean)
    return {"p_start": _unit(mean - half), "p_end": _unit(mean + half)}


def _ramp_coordinates(p_start: float, p_end: float) -> dict[str, float]:
    mean = (p_start + p_end) / 2
    room = min(mean, 1 - mean)
    return {"mean": mean, "tilt": _tilt((p_end - p_start) / (2 * room) if room > 0 else 0.0)}


def _step_room(mean: float, switch: float) -> tuple[float, float]:
    """How far p_late − p_early can rise and fall at this mean and switch, both levels in [0, 1]."""
    early, late = 1 - switch, switch  # how far a unit jump moves p_early down and p_late up
    rise = min(mean / early if early else math.inf, (1 - mean) / late if late else math.inf)
    fall = min((1 - mean) / early if early else math.inf, mean / late if late else math.inf)
    return rise, fall


def _step(mean: float, tilt: float, switch: float) -> dict[str, float]:
    rise, fall = _step_room(mean, switch)
    jump = tilt * (rise if tilt >= 0 else fall)
    return {
        "p_early": _unit(mean - (1 - switch) * jump),
        "p_late": _unit(mean + switch * jump),
        "switch": switch,
    }


def _step_coordinates(p_early: float, p_late: float, switch: float) -> dict[str, float]:
    mean, jump = switch * p_early + (1 - switch) * p_late, p_late - p_early
    room = _step_room(mean, switch)[0 if jump >= 0 else 1]
    return {"mean": mean, "tilt": _tilt(jump / room if room > 0 else 0.0), "switch": switch}


_FAMILIES: dict[str, _Family] = {
    "constant": _Family(
        ("p",), lambda x, p: p, lambda p: p, ("mean",), lambda mean: {"p": mean}, lambda p: {"mean": p}
    ),
    "step_up": _Family(
        ("switch",),
        lambda x, switch: 0.0 if x <= switch else 1.0,
        lambda switch: 1 - switch,
        ("mean",),
        lambda mean: {"switch": 1 - mean},
        lambda switch: {"mean": 1 - switch},
    ),
    "step_down": _Family(
        ("switch",),
        lambda x, switch: 1.0 if x <= switch else 0.0,
        lambda switch: switch,
        ("mean",),
        lambda mean: {"switch": mean},
        lambda switch: {"mean": switch},
    ),
    "two_level": _Family(("p",), lambda x, p: p if x <= 0.5 else 1 - p, lambda p: 0.5, ("p",)),
    "linear_mean": _Family(
        ("p",), _linear_mean, lambda p: p, ("mean",), lambda mean: {"p": mean}, lambda p: {"mean": p}
    ),
    "linear_mirror": _Family(("p",), lambda x, p: p + 2 * (0.5 - p) * x, lambda p: 0.5, ("p",)),
    "linear": _Family(
        ("p_start", "p_end"),
        lambda x, p_start, p_end: p_start + (p_end - p_start) * x,
        lambda p_start, p_end: (p_start + p_end) / 2,
        ("mean", "tilt"),
        _ramp,
        _ramp_coordinates,
    ),
    "cosine": _Family(
        ("p_start", "p_end"),
        _cosine,
        lambda p_start, p_end: (p_start + p_end) / 2,
        ("mean", "tilt"),
        _ramp,
        _ramp_coordinates,
    ),
    "step": _Family(
        ("p_early", "p_late", "switch"),
        lambda x, p_early, p_late, switch: p_early if x <= switch else p_late,
        lambda p_early, p_late, switch: switch * p_early + (1 - switch) * p_late,
        ("mean", "tilt", "switch"),
        _step,
        _step_coordinates,
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


def canonical(name: str) -> str:
    """The family a schedule name (or alias) builds."""
    return ALIASES[name][0] if name in ALIASES else name


def schedule_coordinates(name: str) -> tuple[str, ...]:
    """The coordinates of a schedule family: `mean` (p̄) first where it varies, then its shape."""
    schedule_params(name)  # an unknown name raises here
    return _FAMILIES[canonical(name)].coordinates


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

    def coordinates(self) -> dict[str, float]:
        """The schedule in its family's coordinates (`schedule_coordinates`)."""
        family = _FAMILIES[self.name]
        return dict(family.to_coordinates(**self.params) if family.to_coordinates else self.params)

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


def schedule_at(name: str, **coordinates: float) -> Schedule:
    """Build a schedule from its family's coordinates (`schedule_coordinates(name)`), e.g.
    `schedule_at("linear", mean=0.3, tilt=1)` is linear(p_start=0, p_end=0.6); ValueError as
    `make_schedule`, with `tilt` in [-1, 1] and the other coordinates in [0, 1]."""
    expected = schedule_coordinates(name)
    if set(coordinates) != set(expected):
        raise ValueError(
            f"schedule {name!r} in coordinates takes {', '.join(expected)}, "
            f"not {', '.join(coordinates) or 'nothing'}"
        )
    for key, value in coordinates.items():
        low = -1.0 if key == "tilt" else 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= 1.0:
            raise ValueError(f"schedule {name!r}: {key}={value!r} must be a number in [{low:g}, 1]")
    family = canonical(name)
    convert = _FAMILIES[family].from_coordinates
    return make_schedule(family, **(convert(**coordinates) if convert else coordinates))
