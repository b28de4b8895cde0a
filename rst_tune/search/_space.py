"""A validated search spec as an Optuna define-by-run function that makes each trial's record.

Optuna parameter names (`param_name`, `method_param_name`): `method` (the method) and
`method.<method>.<param>` (its own parameters), `schedule` (the family, for the methods that draw from
one), `schedule.mean` (p̄, shared by the families a spec spells in coordinates),
`schedule.<family>.<param>` (its other parameters), `<key>` for any other searched training setting,
and `<key>.on` for the off switch of an optional one.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import optuna

from rst_tune.config import ConfigError, TrainConfig, load_config, method_reads
from rst_tune.methods import METHODS
from rst_tune.schedules import Schedule, canonical, make_schedule
from rst_tune.search._cost_axis import CostAxis
from rst_tune.search._record import TrialRecord
from rst_tune.search._spec import MIN_SEEDS, Dimension, SearchSpec


def trial_seed(search_seed: int, trial_number: int) -> int:
    """The training seed of Optuna trial `trial_number`: fixed by the search seed and the trial."""
    return random.Random(f"rst-tune:{search_seed}:{trial_number}").randrange(2**31)


def describe(config: TrainConfig, searched: set[str] | None = None) -> str:
    """A config in readable words, e.g. `step(p_early=0, p_late=1, switch=0.5), rho 0.05, G-RST 0.3` or
    `looksam(k=5, alpha=0.7), rho 0.05` (only what its method reads)."""
    words = [config.method_words()]
    if method_reads(config.method.name, "rho"):
        words.append(f"rho {config.rho:.3g}")
    if config.grst_weight is not None:
        words.append(f"G-RST {config.grst_weight:.3g}")
    if config.adaptive and method_reads(config.method.name, "adaptive"):
        words.append("ASAM")
    shown = {"method", "schedule", "rho", "grst_weight", "adaptive"}
    for key in sorted(k for k in (searched or set()) - shown if method_reads(config.method.name, k)):
        value = getattr(config, key)
        words.append(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(words)


def baseline_name(config: TrainConfig) -> str | None:
    """What the method reduces to (`rst_tune.methods`): "SGD" (RST at p ≡ 0), "SAM" (or "ASAM", at
    p ≡ 1 without G-RST), else None."""
    found = METHODS[config.method.name].baseline(config.method.settings(), config.schedule.build())
    if found == "SAM" and config.grst_weight is not None:
        return None
    return "ASAM" if found == "SAM" and config.adaptive else found


def param_name(family: str, key: str, in_coordinates: bool) -> str:
    """The Optuna name of a schedule family's parameter `key`."""
    return "schedule.mean" if in_coordinates and key == "mean" else f"schedule.{family}.{key}"


def method_param_name(method: str, key: str) -> str:
    """The Optuna name of a searched method's own parameter `key`."""
    return f"method.{method}.{key}"


def _suggest(trial: Any, name: str, dim: Dimension) -> Any:
    if dim.optional and not trial.suggest_categorical(f"{name}.on", [False, True]):
        return None
    if dim.choices is not None:
        return trial.suggest_categorical(name, dim.choices)
    if dim.type == "int":
        return trial.suggest_int(name, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)


