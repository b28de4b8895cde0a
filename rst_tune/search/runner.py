"""Runs a search: one directory holds its spec, the Ray experiment, the Optuna study and the report.

    <run>/search.yaml   the spec as run (command-line overrides applied); --resume reads it back
    <run>/optuna.db     the Optuna study (SQLite: `optuna-dashboard sqlite:///<run>/optuna.db`)
    <run>/trials/       the Ray Tune experiment: one folder per trial, named by its Ray trial id
    <run>/pareto.*      the report (csv, json, png, html)
    <run>/mlflow.db     with `rst_tune.tracking`: the MLflow store, unless the search logs elsewhere
    <run>/mlartifacts/  (tracking.json says where) and its artifacts
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import ray
import yaml
from ray import tune

from rst_tune.config import ConfigError
from rst_tune.search.pareto import REPORT_FILES, ParetoReport, build_report, write_report
from rst_tune.search.schedulers import build_scheduler
from rst_tune.search.searcher import RSTSearch
from rst_tune.search.space import DefineByRun, points_to_evaluate
from rst_tune.search.spec import SearchSpec, parse_spec
from rst_tune.search.trainable import train_trial

SPEC_FILE, STUDY_FILE, EXPERIMENT = "search.yaml", "optuna.db", "trials"


def study_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / STUDY_FILE).resolve()}"


def study_storage(run_dir: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(study_url(run_dir), engine_kwargs={"connect_args": {"timeout": 60}})


def read_saved(run_dir: str | Path, spec_file: str, parse: Callable[[Any, str], Any]) -> tuple[dict[str, Any], Any]:
    """The settings a run was started with (its `spec_file`), and them validated by `parse`."""
    path = Path(run_dir) / spec_file
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a {Path(spec_file).stem} run ({spec_file} missing)")
    values = yaml.safe_load(path.read_text())
    return values, parse(values, str(path))


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], SearchSpec]:
    """The spec values a search was started with, and the validated spec."""
    return read_saved(run_dir, SPEC_FILE, parse_spec)


def new_run_dir(results_dir: str | Path, name: str, exact: bool) -> Path:
    """`results_dir/name`; when `exact` is False and it is taken, the first free `name-2`, `name-3`, ..."""
    candidate, n = Path(results_dir) / name, 1
    while candidate.exists():
        if exact:
            raise ConfigError(f"{candidate} exists: continue it with --resume {candidate}, or give another --name")
        n += 1
        candidate = Path(results_dir) / f"{name}-{n}"
    return candidate


def storage_path(spec: SearchSpec, run_dir: Path) -> str:
    """Where Ray keeps this run's trials: `<storage>/<run name>` with a storage, else the run folder."""
    return f"{spec.storage.rstrip('/')}/{run_dir.name}" if spec.storage else str(run_dir.resolve())


def experiment_path(spec: SearchSpec, run_dir: Path) -> str:
    return f"{storage_path(spec, run_dir)}/{EXPERIMENT}"


NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "9p")


def filesystem_type(path: str | Path) -> str:
    """The type of the filesystem holding `path` (from /proc/mounts), or "unknown"."""
    target, best, kind = str(Path(path).resolve()), "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        _, point, fstype = line.split()[:3]
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, fstype
    return kind


def spans_machines(nodes: list[dict], here: str) -> bool:
    """Whether a cluster (`ray.nodes()`) runs, or will run, trials on machines other than `here`:
    a live node elsewhere, or a head with no CPU or GPU (its workers are still to come)."""
    alive = [n for n in nodes if n["Alive"]]
    head_runs_nothing = any(n["Resources"].get("CPU", 0) == 0 and n["Resources"].get("GPU", 0) == 0 for n in alive)
    return head_runs_nothing or any(n["NodeManagerAddress"] != here for n in alive)


def check_shared(path: str) -> None:
    """Raise ConfigError unless every machine of a cluster can reach `path`."""
    if "://" in path and not path.startswith("file://"):
        return
    kind = filesystem_type(path.removeprefix("file://"))
    if kind not in NETWORK_FILESYSTEMS and not kind.startswith("fuse."):
        raise ConfigError(f"--storage: {path} is a local {kind} path, but this cluster runs trials on other machines; "
                          "give storage they all reach: s3://bucket/prefix, gs://bucket/prefix, or a shared NFS mount")


def _trial_dirname(trial) -> str:
    return trial.trial_id


class _Progress(tune.Callback):
    """One line per trial start and end. Pickles without `out` (Ray saves its callbacks): a resumed
    search prints."""

    def __init__(self, total: int, epochs: int, out: Callable[[str], None]):
        self.total, self.epochs, self.out = total, epochs, out

    def __getstate__(self) -> dict:
        return {"total": self.total, "epochs": self.epochs}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["total"], state["epochs"], print)

    def _finished(self, trials, trial) -> int:
        return len({t.trial_id for t in trials if t.is_finished()} | {trial.trial_id})

    def on_trial_start(self, iteration, trials, trial, **info):
        self.out(f"  start  {trial.trial_id}  {trial.config['label']}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result
        early = f", stopped early after epoch {r['epoch']}" if r.get("epoch", self.epochs) < self.epochs else ""
        self.out(f"[{self._finished(trials, trial)}/{self.total}] {trial.trial_id}  {trial.config['label']}: "
                 f"val_acc {r.get('val_accuracy', float('nan')):.2%}, cost {r.get('cost_ratio', float('nan')):.3f} "
                 f"({r.get('wall_s', 0):.1f} s{early})")

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = trial.last_result.get("failure", "raised an error: see error.txt in its folder")
        self.out(f"[{self._finished(trials, trial)}/{self.total}] {trial.trial_id}  {trial.config['label']}: FAILED, {reason}")


def _tuner(spec: SearchSpec, run_dir: Path, searcher: RSTSearch | None, num_samples: int,
           out: Callable[[str], None], resume: bool, callbacks: Sequence[SearchCallback]) -> tune.Tuner:
    epochs = spec.train_config().epochs
    trainable = tune.with_resources(train_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    if resume:
        return tune.Tuner.restore(experiment_path(spec, run_dir), trainable, resume_unfinished=True, resume_errored=False)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=build_scheduler(spec, epochs),
                                    num_samples=num_samples, max_concurrent_trials=spec.max_concurrent,
                                    reuse_actors=spec.reuse_actors, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=storage_path(spec, run_dir), verbose=0,
                                  callbacks=[_Progress(spec.num_samples, epochs, out), *callbacks],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures)),
    )


