"""A sampler that models validation accuracy alone and takes each configuration's cost as known.

A configuration's cost, its method's expected cost per step over its epochs (RST: 1 + p̄), is fixed
before it trains, so only accuracy needs a model: a Gaussian process (scikit-learn) over the
configuration's coordinates (method and its parameters, family, p̄, shape, ρ, the G-RST switch and
weight), fitted to every trial that reached an accuracy (a trial
stopped early counts at the accuracy it had reached). A candidate at cost c with predicted accuracy
N(μ, σ²) is worth its expected hypervolume improvement, in closed form on the 2-D staircase: with
F(c′) the best accuracy the front reaches at cost ≤ c′, EHVI = Σⱼ Δⱼ · EI(μ, σ; Fⱼ) over the steps j
of F between c and the reference cost. The front is the model's mean at the complete trials (not
their lucky seeds), with running trials added at their predicted mean (kriging believer); the
reference is the lowest predicted accuracy and the dearest cost in sight, so a configuration at that
cost (SAM's, usually a baseline already) adds nothing. A proposal is priced by what it costs to train:
the sampler proposes the candidate of largest EHVI / cost^α, with α falling from 1 to 0 over the
search's trials (cost-cooling), so cheap regions are explored first but not forever. With one
objective (accuracy under a budget) EHVI is the expected improvement; candidates over the budget are
never proposed. Where the space names groups (methods) to balance, each proposal is drawn from a
group with the fewest trials so far.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

CANDIDATES = 1024  # random configurations scored per proposal


def ehvi(
    mean: np.ndarray,
    sd: np.ndarray,
    cost: np.ndarray,
    front: Sequence[tuple[float, float]],
    reference: tuple[float, float],
) -> np.ndarray:
    """Expected hypervolume improvement of points with accuracy ~ N(`mean`, `sd`²) at known `cost`
    over `front` ((accuracy, cost) pairs; higher accuracy and lower cost are better), in the area
    above the reference (accuracy, cost) that `rst_tune.search._pareto.hypervolume` measures."""
    floor, ceiling = reference
    levels, lefts = [floor], [-math.inf]  # F(c′) = levels[j] for lefts[j] ≤ c′ < lefts[j + 1]
    for at, accuracy in sorted((c, a) for a, c in front if c < ceiling):
        if accuracy > levels[-1]:
            levels.append(accuracy)
            lefts.append(at)
    rights = np.array([*lefts[1:], ceiling])[None, :]
    mean, sd, cost = (np.asarray(v, dtype=float)[:, None] for v in (mean, sd, cost))
    width = np.clip(rights - np.maximum(np.array(lefts)[None, :], cost), 0.0, None)
    gap, sd = mean - np.array(levels)[None, :], np.maximum(sd, 1e-12)
    return (width * (gap * norm.cdf(gap / sd) + sd * norm.pdf(gap / sd))).sum(1)


class Space(Protocol):
    """What the sampler needs of a search space (`rst_tune.search._space.Coordinates` is one)."""

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """A random configuration's Optuna parameters."""

    def features(self, params: dict[str, Any]) -> list[float]:
        """A configuration's coordinates for the model, each in [0, 1]."""

    def cost(self, params: dict[str, Any]) -> float:
        """What a configuration costs to train, known before it does (2 for SAM at the spec's
        epochs)."""

    def admissible(self, params: dict[str, Any]) -> bool:
        """Whether a configuration may be trained (within the search's budget)."""

    def groups(self) -> list[str]:
        """The groups (methods) among which trials are balanced; empty: no balance."""

    def group(self, params: dict[str, Any]) -> str:
        """A configuration's group."""