class DefineByRun:
    """The Optuna define-by-run function of a spec: it suggests a trial's searched values and returns
    its record (seed included)."""

    def __init__(self, spec: SearchSpec):
        self.spec = spec

    def __call__(self, trial: Any) -> TrialRecord:
        overrides: dict[str, Any] = {}
        method = self.spec.train_config().method.name
        if self.spec.method:
            method = trial.suggest_categorical("method", list(self.spec.method))
            params = {
                k: _suggest(trial, method_param_name(method, k), v) if isinstance(v, Dimension) else v
                for k, v in self.spec.method[method].params.items()
            }
            overrides["method"] = {"name": method, "params": params}
        drawn = METHODS[method].uses_schedule
        if self.spec.schedule and drawn:
            family = trial.suggest_categorical("schedule", list(self.spec.schedule))
            searched = self.spec.schedule[family]
            values = {
                k: _suggest(trial, param_name(family, k, searched.in_coordinates), v)
                if isinstance(v, Dimension)
                else v
                for k, v in searched.params.items()
            }
            if searched.in_coordinates:  # the family's own parameters, as the engine takes them
                schedule = searched.schedule(family, values)
                overrides["schedule"] = {"name": schedule.name, "params": dict(schedule.params)}
            else:
                overrides["schedule"] = {"name": family, "params": values}
        for key, dim in self.spec.dimensions.items():
            if method_reads(method, key):
                overrides[key] = _suggest(trial, key, dim)
        config = trial_config(self.spec, overrides, trial_seed(self.spec.seed, trial.number))
        searched = set(self.spec.dimensions) | ({"schedule"} if self.spec.schedule else set())
        return TrialRecord(
            config, describe(config, searched), trial.number, baseline_name(config), params=dict(trial.params)
        )


