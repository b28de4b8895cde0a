"""The protocol's metric (../shared/SEARCH_BENCH.md): the hypervolume of a reported front, each point
scored by its table seed mean, above a fixed reference point (SGD's seed-mean validation accuracy,
cost ratio 2.0: SAM at every step), as a fraction of the oracle front's. Also: the interquartile
mean over search seeds with its 95 % bootstrap interval, and the compute to reach a level."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from rst_bench.table import Table
from rst_tune.search._pareto import hypervolume, pareto_front

REFERENCE_COST = 2.0  # cost ratio of SAM at every step


def front_volume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The hypervolume of the non-dominated (accuracy, cost) points among `points`."""
    return hypervolume([points[i] for i in pareto_front(points)], reference)


@dataclass(frozen=True)
class Truth:
    """A table's seed means: each configuration's validation accuracy and cost ratio at its last
    epoch, the reference point, and the oracle front and its hypervolume."""

    accuracy: np.ndarray  # [C]
    cost: np.ndarray  # [C]
    reference: tuple[float, float]
    oracle: tuple[int, ...]
    oracle_volume: float

    @classmethod
    def of(
        cls, table: Table, seeds: Sequence[int] | None = None, configs: Sequence[int] | None = None
    ) -> Truth:
        """The truth of `table`, over `seeds` (indices; default all) and `configs` (default all: the
        others are left out of the oracle, never out of the scoring)."""
        seeds = list(range(table.shape[1])) if seeds is None else list(seeds)
        accuracy = table.final("val_accuracy")[:, seeds].mean(1)
        cost = table.final("cost_ratio")[:, seeds].mean(1)
        reference = (float(accuracy[table.index("SGD")]), REFERENCE_COST)
        pool = range(len(accuracy)) if configs is None else configs
        points = [(accuracy[c], cost[c]) for c in pool]
        oracle = tuple(sorted(list(pool)[i] for i in pareto_front(points)))
        return cls(accuracy, cost, reference, oracle, front_volume(points, reference))

    def points(self, configs: Iterable[int]) -> list[tuple[float, float]]:
        return [(float(self.accuracy[c]), float(self.cost[c])) for c in configs]

    def value(self, configs: Iterable[int]) -> float:
        """The true hypervolume of a reported front (table configurations), over the oracle's."""
        return front_volume(self.points(configs), self.reference) / self.oracle_volume

    def observed(self, points: Sequence[tuple[float, float]]) -> float:
        """The hypervolume of the front as the searcher saw it (its own accuracy and cost estimates),
        over the oracle's: minus `value`, the optimism gap."""
        return front_volume(points, self.reference) / self.oracle_volume


def iqm(values: Sequence[float]) -> float:
    """The interquartile mean: the mean of the middle half."""
    return float(stats.trim_mean(values, 0.25))


def iqm_interval(values, seed: int = 0, resamples: int = 2000):
    """The IQM of `values` over its first axis (search seeds) with its 95 % percentile-bootstrap
    interval: three floats, or three arrays for a matrix of curves."""
    values = np.asarray(values, float)
    mid = stats.trim_mean(values, 0.25, axis=0)
    if len(values) < 2 or np.ptp(values, axis=0).max() == 0:
        return mid, mid, mid
    boot = stats.bootstrap(
        (values,),
        lambda x, axis: stats.trim_mean(x, 0.25, axis=axis),
        axis=0,
        confidence_level=0.95,
        n_resamples=resamples,
        method="percentile",
        random_state=seed,
    )
    return mid, boot.confidence_interval.low, boot.confidence_interval.high


def compute_to_reach(curve: Sequence[tuple[float, float]], level: float) -> float:
    """The compute at which an anytime curve [(compute, value), …] (compute ascending) first reaches
    `level`; inf if it never does."""
    return next((compute for compute, value in curve if value >= level), float("inf"))
