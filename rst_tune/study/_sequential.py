"""Sequential, paired seeds: a study that spends its seeds where the front is still undecided.

The front's rule (`rst_tune.study._confirm`): a configuration leaves it only when one that costs no
more (mean over its seeds, on the cost axis) is more accurate on validation, with the paired interval
of the difference, over their common seeds, above zero. So a configuration's place is undecided
while some cheaper one is ahead of it on average but not yet by that interval; it is decided once one
such rival beats it, or once no cheaper one is ahead. A pair that `seeds` seeds could not decide
gets no more (futility, as a sequential trial stops): its mean difference is below the half-width
that `seeds` pairs with its spread so far would give.

Every configuration first gets `MIN_SEEDS` seeds. Each further seed goes to a member of a pair still
open, the one with the fewest seeds (then the cheapest), so that pairs stay paired: seed k of every
configuration is the same seed. The study ends when no pair is open or every open configuration has
its `seeds`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from itertools import combinations

from scipy import stats

from rst_tune.search._cost_axis import compute
from rst_tune.search._record import TrialRow
from rst_tune.search._spec import MIN_SEEDS
from rst_tune.study._stats import Comparison, paired, spread

WAIT = "wait"  # nothing to start until a running trial ends
DONE = "done"


def compare(better: dict[int, TrialRow], worse: dict[int, TrialRow], confidence: float) -> Comparison | None:
    """val_accuracy of `better` minus `worse` over their common seeds (by seed index), with its paired
    interval at `confidence`; None with fewer than two common seeds."""
    common = sorted(set(better) & set(worse))
    if len(common) < MIN_SEEDS:
        return None
    return paired(
        [better[k].val_accuracy for k in common], [worse[k].val_accuracy for k in common], confidence
    )


def futile(differences: Sequence[float], seeds: int, confidence: float) -> bool:
    """Whether `seeds` pairs could not decide differences like these: their mean is below the
    half-width of the interval that `seeds` pairs with their spread would give."""
    half = stats.t.ppf((1 + confidence) / 2, seeds - 1) * statistics.stdev(differences) / math.sqrt(seeds)
    return abs(statistics.fmean(differences)) < half


def open_pairs(
    done: dict[str, dict[int, TrialRow]], cost: str, confidence: float, seeds: int
) -> list[tuple[str, str]]:
    """The open pairs (cheaper, dearer) by label: the cheaper one ahead of the dearer one, which is not
    beaten yet, by a difference `seeds` seeds could show (see the module)."""
    means = {label: spread([compute(r, cost) for r in got.values()]).mean for label, got in done.items()}
    beaten, pairs = set(), []
    ordered = [(a, b) for x, y in combinations(sorted(done), 2) for a, b in ((x, y), (y, x))]
    for cheap, dear in ordered:  # both ways when they cost the same
        if means[cheap] > means[dear]:
            continue
        difference = compare(done[cheap], done[dear], confidence)
        if difference is not None and difference.ci_low > 0:
            beaten.add(dear)
        elif difference is None:
            pairs.append((cheap, dear))
        elif difference.difference > 0:  # the cheaper one is ahead: more seeds may show it beats
            common = sorted(set(done[cheap]) & set(done[dear]))
            gaps = [done[cheap][k].val_accuracy - done[dear][k].val_accuracy for k in common]
            if not futile(gaps, seeds, confidence):
                pairs.append((cheap, dear))
    return [pair for pair in pairs if pair[1] not in beaten]


def next_seed(
    rows: Sequence[TrialRow], labels: Sequence[str], seeds: int, cost: str, confidence: float
) -> tuple[int, int] | str:
    """The (configuration index, seed index) to train next, given the study's trials so far; WAIT
    while running trials may still decide it, DONE when nothing is undecided or no seed is left. A
    seed that failed is not trained again: the configuration's next seed takes its place."""
    assigned: dict[str, set[int]] = {label: set() for label in labels}
    flying: dict[str, set[int]] = {label: set() for label in labels}  # started, not ended
    done: dict[str, dict[int, TrialRow]] = {label: {} for label in labels}
    for row in rows:
        if row.record is None or row.configuration not in assigned:
            continue
        assigned[row.configuration].add(row.record.seed_index)
        if row.state == "COMPLETE":
            done[row.configuration][row.record.seed_index] = row
        elif row.state in ("RUNNING", "WAITING"):
            flying[row.configuration].add(row.record.seed_index)
    running = any(flying.values())

    def pick(among: Sequence[str]) -> tuple[int, int]:
        def order(name: str) -> tuple[int, float, int]:
            spent = [compute(r, cost) for r in done[name].values()]
            return len(assigned[name]), spread(spent).mean if spent else math.inf, labels.index(name)

        label = min(among, key=order)
        return labels.index(label), min(set(range(seeds)) - assigned[label])

    # too few seeds for an interval, none in flight, and seeds left (a failed seed counts as spent)
    short = [
        label
        for label in labels
        if len(done[label]) + len(flying[label]) < MIN_SEEDS and len(assigned[label]) < seeds
    ]
    if short:
        return pick(short)
    if running and any(len(done[label]) < MIN_SEEDS and flying[label] for label in labels):
        return WAIT
    pairs = open_pairs({k: v for k, v in done.items() if v}, cost, confidence, seeds)
    ready = [(a, b) for a, b in pairs if not (flying[a] | flying[b])]  # the others wait for theirs
    more = [label for label in labels if any(label in p for p in ready) and len(assigned[label]) < seeds]
    if more:
        return pick(more)
    return WAIT if running else DONE
