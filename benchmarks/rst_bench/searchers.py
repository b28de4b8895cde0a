"""The searchers a replay runs, by name, and the early-stopping rules they run with.

A searcher is an Optuna sampler, with or without rst-tune's pipeline around it (the SGD and SAM
baselines first, the front confirmed with fresh seeds at the end). Any other Optuna sampler runs as
`optuna:<ClassName>` (e.g. `optuna:QMCSampler`), built with its defaults and the search seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from rst_bench.botorch_route import botorch_sampler  # imports botorch only when called
from rst_tune.search._known_cost import KnownCostSampler
from rst_tune.search._schedulers import ASHA, HypervolumeScheduler, ParetoFairScheduler
from rst_tune.search._searcher import build_sampler
from rst_tune.search._space import Coordinates
from rst_tune.search._spec import SearchSpec


@dataclass(frozen=True)
class Searcher:
    name: str
    description: str
    sampler: Callable[[SearchSpec, int], optuna.samplers.BaseSampler]  # (spec, search seed)
    pipeline: bool = False  # rst-tune's: baselines first, seed confirmation at the end
    extra: str = ""  # packages it needs beyond rst-tune's: not in the default grid


def _optuna(cls: str, **kwargs) -> Callable[[SearchSpec, int], optuna.samplers.BaseSampler]:
    return lambda spec, seed: getattr(optuna.samplers, cls)(seed=seed, **kwargs)


SEARCHERS: dict[str, Searcher] = {
    s.name: s
    for s in (
        Searcher("random", "Optuna's RandomSampler", _optuna("RandomSampler")),
        Searcher("tpe", "Optuna's MO-TPE, default settings", _optuna("TPESampler")),
        Searcher(
            "tpe_mv",
            "MO-TPE, multivariate (group: the families' conditional parameters)",
            _optuna("TPESampler", multivariate=True, group=True),
        ),
        Searcher("nsga2", "Optuna's NSGA-II, default settings", _optuna("NSGAIISampler")),
        Searcher(
            "gp",
            "Optuna's GPSampler (log EHVI for two objectives); it models the parameters every trial has "
            "(family, ρ, the G-RST switch) and samples the family-conditional ones at random",
            _optuna("GPSampler", warn_independent_sampling=False),
        ),
        Searcher(
            "rst_tune",
            "rst-tune's search as its spec sets it: its sampler, SGD and SAM first, then the front "
            "confirmed with fresh seeds",
            lambda spec, seed: build_sampler(spec.model_copy(update={"seed": seed})),
            pipeline=True,
        ),
        Searcher(
            "known_cost",
            "rst-tune's KnownCostSampler alone: a GP on accuracy, the cost known, closed-form EHVI "
            "priced by cost with cooling over 24 trials",
            lambda spec, seed: KnownCostSampler(Coordinates(spec), 24, seed=seed),
        ),
        Searcher(
            "botorch_cost",
            "BoTorch via optuna-integration: a GP on accuracy, the cost 1 + p̄ known (deterministic model), "
            "qLogNEHVI; family-conditional parameters sampled at random",
            botorch_sampler,
            extra="optuna-integration botorch",
        ),
    )
}


def searcher(name: str) -> Searcher:
    """The searcher `name`, or `optuna:<ClassName>`; ValueError naming the valid ones."""
    if name.startswith("optuna:"):
        cls = name.removeprefix("optuna:")
        if not isinstance(getattr(optuna.samplers, cls, None), type):
            raise ValueError(f"{name}: optuna.samplers has no sampler {cls!r}")
        return Searcher(name, f"optuna.samplers.{cls}, default settings", _optuna(cls))
    if name not in SEARCHERS:
        raise ValueError(f"unknown searcher {name!r}; valid: {', '.join(SEARCHERS)}, optuna:<ClassName>")
    return SEARCHERS[name]


STOPPING: dict[str, Callable[[SearchSpec, int], TrialScheduler]] = {
    "none": lambda spec, epochs: FIFOScheduler(),
    # Ray's ASHA on validation accuracy, with the spec's grace period and reduction factor
    "asha": lambda spec, epochs: ASHA(
        time_attr="epoch",
        metric="val_accuracy",
        mode="max",
        max_t=epochs,
        grace_period=spec.early_stopping.grace_epochs,
        reduction_factor=spec.early_stopping.reduction_factor,
    ),
    "pareto_fair": lambda spec, epochs: ParetoFairScheduler(
        spec.early_stopping.grace_epochs, spec.early_stopping.min_dominating
    ),
    "hypervolume": lambda spec, epochs: HypervolumeScheduler(
        epochs, spec.early_stopping.grace_epochs, spec.early_stopping.margin
    ),
}
