"""Runs a study through the search's machinery: the same Ray trainable, Optuna study, resume,
storage and MLflow logging, with a fixed plan in place of a sampler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from rst_tune.search._folder import RunFolder
from rst_tune.search._record import TrialRecord, TrialRow, trial_rows
from rst_tune.search._runner import RunCallback, RunPlan, run_trials
from rst_tune.search._space import baseline_name
from rst_tune.study._report import StudyReport, build_study_report, write_study_report
from rst_tune.study._sequential import DONE, WAIT, next_seed
from rst_tune.study._spec import StudySpec, epochs_words, parse_study


class StudyPlan:
    """The define-by-run function of a study: Optuna trial n trains configuration n mod C at seed
    index n div C, so every configuration's first seed runs before any second one; or, when the study
    is `sequential`, the configuration and seed `rst_tune.study._sequential` gives next (a trial taken
    up after an interrupted driver keeps its own)."""

    def __init__(self, spec: StudySpec):
        self.spec, self.labels = spec, spec.labels()

    def _next(self, study: optuna.Study, number: int) -> tuple[int, int] | str:
        rows = [row for row in trial_rows(study) if row.number != number]
        return self._following(rows)

    def _following(self, rows: Sequence[TrialRow]) -> tuple[int, int] | str:
        return next_seed(rows, self.labels, self.spec.seeds, self.spec.cost, self.spec.confidence)

    def more(self, study: optuna.Study) -> bool | None:
        """Whether a sequential study's next trial may start: True, None (not until a running one
        ends), False (done)."""
        following = self._next(study, -1)
        return None if following == WAIT else following != DONE

    def finished(self, rows: Sequence[TrialRow]) -> bool:
        """Whether a sequential study has run every trial it will."""
        return self._following(rows) == DONE

    def __call__(self, trial: Any) -> TrialRecord:
        count = len(self.spec.configurations)
        index, seed_index = trial.number % count, trial.number // count
        if self.spec.sequential:
            own = trial.user_attrs
            if own.get("configuration") in self.labels and own.get("seed_index") is not None:
                index, seed_index = self.labels.index(own["configuration"]), own["seed_index"]
            else:
                following = self._next(trial.study, trial.number)
                if isinstance(following, str):
                    raise RuntimeError(
                        f"trial {trial.number}: the sequential study has nothing to run ({following})"
                    )
                index, seed_index = following
        if seed_index >= self.spec.seeds:
            raise RuntimeError(f"trial {trial.number} is beyond the study's {self.spec.num_samples} trials")
        config = self.spec.train_config_of(index, seed_index)
        label = self.spec.label(index)
        return TrialRecord(
            config,
            f"{label} · seed {config.seed}",
            trial.number,
            baseline_name(config),
            configuration=label,
            seed_index=seed_index,
            source_trial=self.spec.source_trial(index),
        )


def read_study(run_dir: str | Path) -> StudySpec:
    """The settings a study was started with, validated (their raw values are `.raw`)."""
    return RunFolder.existing(run_dir, "study").read_settings(parse_study)


def run_study(
    spec: StudySpec,
    run_dir: str | Path,
    *,
    address: str | None = None,
    resume: bool = False,
    callbacks: Sequence[RunCallback] = (),
    out: Callable[[str], None] = print,
) -> StudyReport:
    """Run (or with `resume`, continue) the study `spec` in `run_dir`; returns its report. `values`
    are the study's raw settings, saved so that the run can be resumed."""
    header = (
        f"{spec.name} in {run_dir}: {len(spec.configurations)} configurations × {spec.seeds} seeds = "
        f"{spec.num_samples} trials of {epochs_words(spec.shared_epochs())}, {spec.max_concurrent} at a time"
    )
    study_plan = StudyPlan(spec)
    plan = RunPlan(spec.search_spec(), study_plan, header, study_report)
    if spec.sequential:  # else every planned trial runs, as a search's do
        plan = replace(plan, more=study_plan.more, finished=study_plan.finished)
    return run_trials(
        plan,
        spec,
        RunFolder(Path(run_dir), "study"),
        address=address,
        resume=resume,
        callbacks=callbacks,
        out=out,
    )


def study_report(run_dir: str | Path) -> StudyReport:
    """Build the report of a study run from its Optuna study and write its files there."""
    folder = RunFolder.existing(run_dir, "study")
    spec = folder.read_settings(parse_study)
    report = build_study_report(optuna.load_study(study_name=spec.name, storage=folder.study_storage()), spec)
    write_study_report(report, folder.path)
    return report
