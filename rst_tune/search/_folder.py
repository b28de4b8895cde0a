"""A run folder: the one place that knows where a search or a study keeps its files.

<run>/search.yaml, study.yaml   the settings as run (command-line overrides applied); --resume reads them
<run>/optuna.db                 the Optuna study (`optuna-dashboard sqlite:///<run>/optuna.db`)
<run>/trials/                   the Ray Tune experiment, a folder per trial (under --storage when given)
<run>/workers/                  a Ray Train run per data-parallel trial, named by its trial id (same)
<run>/tracking.json             where the run logs to MLflow, and what it could not log
<run>/mlflow.db, mlartifacts/   the MLflow store, unless the run logs elsewhere
<run>/pareto.*, study.*         the report (each report names its own files)
<run>/confirm/                  a search's confirmation: a study run folder of its own, inside the search's
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import optuna
import yaml

from rst_tune.config import ConfigError

KINDS = ("search", "study")
Settings = TypeVar("Settings")
EXPERIMENT = "trials"
TRAIN_RUNS = "workers"
CONFIRMATION = "confirm"


@dataclass(frozen=True)
class RunFolder:
    path: Path
    kind: str  # "search" or "study"

    @classmethod
    def new(cls, results_dir: str | Path, name: str, kind: str, exact: bool) -> RunFolder:
        """`results_dir/name`, not created yet; when `exact` is False and it is taken, the first free
        `name-2`, `name-3`, ..."""
        candidate, n = Path(results_dir) / name, 1
        while candidate.exists():
            if exact:
                raise ConfigError(
                    f"{candidate} exists: continue it with --resume {candidate}, or give another --name"
                )
            n += 1
            candidate = Path(results_dir) / f"{name}-{n}"
        return cls(candidate, kind)

    @classmethod
    def existing(cls, path: str | Path, kind: str | None = None) -> RunFolder:
        """The run in `path`, of `kind` (any kind when None), or a ConfigError saying why not."""
        kinds = (kind,) if kind else KINDS
        for candidate in kinds:
            if (Path(path) / f"{candidate}.yaml").is_file():
                return cls(Path(path), candidate)
        files = " or ".join(f"{k}.yaml" for k in kinds)
        raise ConfigError(f"{path}: not a {' or '.join(kinds)} run ({files} missing)")

    @classmethod
    def newest(cls, results_dir: str | Path) -> RunFolder:
        """The run (search or study) in `results_dir` started last."""
        specs = [spec for kind in KINDS for spec in Path(results_dir).glob(f"*/{kind}.yaml")]
        if not specs:
            raise ConfigError(f"{results_dir}: no search or study runs here; give the run folder")
        newest = max(specs, key=lambda spec: spec.stat().st_mtime)
        return cls(newest.parent, newest.stem)

    @property
    def name(self) -> str:
        return self.path.name

    def confirmation(self) -> RunFolder:
        """The study run folder that confirms this search's front with fresh seeds."""
        return RunFolder(self.path / CONFIRMATION, "study")

    @property
    def spec_file(self) -> Path:
        return self.path / f"{self.kind}.yaml"

    def save_settings(self, values: dict[str, Any]) -> None:
        """Create the folder and write the settings the run starts with."""
        self.path.mkdir(parents=True)
        self.spec_file.write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True))

    def read_settings(self, parse: Callable[[Any, str], Settings]) -> Settings:
        """The settings the run was started with, validated by `parse(values, source)`."""
        return parse(yaml.safe_load(self.spec_file.read_text()), str(self.spec_file))

    @property
    def study_url(self) -> str:
        return f"sqlite:///{(self.path / 'optuna.db').resolve()}"

    def study_storage(self) -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(self.study_url, engine_kwargs={"connect_args": {"timeout": 60}})

    def storage_path(self, storage: str | None) -> str:
        """Where Ray keeps this run's trials: `<storage>/<run name>` (a confirmation's:
        `<storage>/<search name>/confirm`) with a storage, else the run folder."""
        if not storage:
            return str(self.path.resolve())
        nested = self.name == CONFIRMATION and (self.path.parent / "search.yaml").is_file()
        return f"{storage.rstrip('/')}/{self.path.parent.name + '/' if nested else ''}{self.name}"

    def experiment_path(self, storage: str | None) -> str:
        return f"{self.storage_path(storage)}/{EXPERIMENT}"

    def train_runs_path(self, storage: str | None) -> str:
        """Where the Ray Train runs of data-parallel trials keep their checkpoints."""
        return f"{self.storage_path(storage)}/{TRAIN_RUNS}"

    @property
    def tracking_file(self) -> Path:
        return self.path / "tracking.json"

    @property
    def mlflow_url(self) -> str:
        """The default MLflow store: SQLite inside the folder."""
        return f"sqlite:///{(self.path / 'mlflow.db').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.path / "mlartifacts"
