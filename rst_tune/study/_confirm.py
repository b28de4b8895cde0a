"""The seed-confirmed front of a search.

After the search, its front and the trials within `confirm.margin` val_accuracy of it (at most
`confirm.max_points`, closest first), and the SGD and SAM baselines, are trained again with fresh
seeds: none of them selected a point, which would carry the winner's curse into the intervals. They
run as a study in the search's folder (`confirm/`: its own Optuna study, Ray experiment, resume and
MLflow parent run), paired across points: seed k of every point is the same seed. Each point gets
`confirm.seeds` seeds, or with `confirm.sequential` (the default) two, then more one at a time only
while its place is undecided (rst_tune.study._sequential).

A confirmed point stays on the confirmed front unless another confirmed point costs no more (mean over
its seeds, on the search's cost axis) and is more accurate on validation, with a paired interval (at
`confirm.confidence`, 95 %) of the difference above zero.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from rst_tune.search._cost_axis import compute
from rst_tune.search._folder import RunFolder
from rst_tune.search._pareto import ConfirmedPoint, ParetoReport, write_report
from rst_tune.search._record import TrialRow, trial_rows
from rst_tune.search._runner import RunCallback, read_search_report
from rst_tune.search._settings import RunSettings
from rst_tune.search._spec import MIN_SEEDS, SearchSpec, parse_spec
from rst_tune.study._runner import run_study
from rst_tune.study._sequential import compare
from rst_tune.study._spec import StudySpec, parse_study
from rst_tune.study._stats import paired, spread

REFERENCES = ("SGD", "SAM")  # baselines confirmed whatever their place, as the points to compare with
_LEGACY = re.compile(r"trial (\d+): ")  # how confirmations begun before 2026-12-06 name their trial


def _point_prefix(number: int) -> str:
    return f"trial {number}: "


def _point_label(row: TrialRow) -> str:
    """A confirmed configuration's label, unique in its study as the trial's own may not be."""
    return _point_prefix(row.number) + row.label


def _source(label: str, row: TrialRow) -> int:
    """The search trial a confirmation trial trains again: its record's, or its label's in a
    confirmation begun before records held it."""
    return (
        row.record.source_trial if row.record.source_trial is not None else int(_LEGACY.match(label).group(1))
    )


def candidates(report: ParetoReport, margin: float, most: int) -> list[TrialRow]:
    """The trials to confirm: those within `margin` val_accuracy of the best trial that costs no more
    (the front is within 0 of it), closest first, then cheapest first, at most `most` besides the
    baselines; then the SGD and SAM baselines."""
    axis = report.axis
    done = [r for r in report.complete() if report.budget is None or axis.cost_of(r) <= report.budget]
    cost = axis.value

    def deficit(row: TrialRow) -> float:
        return max(other.val_accuracy for other in done if cost(other) <= cost(row)) - row.val_accuracy

    searched = [r for r in done if r.baseline not in REFERENCES and deficit(r) <= margin]
    close = sorted(searched, key=lambda r: (deficit(r), cost(r)))[:most]
    references = [next((r for r in done if r.baseline == name), None) for name in REFERENCES]
    return close + [r for r in references if r is not None]


def fresh_seed(used: set[int], count: int, search_seed: int) -> int:
    """A first seed s such that none of s … s + count − 1 trained a trial of the search."""
    draw = random.Random(f"rst-tune:{search_seed}:confirm")
    while True:
        start = draw.randrange(2**31 - count)
        if used.isdisjoint(range(start, start + count)):
            return start


def confirmation_settings(spec: SearchSpec, rows: Sequence[TrialRow], used_seeds: set[int]) -> dict[str, Any]:
    """The study settings that train `rows` again with the search's `confirm.seeds` fresh seeds, on the
    search's resources and storage."""
    shared = spec.model_dump(include=set(RunSettings.model_fields))
    return {
        **shared,
        "name": f"{spec.name}-confirm",
        "train": {k: v for k, v in spec.train.items() if k != "seed"},
        "configurations": [
            {
                "label": _point_label(row),
                "source_trial": row.number,
                **row.record.train.model_dump(exclude={"seed"}),
            }
            for row in rows
        ],
        "seeds": spec.confirm.seeds,
        "sequential": spec.confirm.sequential,
        "confidence": spec.confirm.confidence,
        "cost": spec.cost,
        "configuration_epochs": True,
        "seed": fresh_seed(used_seeds, spec.confirm.seeds, spec.seed),
    }


