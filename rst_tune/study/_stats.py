"""Statistics over seeds: mean, sample standard deviation, Student-t 95 % interval, Welch's t-test and
the paired t-test."""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Spread:
    n: int
    mean: float
    sd: float  # sample standard deviation (n − 1); nan for one value
    ci_low: float  # mean ∓ t(0.975, n − 1) · sd / √n
    ci_high: float


def spread(values: Sequence[float]) -> Spread:
    n = len(values)
    if n == 0:
        return Spread(0, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(values)
    if n == 1:
        return Spread(1, mean, math.nan, math.nan, math.nan)
    sd = statistics.stdev(values)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return Spread(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    difference: float  # mean(a) − mean(b)
    # Welch's two-sided t-test; nan when undefined (fewer than 2 values each, or no variance, no difference)
    p_value: float
    ci_low: float = math.nan  # 95 % interval of the difference (Welch)
    ci_high: float = math.nan


def welch(a: Sequence[float], b: Sequence[float]) -> Comparison:
    if len(a) < 1 or len(b) < 1:
        return Comparison(math.nan, math.nan)
    difference = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Comparison(difference, math.nan)
    with warnings.catch_warnings():
        # both samples constant and equal: nan, shown as "p n/a"
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
        interval = result.confidence_interval(0.95)
    return Comparison(difference, float(result.pvalue), float(interval.low), float(interval.high))


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Comparison:
    """a − b over pairs (the same seed): mean difference, the paired t-test's two-sided p-value and its
    interval at `confidence`; nan where undefined (fewer than 2 pairs, or every difference equal)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    if not a:
        return Comparison(math.nan, math.nan)
    differences = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(differences)
    if len(a) < 2 or len(set(differences)) == 1:
        return Comparison(mean, math.nan)
    result = stats.ttest_rel(a, b)
    interval = result.confidence_interval(confidence)
    return Comparison(mean, float(result.pvalue), float(interval.low), float(interval.high))
