"""The library route to a cost-aware multi-objective sampler: BoTorch through optuna-integration.

`botorch_sampler(spec, seed)` is optuna-integration's `BoTorchSampler` with its own `candidates_func`:
a `SingleTaskGP` models validation accuracy only; the cost is known before training, so a
`GenericDeterministicModel` gives it from the proposal's `schedule.mean` (cost = 1 + p̄, in SAM-cost
units, negated because BoTorch maximises); the two sit in a `ModelList` (Ax's SEBO pattern) under
qLogNEHVI with reference point (lowest observed accuracy, SAM's cost 2).

What it models: only the intersection search space, i.e. the parameters every complete trial has.
On the default space that is `grst_weight.on` and `schedule` (one-hot, relaxed to [0, 1] in the
optimiser and rounded back by arg-max), `rho` (log scale) and `schedule.mean`. What it cannot: the
family-conditional shapes (`schedule.<family>.tilt`, `schedule.step.switch`) and the G-RST weight
are sampled at random (optuna-integration's independent sampler), so the GP sees their effect as
noise. The cost model is the proposal's p̄; a replay answers with the table's nearest row, whose p̄
differs a little, so there the model is close but not exact.

Needs `botorch` and `optuna-integration` (not project dependencies); imported only when called.
"""

from __future__ import annotations

from typing import Any

COST_PARAM = "schedule.mean"
SAM_COST = 2.0  # 1 + p̄ at p̄ = 1


def botorch_sampler(spec: Any, seed: int, *, consider_running_trials: bool = False):
    """optuna-integration's BoTorchSampler with the candidates function described above."""
    import torch
    from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.deterministic import GenericDeterministicModel
    from botorch.models.model import ModelList
    from botorch.models.transforms.outcome import Standardize
    from botorch.optim import optimize_acqf
    from botorch.utils.transforms import normalize, unnormalize
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from optuna.distributions import CategoricalDistribution
    from optuna_integration import BoTorchSampler

    class CostAwareBoTorchSampler(BoTorchSampler):
        """Remembers which encoded column holds `schedule.mean` in the space it models this time
        (candidates_func gets bare tensors; the space, hence the column, changes as trials come)."""

        mean_column: int | None = None

        def sample_relative(self, study, trial, search_space):
            if search_space:
                if COST_PARAM not in search_space:
                    raise ValueError(f"{COST_PARAM} is not in the modelled space {list(search_space)}")
                # the encoding's columns, in the space's order: a categorical one-hot, others one each
                widths = [
                    len(d.choices) if isinstance(d, CategoricalDistribution) else 1
                    for name, d in search_space.items()
                ]
                self.mean_column = sum(widths[: list(search_space).index(COST_PARAM)])
            return super().sample_relative(study, trial, search_space)

    def candidates_func(train_x, train_obj, train_con, bounds, pending_x):
        # train_x: raw encoded params (one-hot categoricals, log ρ), bounds 2 × d; train_obj: columns
        # (val_accuracy, −propagations), Optuna having negated the minimised one
        j = sampler.mean_column
        low, high = bounds[0, j], bounds[1, j]
        x = normalize(train_x, bounds)
        accuracy = train_obj[:, :1]
        gp = SingleTaskGP(x, accuracy, outcome_transform=Standardize(m=1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        cost = GenericDeterministicModel(lambda X: -(1.0 + low + (high - low) * X[..., j : j + 1]))
        acqf = qLogNoisyExpectedHypervolumeImprovement(
            model=ModelList(gp, cost),
            ref_point=[accuracy.min().item(), -SAM_COST],
            X_baseline=x,
            X_pending=None if pending_x is None or len(pending_x) == 0 else normalize(pending_x, bounds),
            prune_baseline=True,
        )
        unit = torch.zeros_like(bounds)
        unit[1] = 1.0
        candidate, _ = optimize_acqf(acqf, bounds=unit, q=1, num_restarts=10, raw_samples=512)
        return unnormalize(candidate.detach(), bounds)

    sampler = CostAwareBoTorchSampler(
        candidates_func=candidates_func,
        n_startup_trials=4,
        consider_running_trials=consider_running_trials,
        seed=seed,
    )
    return sampler
