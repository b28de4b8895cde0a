"""The search-space file: its schema (searched dimensions, schedule families, objective, sampler, budget)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from rst_tune.config import ConfigError, TrainConfig, load_config, validation_problems
from rst_tune.methods import METHODS, MethodError, check_method, describe, expected_cost
from rst_tune.schedules import (
    ALIASES,
    Schedule,
    make_schedule,
    schedule_at,
    schedule_coordinates,
    schedule_params,
)
from rst_tune.search._objectives import COSTS, OBJECTIVES
from rst_tune.search._settings import Lines, RunSettings, Strict, load_settings, parse_settings

SAMPLERS = ("tpe", "nsga2", "gp", "random", "known_cost")
MIN_SEEDS = 2  # the fewest seeds an interval needs


class Dimension(Strict):
    """One searched value: a range (`low`, `high`, optional `log`, `step`, `type: int`) or `choices`.
    `optional: true` adds "off" (None), e.g. plain RST for `grst_weight`."""

    low: float | None = Field(None, description="the range's lower end")
    high: float | None = Field(None, description="the range's upper end")
    log: bool = Field(False, description="draw on a log scale (low > 0)")
    step: float | None = Field(None, gt=0, description="draw on a grid of this step from low")
    type: Literal["float", "int"] = Field("float", description="int: whole numbers only")
    choices: list[Any] | None = Field(None, description="the values to choose from, instead of a range")
    optional: bool = Field(False, description="also draw off (null), e.g. plain RST for grst_weight")

    @model_validator(mode="after")
    def _consistent(self) -> Dimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("give either choices or a range (low, high), not both")
            if not self.choices:
                raise ValueError("choices is empty")
            if any(not isinstance(c, (bool, int, float, str, type(None))) for c in self.choices):
                raise ValueError("choices must be numbers, strings, booleans or null")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a dimension needs low and high, or choices")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError("an int dimension needs integer low and high")
        return self

    def values_to_check(self) -> list[Any]:
        """The values whose validity stands for the whole dimension."""
        values = list(self.choices) if self.choices is not None else [self.low, self.high]
        if self.type == "int" and self.choices is None:
            values = [int(v) for v in values]
        return values + ([None] if self.optional else [])

    def divides(self, n: int) -> bool:
        """Whether every value the dimension can take is a multiple of n."""
        if self.choices is not None:
            return all(isinstance(c, int) and c % n == 0 for c in self.choices)
        return n == 1

    def unit(self, value: Any) -> float:
        """Where `value` lies in the dimension, in [0, 1]: on its scale (log or linear), or its
        choice's centre."""
        if self.choices is not None:
            return (self.choices.index(value) + 0.5) / len(self.choices)
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices or (value is None and self.optional)
        if value is None:
            return self.optional
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high
        )


class ScheduleFamily(Strict):
    """Parameters of one schedule family: each a fixed number or a Dimension, named as the family's
    parameters (`p_start`, ...) or in its coordinates (`mean`, `tilt`, ...: see rst_tune.schedules)."""

    params: dict[str, float | Dimension] = Field(default_factory=dict)
    in_coordinates: bool = False

    def schedule(self, name: str, values: dict[str, float]) -> Schedule:
        """The schedule of family `name` whose parameters, spelt as here, are `values`."""
        return schedule_at(name, **values) if self.in_coordinates else make_schedule(name, **values)

    def values_of(self, name: str, schedule: Schedule) -> dict[str, float]:
        """A schedule of family `name` (an alias's schedule is built as its family) spelt as here."""
        if self.in_coordinates:
            return schedule.coordinates()
        if name in ALIASES:
            return {"p": schedule.params[ALIASES[name][1]]}
        return dict(schedule.params)


class MethodFamily(Strict):
    """A searched method's own parameters: each a fixed value or a Dimension; those not named keep
    the method's defaults. A method that draws from a schedule takes the spec's schedule families."""

    params: dict[str, bool | int | float | Dimension] = Field(default_factory=dict)


