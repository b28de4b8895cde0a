"""What a search and a study share: their run settings, and reading them from YAML with errors that
name the key and its line."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from rst_tune._train import check_ranks
from rst_tune.config import ConfigError, Problem, TrainConfig, load_config, validation_problems


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(Strict):
    """What one trial holds: `workers` data-parallel processes (1: the trial's own process), each with
    `cpu` CPUs and `gpu` GPUs (a fraction shares one)."""

    workers: int = Field(
        1, ge=1, description="data-parallel processes per trial (1: the trial's own process)"
    )
    cpu: float = Field(1.0, gt=0, description="CPUs per worker")
    gpu: float = Field(
        0.0, ge=0, description="GPUs per worker; a fraction shares a GPU between trials (workers: 1 only)"
    )

    @model_validator(mode="after")
    def _one_gpu_per_rank(self) -> Resources:
        if self.workers > 1 and self.gpu not in (0, 1):
            raise ConfigError(
                f"{self.gpu:g} with {self.workers} workers: each data-parallel worker drives one whole GPU "
                "(NCCL runs one rank per GPU); share GPUs between trials with workers: 1",
                key="gpu",
            )
        return self

    def bundle(self) -> dict[str, float]:
        """One worker's resources as Ray names them: its CPUs, and its GPUs if it has any."""
        return {"CPU": self.cpu, **({"GPU": self.gpu} if self.gpu else {})}

    def check(self, config: TrainConfig, key: tuple[str, ...] = ("train",)) -> None:
        """Raise ConfigError, naming the key under `key`, for what `config` cannot do on these workers."""
        if config.device.startswith("cuda") and not self.gpu:
            problem = ConfigError(
                "trains on the GPUs Ray assigns a trial: set resources.gpu > 0", key="device"
            )
            raise problem.within(*key)
        if self.workers > 1:
            try:
                check_ranks(config, self.workers, gpus=self.gpu > 0)
            except ConfigError as err:
                raise err.within(*key) from None


class RunSettings(Strict):
    """A name, the fixed training settings, and how trials run on Ray."""

    kind: ClassVar[str]  # the run it describes: "search" or "study"

    name: str = Field(
        "search",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="the run's name: its folder under the results directory (-2, -3, ... when taken) "
        "and its MLflow experiment",
    )
    description: str = Field("", description="free text saying what the run is for, kept with its settings")
    train: dict[str, Any] = Field(
        default_factory=dict, description="the fixed training settings: keys of TrainConfig"
    )
    seed: int = Field(
        0,
        description="a search's seed (its sampler's and every trial's training seed, recorded per trial); "
        "a study's first: seed k trains with seed + k",
    )
    max_concurrent: int = Field(2, ge=1, description="trials running at once")
    reuse_actors: bool = Field(True, description="run trials one after another in the same worker process")
    max_failures: int = Field(
        1, ge=0, description="restarts of a trial whose worker died, from its last checkpoint"
    )
    storage: str | None = Field(
        None,
        description="where Ray keeps trials and checkpoints: a path, s3://, gs://; default the run folder",
    )
    shared_storage: bool = Field(
        False,
        description="every node reaches `storage` although rst-tune cannot tell (a filesystem it does not "
        "know, or nodes that share one machine): its check is skipped",
    )
    cluster_config: str | None = Field(
        None,
        description="the Ray cluster config the cluster scales by (cluster.yaml; on a head that `ray up` "
        "started, ~/ray_bootstrap_config.yaml): a trial none of its nodes could hold is refused before "
        "anything starts",
    )
    resources: Resources = Field(default_factory=Resources, description="what one trial holds")
    runtime_env: dict[str, Any] | None = Field(
        None,
        description="Ray's runtime_env for the trials, e.g. {py_modules: [./my_package]} to ship user code "
        "to a cluster's machines; default: the folders user code is imported from, on PYTHONPATH",
    )

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        if isinstance(context, dict) and "raw" in context:
            self._raw = copy.deepcopy(context["raw"])

    def train_config(self) -> TrainConfig:
        return load_config(self.train)

    @property
    def raw(self) -> dict[str, Any]:
        """The values the settings were validated from, as a run folder saves them."""
        return copy.deepcopy(self._raw)

    @model_validator(mode="after")
    def _runs_on_the_workers(self) -> RunSettings:
        self.resources.check(self.train_config())
        return self


Settings = TypeVar("Settings", bound=RunSettings)
Lines = dict[tuple[str, ...], int]  # key path -> 1-based line in the YAML text


def parse_settings(model: type[Settings], values: Any, source: str, lines: Lines | None = None) -> Settings:
    """Validate a mapping with a `train` section into `model`, or raise ConfigError naming each bad
    key (and its line, given `lines`)."""
    if not isinstance(values, dict):
        raise ConfigError("expected a mapping of settings", source=source)
    try:
        if not isinstance(values.get("train", {}), dict):
            raise ConfigError("expected a mapping of training settings", key="train")
        try:
            load_config(values.get("train", {}))
        except ConfigError as err:
            raise err.within("train") from None
        try:
            return model.model_validate(values, context={"raw": values})
        except ValidationError as err:
            raise validation_problems(err) from None
    except ConfigError as err:
        raise ConfigError(
            problems=[_located(problem, source, lines or {}) for problem in err.problems]
        ) from None


def _located(problem: Problem, source: str, lines: Lines) -> Problem:
    """The problem with its file, and the line of the longest part of its key found in the file."""
    line = next(
        (lines[problem.key[:n]] for n in range(len(problem.key), 0, -1) if problem.key[:n] in lines), None
    )
    return replace(problem, source=source, line=line)


def _line_index(text: str) -> Lines:
    lines: Lines = {}

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


def load_settings(
    model: type[Settings], path: str | Path, overrides: dict[str, Any] | None = None
) -> Settings:
    """Read and validate a YAML file into `model`; `overrides` (e.g. from CLI flags) win, `train`
    merged key by key. The merged values (to save with the run) are the model's `.raw`."""
    path = Path(path)
    try:
        text = path.read_text()
        values = yaml.safe_load(text)
        lines = _line_index(text)
    except OSError as err:
        raise ConfigError(err.strerror, source=str(path)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML ({' '.join(str(err).split())})", source=str(path)) from None
    if isinstance(values, dict) and overrides:
        values = {
            **values,
            **{k: v for k, v in overrides.items() if k != "train"},
            "train": {**(values.get("train") or {}), **overrides.get("train", {})},
        }
    return parse_settings(model, values, str(path), lines)
