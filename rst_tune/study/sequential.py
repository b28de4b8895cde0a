"""Sequential, paired seeds: a study that spends its seeds where the front is still undecided.

Every configuration first gets `MIN_SEEDS` seeds. Then a configuration's place is decided against
each configuration that costs no more (mean over its seeds, on the cost axis): decided when the paired
interval of the cheaper one's val_accuracy minus its own, over their common seeds, excludes zero
(either it is beaten, and off the front, or it beats the cheaper one there). A configuration already
beaten by one cheaper rival is decided whatever the others say. Each further seed goes to a member
of an undecided pair, the one with the fewest seeds (then the cheapest), so that pairs stay paired:
seed k of every configuration is the same seed. The study ends when no pair is undecided or every
undecided configuration has its `seeds`; the front is then read by the same rule
(`rst_tune.study.confirm.confirmed_points`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

from rst_tune.search.record import TrialRow
from rst_tune.search.spec import MIN_SEEDS
from rst_tune.study.stats import Comparison, paired, spread

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


def undecided(done: dict[str, dict[int, TrialRow]], cost: str, confidence: float) -> set[str]:
    """The configurations (by label) of a pair whose order is undecided (see the module)."""
    means = {label: spread([getattr(r, cost) for r in seeds.values()]).mean for label, seeds in done.items()}
    beaten, open_pairs = set(), []
    for a, b in combinations(sorted(done), 2):
        cheap, dear = (a, b) if means[a] <= means[b] else (b, a)
        difference = compare(done[cheap], done[dear], confidence)
        if difference is not None and difference.ci_low > 0:
            beaten.add(dear)
        elif difference is None or not difference.ci_high < 0:
            open_pairs.append((cheap, dear))
    return {label for pair in open_pairs if pair[1] not in beaten for label in pair}


def next_seed(
    rows: Sequence[TrialRow], labels: Sequence[str], seeds: int, cost: str, confidence: float
) -> tuple[int, int] | str:
    """The (configuration index, seed index) to train next, given the study's trials so far; WAIT
    while running trials may still decide it, DONE when nothing is undecided or no seed is left."""
    assigned: dict[str, set[int]] = {label: set() for label in labels}
    done: dict[str, dict[int, TrialRow]] = {label: {} for label in labels}
    for row in rows:
        if row.record is None or row.configuration not in assigned:
            continue
        assigned[row.configuration].add(row.record.seed_index)
        if row.state == "COMPLETE":
            done[row.configuration][row.record.seed_index] = row
    running = any(len(done[label]) < len(assigned[label]) for label in labels)

    def pick(among: Sequence[str]) -> tuple[int, int]:
        def order(name: str) -> tuple[int, float, int]:
            spent = [getattr(r, cost) for r in done[name].values()]
            return len(assigned[name]), spread(spent).mean if spent else math.inf, labels.index(name)

        label = min(among, key=order)
        return labels.index(label), min(set(range(seeds)) - assigned[label])

    short = [label for label in labels if len(assigned[label]) < MIN_SEEDS]
    if short:
        return pick(short)
    if running and any(len(done[label]) < MIN_SEEDS for label in labels):
        return WAIT
    open_labels = undecided({k: v for k, v in done.items() if v}, cost, confidence)
    more = [label for label in labels if label in open_labels and len(assigned[label]) < seeds]
    if more:
        return pick(more)
    return WAIT if running else DONE
