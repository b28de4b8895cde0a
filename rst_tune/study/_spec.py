"""The study file: a fixed list of configurations, each trained with the same seeds; no sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from rst_tune.config import ConfigError, TrainConfig, load_config
from rst_tune.methods import METHODS
from rst_tune.search._objectives import COSTS
from rst_tune.search._settings import Lines, RunSettings, load_settings, parse_settings
from rst_tune.search._space import baseline_name, describe
from rst_tune.search._spec import SearchSpec

NOT_TRAINING = ("label", "source_trial")  # a configuration's keys that are not training settings

STUDY_WIDE = {  # training settings a configuration may not set, and why
    "seed": "a study's seeds are `seed` + 0 … `seeds` − 1, the same for every configuration",
    "epochs": "every configuration trains train.epochs (or --epochs); "
    "compare at equal compute with a schedule instead",
}


class StudySpec(RunSettings):
    """Configurations × seeds. A configuration is a mapping of training settings that override
    `train`, with an optional `label`. Seed k of every configuration trains with seed `seed + k`:
    the same initial weights, data order, label noise and coins for each configuration."""

    kind: ClassVar[str] = "study"

    name: str = Field(
        "study",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="the run's name: its folder under the results directory (-2, -3, ... when taken) "
        "and its MLflow experiment",
    )
    configurations: list[dict[str, Any]] = Field(
        min_length=1,
        description="each a mapping of training settings that override train, with an optional label "
        "(default: SGD, SAM or the settings in words)",
    )
    seeds: int = Field(5, ge=2, description="seeds per configuration (at least 2 for a standard deviation)")
    sequential: bool = Field(
        False,
        description="give seeds one at a time to the configurations whose place on the front of "
        "val_accuracy against cost is undecided, up to `seeds` each (rst_tune.study._sequential)",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="the level of the paired intervals")
    compare: list[tuple[str, str]] = Field(
        default_factory=list,
        description="pairs of configuration labels [a, b]: the report gives a − b seed by seed (paired "
        "interval at `confidence`)",
    )
    configuration_epochs: bool = Field(
        False,
        description="let each configuration set its own epochs (a search's confirmation, where the "
        "search drew them); else every configuration trains train.epochs",
    )
    cost: Literal[COSTS] = Field("propagations", description="the cost axis `sequential` orders by")  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check_configurations(self) -> StudySpec:
        if "seed" in self.train:
            raise ConfigError(STUDY_WIDE["seed"], key=("train", "seed"))
        if self.sequential and self.train_config().val_size == 0:
            raise ConfigError(
                "sequential seeds decide on validation data: 0 leaves none", key=("train", "val_size")
            )
        labels: dict[str, int] = {}
        for index in range(len(self.configurations)):
            self.resources.check(self.train_config_of(index), ("configurations", str(index)))
            label = self.label(index)
            if label in labels:
                raise ConfigError(
                    f"{label!r} is already configuration {labels[label]}'s label",
                    key=("configurations", str(index), "label"),
                )
            labels[label] = index
            self.source_trial(index)
        for index, pair in enumerate(self.compare):
            for side, label in enumerate(pair):
                if label not in labels:
                    raise ConfigError(
                        f"{label!r} is not a configuration's label ({', '.join(labels)})",
                        key=("compare", str(index), str(side)),
                    )
        return self

    def train_config_of(self, index: int, seed_index: int = 0) -> TrainConfig:
        """The training config of configuration `index` at its `seed_index`-th seed."""
        overrides = {k: v for k, v in self.configurations[index].items() if k not in NOT_TRAINING}
        for key, why in STUDY_WIDE.items():
            if key in overrides and not (key == "epochs" and self.configuration_epochs):
                raise ConfigError(why, key=("configurations", str(index), key))
        try:
            return load_config({**self.train, **overrides, "seed": self.seed + seed_index})
        except ConfigError as err:
            raise err.within("configurations", str(index)) from None

    def source_trial(self, index: int) -> int | None:
        """The search trial configuration `index` trains again, in a search's confirmation."""
        given = self.configurations[index].get("source_trial")
        if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 0):
            raise ConfigError(
                f"expected a trial number, got {given!r}", key=("configurations", str(index), "source_trial")
            )
        return given

    def label(self, index: int) -> str:
        """A configuration's `label`, else its baseline name (SGD, SAM) or its settings in words."""
        given = self.configurations[index].get("label")
        if given is not None:
            if not isinstance(given, str) or not given.strip():
                raise ConfigError(
                    f"expected a non-empty string, got {given!r}", key=("configurations", str(index), "label")
                )
            return given
        config = self.train_config_of(index)
        return baseline_name(config) or describe(config)

    def shared_epochs(self) -> int | None:
        """The epochs every configuration trains, or None where they differ (`configuration_epochs`)."""
        epochs = {self.train_config_of(index).epochs for index in range(len(self.configurations))}
        return epochs.pop() if len(epochs) == 1 else None

    @property
    def num_samples(self) -> int:
        """Its trials: every configuration at every seed (at most that, when `sequential`)."""
        return len(self.configurations) * self.seeds

    def labels(self) -> list[str]:
        return [self.label(index) for index in range(len(self.configurations))]

    def summary(self) -> str:
        """What the study will run (`rst-tune study --check`): a line, then a line per configuration."""
        most = "at most " if self.sequential else ""
        lines = [
            f"{len(self.configurations)} configurations × {most}{self.seeds} seeds = "
            f"{most}{self.num_samples} trials of {epochs_words(self.shared_epochs())}:"
        ]
        for index in range(len(self.configurations)):
            config = self.train_config_of(index)
            estimate = " (an estimate)" if METHODS[config.method.name].estimated else ""
            own = f", {config.epochs} epochs" if config.epochs != self.train_config().epochs else ""
            lines.append(f"  {self.label(index)}: expected cost {config.expected_cost():.3f}{estimate}{own}")
        return "\n".join(lines)

    def search_spec(self) -> SearchSpec:
        """The same trials as a search with nothing to sample, for the runner."""
        shared = self.model_dump(include=set(RunSettings.model_fields))
        # the runner reads the epochs from `train`, the trials come from the plan: a study's val_size 0
        # (train on everything, report test), which a search refuses, is none of the runner's business
        shared["train"] = {k: v for k, v in self.train.items() if k != "val_size"}
        return SearchSpec(
            **shared,
            num_samples=self.num_samples,
            sampler={"name": "random"},
            baselines=False,
            confirm={"seeds": 0},
        )


def epochs_words(epochs: int | None) -> str:
    """ "30 epochs", or where configurations differ (None) "epochs as configured"."""
    return "epochs as configured" if epochs is None else f"{epochs} epochs"


def parse_study(values: Any, source: str = "study", lines: Lines | None = None) -> StudySpec:
    """Validate a mapping into a StudySpec, or raise ConfigError naming the key (and line)."""
    return parse_settings(StudySpec, values, source, lines)


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a study YAML file; `overrides` (e.g. --seeds, --epochs) win. The merged
    values, saved with the run, are the spec's `.raw`."""
    return load_settings(StudySpec, path, overrides)