class _RandomTrial:
    """Stands in for an Optuna trial: draws each value uniformly (log ones on their log scale)."""

    number = 0

    def __init__(self, rng: np.random.Generator):
        self.rng, self.params = rng, {}

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.params[name] = choices[int(self.rng.integers(len(choices)))]
        return self.params[name]

    def suggest_float(self, name: str, low: float, high: float, *, step=None, log=False) -> float:
        if log:
            value = math.exp(self.rng.uniform(math.log(low), math.log(high)))
        else:
            value = self.rng.uniform(low, high)
        if step:
            value = min(low + round((value - low) / step) * step, high)
        self.params[name] = float(value)
        return self.params[name]

    def suggest_int(self, name: str, low: int, high: int, *, step=1, log=False) -> int:
        if log:
            value = int(round(self.suggest_float(name, low, high, log=True)))
        else:
            value = low + step * int(self.rng.integers((high - low) // step + 1))
        self.params[name] = value
        return value


class Coordinates:
    """A spec's configurations as a model of the space sees them (`KnownCostSampler`'s `Space`): drawn
    at random, as coordinates in [0, 1] (family, p̄, each family's searched shape, the other searched
    settings with their off switches), and with what training them costs on `axis` (default: the
    spec's; `CostAxis.known`: 2 for SAM at the spec's settings)."""

    def __init__(self, spec: SearchSpec, axis: CostAxis | None = None):
        self.spec, self.space = spec, DefineByRun(spec)
        self.axis = axis or CostAxis.of(spec)
        self._records: dict[tuple, TrialRecord] = {}  # a proposal's candidates, each asked again

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_records": {}}  # a cache: not worth a searcher's checkpoint

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        trial = _RandomTrial(rng)
        self._keep(trial.params, self.space(trial))
        return trial.params

    def record(self, params: dict[str, Any]) -> TrialRecord:
        key = tuple(sorted(params.items()))
        if key not in self._records:
            self._keep(params, self.space(optuna.trial.FixedTrial(params)))
        return self._records[key]

    def _keep(self, params: dict[str, Any], record: TrialRecord) -> None:
        if len(self._records) >= 4096:
            self._records.clear()
        self._records[tuple(sorted(params.items()))] = record

    def features(self, params: dict[str, Any]) -> list[float]:
        record = self.record(params)
        config, values = record.train, []
        settings = config.method.settings()
        for name, family in self.spec.method.items():
            this = config.method.name == name
            values.append(float(this))
            values += [
                dim.unit(settings[key]) if this else 0.5
                for key, dim in family.params.items()
                if isinstance(dim, Dimension)
            ]
        drawn = METHODS[config.method.name].uses_schedule
        schedule = config.schedule.build()
        for name, family in self.spec.schedule.items():
            this = drawn and canonical(name) == schedule.name
            spelt = family.values_of(name, schedule) if this else {}
            values.append(float(this))
            values += [
                dim.unit(spelt[key]) if spelt else 0.5
                for key, dim in family.params.items()
                if isinstance(dim, Dimension)
                and param_name(name, key, family.in_coordinates) != "schedule.mean"
            ]
        values.append(record.expected_cost - 1)  # RST: p̄
        for key, dim in self.spec.dimensions.items():
            value = getattr(config, key)
            if dim.optional:
                values.append(float(value is not None))
            values.append(dim.unit(value) if value is not None else 0.5)
        return values

    def cost(self, params: dict[str, Any]) -> float:
        return self.axis.known(self.record(params).train)

    def admissible(self, params: dict[str, Any]) -> bool:
        budget = self.spec.budget
        return budget is None or self.cost(params) <= budget

    def groups(self) -> list[str]:
        """The searched methods, where the spec balances trials over them; else none."""
        return list(self.spec.method) if self.spec.sampler.balance_methods else []

    def group(self, params: dict[str, Any]) -> str:
        return params["method"]


def trial_config(spec: SearchSpec, overrides: dict[str, Any], seed: int) -> TrainConfig:
    """The spec's fixed training settings with a trial's searched values and seed."""
    return load_config({**spec.train, **overrides, "seed": seed})


def optuna_params(
    spec: SearchSpec, point: dict[str, Any], where: tuple[str, ...] = ("point",)
) -> dict[str, Any]:
    """A point given as searched training settings (e.g. {"schedule": {"name": "constant", "params":
    {"p": 1}}, "grst_weight": None}) as Optuna parameters, for `enqueue_trial`. Unknown keys and
    values outside the space raise ConfigError naming them."""
    params: dict[str, Any] = {}
    for key, value in point.items():
        if key == "method" and spec.method:
            name, values = _chosen(value, spec.method, "method", (*where, key))
            params["method"] = name
            for param in values:
                if param not in spec.method[name].params:
                    raise ConfigError(
                        f"not searched for {name} "
                        f"(searched: {', '.join(spec.method[name].params) or 'none'})",
                        key=(*where, "method", "params", str(param)),
                    )
            for param, dim in spec.method[name].params.items():
                given = values.get(param, dim if not isinstance(dim, Dimension) else None)
                if isinstance(dim, Dimension) and not dim.contains(given):
                    raise ConfigError(
                        f"{given!r} is outside the searched range", key=(*where, "method", "params", param)
                    )
                if isinstance(dim, Dimension):
                    params[method_param_name(name, param)] = given
                elif given != dim:
                    raise ConfigError(f"{name} fixes it at {dim}", key=(*where, "method", "params", param))
        elif key == "schedule" and spec.schedule:
            name, values = _chosen(value, spec.schedule, "family", (*where, key))
            params["schedule"] = name
            family = spec.schedule[name]
            try:
                spelt = family.values_of(name, make_schedule(name, **values))
            except (TypeError, ValueError) as err:
                raise ConfigError(str(err), key=(*where, "schedule", "params")) from None
            for param, dim in family.params.items():
                if isinstance(dim, Dimension):
                    if not dim.contains(spelt[param]):
                        raise ConfigError(
                            f"{spelt[param]!r} is outside the searched range",
                            key=(*where, "schedule", "params", param),
                        )
                    params[param_name(name, param, family.in_coordinates)] = spelt[param]
                elif not math.isclose(spelt[param], dim, abs_tol=1e-12):
                    raise ConfigError(
                        f"{name} fixes it at {dim:g}", key=(*where, "schedule", "params", param)
                    )
        elif key in spec.dimensions:
            dim = spec.dimensions[key]
            if not dim.contains(value):
                raise ConfigError(f"{value!r} is outside the searched range", key=(*where, key))
            if not dim.optional:
                params[key] = value
            elif value is not None:
                params.update({f"{key}.on": True, key: value})
            else:
                params[f"{key}.on"] = False
        else:
            raise ConfigError(
                f"not a searched key (searched: {', '.join(_searched_keys(spec))})", key=(*where, str(key))
            )
    return params


def _chosen(value: Any, searched: dict[str, Any], what: str, where: tuple[str, ...]) -> tuple[str, dict]:
    """The name and params of a point's `{name, params}`; ConfigError unless `searched` has the name."""
    name, values = (value or {}).get("name"), (value or {}).get("params", {})
    if name not in searched:
        raise ConfigError(f"{name!r} is not a searched {what} ({', '.join(searched)})", key=(*where, "name"))
    return name, values


def _searched_keys(spec: SearchSpec) -> list[str]:
    return (
        (["method"] if spec.method else []) + (["schedule"] if spec.schedule else []) + list(spec.dimensions)
    )


def baselines(spec: SearchSpec) -> list[dict[str, Any]]:
    """SGD (p ≡ 0) and SAM (p ≡ 1, no G-RST) as searched settings; every other searched value is
    taken from `train` when the space contains it, else left to the sampler."""
    base = spec.train_config()
    shared = {
        key: getattr(base, key) for key, dim in spec.dimensions.items() if dim.contains(getattr(base, key))
    }
    if "grst_weight" in spec.dimensions:
        shared["grst_weight"] = None
    if spec.method:
        shared["method"] = {"name": "rst", "params": {}}
    return [{**shared, "schedule": {"name": "constant", "params": {"p": p}}} for p in (0.0, 1.0)]


def points_to_evaluate(spec: SearchSpec) -> list[dict[str, Any]]:
    """The Optuna parameters of the points evaluated first: the baselines (if asked), then the spec's
    points."""
    points = (
        [(("baselines", str(i)), point) for i, point in enumerate(baselines(spec))] if spec.baselines else []
    )
    points += [(("points_to_evaluate", str(i)), point) for i, point in enumerate(spec.points_to_evaluate)]
    return [optuna_params(spec, point, where) for where, point in points]


def summary(spec: SearchSpec) -> str:
    """What the search will run, in one line, then its warnings (`rst-tune search --check`)."""
    searched = ", ".join(_searched_keys(spec)) or "nothing"
    line = (
        f"{spec.num_samples} trials of {spec.train_config().epochs} epochs, objective {spec.objective}, "
        f"searching {searched}, {len(points_to_evaluate(spec))} points first"
    )
    if spec.confirm.seeds:
        seeds = f"{spec.confirm.seeds} fresh seeds"
        if spec.confirm.sequential:
            seeds = f"{MIN_SEEDS} fresh seeds, up to {spec.confirm.seeds} where the front is undecided"
        line += (
            f"; then the front (at most {spec.confirm.max_points} points within "
            f"{spec.confirm.margin:g} of it) and SGD and SAM again with {seeds}"
        )
    return "\n".join([line, *(f"warning: {warning}" for warning in grst_warnings(spec))])


def grst_warnings(spec: SearchSpec) -> list[str]:
    """Where a G-RST configuration of the space applies less regularisation than its weight λ: a
    sharpness-aware step's α = min(λ/p, alpha_max) caps the degree p·α at p·alpha_max < λ wherever
    p(t) < λ/alpha_max (none at all where p = 0)."""
    base = spec.train_config()
    weight = spec.dimensions.get("grst_weight")
    largest = (
        max(v for v in weight.values_to_check() if v is not None) if weight is not None else base.grst_weight
    )
    if largest is None:
        return []
    alpha = spec.dimensions.get("alpha_max")
    alpha_max = min(alpha.values_to_check()) if alpha is not None else base.alpha_max
    threshold = largest / alpha_max
    progress = [i / 200 for i in range(201)]
    lowest: dict[str, tuple[float, Schedule]] = {}
    for schedule in spec.corner_schedules():
        low = min(schedule(t) for t in progress)
        if low < lowest.get(schedule.name, (math.inf,))[0]:
            lowest[schedule.name] = (low, schedule)
    return [
        f"G-RST: {name} can reach p(t) = {low:.3g}, e.g. {schedule}, below λ/alpha_max = "
        f"{largest:g}/{alpha_max:g}; there the regularisation applied is p·alpha_max < λ (each trial "
        "records the mean it got as grst_degree)"
        for name, (low, schedule) in lowest.items()
        if low < threshold
    ]