class SearchCallback(tune.Callback):
    """A Tune callback that also hears of the run's start (`setup`, called on the driver before
    Ray starts) and end (`finish`, with the report: a ParetoReport for a search, a StudyReport for a
    study, both with `trials` rows; returns a line to print, or None)."""

    def finish(self, report: Any, report_files: list[Path], checkpoints: dict[str, tune.Checkpoint],
               interrupted: bool) -> str | None:
        return None


def run_trials(values: dict[str, Any], spec: SearchSpec, run_dir: Path, space: Callable[[Any], dict[str, Any]], *,
               kind: str, spec_file: str, header: str, make_report: Callable[[Path], Any], report_files: Sequence[str],
               address: str | None, resume: bool, callbacks: Sequence[SearchCallback],
               out: Callable[[str], None]) -> Any:
    """Run (or with `resume`, continue) `spec.num_samples` trials in `run_dir`, each configured by the
    Optuna define-by-run function `space`; `values` are saved there as `spec_file`. `kind` and `header`
    make the opening line ("search" or "study", then what runs). At the end `make_report(run_dir)`
    writes `report_files` there and goes to the callbacks; it is returned."""
    start = time.perf_counter()
    restorable = resume and tune.Tuner.can_restore(experiment_path(spec, run_dir))
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # save the experiment state often: resume loses little
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # progress is ours: one line per trial
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # a failed trial's line gives its reason; the traceback is in its error.txt
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, configure_logging=True, logging_level="ERROR")
    if spans_machines(ray.nodes(), ray.util.get_node_ip_address()):
        check_shared(spec.storage or str(run_dir))
    if not resume:
        run_dir.mkdir(parents=True)
        (run_dir / spec_file).write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_storage(run_dir)
    searcher, remaining = None, spec.num_samples
    if not restorable:  # a new run, or one interrupted before Ray saved its first experiment state
        fresh = not resume or not optuna.get_all_study_names(storage)
        searcher = RSTSearch(spec, storage, spec.train_config().epochs, enqueue=fresh, space=space)
        remaining -= sum(t.state.is_finished() and "ray_trial_id" in t.user_attrs for t in searcher.study.get_trials())
    out(f"{'resuming' if resume else kind} {header}")
    for callback in callbacks:
        callback.setup()
    results = _tuner(spec, run_dir, searcher, remaining, out, restorable, callbacks).fit()
    study = optuna.load_study(study_name=spec.name, storage=storage)
    ended = sum("ray_trial_id" in t.user_attrs and t.state.is_finished() for t in study.get_trials(deepcopy=False))
    checkpoints = {r.metrics["trial_id"]: r.checkpoint for r in results if r.checkpoint and r.metrics}
    result = make_report(run_dir)
    for callback in callbacks:
        line = callback.finish(result, [run_dir / name for name in report_files], checkpoints, ended < spec.num_samples)
        if line:
            out(line)
    if ended < spec.num_samples:
        out(f"stopped after {ended} of {spec.num_samples} trials; continue with: rst-tune {kind} --resume {run_dir}")
    else:
        out(f"{kind} finished in {time.perf_counter() - start:.0f} s")
    return result


def run_search(values: dict[str, Any], spec: SearchSpec, run_dir: str | Path, *, address: str | None = None,
               resume: bool = False, callbacks: Sequence[SearchCallback] = (),
               out: Callable[[str], None] = print) -> ParetoReport:
    """Run (or with `resume`, continue) the search `spec` in `run_dir`; returns its Pareto report.
    `values` are the spec's raw settings, saved so that the run can be resumed. `callbacks` (e.g.
    `rst_tune.tracking.SearchTracker`) follow it; on resume Ray brings back the ones it started with."""
    run_dir = Path(run_dir)
    points_to_evaluate(spec)  # bad points are config errors: raise them before anything starts
    header = (f"{spec.name} in {run_dir}: {spec.num_samples} trials of {spec.train_config().epochs} epochs, "
              f"{spec.max_concurrent} at a time, objective {spec.objective}, sampler {spec.sampler.name}")
    return run_trials(values, spec, run_dir, DefineByRun(spec), kind="search", spec_file=SPEC_FILE, header=header,
                      make_report=report, report_files=REPORT_FILES, address=address, resume=resume,
                      callbacks=callbacks, out=out)


def report(run_dir: str | Path) -> ParetoReport:
    """Build the Pareto report of a run from its Optuna study and write pareto.csv/json/png there."""
    run_dir = Path(run_dir)
    _, spec = read_run(run_dir)
    study = optuna.load_study(study_name=spec.name, storage=study_storage(run_dir))
    result = build_report(study, spec.objective, spec.budget)
    write_report(result, run_dir)
    return result
