"""Searches and studies by kind: loading, checking, starting and resuming either, for the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rst_tune.config import ConfigError
from rst_tune.search import load_spec, read_run, run_search
from rst_tune.search.folder import RunFolder
from rst_tune.search.runner import Report, RunCallback, ended
from rst_tune.search.settings import RunSettings
from rst_tune.search.space import summary as search_summary
from rst_tune.study import StudySpec, load_study, read_study, run_study
from rst_tune.study.confirm import run_confirmation

_LOAD = {"search": load_spec, "study": load_study}
_SUMMARY = {"search": search_summary, "study": StudySpec.summary}
_READ = {"search": read_run, "study": read_study}
_RUN = {"search": run_search, "study": run_study}


def load(kind: str, path: Path, overrides: dict[str, Any]) -> tuple[dict[str, Any], RunSettings]:
    """The settings in the `kind` file at `path` with `overrides`, and them validated."""
    return _LOAD[kind](path, overrides)


BUILD_KEYS = {
    "dataset",
    "dataset_params",
    "data_dir",
    "download",
    "val_size",
    "model",
    "model_params",
    "channels_last",
}
"""The training settings that decide whether a run's data loads and its model builds and runs on it."""


def preflight(spec: RunSettings) -> None:
    """Load the data and build and run the model of each distinct configuration the run starts
    with: ConfigError naming the key, before anything is started."""
    from rst_tune.train import preflight as check_config

    configs = (
        {("train",): spec.train_config()}
        if spec.kind == "search"
        else {("configurations", str(i)): spec.train_config_of(i) for i in range(len(spec.configurations))}
    )
    checked = set()
    for where, config in configs.items():
        build = repr(config.model_dump(include=BUILD_KEYS))
        if build not in checked:
            checked.add(build)
            try:
                check_config(config)
            except ConfigError as err:
                raise err.within(*where) from None


def resume(
    kind: str, run_dir: str | Path, given: Sequence[str] = ()
) -> tuple[dict[str, Any], RunSettings, RunFolder]:
    """The interrupted `kind` run in `run_dir`, to continue as it was started: `given`, the names of
    other settings the user passed, are an error."""
    if given:
        raise ConfigError(f"--resume continues a {kind} as it was started; drop {', '.join(given)}")
    values, spec = _READ[kind](run_dir)
    return values, spec, RunFolder(Path(run_dir), kind)


def summary(spec: RunSettings) -> str:
    """What the run will train, for `--check`."""
    return _SUMMARY[spec.kind](spec)


def new_folder(results_dir: str | Path, spec: RunSettings, exact: bool) -> RunFolder:
    """A new run folder named after the run (with -2, -3, ... when taken, unless `exact`)."""
    return RunFolder.new(results_dir, spec.name, spec.kind, exact)


def run(
    values: dict[str, Any],
    spec: RunSettings,
    folder: RunFolder,
    *,
    address: str | None,
    resume: bool,
    tracking_uri: str | None,
    experiment: str | None,
) -> Report:
    """Run (or continue) the `kind` run in `folder`, logged to MLflow; a finished search then has its
    front confirmed (`spec.confirm`), which logs to the same MLflow experiment."""
    from rst_tune.tracking import log_report_files, tracker_for

    tracker = tracker_for(folder.path, spec, tracking_uri, experiment)
    report = _RUN[folder.kind](values, spec, folder.path, address=address, resume=resume, callbacks=[tracker])
    if folder.kind != "search" or not spec.confirm.seeds or ended(report.trials) < spec.num_samples:
        return report

    def track(confirmation: RunFolder, study: StudySpec) -> list[RunCallback]:
        return [tracker_for(confirmation.path, study, tracker.mlflow.tracking_uri, tracker.experiment)]

    report = run_confirmation(folder.path, address=address, track=track)
    log_report_files(folder, report)
    return report
