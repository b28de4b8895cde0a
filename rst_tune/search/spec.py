"""The search-space file: its schema, and loading it with errors that name the key and its line."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from rst_tune.config import ConfigError, TrainConfig, display_key, format_validation_error, load_config
from rst_tune.schedules import Schedule, make_schedule, schedule_params

OBJECTIVES = ("pareto", "acc_per_prop", "accuracy_under_budget")
SAMPLERS = ("tpe", "nsga2", "gp", "random")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dimension(_Strict):
    """One searched value: a range (`low`, `high`, optional `log`, `step`, `type: int`) or `choices`.
    `optional: true` adds "off" (None), e.g. plain RST for `grst_weight`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    type: Literal["float", "int"] = "float"
    choices: list[Any] | None = None
    optional: bool = False

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

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices or (value is None and self.optional)
        if value is None:
            return self.optional
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


class ScheduleFamily(_Strict):
    """Parameters of one schedule family: each a fixed number or a Dimension."""

    params: dict[str, float | Dimension] = Field(default_factory=dict)


class Sampler(_Strict):
    name: Literal[SAMPLERS] = "tpe"  # type: ignore[valid-type]
    startup_trials: int | None = Field(None, ge=0, description="random trials before TPE/GP model the space")


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class EarlyStopping(_Strict):
    rule: Literal["none", "asha", "pareto_fair"] = "none"
    grace_epochs: int = Field(1, ge=1, description="no trial is stopped before this many epochs")
    reduction_factor: float = Field(3.0, gt=1, description="asha only")
    min_dominating: int = Field(1, ge=1, description="pareto_fair: stop when this many cheaper-or-equal trials beat it")


class RunSettings(_Strict):
    """What a search and a study share: a name, the fixed training settings, and how trials run on Ray."""

    name: str = Field("search", pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    train: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    max_concurrent: int = Field(2, ge=1)
    reuse_actors: bool = Field(True, description="run trials one after another in the same worker process")
    max_failures: int = Field(1, ge=0, description="restarts of a trial whose worker died, from its last checkpoint")
    storage: str | None = Field(None, description="where Ray keeps trials and checkpoints: a path, s3://, gs://; "
                                                  "default the run folder")
    resources: Resources = Field(default_factory=Resources)

    def train_config(self) -> TrainConfig:
        return load_config(self.train)


SettingsModel = TypeVar("SettingsModel", bound=RunSettings)


class SearchSpec(RunSettings):
    """A whole search: fixed training settings, searched dimensions, objective, sampler and budget."""

    space: dict[str, Any] = Field(default_factory=dict)
    objective: Literal[OBJECTIVES] = "pareto"  # type: ignore[valid-type]
    budget: float | None = Field(None, ge=1.0, le=2.0, description="accuracy_under_budget: the largest cost ratio allowed")
    sampler: Sampler = Field(default_factory=Sampler)
    num_samples: int = Field(12, ge=1)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    baselines: bool = Field(True, description="evaluate SGD (p = 0) and SAM (p = 1) first")
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)

    _schedule: dict[str, ScheduleFamily] = PrivateAttr(default_factory=dict)
    _dimensions: dict[str, Dimension] = PrivateAttr(default_factory=dict)

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
        for key, raw in self.space.items():
            if key == "schedule":
                self._schedule = _schedule_families(raw)
            elif key not in TrainConfig.model_fields:
                raise ValueError(f"space.{display_key(key)}: unknown key (searched keys are training settings: {', '.join(TrainConfig.model_fields)})")
            else:
                self._dimensions[key] = _dimension(raw, f"space.{key}")
                for value in self._dimensions[key].values_to_check():
                    _check_setting(base, key, value)
        if self.objective == "accuracy_under_budget" and self.budget is None:
            raise ValueError("budget: accuracy_under_budget needs a budget (the largest cost ratio, between 1 and 2)")
        if self.budget is not None and self.budget < (cheapest := self.cheapest_schedule())[0]:
            raise ValueError(f"budget: {self.budget:g} is below the cheapest expected cost in the space "
                             f"({cheapest[0]:.3g}, {cheapest[1]})")
        if self.objective != "accuracy_under_budget" and self.budget is not None:
            raise ValueError(f"budget: only used by objective accuracy_under_budget, not {self.objective}")
        if self.early_stopping.rule == "asha" and self.objective == "pareto":
            raise ValueError("early_stopping.rule: asha needs a scalar objective; use pareto_fair with objective pareto")
        if self.baselines and "constant" not in self.schedule:
            raise ValueError("baselines: SGD and SAM baselines need the constant schedule family in space.schedule "
                             "(or set baselines: false)")
        return self

    def cheapest_schedule(self) -> tuple[float, Schedule]:
        """The lowest expected cost 1 + p̄ the space can reach, and its schedule. Every p̄ is
        multilinear in the shape parameters, so the minimum lies on a corner of their box."""
        if not self._schedule:
            schedule = self.train_config().schedule.build()
            return schedule.expected_cost(), schedule
        corners = []
        for name, family in self._schedule.items():
            ranges = [[v.low, v.high] if isinstance(v, Dimension) and v.choices is None else
                      (v.choices if isinstance(v, Dimension) else [v]) for v in family.params.values()]
            corners += [make_schedule(name, **dict(zip(family.params, values))) for values in itertools.product(*ranges)]
        schedule = min(corners, key=lambda s: s.mean())
        return schedule.expected_cost(), schedule


