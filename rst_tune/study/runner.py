"""Runs a study through the search's machinery: the same Ray trainable, Optuna study, resume,
storage and MLflow logging, with a fixed plan in place of a sampler.

    <run>/study.yaml   the study as run (command-line overrides applied); --resume reads it back
    <run>/optuna.db    one Optuna trial per (configuration, seed), with its metrics as user attributes
    <run>/trials/      the Ray Tune experiment
    <run>/study.*      the report (md, csv, json, png)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import optuna

from rst_tune.search.runner import SearchCallback, read_saved, run_trials, study_storage
from rst_tune.search.space import baseline_name
from rst_tune.study.report import STUDY_FILES, StudyReport, build_study_report, write_study_report
from rst_tune.study.spec import StudySpec, parse_study

SPEC_FILE = "study.yaml"


class StudyPlan:
    """The define-by-run function of a study: Optuna trial n trains configuration n mod C at seed
    index n div C, so every configuration's first seed runs before any second one."""

    def __init__(self, spec: StudySpec):
        self.spec = spec

    def __call__(self, trial: Any) -> dict[str, Any]:
        count = len(self.spec.configurations)
        index, seed_index = trial.number % count, trial.number // count
        if seed_index >= self.spec.seeds:
            raise RuntimeError(f"trial {trial.number} is beyond the study's {self.spec.num_samples} trials")
        config = self.spec.train_config_of(index, seed_index)
        label = self.spec.label(index)
        return {"train": config.model_dump(), "expected_cost": config.schedule.build().expected_cost(),
                "label": f"{label} · seed {config.seed}", "configuration": label,
                "baseline": baseline_name(config), "optuna_trial": trial.number}


def read_study(run_dir: str | Path) -> tuple[dict[str, Any], StudySpec]:
    """The study values a run was started with, and the validated spec."""
    return read_saved(run_dir, SPEC_FILE, parse_study)


def run_study(values: dict[str, Any], spec: StudySpec, run_dir: str | Path, *, address: str | None = None,
              resume: bool = False, callbacks: Sequence[SearchCallback] = (),
              out: Callable[[str], None] = print) -> StudyReport:
    """Run (or with `resume`, continue) the study `spec` in `run_dir`; returns its report. `values`
    are the study's raw settings, saved so that the run can be resumed."""
    header = (f"{spec.name} in {run_dir}: {len(spec.configurations)} configurations × {spec.seeds} seeds = "
              f"{spec.num_samples} trials of {spec.train_config().epochs} epochs, {spec.max_concurrent} at a time")
    return run_trials(values, spec.search_spec(), Path(run_dir), StudyPlan(spec), kind="study", spec_file=SPEC_FILE,
                      header=header, make_report=study_report, report_files=STUDY_FILES, address=address,
                      resume=resume, callbacks=callbacks, out=out)


def study_report(run_dir: str | Path) -> StudyReport:
    """Build the report of a study run from its Optuna study and write study.md/csv/json/png there."""
    run_dir = Path(run_dir)
    _, spec = read_study(run_dir)
    result = build_study_report(optuna.load_study(study_name=spec.name, storage=study_storage(run_dir)), spec)
    write_study_report(result, run_dir)
    return result
