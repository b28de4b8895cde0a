"""The validated configuration of one training run; unknown keys and bad values are errors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rst_tune._imports import is_import_path, resolve
from rst_tune.data import DATASET_PARAMS, DATASETS, DEFAULT_DATA_DIR, gives_validation
from rst_tune.methods import METHODS, MethodError, check_method, describe, expected_cost
from rst_tune.models import MODELS, check_model_name
from rst_tune.schedules import ALIASES, SCHEDULES, Schedule, make_schedule


@dataclass(frozen=True)
class Problem:
    """One reason a configuration cannot run: what is wrong, and where (a key path, a file and line)."""

    message: str
    key: tuple[str, ...] = ()
    source: str | None = None
    line: int | None = None

    def within(self, *outer: str) -> Problem:
        """The same problem with its key nested under `outer`."""
        return replace(self, key=(*outer, *self.key))

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.source and self.line else self.source
        key = ".".join(display_key(part) for part in self.key)
        return ": ".join(part for part in (where, key, self.message) if part)


class ConfigError(ValueError):
    """A configuration that cannot run: one or more `problems`, each naming its key."""

    def __init__(
        self,
        message: str | None = None,
        *,
        key: str | tuple[str, ...] = (),
        source: str | None = None,
        problems: Sequence[Problem] = (),
    ):
        single = (
            [Problem(message, (key,) if isinstance(key, str) else key, source)] if message is not None else []
        )
        self.problems: tuple[Problem, ...] = (*single, *problems)
        super().__init__("; ".join(map(str, self.problems)))

    def within(self, *outer: str) -> ConfigError:
        """The same problems, their keys nested under `outer`."""
        return ConfigError(problems=[problem.within(*outer) for problem in self.problems])


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "constant",
        description=f"a schedule family ({', '.join(SCHEDULES)}) or one of the authors' names for them "
        f"({', '.join(ALIASES)})",
    )
    params: dict[str, float] = Field(
        default_factory=lambda: {"p": 0.5},
        description="the family's parameters by name, e.g. {p: 0.5} for constant, {switch: 0.5} for "
        "step_up, {p_start: 0.2, p_end: 0.8} for linear",
    )

    @model_validator(mode="after")
    def _builds(self) -> ScheduleConfig:
        make_schedule(self.name, **self.params)
        return self

    def build(self) -> Schedule:
        return make_schedule(self.name, **self.params)


class MethodConfig(BaseModel):
    """The sharpness-aware method by name (`rst_tune.methods.METHODS`) and its own parameters; the
    shared ones (rho, adaptive; schedule and grst_weight for the methods that draw from a schedule)
    stay beside it in the training config."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("rst", description=f"a method of the table ({', '.join(METHODS)}; `rst-tune methods`)")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the method's own parameters by name (e.g. {k: 5} for looksam); those not given keep "
        "their defaults",
    )

    @model_validator(mode="after")
    def _builds(self) -> MethodConfig:
        self.settings()
        return self

    def settings(self) -> dict[str, Any]:
        """Its parameters, defaults filled in; ConfigError naming the bad key."""
        try:
            return check_method(self.name, self.params)
        except MethodError as err:
            raise ConfigError(str(err), key=("params", err.key) if err.key else "name") from None