class Sampler(Strict):
    name: Literal[SAMPLERS] = Field(  # type: ignore[valid-type]
        "tpe",
        description="Optuna's sampler, seeded by seed; known_cost models val_accuracy alone and prices "
        "each proposal by its known cost",
    )
    startup_trials: int | None = Field(
        None, ge=0, description="complete trials before TPE, GP or known_cost model the space"
    )
    balance_methods: bool = Field(
        False,
        description="known_cost: give every method of space.method the same number of trials (±1), "
        "each proposal drawn from a method with the fewest so far (the SGD and SAM baselines count as rst)",
    )


class EarlyStopping(Strict):
    rule: Literal["none", "asha", "pareto_fair", "hypervolume"] = Field(
        "none",
        description="hypervolume: stop a trial that can no longer add to the front at its own cost; "
        "pareto_fair: one beaten by cheaper trials at the same epoch; asha: Ray's ASHA (scalar objectives)",
    )
    grace_epochs: int = Field(1, ge=1, description="no trial is stopped before this many epochs")
    reduction_factor: float = Field(3.0, gt=1, description="asha only")
    min_dominating: int = Field(
        1, ge=1, description="pareto_fair: stop when this many cheaper-or-equal trials beat it"
    )
    margin: float = Field(
        0.01, ge=0.0, le=1.0, description="hypervolume: val_accuracy added to the optimistic bound"
    )


class Confirm(Strict):
    """After the search, train the front and the points within `margin` of it (at most `max_points` of
    them), and the SGD and SAM baselines, again with fresh seeds (`seeds` 0: no confirmation):
    `seeds` each, or with `sequential`, two each and then one at a time to the points whose place on
    the front is undecided at `confidence`, up to `seeds` each."""

    seeds: int = Field(3, ge=0, description="fresh seeds per confirmed point (the most, when sequential)")
    sequential: bool = Field(True, description="spend seeds only where the front is undecided")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="the level of the paired intervals")
    margin: float = Field(
        0.01, ge=0.0, le=1.0, description="also confirm points within this val_accuracy of the front"
    )
    max_points: int = Field(
        6, ge=1, description="points confirmed at most besides SGD and SAM, the front first"
    )

    @model_validator(mode="after")
    def _enough_seeds(self) -> Confirm:
        if 0 < self.seeds < MIN_SEEDS:
            raise ValueError(f"an interval needs at least {MIN_SEEDS} seeds (0 turns confirmation off)")
        return self


