"""Runs trials on Ray: a search, or a study through the same machinery, in its run folder, with resume."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import optuna
import ray
from ray import tune

from rst_tune.config import ConfigError
from rst_tune.search._cluster import check_shared, code_runtime_env, connect, spans_machines
from rst_tune.search._cost_axis import KEPT, CostAxis
from rst_tune.search._folder import EXPERIMENT, RunFolder
from rst_tune.search._objectives import COSTS
from rst_tune.search._parallel import ReleaseWorkers, train_parallel_trial, trial_checkpoint
from rst_tune.search._pareto import ParetoReport, build_report, write_report
from rst_tune.search._progress import Progress
from rst_tune.search._record import TrialRecord, TrialRow, trial_rows
from rst_tune.search._schedulers import build_scheduler
from rst_tune.search._searcher import RSTSearch
from rst_tune.search._settings import RunSettings
from rst_tune.search._space import DefineByRun, points_to_evaluate
from rst_tune.search._spec import SearchSpec, parse_spec
from rst_tune.search._trainable import KEEP_CHECKPOINTS, train_trial


class Report(Protocol):
    """What a run ends with: a row per Optuna trial, written into the run folder as `files`."""

    files: ClassVar[tuple[str, ...]]
    trials: list[TrialRow]
    run_dir: Path | None  # its run folder, once `rst_tune.api` has run it

    @property
    def front(self) -> list[TrialRow] | None:
        """The trials the run singles out (a search's Pareto front); None when it has no such notion."""

    def summary_metrics(self) -> dict[str, float]:
        """The run's figures of merit, by name."""

    def table(self) -> str: ...


class RunCallback(tune.Callback):
    """A Tune callback that also hears of the run's start (`setup`, called on the driver before Ray
    starts) and end (`finish`, with the report; it returns a line to print, or None)."""

    def finish(
        self, report: Report, checkpoints: dict[str, tune.Checkpoint], interrupted: bool
    ) -> str | None:
        return None


@dataclass(frozen=True)
class RunPlan:
    """What a run trains and how it reports: its settings as a search, the define-by-run function that
    makes each trial's record, a line saying what runs, and the report it ends with."""

    spec: SearchSpec
    space: Callable[[optuna.Trial], TrialRecord]
    header: str
    report: Callable[[Path], Report]
    # whether a trial may start now (True), later (None) or never again (False); None: always
    more: Callable[[optuna.Study], bool | None] | None = None
    # whether the run has ended every trial it will; None: once `spec.num_samples` have
    finished: Callable[[Sequence[TrialRow]], bool] | None = None

    def done(self, rows: Sequence[TrialRow]) -> bool:
        return self.finished(rows) if self.finished else ended(rows) >= self.spec.num_samples


DRIVER_RESOURCES = {"memory": 2**20}  # a data-parallel trial's own process only waits on its workers: no CPU


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _tuner(
    plan: RunPlan,
    folder: RunFolder,
    searcher: RSTSearch | None,
    num_samples: int,
    restore: bool,
    callbacks: Sequence[tune.Callback],
) -> tune.Tuner:
    spec = plan.spec
    if spec.resources.workers == 1:
        trainable = tune.with_resources(train_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    else:  # the trial only drives its Train run, whose workers hold the resources
        driver = tune.with_parameters(
            train_parallel_trial,
            resources=spec.resources,
            storage=folder.train_runs_path(spec.storage),
            max_failures=spec.max_failures,
        )
        trainable = tune.with_resources(driver, DRIVER_RESOURCES)
    if restore:
        return tune.Tuner.restore(
            folder.experiment_path(spec.storage), trainable, resume_unfinished=True, resume_errored=False
        )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=build_scheduler(spec, searcher.axis),
            num_samples=num_samples,
            max_concurrent_trials=spec.max_concurrent,
            reuse_actors=spec.reuse_actors and spec.resources.workers == 1,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=folder.storage_path(spec.storage),
            verbose=0,
            callbacks=[*callbacks, *([ReleaseWorkers()] if spec.resources.workers > 1 else [])],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        ),
    )


def runtime_env(settings: RunSettings) -> dict[str, Any] | None:
    """The run's `runtime_env`, else `code_runtime_env` of its raw values."""
    return settings.runtime_env if settings.runtime_env is not None else code_runtime_env(settings.raw)