class TrainConfig(BaseModel):
    """Everything one run needs. Defaults: the embedded digits, a small CNN, RST at p = 0.5."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(
        "digits",
        description=f"a built-in dataset ({', '.join(DATASETS)}) or `package.module:function`, called with "
        "dataset_params, returning the train, val and (optional) test parts",
    )
    dataset_params: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of the dataset; a built-in one takes only its own ("
        + "; ".join(f"{name}: {', '.join(keys)}" for name, keys in DATASET_PARAMS.items())
        + "; the others none)",
    )
    data_dir: str = Field(
        DEFAULT_DATA_DIR,
        description="where cifar10, cifar100 and image folders are read from (default "
        "~/.cache/rst-tune/data, or $RST_TUNE_DATA)",
    )
    download: bool = Field(False, description="fetch cifar10 or cifar100 into data_dir when missing")
    label_noise: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="the share of training labels replaced by another class (validation and test stay clean)",
    )
    val_size: int | None = Field(
        None,
        ge=0,
        description="items held out of training for validation, by a stratified split with a fixed seed; "
        "null: the dataset's default (a search refuses 0, a study may use it to train on everything)",
    )
    test_every_epoch: bool = Field(
        False, description="evaluate the test part every epoch; else at the last epoch only"
    )
    loader_workers: int = Field(
        2, ge=0, description="processes reading a streamed dataset (0: the training process)"
    )
    model: str = Field(
        "digits_cnn",
        description=f"a built-in model ({', '.join(MODELS)}), `torchvision:NAME`, `timm:NAME` or "
        "`package.module:function`, called with num_classes, input_shape and model_params",
    )
    model_params: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of the model (e.g. wrn's depth and width, a torchvision model's "
        "weights)",
    )

    epochs: int = Field(10, ge=1, description="passes over the training part")
    batch_size: int = Field(
        64, ge=1, description="examples per step; with workers, the global batch, which they share"
    )
    eval_batch_size: int = Field(1024, ge=1, description="examples per batch when evaluating")
    lr: float = Field(0.05, gt=0.0, description="the learning rate of the base optimizer (SGD)")
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="cosine: annealed to 0 over every step of the run; constant: lr throughout"
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD's momentum")
    nesterov: bool = Field(True, description="Nesterov momentum (needs momentum > 0)")
    weight_decay: float = Field(
        5e-4, ge=0.0, description="added by the base optimizer after clipping: neither clipped nor perturbed"
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the cross-entropy")
    grad_clip: float | None = Field(
        None,
        gt=0.0,
        description="the largest norm of the mixed gradient (1 − α)·g1 + α·g2; null: no clipping",
    )

    method: MethodConfig = Field(
        default_factory=MethodConfig, description="the sharpness-aware method and its own parameters"
    )
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig,
        description="p(t), the probability of a sharpness-aware step at training progress t; read by the "
        "methods that draw from a schedule (rst, deterministic)",
    )
    rho: float = Field(0.05, ge=0.0, description="the radius ρ of the sharpness-aware perturbation")
    adaptive: bool = Field(False, description="ASAM: the perturbation scaled by the weights' magnitudes")
    grst_weight: float | None = Field(
        None,
        ge=0.0,
        description="G-RST's weight λ: a sharpness-aware step uses (1 − α)·g1 + α·g2 with "
        "α = min(λ / p(t), alpha_max); null: plain RST",
    )
    alpha_max: float = Field(4.0, gt=0.0, description="the largest α G-RST may use")

    seed: int = Field(
        0, description="the training seed: initial weights, data order, label noise, coins and dropout"
    )
    device: str = Field(
        "auto", description="auto (CUDA when there is one, else the CPU), cpu, cuda, cuda:N or mps"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="fp32; bf16 under autocast (on GPUs that have it); fp16 under autocast with a scaled "
        "loss (GradScaler: one host synchronisation a step)",
    )
    channels_last: bool = Field(
        False, description="channels-last memory format; image batches (N, C, H, W) only"
    )
    compile: bool = Field(False, description="torch.compile the model")
    sync_bn: bool = Field(
        False,
        description="data-parallel runs: BatchNorm statistics over the global batch, not per rank "
        "(SyncBatchNorm; GPUs only)",
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if is_import_path(value):
            resolve(value)
        elif value not in DATASETS:
            raise ValueError(f"not a built-in dataset ({', '.join(DATASETS)}) nor package.module:function")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return check_model_name(value)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "auto" and value.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device {value!r} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.nesterov and self.momentum == 0:
            raise ConfigError("true needs momentum > 0", key="nesterov")
        if gives_validation(self.dataset) and self.val_size is not None:
            raise ConfigError(
                f"does not apply: {self.dataset} brings its own validation part", key="val_size"
            )
        if not METHODS[self.method.name].uses_schedule:
            if self.schedule != ScheduleConfig():
                raise ConfigError(f"method {self.method.name} does not draw from a schedule", key="schedule")
            if self.grst_weight is not None:
                raise ConfigError(
                    f"G-RST mixes by p(t); method {self.method.name} has none", key="grst_weight"
                )
        if not is_import_path(self.dataset):
            valid = DATASET_PARAMS.get(self.dataset, ())
            for key in self.dataset_params:
                if key not in valid:
                    raise ConfigError(
                        f"unknown for dataset {self.dataset}; valid: {', '.join(valid) or 'none'}",
                        key=("dataset_params", key),
                    )
        return self

    def expected_cost(self) -> float:
        """Expected cost per step, in SGD steps, before training (`rst_tune.methods.expected_cost`; an
        estimate where `METHODS[name].estimated`)."""
        return expected_cost(self.method.name, self.method.settings(), self.schedule.build(), self.epochs)

    def method_words(self) -> str:
        """The method and its schedule or parameters in words (`rst_tune.methods.describe`)."""
        return describe(self.method.name, self.method.settings(), self.schedule.build())


SCHEDULE_KEYS: tuple[str, ...] = ("schedule", "grst_weight", "alpha_max")
"""TrainConfig keys read only by the methods that draw from a schedule (`Method.uses_schedule`)."""
PERTURBATION_KEYS: tuple[str, ...] = ("rho", "adaptive")
"""TrainConfig keys read only by the methods that take sharpness-aware steps (`Method.perturbs`)."""


def method_reads(name: str, key: str) -> bool:
    """Whether method `name` reads the training setting `key`."""
    method = METHODS[name]
    return (key not in SCHEDULE_KEYS or method.uses_schedule) and (
        key not in PERTURBATION_KEYS or method.perturbs
    )


EXECUTION_KEYS: frozenset[str] = frozenset({"loader_workers"})
"""TrainConfig keys that say how a run is carried out, not what it computes: a checkpoint resumes
under other values of them (the data order does not depend on the number of loader workers)."""


def load_config(values: dict[str, Any]) -> TrainConfig:
    """Validate a mapping (from YAML, the CLI or a search) into a TrainConfig, or raise ConfigError
    with a problem per bad key."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as err:
        raise validation_problems(err) from None


def display_key(key: object) -> str:
    """A key as it reads in an error: plain if it looks like one, else quoted (`'a b'`, `'\\n'`)."""
    return str(key) if re.fullmatch(r"[\w-]+", str(key)) else repr(key)


def validation_problems(err: ValidationError) -> ConfigError:
    """pydantic's errors as problems; a ConfigError raised by a validator keeps its own keys, under
    the location of the model that raised it."""
    problems = []
    for error in err.errors():
        key = tuple(str(part) for part in error["loc"])
        raised = error.get("ctx", {}).get("error")
        if isinstance(raised, ConfigError):
            problems += [problem.within(*key) for problem in raised.problems]
            continue
        message = (
            "unknown key"
            if error["type"] == "extra_forbidden"
            else error["msg"].removeprefix("Value error, ")
        )
        if error["type"] != "extra_forbidden" and not isinstance(error["input"], dict):
            message += f" (got {error['input']!r})"
        problems.append(Problem(message, key))
    return ConfigError(problems=problems)