def run_confirmation(
    search_dir: str | Path,
    *,
    address: str | None = None,
    track: Callable[[RunFolder, StudySpec], Sequence[RunCallback]] = lambda folder, spec: (),
    out: Callable[[str], None] = print,
) -> ParetoReport:
    """Confirm the finished search in `search_dir` (continuing a confirmation begun before), and return
    its Pareto report with the confirmed points, written there. `track(folder, spec)` gives the
    confirmation study's callbacks, e.g. its MLflow tracker."""
    search = RunFolder.existing(search_dir, "search")
    folder = search.confirmation()
    begun = folder.spec_file.is_file()
    if begun:
        study = folder.read_settings(parse_study)
    else:
        spec = search.read_settings(parse_spec)
        report = read_search_report(search.path)
        rows = candidates(report, spec.confirm.margin, spec.confirm.max_points)
        if not rows:
            out("nothing to confirm: no trial of the search trained every epoch")
            return confirmed_report(search.path)
        used = {row.seed for row in report.trials if row.seed is not None}
        study = parse_study(confirmation_settings(spec, rows, used), str(folder.spec_file))
    seeds = f"{study.seeds} fresh seeds each"
    if study.sequential:
        seeds = f"{MIN_SEEDS} to {study.seeds} fresh seeds each, more only where undecided"
    out(f"confirming {len(study.configurations)} points of the front with {seeds}")
    run_study(study, folder.path, address=address, resume=begun, callbacks=track(folder, study), out=out)
    return confirmed_report(search.path)


def confirmed_report(search_dir: str | Path, cost: str | None = None) -> ParetoReport:
    """The search's Pareto report against `cost` (default: the search's), with its confirmed points
    when it has a confirmation, written into its folder."""
    search = RunFolder.existing(search_dir, "search")
    report = read_search_report(search.path, cost)
    folder = search.confirmation()
    if folder.spec_file.is_file():
        study = folder.read_settings(parse_study)
        storage = folder.study_storage()
        if study.name in optuna.get_all_study_names(storage):  # not before its first trial was asked
            rows = trial_rows(optuna.load_study(study_name=study.name, storage=storage))
            report.confirmed = confirmed_points(rows, report.cost, study.confidence)
    write_report(report, search.path)
    return report


def confirmed_points(rows: Sequence[TrialRow], cost: str, confidence: float = 0.95) -> list[ConfirmedPoint]:
    """Each confirmed configuration's means and 95 % intervals (Student t, whatever `confidence`) over
    its complete seeds, and whether it stays on the confirmed front (the module's rule, its paired
    intervals at `confidence`)."""
    seeds: dict[str, dict[int, TrialRow]] = {}
    for row in rows:
        if row.state == "COMPLETE":
            seeds.setdefault(row.configuration, {})[row.record.seed_index] = row
    means = {
        label: spread([compute(r, cost) for r in by_seed.values()]).mean for label, by_seed in seeds.items()
    }
    baseline = {label: next(iter(by_seed.values())).baseline for label, by_seed in seeds.items()}
    source = {label: _source(label, next(iter(by_seed.values()))) for label, by_seed in seeds.items()}
    sgd = next((seeds[label] for label in seeds if baseline[label] == "SGD"), None)

    def versus_sgd(by_seed: dict[int, TrialRow]) -> tuple[float, float, float] | None:
        common = sorted(set(by_seed) & set(sgd or {}))
        if sgd is None or sgd is by_seed or not common:
            return None
        difference = paired([by_seed[k].val_accuracy for k in common], [sgd[k].val_accuracy for k in common])
        return (difference.difference, difference.ci_low, difference.ci_high)

    points = []
    for label, by_seed in seeds.items():
        beaten_by = None
        for other, other_seeds in seeds.items():
            if other == label or means[other] > means[label]:
                continue
            difference = compare(other_seeds, by_seed, confidence)
            if difference is not None and difference.ci_low > 0:
                beaten_by = source[other]
                break
        config = next(iter(by_seed.values())).record.train
        val = spread([r.val_accuracy for r in by_seed.values()])
        test = spread([r.test_accuracy for r in by_seed.values() if r.test_accuracy is not None])
        points.append(
            ConfirmedPoint(
                trial=source[label],
                label=label.removeprefix(_point_prefix(source[label])),
                seeds=len(by_seed),
                val_accuracy_mean=val.mean,
                val_accuracy_ci=(val.ci_low, val.ci_high),
                test_accuracy_mean=test.mean,
                test_accuracy_ci=(test.ci_low, test.ci_high),
                cost_ratio_mean=spread([r.cost_ratio for r in by_seed.values()]).mean,
                propagations_mean=spread([r.propagations for r in by_seed.values()]).mean,
                device_seconds_mean=spread([r.device_seconds for r in by_seed.values()]).mean,
                epochs=config.epochs,
                batch_size=config.batch_size,
                on_front=beaten_by is None,
                beaten_by=beaten_by,
                baseline=baseline[label],
                vs_sgd=versus_sgd(by_seed),
                method=next(iter(by_seed.values())).method,
            )
        )
    return points