def run_trials(
    plan: RunPlan,
    settings: RunSettings,
    folder: RunFolder,
    *,
    address: str | None,
    resume: bool,
    callbacks: Sequence[RunCallback],
    out: Callable[[str], None],
) -> Report:
    """Run (or with `resume`, continue) `plan.spec.num_samples` trials in `folder`, which keeps
    `settings.raw`; returns the report `plan.report` writes there at the end, after the callbacks have it."""
    start, spec = time.perf_counter(), plan.spec
    restorable = resume and tune.Tuner.can_restore(folder.experiment_path(spec.storage))
    # save the experiment state often: resume loses little
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # progress is ours: one line per trial
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # a failed trial's reason is in its line
    connect(address, runtime_env(settings))
    if not spec.shared_storage and spans_machines(ray.nodes(), ray.util.get_node_ip_address()):
        check_shared(spec.storage or str(folder.path))
    if not resume:
        folder.save_settings(settings.raw)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = folder.study_storage()
    if resume and optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=spec.name, storage=storage)
        trial_rows(study)  # a run of an older rst-tune stops here
        if study.trials and KEPT not in study.user_attrs:
            raise ConfigError(
                f"{folder.path} was begun by an older rst-tune, before its cost axis; start it again"
            )
    searcher, remaining = None, spec.num_samples
    if not restorable:  # a new run, or one interrupted before Ray saved its first experiment state
        fresh = not resume or not optuna.get_all_study_names(storage)
        searcher = RSTSearch(spec, storage, enqueue=fresh, space=plan.space, more=plan.more)
        remaining -= ended(trial_rows(searcher.study))
    out(f"{'resuming' if resume else folder.kind} {plan.header}")
    for callback in callbacks:
        callback.setup()
    progress = Progress(spec.num_samples, spec.train_config().epochs, out)
    results = _tuner(plan, folder, searcher, remaining, restorable, [progress, *callbacks]).fit()
    checkpoints = {
        r.metrics["trial_id"]: checkpoint
        for r in results
        if r.metrics and (checkpoint := trial_checkpoint(r, spec.storage)) is not None
    }
    report = plan.report(folder.path)
    done, finished = ended(report.trials), plan.done(report.trials)
    for callback in callbacks:
        line = callback.finish(report, checkpoints, not finished)
        if line:
            out(line)
    if not finished:
        out(
            f"stopped after {done} of {spec.num_samples} trials; "
            f"continue with: rst-tune {folder.kind} --resume {folder.path}"
        )
    else:
        out(f"{folder.kind} finished in {time.perf_counter() - start:.0f} s")
    return report


def ended(rows: Sequence[TrialRow]) -> int:
    """How many of a run's trials Ray ran to their end (one pruned over the budget never reached Ray)."""
    return sum(row.ray_trial_id is not None and row.state not in ("RUNNING", "WAITING") for row in rows)


def run_search(
    spec: SearchSpec,
    run_dir: str | Path,
    *,
    address: str | None = None,
    resume: bool = False,
    callbacks: Sequence[RunCallback] = (),
    out: Callable[[str], None] = print,
) -> ParetoReport:
    """Run (or with `resume`, continue) the search `spec` in `run_dir`; returns its Pareto report.
    The spec's raw values (`spec.raw`) are saved so that the run can be resumed. `callbacks` (e.g.
    `rst_tune.tracking.tracker_for(...)`) follow it; on resume Ray brings back the ones it started with."""
    points_to_evaluate(spec)  # bad points are config errors: raise them before anything starts
    header = (
        f"{spec.name} in {run_dir}: {spec.num_samples} trials of {spec.train_config().epochs} epochs, "
        f"{spec.max_concurrent} at a time, objective {spec.objective}, sampler {spec.sampler.name}"
        + (f", {spec.resources.workers} data-parallel workers each" if spec.resources.workers > 1 else "")
    )
    plan = RunPlan(spec, DefineByRun(spec), header, search_report)
    return run_trials(
        plan,
        spec,
        RunFolder(Path(run_dir), "search"),
        address=address,
        resume=resume,
        callbacks=callbacks,
        out=out,
    )


def read_run(run_dir: str | Path) -> SearchSpec:
    """The settings a search was started with, validated (their raw values are `.raw`)."""
    return RunFolder.existing(run_dir, "search").read_settings(parse_spec)


def read_search_report(run_dir: str | Path, cost: str | None = None) -> ParetoReport:
    """The Pareto report of a search run, from its Optuna study, against `cost` (default: the search's)."""
    if cost is not None and cost not in COSTS:
        raise ConfigError(f"--cost {cost}: choose one of {', '.join(COSTS)}")
    folder = RunFolder.existing(run_dir, "search")
    spec = folder.read_settings(parse_spec)
    study = optuna.load_study(study_name=spec.name, storage=folder.study_storage())
    return build_report(study, spec.objective, spec.budget, CostAxis.of(spec, cost, study.user_attrs))


def search_report(run_dir: str | Path, cost: str | None = None) -> ParetoReport:
    """Build the Pareto report of a search run (see `read_search_report`) and write its files there."""
    report = read_search_report(run_dir, cost)
    write_report(report, Path(run_dir))
    return report