def _dimension(raw: Any, where: str) -> Dimension:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a dimension (low/high or choices), got {raw!r}")
    try:
        return Dimension.model_validate(raw)
    except ValidationError as err:
        raise ValueError(_prefixed(err, where)) from None


def _schedule_families(raw: Any) -> dict[str, ScheduleFamily]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError("space.schedule: expected a mapping of schedule families to their parameters")
    families = {}
    for name, params in raw.items():
        where = f"space.schedule.{display_key(name)}"
        try:
            expected = schedule_params(name)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        params = params or {}
        if not isinstance(params, dict):
            raise ValueError(f"{where}: expected a mapping of its parameters ({', '.join(expected)})")
        for key in expected:
            if key not in params:
                raise ValueError(f"{where}.{key}: missing (a number or a dimension)")
        for key in params:
            if key not in expected:
                raise ValueError(f"{where}.{display_key(key)}: unknown parameter ({name} takes {', '.join(expected)})")
        family = {k: (_dimension(v, f"{where}.{k}") if isinstance(v, dict) else v) for k, v in params.items()}
        for key, value in family.items():
            for candidate in value.values_to_check() if isinstance(value, Dimension) else [value]:
                try:
                    make_schedule(name, **{**{k: 0.5 for k in expected}, key: candidate})
                except (ValueError, TypeError) as err:
                    raise ValueError(f"{where}.{key}: {err}") from None
        families[name] = ScheduleFamily(params=family)
    return families


def _check_setting(base: TrainConfig, key: str, value: Any) -> None:
    try:
        load_config({**base.model_dump(), key: value})
    except ConfigError as err:
        raise ValueError(f"space.{key}: value {value!r} is not a valid setting ({err})") from None


def _prefixed(err: ValidationError, where: str) -> str:
    return "; ".join(f"{where}.{line}" if not line.startswith("config") else f"{where}{line[6:]}"
                     for line in format_validation_error(err).split("; "))


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Dotted key path -> 1-based line in the YAML text, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[path + (str(key.value),)] = key.start_mark.line + 1
                walk(value, path + (str(key.value),))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (str(i),))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _locate(message: str, lines: dict[tuple[str, ...], int]) -> int | None:
    """The line of the longest key path that the message starts with."""
    key = message.split(":", 1)[0].split(" ")[0]
    parts = tuple(key.split("."))
    for n in range(len(parts), 0, -1):
        if parts[:n] in lines:
            return lines[parts[:n]]
    return None


def parse_settings(model: type[SettingsModel], values: Any, source: str,
                   lines: dict[tuple[str, ...], int] | None = None) -> SettingsModel:
    """Validate a mapping with a `train` section into `model`, or raise ConfigError naming each bad
    key (and its line, given `lines`)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of settings")
    try:
        if not isinstance(values.get("train", {}), dict):
            raise ConfigError("config: expected a mapping of training settings")
        load_config(values.get("train", {}))
    except ConfigError as err:
        problems = [f"train.{line}" for line in str(err).split("; ")]
    else:
        try:
            return model.model_validate(values)
        except ValidationError as err:
            problems = format_validation_error(err).split("; ")
    located = []
    for problem in problems:
        problem = problem.removeprefix("config: ").replace("train.config: ", "train: ")
        line = _locate(problem, lines or {})
        located.append(f"{source}:{line}: {problem}" if line else f"{source}: {problem}")
    raise ConfigError("; ".join(located))


def load_settings(model: type[SettingsModel], path: str | Path,
                  overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], SettingsModel]:
    """Read and validate a YAML file into `model`; `overrides` (e.g. from CLI flags) win, `train`
    merged key by key. Returns the merged settings (to save with the run) and the validated model."""
    path = Path(path)
    try:
        text = path.read_text()
        values = yaml.safe_load(text)
        lines = _line_index(text)
    except OSError as err:
        raise ConfigError(f"{path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if isinstance(values, dict) and overrides:
        values = {**values, **{k: v for k, v in overrides.items() if k != "train"},
                  "train": {**(values.get("train") or {}), **overrides.get("train", {})}}
    return values, parse_settings(model, values, str(path), lines)


def parse_spec(values: Any, source: str = "search space", lines: dict[tuple[str, ...], int] | None = None) -> SearchSpec:
    """Validate a mapping into a SearchSpec, or raise ConfigError naming the key (and line)."""
    return parse_settings(SearchSpec, values, source, lines)


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], SearchSpec]:
    """Read and validate a search-space YAML file; `overrides` (e.g. from CLI flags) win. Returns the
    merged settings (to save with the run) and the validated spec."""
    return load_settings(SearchSpec, path, overrides)
