"""The replay: a searcher runs on a table instead of training, with w asynchronous workers.

The rules:
- **Proposals.** The searcher's Optuna study asks for a trial through rst-tune's own define-by-run
  function (the search's parameters and distributions). A proposal is answered by the table's nearest
  row of the same schedule family and the same G-RST switch (on or off), nearest in the searched
  parameters mapped to [0, 1] (log ones on their log scale); ties go to the lower row. The baselines
  are rows like any other. The searcher is told the row's results; its own parameters stay its own.
  So a sampler that knows each configuration's cost (rst-tune's known_cost) gets the row's p̄, not
  quite the one it priced (over 489 random proposals: median difference 0.08, 90th percentile 0.22).
- **Seeds.** A trial trains the table seed `trial_seed(search seed, trial number) mod k`: one seed per
  trial, fixed for it, as rst-tune draws its training seed.
- **Time.** A trial's epoch e ends at its start plus the recorded device-seconds of its row and seed
  up to epoch e. A worker that frees asks for the next trial at once. Events at one instant are
  taken in the order their trials started.
- **Stopping.** Each epoch's result goes to the stopping rule (Ray's ASHA, rst-tune's pareto_fair or
  hypervolume, or none) as Ray Tune would give it; a stopped trial is told to Optuna as PRUNED, as
  rst-tune does.
- **Compute.** Every epoch trained counts as it ends, in SAM-equivalents (one full training with a
  sharpness-aware step at every iteration): pruned trials' epochs and confirmation seeds included.
- **What is reported.** An Optuna searcher reports the front of its complete trials on what it saw
  (one seed each), after every trial that ends. rst-tune's pipeline reports its confirmed front, once
  its confirmation seeds have trained; its search runs `num_samples` trials. Each reported point is
  scored by its row's seed means (`metric.Truth`).
- **Confirmation** trains each confirmed point at table seeds 0 … c−1 (c ≤ k), all of them or, when
  sequential, as rst-tune's rule gives them out, on the same w workers: these are "fresh" to
  the point's selection only where the search trial drew another seed, and they are the seeds the
  score averages over; the replay cannot do better with a k-seed table.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from rst_bench.metric import Truth
from rst_bench.searchers import STOPPING, Searcher
from rst_bench.table import Table
from rst_tune._train import EpochMetrics
from rst_tune.config import TrainConfig
from rst_tune.schedules import Schedule
from rst_tune.search._cost_axis import CostAxis
from rst_tune.search._pareto import build_report, pareto_front
from rst_tune.search._record import TrialRecord, TrialRow
from rst_tune.search._space import DefineByRun, points_to_evaluate
from rst_tune.search._spec import Dimension, SearchSpec
from rst_tune.study._confirm import candidates, confirmed_points
from rst_tune.study._sequential import DONE, next_seed

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Lookup:
    """The table row that answers a configuration: the nearest of its family and G-RST switch, in the
    parameters `spec` searches (its spelling of the schedule, e.g. mean and tilt)."""

    def __init__(self, table: Table, spec: SearchSpec):
        self.spec = spec
        self.cells: dict[tuple, tuple[list[int], np.ndarray]] = {}
        for c in range(table.shape[0]):
            values = {k: v[c] for k, v in table.settings.items()}
            key, unit = self._coordinates(table.schedule(c), values)
            rows, units = self.cells.setdefault(key, ([], []))
            rows.append(c)
            units.append(unit)
        self.cells = {k: (rows, np.array(units)) for k, (rows, units) in self.cells.items()}

    def _coordinates(self, schedule: Schedule, values: dict) -> tuple[tuple, list[float]]:
        """The (family, switches) cell and unit coordinates of a configuration; NaN or None is off."""
        off = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
        unit, switches = [], []
        if schedule.name in self.spec.schedule:
            family = self.spec.schedule[schedule.name]
            spelt = family.values_of(schedule.name, schedule)
            for name, dim in family.params.items():
                if isinstance(dim, Dimension):
                    unit.append(dim.unit(spelt[name]))
        for name, dim in self.spec.dimensions.items():
            if dim.optional:
                switches.append(not off(values[name]))
            if not off(values[name]):
                unit.append(dim.unit(values[name]))
        return (schedule.name, *switches), unit

    def row(self, config: TrainConfig) -> int:
        values = {name: getattr(config, name) for name in self.spec.dimensions}
        key, unit = self._coordinates(config.schedule.build(), values)
        if key not in self.cells:
            raise KeyError(f"the table has no row of {key}")
        rows, units = self.cells[key]
        distance = ((units - np.array(unit)) ** 2).sum(1) if units.shape[1] else np.zeros(len(rows))
        return rows[int(np.argmin(distance))]


@dataclass
class Trace:
    """One replay: the reported front's value against compute, and what it spent."""

    searcher: str
    stopping: str
    workers: int
    seed: int
    curve: list[tuple[float, float, float]] = field(default_factory=list)  # (compute, value, observed)
    compute: float = 0.0  # SAM-equivalents
    seconds: float = 0.0  # simulated wall time
    trials: int = 0
    pruned: int = 0
    trained: list[tuple[int, str, int]] = field(default_factory=list)  # (row, "search" or "confirm", epochs)
    reported: list[int] = field(default_factory=list)  # the final front's table rows

    @property
    def final(self) -> tuple[float, float]:
        """(value, observed) of the last reported front; (0, 0) before any."""
        return self.curve[-1][1:] if self.curve else (0.0, 0.0)


