"""The Python API: a search or a study exactly as `rst-tune search` and `rst-tune study` run them (MLflow
tracking, the seed confirmation, the report, resume), returning the typed report.

    from rst_tune import api

    report = api.search("default", overrides={"num_samples": 4}, results_dir="rst_runs")
    print(report.table())
    best = max(report.confirmed, key=lambda point: point.val_accuracy_mean)

    again = api.search(resume=report_folder)          # an interrupted run, as it was started
    study = api.study("study_rivals", overrides={"seeds": 3})

A file is a path or the name of one in ./search_spaces or of a shipped one (`rst_tune/search_spaces`).
`load` gives the validated settings, which keep the raw values they came from (`.raw`). When a call
returns, the caller's process is as it was (environment variables, Optuna's verbosity, the levels and
handlers of the loggers that existed), except for a Ray session the call started.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna

from rst_tune.config import ConfigError
from rst_tune.search import load_spec, read_run, run_search
from rst_tune.search._capacity import check_capacity
from rst_tune.search._folder import RunFolder
from rst_tune.search._pareto import ParetoReport
from rst_tune.search._runner import Report, RunCallback, ended
from rst_tune.search._settings import RunSettings
from rst_tune.search._space import summary as search_summary
from rst_tune.study import StudyReport, StudySpec, load_study, read_study, run_study
from rst_tune.study._confirm import run_confirmation

__all__ = ["RunCallback", "check", "find_file", "load", "run", "search", "study"]

SPACES_DIR = Path(__file__).resolve().parent / "search_spaces"
"""The shipped search spaces and studies (package data)."""

_LOAD = {"search": load_spec, "study": load_study}
_SUMMARY = {"search": search_summary, "study": StudySpec.summary}
_READ = {"search": read_run, "study": read_study}
_RUN = {"search": run_search, "study": run_study}

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


def find_file(name: str | Path, flag: str = "file") -> Path:
    """A search-space or study file by path, or by name in ./search_spaces or the shipped ones;
    ConfigError naming `flag` and the shipped names when there is none."""
    for candidate in (Path(name), Path("search_spaces") / f"{name}.yaml", SPACES_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
    raise ConfigError(f"{flag} {name}: no such file (shipped: {shipped or 'none found'})")


def load(
    kind: str, file: str | Path, overrides: dict[str, Any] | None = None, flag: str = "file"
) -> RunSettings:
    """The `kind` ("search" or "study") settings in `file` with `overrides` (which win, `train` merged
    key by key), validated; their raw values are `.raw`."""
    return _LOAD[kind](find_file(file, flag), overrides or {})


def check(settings: RunSettings) -> str:
    """Check that the cluster config (`cluster_config`) scales to a trial's resources, and load the data
    and build and run the model of each distinct configuration the run starts with (ConfigError naming
    the key, before anything is started); what the run will train."""
    from rst_tune._train import preflight

    configs = (
        {("train",): settings.train_config()}
        if settings.kind == "search"
        else {
            ("configurations", str(i)): settings.train_config_of(i)
            for i in range(len(settings.configurations))
        }
    )
    if settings.cluster_config:
        check_capacity(settings.cluster_config, settings.resources)
    checked = set()
    for where, config in configs.items():
        build = repr(config.model_dump(include=BUILD_KEYS))
        if build not in checked:
            checked.add(build)
            try:
                preflight(config)
            except ConfigError as err:
                raise err.within(*where) from None
    return _SUMMARY[settings.kind](settings)


def search(space: str | Path | RunSettings | None = None, **options: Any) -> ParetoReport:
    """The search `space` (default: the shipped `default`), run by `run`; its Pareto report, with its
    confirmed points."""
    return run("search", "default" if space is None and options.get("resume") is None else space, **options)


def study(file: str | Path | RunSettings | None = None, **options: Any) -> StudyReport:
    """The study `file`, run by `run`; its report."""
    return run("study", file, **options)


def run(
    kind: str,
    file: str | Path | RunSettings | None,
    *,
    overrides: dict[str, Any] | None = None,
    results_dir: str | Path = "rst_runs",
    exact_name: bool = False,
    resume: str | Path | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    out: Callable[[str], None] = print,
) -> Report:
    """Run the `kind` ("search" or "study") `file` (a path, a name, or settings from `load`, which
    `overrides` cannot change) in a new folder under `results_dir` (named after the run, -2, -3... when
    taken, unless `exact_name`) on the Ray cluster at `address` (default: a local one), logged to MLflow
    at `tracking_uri` (else $MLFLOW_TRACKING_URI, else SQLite in the folder; experiment `experiment`,
    default the run's name), a search's front then confirmed with fresh seeds; or, with `resume`,
    continue that run folder as it was started. Progress lines go to `out`. Returns the report, whose
    `run_dir` is the folder."""
    with _as_it_was():
        if resume is not None:
            if file is not None or overrides:
                raise ConfigError(f"resume continues a {kind} as it was started; give nothing else to run")
            folder = RunFolder.existing(resume, kind)
            settings = _READ[kind](folder.path)
        else:
            if file is None:
                raise ConfigError(f"give a {kind} file (e.g. study_label_noise), or resume=RUN")
            if isinstance(file, RunSettings) and overrides:
                raise ConfigError("overrides apply to a file; load(kind, file, overrides) for settings")
            settings = file if isinstance(file, RunSettings) else load(kind, file, overrides)
            check(settings)
            folder = RunFolder.new(results_dir, settings.name, kind, exact_name)
        report = _tracked(settings, folder, address, resume is not None, tracking_uri, experiment, out)
        report.run_dir = folder.path
        return report


def _tracked(
    settings: RunSettings,
    folder: RunFolder,
    address: str | None,
    resume: bool,
    tracking_uri: str | None,
    experiment: str | None,
    out: Callable[[str], None],
) -> Report:
    """Run (or continue) the run in `folder`, logged to MLflow; a finished search then has its front
    confirmed (`settings.confirm`), which logs to the same MLflow experiment."""
    from rst_tune.tracking import log_report_files, tracker_for

    tracker = tracker_for(folder.path, settings, tracking_uri, experiment, out)
    report = _RUN[folder.kind](
        settings, folder.path, address=address, resume=resume, callbacks=[tracker], out=out
    )
    if folder.kind != "search" or not settings.confirm.seeds or ended(report.trials) < settings.num_samples:
        return report

    def track(confirmation: RunFolder, spec: StudySpec) -> list[RunCallback]:
        return [tracker_for(confirmation.path, spec, tracker.mlflow.tracking_uri, tracker.experiment, out)]

    report = run_confirmation(folder.path, address=address, track=track, out=out)
    log_report_files(folder, report)
    return report


_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "mlflow", "mlflow.store.db.utils", "optuna")


@contextmanager
def _as_it_was() -> Iterator[None]:
    """The caller's environment variables, Optuna's verbosity and the loggers a run configures, as they
    were before."""
    environ, verbosity = dict(os.environ), optuna.logging.get_verbosity()
    loggers = {name: logging.getLogger(name) for name in ("", *_LOGGERS)}
    saved = {name: (log.level, list(log.handlers), log.propagate) for name, log in loggers.items()}
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        optuna.logging.set_verbosity(verbosity)
        for name, (level, handlers, propagate) in saved.items():
            log = loggers[name]
            log.setLevel(level)
            log.handlers[:] = handlers
            log.propagate = propagate