class SearchSpec(RunSettings):
    """A whole search: fixed training settings, searched dimensions, objective, sampler and budget."""

    kind: ClassVar[str] = "search"

    space: dict[str, Any] = Field(
        default_factory=dict,
        description="what is searched: schedule (families and their parameters), method (methods and "
        "their parameters) and any TrainConfig key, each a fixed value or a dimension",
    )
    objective: Literal[tuple(OBJECTIVES)] = Field(  # type: ignore[valid-type]
        "pareto",
        description="pareto: val_accuracy against cost; acc_per_prop: val_accuracy / cost_ratio; "
        "accuracy_under_budget: val_accuracy at cost ≤ budget",
    )
    cost: Literal[COSTS] = Field(  # type: ignore[valid-type]
        "propagations",
        description="the front's cost axis: propagations, or device_seconds (training wall time × devices)",
    )
    confirm: Confirm = Field(
        default_factory=Confirm, description="the front trained again with fresh seeds after the search"
    )
    budget: float | None = Field(
        None,
        ge=1.0,
        le=2.0,
        description="accuracy_under_budget: the largest cost allowed, compute over SGD's at train's "
        "epochs and batch size (rst_tune.search._cost_axis: SGD 1, SAM 2)",
    )
    sampler: Sampler = Field(default_factory=Sampler, description="how the trials are chosen")
    num_samples: int = Field(12, ge=1, description="trials, the baselines and points_to_evaluate among them")
    early_stopping: EarlyStopping = Field(
        default_factory=EarlyStopping, description="when a trial stops before its last epoch"
    )
    baselines: bool = Field(True, description="evaluate SGD (p = 0) and SAM (p = 1) first")
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list, description="training settings to try first, after the baselines"
    )

    _schedule: dict[str, ScheduleFamily] = PrivateAttr(default_factory=dict)
    _method: dict[str, MethodFamily] = PrivateAttr(default_factory=dict)
    _dimensions: dict[str, Dimension] = PrivateAttr(default_factory=dict)

    @property
    def method(self) -> dict[str, MethodFamily]:
        """Searched methods (empty: the method in `train` is fixed)."""
        return self._method

    @property
    def schedule(self) -> dict[str, ScheduleFamily]:
        """Searched schedule families (empty: the schedule in `train` is fixed)."""
        return self._schedule

    @property
    def dimensions(self) -> dict[str, Dimension]:
        """Searched training settings other than the schedule, by TrainConfig key."""
        return self._dimensions

    @model_validator(mode="after")
    def _compile(self) -> SearchSpec:
        base = self.train_config()
        if base.val_size == 0:
            raise ConfigError(
                "a search needs validation data to select on: 0 leaves none (a study may use 0)",
                key=("train", "val_size"),
            )
        for key, raw in self.space.items():
            if key == "schedule":
                self._schedule = _schedule_families(raw)
            elif key == "method":
                self._method = _method_families(raw)
                for name in self._method:  # train's fixed settings must suit every searched method
                    try:
                        load_config({**self.train, "method": {"name": name}})
                    except ConfigError as err:
                        raise ConfigError(str(err), key=("space", "method", name)) from None
            elif key not in TrainConfig.model_fields:
                raise ConfigError(
                    "unknown key (searched keys are training settings: "
                    f"{', '.join(TrainConfig.model_fields)})",
                    key=("space", str(key)),
                )
            else:
                self._dimensions[key] = _dimension(raw, ("space", key))
                if key == "val_size" and self._dimensions[key].contains(0):
                    raise ConfigError(
                        "a search needs validation data to select on: 0 leaves none", key=("space", key)
                    )
                if key == "val_size":
                    raise ConfigError(
                        "every trial of a search trains and is selected on the same data (the front "
                        "compares them on one cost axis): set it in train",
                        key=("space", key),
                    )
                for value in self._dimensions[key].values_to_check():
                    _check_setting(base, key, value)
                workers = self.resources.workers
                if key == "batch_size" and workers > 1 and not self._dimensions[key].divides(workers):
                    raise ConfigError(
                        f"every batch size must divide among the {workers} workers: give choices that do",
                        key=("space", key),
                    )
                if key == "grst_weight" and workers > 1 and self._dimensions[key].contains(0):
                    raise ConfigError("0 has no data-parallel form (α = 0)", key=("space", key))
        if self.objective == "accuracy_under_budget" and self.budget is None:
            raise ConfigError(
                "accuracy_under_budget needs a budget (the largest cost, from 1 for SGD to 2 for SAM at "
                "train's settings)",
                key="budget",
            )
        if self.budget is not None and self.budget < (cheapest := self.cheapest_cost())[0]:
            raise ConfigError(
                f"{self.budget:g} is below the cheapest expected cost in the space "
                f"({cheapest[0]:.3g}, {cheapest[1]})",
                key="budget",
            )
        if self.objective != "accuracy_under_budget" and self.budget is not None:
            raise ConfigError(
                f"only used by objective accuracy_under_budget, not {self.objective}", key="budget"
            )
        if self.sampler.name == "known_cost" and self.objective == "acc_per_prop":
            raise ConfigError(
                "known_cost models accuracy against a known cost: use objective pareto or "
                "accuracy_under_budget",
                key=("sampler", "name"),
            )
        if self.sampler.balance_methods and (self.sampler.name != "known_cost" or not self.method):
            raise ConfigError(
                "needs sampler known_cost and methods to balance in space.method",
                key=("sampler", "balance_methods"),
            )
        if self.early_stopping.rule == "asha" and self.objective == "pareto":
            raise ConfigError(
                "asha needs a scalar objective; use pareto_fair with objective pareto",
                key=("early_stopping", "rule"),
            )
        if self.baselines and self.method and "rst" not in self.method:
            raise ConfigError(
                "SGD and SAM baselines are RST at p = 0 and 1: add rst to space.method (or set "
                "baselines: false)",
                key="baselines",
            )
        if self.baselines and "constant" not in self.schedule:
            raise ConfigError(
                "SGD and SAM baselines need the constant schedule family in space.schedule "
                "(or set baselines: false)",
                key="baselines",
            )
        return self

    def cheapest(self) -> tuple[float, str]:
        """The lowest expected cost per step the space can reach, and what reaches it: RST and its
        deterministic form at their cheapest schedule, every other searched method at the corners of
        its parameters' box (its cost is monotone in each)."""
        base = self.train_config()
        options = []
        for name in self._method or {base.method.name: MethodFamily()}:
            if METHODS[name].uses_schedule:
                cost, schedule = self.cheapest_schedule()
                options.append((cost, describe(name, {}, schedule)))
                continue
            family = self._method[name].params if self._method else base.method.params
            ranges = [_corners(value) for value in family.values()]
            for values in itertools.product(*ranges):
                params = check_method(name, dict(zip(family, values)))
                cost = expected_cost(name, params, base.schedule.build(), base.epochs)
                options.append((cost, describe(name, params, base.schedule.build())))
        return min(options)

    def cheapest_cost(self) -> tuple[float, str]:
        """The lowest cost the space can reach (`cheapest` over the fewest epochs it draws, as
        `CostAxis.cost` counts them; a searched batch size's share, within one batch of 1, needs the
        data and is left to the searcher), and what reaches it."""
        cost, what = self.cheapest()
        epochs = self._dimensions.get("epochs")
        if epochs is None:
            return cost, what
        fewest = min(v for v in epochs.values_to_check() if v is not None)
        return cost * fewest / self.train_config().epochs, f"{what} for {fewest} epochs"

    def cheapest_schedule(self) -> tuple[float, Schedule]:
        """The lowest expected cost 1 + p̄ the space can reach, and its schedule. Every p̄ is
        multilinear in the shape parameters, so the minimum lies on a corner of their box."""
        schedule = min(self.corner_schedules(), key=lambda s: s.mean())
        return schedule.expected_cost(), schedule

    def corner_schedules(self) -> list[Schedule]:
        """The schedule of every corner of each family's parameter box (the fixed schedule in `train`
        when none is searched)."""
        if not self._schedule:
            return [self.train_config().schedule.build()]
        corners = []
        for name, family in self._schedule.items():
            ranges = [
                [v.low, v.high]
                if isinstance(v, Dimension) and v.choices is None
                else (v.choices if isinstance(v, Dimension) else [v])
                for v in family.params.values()
            ]
            corners += [
                family.schedule(name, dict(zip(family.params, values)))
                for values in itertools.product(*ranges)
            ]
        return corners