class KnownCostSampler(optuna.samplers.BaseSampler):
    """Proposes the configuration of `space` with the largest EHVI / cost^α (see the module), α going
    from 1 to 0 over `trials` trials, after `startup_trials` complete trials drawn at random."""

    def __init__(self, space: Space, trials: int, startup_trials: int = 4, seed: int | None = None):
        self.space, self.trials, self.startup_trials = space, trials, startup_trials
        self._rng = np.random.default_rng(seed)
        self._fallback = optuna.samplers.RandomSampler(seed=seed)
        self._plans: dict[int, dict[str, Any]] = {}  # trial number -> the configuration proposed

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if trial.number not in self._plans:
            self._plans[trial.number] = self._propose(study, trial.number)
        plan = self._plans[trial.number]
        if param_name in plan:
            return plan[param_name]
        # a parameter fixed by enqueue_trial took the trial off the planned branch
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._plans.pop(trial.number, None)

    def alpha(self, study: optuna.Study) -> float:
        """The cost-cooling exponent: 1 at the start, 0 once `trials` trials have ended."""
        ended = study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        )
        return max(0.0, 1.0 - len(ended) / self.trials)

    def _draws(self, n: int) -> list[dict[str, Any]]:
        draws = []
        for _ in range(100 * n):
            params = self.space.draw(self._rng)
            if self.space.admissible(params):
                draws.append(params)
                if len(draws) == n:
                    break
        return draws

    def _propose(self, study: optuna.Study, number: int) -> dict[str, Any]:
        """The configuration trial `number` trains; the other running trials have theirs."""
        seen = [t for t in study.get_trials(deepcopy=False) if _accuracy(t) is not None]
        n, groups = 1 if len(seen) < self.startup_trials else CANDIDATES, self._fewest(study, number)
        if groups is None:
            candidates = self._draws(n)
        else:  # drawn from every group, kept from the fewest (from any, if none of those is affordable)
            draws = self._draws(max(n, 64) * len(self.space.groups()))
            candidates = ([d for d in draws if self.space.group(d) in groups] or draws)[:n]
        if len(seen) < self.startup_trials or not candidates:
            return candidates[0] if candidates else {}
        pending = [
            t.params
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number != number
        ]
        x = np.array([self.space.features(t.params) for t in seen])
        model = self._fit(x, np.array([_accuracy(t) for t in seen]))
        complete = [t.state == TrialState.COMPLETE for t in seen]
        done = [t for t, c in zip(seen, complete) if c]
        fitted = model.predict(x[complete]) if done else np.zeros(0)
        believed = (
            model.predict(np.array([self.space.features(p) for p in pending])) if pending else np.zeros(0)
        )
        mean, sd = model.predict(np.array([self.space.features(c) for c in candidates]), return_std=True)
        cost = np.array([self.space.cost(c) for c in candidates])
        floor = float(min([*fitted, *mean]))
        if len(study.directions) == 1:  # accuracy under a budget: the expected improvement
            front = [(float(max([*fitted, *believed], default=floor)), 0.0)]
            value = ehvi(mean, sd, np.zeros_like(cost), front, (floor, 1.0))
        else:
            known = [self.space.cost(t.params) for t in done] + [self.space.cost(p) for p in pending]
            front = list(zip([*fitted, *believed], known))
            value = ehvi(mean, sd, cost, front, (floor, max([*known, float(cost.max())])))
        return candidates[int(np.argmax(value / cost ** self.alpha(study)))]

    def _fewest(self, study: optuna.Study, number: int) -> set[str] | None:
        """The groups with the fewest trials so far, running or ended (None: no balance)."""
        counts = dict.fromkeys(self.space.groups(), 0)
        if not counts:
            return None
        for trial in study.get_trials(deepcopy=False):
            if trial.number != number and trial.params:
                counts[self.space.group(trial.params)] += 1
        low = min(counts.values())
        return {group for group, n in counts.items() if n == low}

    def _fit(self, x: np.ndarray, y: np.ndarray) -> GaussianProcessRegressor:
        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(
            np.ones(x.shape[1]), (0.05, 20.0), nu=2.5
        ) + WhiteKernel(0.1, (1e-4, 1.0))
        model = GaussianProcessRegressor(
            kernel, normalize_y=True, n_restarts_optimizer=0, random_state=int(self._rng.integers(2**31))
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return model.fit(x, y)


def _accuracy(trial: FrozenTrial) -> float | None:
    """What a trial says of its configuration's accuracy: its final val_accuracy, or for one stopped
    early, the val_accuracy it had reached (`val_accuracy` user attribute); None for the others."""
    if trial.state == TrialState.COMPLETE:
        return trial.values[0]
    if trial.state == TrialState.PRUNED:
        return trial.user_attrs.get("val_accuracy")
    return None