@dataclass
class _Run:
    trial: optuna.Trial
    record: TrialRecord
    row: int
    seed_index: int
    started: float
    order: int
    ray_trial: Trial
    epoch: int = 0


def _metrics(table: Table, row: int, seed: int, epoch: int) -> dict[str, float]:
    """The result a trial reports at `epoch` (1-based), as Ray Tune gets it."""
    result = {name: float(values[row, seed, epoch - 1]) for name, values in table.curves.items()}
    return {**result, "epoch": epoch, "expected_cost": float(table.expected_cost[row])}


class Replay:
    """Replays searchers on one table: `spec` is the problem's search spec (its space, confirmation and
    stopping settings)."""

    def __init__(self, table: Table, spec: SearchSpec, truth: Truth | None = None):
        self.table, self.spec = table, spec
        self.truth = truth or Truth.of(table)
        self.lookup = Lookup(table, spec)
        self.epochs = table.shape[2]
        self.cost = table.sam_equivalents()
        self.cost_per_epoch = np.diff(self.cost, axis=2, prepend=0.0)

    def run(
        self,
        searcher: Searcher,
        stopping: str = "none",
        workers: int = 2,
        seed: int = 0,
        budget: float = 36.0,
        num_samples: int | None = None,
    ) -> Trace:
        """One replay. An Optuna searcher asks for trials while less than `budget` SAM-equivalents
        have been spent; the pipeline runs `num_samples` (default: the spec's) trials, then confirms."""
        spec = self.spec.model_copy(update={"seed": seed})
        if searcher.pipeline:
            num_samples = num_samples or spec.num_samples
        trace = Trace(searcher.name, stopping, workers, seed)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=searcher.sampler(spec, seed))
        if searcher.pipeline:
            for point in points_to_evaluate(spec):
                study.enqueue_trial(point)
        space, scheduler = DefineByRun(spec), STOPPING[stopping](spec, self.epochs)
        k = self.table.shape[1]
        events: list[tuple[float, int, int]] = []  # (time, start order, epoch) per running trial
        running: dict[int, _Run] = {}
        complete: list[tuple[float, float, int, float]] = []  # (val_accuracy, propagations, row, cost_ratio)

        def may_ask() -> bool:
            return trace.trials < num_samples if num_samples else trace.compute < budget

        def start(now: float) -> None:
            trial = study.ask()
            record = space(trial)
            run = _Run(
                trial,
                record,
                self.lookup.row(record.train),
                record.train.seed % k,
                now,
                trace.trials,
                Trial(
                    "rst_bench",
                    config={"train": {"epochs": record.train.epochs}},
                    trial_id=str(trial.number),
                    stub=True,
                ),
            )
            for key, value in record.to_user_attrs().items():
                trial.set_user_attr(key, value)
            scheduler.on_trial_add(None, run.ray_trial)
            running[run.order] = run
            trace.trials += 1
            heapq.heappush(events, (now + self._seconds(run, 1), run.order, 1))

        for _ in range(workers):
            if may_ask():
                start(0.0)
        while events:
            now, order, epoch = heapq.heappop(events)
            run = running[order]
            run.epoch = epoch
            trace.compute += self.cost_per_epoch[run.row, run.seed_index, epoch - 1]
            result = _metrics(self.table, run.row, run.seed_index, epoch)
            last = epoch == self.epochs
            decision = scheduler.on_trial_result(None, run.ray_trial, result)
            if not last and decision != TrialScheduler.STOP:
                heapq.heappush(events, (run.started + self._seconds(run, epoch + 1), order, epoch + 1))
                continue
            del running[order]
            trace.trained.append((run.row, "search", epoch))
            for key in EpochMetrics.from_mapping(result):
                run.trial.set_user_attr(key, result[key])
            # Ray Tune tells a scheduler of a trial it stopped as of one that completed
            scheduler.on_trial_complete(None, run.ray_trial, result)
            if last:
                study.tell(run.trial, [result["val_accuracy"], result["propagations"]])
                complete.append(
                    (result["val_accuracy"], result["propagations"], run.row, result["cost_ratio"])
                )
                if not searcher.pipeline:
                    self._report(trace, complete)
            else:
                study.tell(run.trial, state=TrialState.PRUNED)
                trace.pruned += 1
                if not searcher.pipeline:  # compute moved on, the front did not
                    trace.curve.append((trace.compute, *trace.final))
            trace.seconds = max(trace.seconds, now)
            if may_ask():
                start(now)
        if searcher.pipeline and spec.confirm.seeds:
            self._confirm(trace, study, spec, workers)
        elif searcher.pipeline:
            self._report(trace, complete)
        return trace

    def _seconds(self, run: _Run, epoch: int) -> float:
        return self._device_seconds(run.row, run.seed_index, epoch)

    def _device_seconds(self, row: int, seed: int, epoch: int) -> float:
        return float(self.table.curves["device_seconds"][row, seed, epoch - 1])

    def _report(self, trace: Trace, complete: list[tuple[float, float, int, float]]) -> None:
        """The front of the complete trials, as the search sees it, scored."""
        front = [complete[i] for i in pareto_front([(a, p) for a, p, _, _ in complete])]
        trace.reported = sorted({row for _, _, row, _ in front})
        observed = self.truth.observed([(a, cost) for a, _, _, cost in front])
        trace.curve.append((trace.compute, self.truth.value(trace.reported), observed))

    def _confirm(self, trace: Trace, study: optuna.Study, spec: SearchSpec, workers: int) -> None:
        """rst-tune's confirmation: its candidates at table seeds 0 … c−1, every one, or one at a time
        where the front is undecided (`confirm.sequential`), on `workers` workers; its confirmed front."""
        seeds, confirm = spec.confirm.seeds, spec.confirm
        if seeds > self.table.shape[1]:
            raise ValueError(f"confirm.seeds {seeds} is more than the table's {self.table.shape[1]} seeds")
        report = build_report(study, "pareto", None, CostAxis.of(spec))
        chosen = candidates(report, confirm.margin, confirm.max_points)
        labels = [f"trial {row.number}: {row.label}" for row in chosen]
        cells = [self.lookup.row(row.record.train) for row in chosen]
        order = [(i, j) for j in range(seeds) for i in range(len(chosen))]  # the fixed plan's
        rows: list[TrialRow] = []
        running: list[tuple[float, int]] = []  # (finish, index in rows)

        def following() -> tuple[int, int] | str:
            if confirm.sequential:
                return next_seed(rows, labels, seeds, "propagations", confirm.confidence)
            return order[len(rows)] if len(rows) < len(order) else DONE

        def row(n: int, i: int, j: int, state: str) -> TrialRow:
            config = chosen[i].record.train.model_copy(update={"seed": int(self.table.seeds[j])})
            record = TrialRecord(
                config,
                labels[i],
                n,
                chosen[i].baseline,
                configuration=labels[i],
                seed_index=j,
                source_trial=chosen[i].number,
            )
            if state != "COMPLETE":
                return TrialRow(n, state, record, None, None, None, {})
            metrics = EpochMetrics.from_mapping(_metrics(self.table, cells[i], j, self.epochs))
            return TrialRow(n, state, record, metrics, None, None, {})

        now = trace.seconds
        while True:
            while len(running) < workers and not isinstance(nxt := following(), str):
                i, j = nxt
                trace.compute += self.cost[cells[i], j, -1]
                trace.trained.append((cells[i], "confirm", self.epochs))
                heapq.heappush(running, (now + self._device_seconds(cells[i], j, self.epochs), len(rows)))
                rows.append(row(len(rows), i, j, "RUNNING"))
            if not running:
                break
            now, n = heapq.heappop(running)
            rows[n] = row(n, labels.index(rows[n].configuration), rows[n].record.seed_index, "COMPLETE")
        trace.seconds = now
        points = [p for p in confirmed_points(rows, "propagations", confirm.confidence) if p.on_front]
        by_trial = {row.number: cell for row, cell in zip(chosen, cells)}
        trace.reported = sorted({by_trial[p.trial] for p in points})
        observed = self.truth.observed([(p.val_accuracy_mean, p.cost_ratio_mean) for p in points])
        trace.curve.append((trace.compute, self.truth.value(trace.reported), observed))