def _dimension(raw: Any, key: tuple[str, ...]) -> Dimension:
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a dimension (low/high or choices), got {raw!r}", key=key)
    try:
        return Dimension.model_validate(raw)
    except ValidationError as err:
        raise validation_problems(err).within(*key) from None


def _schedule_families(raw: Any) -> dict[str, ScheduleFamily]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            "expected a mapping of schedule families to their parameters", key=("space", "schedule")
        )
    families = {}
    for name, params in raw.items():
        where = ("space", "schedule", str(name))
        try:
            native, coordinates = schedule_params(name), schedule_coordinates(name)
        except ValueError as err:
            raise ConfigError(str(err), key=where) from None
        params = params or {}
        if not isinstance(params, dict):
            raise ConfigError(
                f"expected a mapping of its parameters ({', '.join(coordinates)}, or {', '.join(native)})",
                key=where,
            )
        in_coordinates = any(key in coordinates and key not in native for key in params)
        expected = coordinates if in_coordinates else native
        for key in params:
            if key not in expected:
                raise ConfigError(
                    f"unknown parameter ({name} takes {', '.join(coordinates)}, or {', '.join(native)})",
                    key=(*where, str(key)),
                )
        for key in expected:
            if key not in params:
                raise ConfigError("missing (a number or a dimension)", key=(*where, key))
        family = {k: (_dimension(v, (*where, k)) if isinstance(v, dict) else v) for k, v in params.items()}
        middle = {k: 0.0 if k == "tilt" else 0.5 for k in expected}
        build = schedule_at if in_coordinates else make_schedule
        for key, value in family.items():
            for candidate in value.values_to_check() if isinstance(value, Dimension) else [value]:
                try:
                    build(name, **{**middle, key: candidate})
                except (ValueError, TypeError) as err:
                    raise ConfigError(str(err), key=(*where, key)) from None
        families[name] = ScheduleFamily(params=family, in_coordinates=in_coordinates)
    means = {n: f.params["mean"] for n, f in families.items() if f.in_coordinates and "mean" in f.params}
    first = next(iter(means), None)
    for name, mean in means.items():
        if mean != means[first]:
            raise ConfigError(
                f"every family in coordinates shares one Optuna parameter, schedule.mean: give it the "
                f"same value or range as {first}'s",
                key=("space", "schedule", name, "mean"),
            )
    return families


def _corners(value: Any) -> list[Any]:
    """A fixed value, or a dimension's ends (its choices)."""
    if not isinstance(value, Dimension):
        return [value]
    return value.values_to_check()


def _method_families(raw: Any) -> dict[str, MethodFamily]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("expected a mapping of methods to their parameters", key=("space", "method"))
    families = {}
    for name, params in raw.items():
        where = ("space", "method", str(name))
        params = params or {}
        if not isinstance(params, dict):
            raise ConfigError("expected a mapping of its parameters", key=where)
        family = {k: (_dimension(v, (*where, k)) if isinstance(v, dict) else v) for k, v in params.items()}
        for key, value in family.items():
            known = METHODS[name].params.get(key) if name in METHODS else None
            if isinstance(value, Dimension) and known and known.kind is int and value.type != "int":
                if value.choices is None or not all(isinstance(c, int) for c in value.choices):
                    raise ConfigError(
                        "an integer parameter: give type: int (or integer choices)", key=(*where, key)
                    )
        try:
            check_method(name, {k: v for k, v in family.items() if not isinstance(v, Dimension)})
            for key, value in family.items():
                for candidate in value.values_to_check() if isinstance(value, Dimension) else []:
                    check_method(name, {key: candidate})
        except MethodError as err:
            raise ConfigError(str(err), key=(*where, err.key) if err.key else where) from None
        families[name] = MethodFamily(params=family)
    return families


def _check_setting(base: TrainConfig, key: str, value: Any) -> None:
    try:
        load_config({**base.model_dump(), key: value})
    except ConfigError as err:
        raise ConfigError(f"value {value!r} is not a valid setting ({err})", key=("space", key)) from None


def parse_spec(values: Any, source: str = "search space", lines: Lines | None = None) -> SearchSpec:
    """Validate a mapping into a SearchSpec, or raise ConfigError naming the key (and line)."""
    return parse_settings(SearchSpec, values, source, lines)


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchSpec:
    """Read and validate a search-space YAML file; `overrides` (e.g. from CLI flags) win. The merged
    values, saved with the run, are the spec's `.raw`."""
    return load_settings(SearchSpec, path, overrides)
