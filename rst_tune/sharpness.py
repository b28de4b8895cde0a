"""RandomizedSAM: randomized sharpness-aware training (RST) and its G-RST form, as a torch optimizer;
the two-pass core that the other sharpness-aware methods (`rst_tune.methods`) plug small strategies into.

Each `step` asks its rule whether to take a sharpness-aware step: by default a `Coin`, one
Bernoulli(p(s / total_steps)) from the optimizer's own generator; a rule may instead decide after the
clean pass, from ‖g1‖² (AE-SAM). On 0 it takes a plain step of the base optimizer (one
forward-backward); on 1 a sharpness-aware step (two):
    g1 = ∇L(θ),  e = ρ·g1/‖g1‖  (ASAM: ρ·w²⊙g1/‖|w|⊙g1‖),  g2 = ∇L(θ + e),
    g  = (1 − α)·g1 + α·g2,  with α = 1 (RST, SAM) or α = min(λ_G / p, alpha_max) (G-RST),
then restores θ from a copy and lets the base optimizer step with g. A `reuse` strategy (LookSAM) may
keep what a sharpness-aware step learnt and change the gradient of the plain steps after it.
The expected update carries gradient-norm regularisation of degree p·α: λ_G wherever p ≥ λ_G /
alpha_max, but only p·alpha_max below that, and none where p = 0. `degree_sum` adds up p·α over the
steps taken.
Both passes of a sharpness-aware step draw the same random numbers (dropout masks), so g2 − g1 measures
sharpness, not dropout noise. No value is read back from the device inside a step, except by an fp16
`grad_scaler`, whose step reads its overflow check, and by a rule that decides from ‖g1‖². A step
taken inside the caller's `torch.autocast` is correct: autocast's cached low-precision weights are
dropped whenever θ changes in place.

Data-parallel form (`model` a DistributedDataParallel): every rank draws the same coin (seed and step
only) and each step all-reduces the gradient once. An SGD step reduces its one pass, as DDP does. A
sharpness-aware step runs the clean pass under `no_sync()`, so each rank perturbs with its own g1 (the
SAM paper's data-parallel form); the perturbed pass accumulates onto ((1 − α)/α)·g1 (onto nothing when
α = 1), DDP reduces that sum once, and scaling by α leaves the mean over ranks of (1 − α)·g1 + α·g2
(g2's share then carries a rounding error about 1/α times that of the lerp the single process uses).
A rule that decides from g1 (AE-SAM), or a `reuse` strategy, needs the reduced g1: its clean pass is
reduced, so a sharpness-aware step all-reduces twice and every rank decides and refreshes alike.
Under `TORCH_DISTRIBUTED_DEBUG=INFO` (or DETAIL) every step checks that all ranks drew the same coin.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rst_tune._cost import FORWARD_COST, pass_cost

# the CPU generator's state and that of each accelerator holding parameters, by device
_GeneratorStates = tuple[torch.Tensor, dict[torch.device, torch.Tensor]]
# device type -> (read its generator's state, set it), for the accelerators whose generators dropout uses
_DEVICE_GENERATORS: dict[str, tuple[Callable, Callable]] = {
    "cuda": (torch.cuda.get_rng_state, torch.cuda.set_rng_state),
    "mps": (lambda device: torch.mps.get_rng_state(), lambda state, device: torch.mps.set_rng_state(state)),
}


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """‖tensors‖ over all of them, as one device scalar (torch's multi-tensor kernels)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def add_scaled_(tensors: list[torch.Tensor], others: list[torch.Tensor], scale: torch.Tensor | float) -> None:
    """tensors += scale·others, in place, each pair (one multi-tensor kernel each)."""
    torch._foreach_add_(tensors, torch._foreach_mul(others, scale))


def lerp_(tensors: list[torch.Tensor], others: list[torch.Tensor], weight: float) -> None:
    """tensors += weight·(others − tensors), in place (one multi-tensor kernel)."""
    torch._foreach_lerp_(tensors, others, weight)


class Rule(Protocol):
    """When to take a sharpness-aware step. `needs_gradient`: it decides after the clean pass, from
    ‖g1‖² (else before it, without). `probability(x)` is p at progress x, or None where no p is known
    beforehand; `decide` gets the step, x, that p and, when it needs it, ‖g1‖²."""

    needs_gradient: bool

    def probability(self, x: float) -> float | None: ...
    def decide(self, step: int, x: float, p: float | None, sq_norm: float | None) -> bool: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Reuse(Protocol):
    """What a sharpness-aware step leaves for the plain steps after it (LookSAM): `refreshed(g1, g2)`
    sees both gradients and may set the direction in `g2`; `plain(g)` changes a plain step's gradient
    in place. Parameter-sized state is its own, in its state_dict (whose keys join the optimizer's, as
    a rule's do)."""

    def refreshed(self, g1: list[torch.Tensor], g2: list[torch.Tensor]) -> None: ...
    def plain(self, g: list[torch.Tensor]) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Coin:
    """RST's rule: a sharpness-aware step with probability p(x), from a generator of its own."""

    needs_gradient = False

    def __init__(self, schedule: Callable[[float], float], seed: int = 0):
        self.schedule, self._rng = schedule, random.Random(seed)

    def probability(self, x: float) -> float:
        return float(self.schedule(x))

    def decide(self, step: int, x: float, p: float | None, sq_norm: float | None = None) -> bool:
        return self._rng.random() < p

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.setstate(state["rng"])


class RandomizedSAM(torch.optim.Optimizer):
    """Wraps `base_optimizer` (sharing its param_groups) and mixes SGD and sharpness-aware steps.

    `schedule` maps training progress in [0, 1] to p in [0, 1] (see `rst_tune.schedules`).
    With `model` given, BatchNorm running statistics are left untouched by the perturbed pass.
    `max_grad_norm` clips the final gradient; `grad_scaler` (fp16) unscales it once before the
    base step, which it then takes (and skips on overflow). `alpha_max` bounds the G-RST α.
    `rule` decides instead of a `Coin` on `schedule`; `reuse` is a `Reuse` strategy (neither with G-RST).
    Counts: `forwards` and `backwards` passes, `propagations` their cost (`rst_tune._cost`).

    Clipping applies to the mixed gradient (1 − α)·g1 + α·g2 as a whole. Weight decay belongs to the
    base optimizer, which adds it after clipping: it neither enters the perturbation nor is clipped.
    A sharpness-aware step saves the state of the CPU generator and of the generator of each CUDA or MPS
    device holding parameters before the clean pass and sets it back before the perturbed pass, so
    both passes draw the same dropout masks; afterwards the generators stand where the clean pass left
    them, so an SGD step and a sharpness-aware step consume the same randomness. The states are read
    on the host (the CUDA one is a seed and an offset): no device synchronisation.
    Under a caller's `torch.autocast`, which caches a low-precision copy of each weight for as long as
    its region lasts, the cache is cleared after the perturbation and after the update, so the
    perturbed pass runs at θ + e and whatever follows the step at the new θ.
    With `model` a DistributedDataParallel module (the data-parallel form), the closure must run that
    module and must not zero the gradients: the perturbed pass accumulates onto the clean one's.
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        schedule: Callable[[float], float],
        total_steps: int,
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        grst_weight: float | None = None,
        alpha_max: float = 4.0,
        seed: int = 0,
        model: nn.Module | None = None,
        max_grad_norm: float | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        rule: Rule | None = None,
        reuse: Reuse | None = None,
    ):
        if rho < 0:
            raise ValueError(f"rho={rho} must be >= 0")
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps} must be >= 1")
        if alpha_max <= 0:
            raise ValueError(f"alpha_max={alpha_max} must be > 0")
        if grst_weight is not None and grst_weight < 0:
            raise ValueError(f"grst_weight={grst_weight} must be >= 0 (or None for plain RST)")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm={max_grad_norm} must be > 0")
        rule = rule or Coin(schedule, seed)
        if grst_weight is not None and (rule.needs_gradient or reuse is not None):
            raise ValueError(
                "grst_weight mixes by p(t): it needs a rule that knows p beforehand and no reuse"
            )
        self._ddp = model if isinstance(model, DistributedDataParallel) else None
        if self._ddp is not None and grst_weight == 0:
            raise ValueError("grst_weight=0 has no data-parallel form (α = 0); leave G-RST off or use p = 0")
        super().__init__(base_optimizer.param_groups, base_optimizer.defaults)
        self.base_optimizer = base_optimizer
        self.param_groups = base_optimizer.param_groups
        self.rule, self.reuse, self.total_steps = rule, reuse, total_steps
        self.rho, self.adaptive, self.grst_weight, self.alpha_max = rho, adaptive, grst_weight, alpha_max
        self.max_grad_norm, self.grad_scaler = max_grad_norm, grad_scaler
        self._norms = (
            [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if model else []
        )
        self.steps = self.sam_steps = self.forwards = self.backwards = 0
        self.expected_propagations = self.degree_sum = 0.0
        self.last_was_sam = False
        self._theta: list[torch.Tensor] | None = None

    @property
    def propagations(self) -> float:
        """The passes run so far, weighed (`rst_tune._cost`): steps + sharpness-aware steps, plus 1/3
        per forward-only pass a method adds (`count_forward`)."""
        return pass_cost(self.forwards, self.backwards)

    def count_forward(self) -> None:
        """Count one forward-only pass a method ran beside the closure (an EMA model's), as spent
        and as expected."""
        self.forwards += 1
        self.expected_propagations += FORWARD_COST

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _run(self, closure: Callable[[], torch.Tensor], keep_grads: bool = False) -> torch.Tensor:
        if not keep_grads:
            self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        self.forwards += 1
        self.backwards += 1
        return loss

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        """One step; `closure` runs forward and backward and returns the loss of its pass."""
        if closure is None:
            raise ValueError("RandomizedSAM.step needs a closure that runs forward and backward")
        x = min(self.steps / self.total_steps, 1.0)
        p = self.rule.probability(x)
        if p is not None and not 0.0 <= p <= 1.0:
            raise ValueError(f"schedule returned p={p} at step {self.steps}; it must lie in [0, 1]")
        pending = self.rule.needs_gradient
        sam = False
        if not pending:  # checked before any collective: ranks that disagree would wait on different ones
            sam = self._decided(self.rule.decide(self.steps, x, p, None))
        generators = self._generator_states() if sam or pending else None
        reduced = not sam or pending or self.reuse is not None
        with self._ddp.no_sync() if self._ddp is not None and not reduced else nullcontext():
            loss = self._run(closure)
        if pending:  # from the reduced g1: every rank decides alike
            sam = self._decided(self.rule.decide(self.steps, x, p, self._squared_norm()))
        self.expected_propagations += 1 + (float(sam) if p is None else p)
        self.degree_sum += float(sam) if p is None else p * self.alpha(p) if p > 0 else 0.0
        self.steps += 1
        if sam:
            self.sam_steps += 1
            self._sharpness_aware_gradient(closure, self.alpha(p) if p else 1.0, generators)
        elif self.reuse is not None:
            self.reuse.plain([t.grad for t in self._params() if t.grad is not None])
        self._update()
        torch.clear_autocast_cache()  # autocast's cached copies hold θ + e or the θ before the update
        return loss

    def _decided(self, sam: bool) -> bool:
        """Record the step's decision (checking, in debug mode, that every rank took it) and return it."""
        self.last_was_sam = sam
        if self._ddp is not None and dist.get_debug_level() != dist.DebugLevel.OFF:
            self._check_coin()
        return sam

    def _check_coin(self) -> None:
        """Raise unless every rank drew the same coin at the same step (a host synchronisation)."""
        device = next(iter(self._ddp.parameters())).device
        mine = torch.tensor([self.steps, int(self.last_was_sam)], device=device)
        drawn = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(drawn, mine)
        if any(not torch.equal(other, mine) for other in drawn):
            found = ", ".join(
                f"rank {r}: step {s} coin {c}" for r, (s, c) in enumerate(t.tolist() for t in drawn)
            )
            raise RuntimeError(f"ranks drew different coins ({found}); give every rank the same seed")

    def _squared_norm(self) -> float:
        """‖g1‖² over all parameters, unscaled, read back to the host (a rule deciding from it waits
        for it); inf where it overflowed."""
        grads = [p.grad for p in self._params() if p.grad is not None]
        norm = global_norm(grads).item() if grads else 0.0
        if self.grad_scaler is not None:
            norm /= self.grad_scaler.get_scale()
        return norm * norm

    def alpha(self, p: float) -> float:
        """The weight of the perturbed gradient in a sharpness-aware step taken at probability p > 0."""
        return 1.0 if self.grst_weight is None else min(self.grst_weight / p, self.alpha_max)

    def _generator_states(self) -> _GeneratorStates:
        """The CPU generator's state and that of each CUDA or MPS device holding parameters (host
        copies)."""
        devices = {p.device for p in self._params() if p.device.type in _DEVICE_GENERATORS}
        return torch.get_rng_state(), {d: _DEVICE_GENERATORS[d.type][0](d) for d in devices}

    @staticmethod
    def _set_generator_states(states: _GeneratorStates) -> None:
        cpu, devices = states
        torch.set_rng_state(cpu)
        for device, state in devices.items():
            _DEVICE_GENERATORS[device.type][1](state, device)

    def _sharpness_aware_gradient(
        self,
        closure: Callable[[], torch.Tensor],
        alpha: float,
        generators: _GeneratorStates,
    ) -> None:
        params = [p for p in self._params() if p.grad is not None]
        g1 = [p.grad for p in params]
        if self._theta is None or len(self._theta) != len(params):
            self._theta = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._theta, params)
        if self.adaptive:
            e = torch._foreach_mul(g1, params)  # w⊙g1, whose norm equals ‖|w|⊙g1‖
            scale = self._ascent_scale(e)
            torch._foreach_mul_(e, params)
            torch._foreach_mul_(e, scale)
        elif alpha == 1.0 and self.reuse is None:  # g1 is not needed after the ascent: scale it in place
            torch._foreach_mul_(g1, self._ascent_scale(g1))
            e = g1
        else:
            e = torch._foreach_mul(g1, self._ascent_scale(g1))
        # fp16 overflow: e = g1·0 is NaN where g1 is not finite; zero it (no foreach op can). Without a
        # scaler a non-finite g1 ruins θ in the base step anyway, so the pass is spared there.
        if self.grad_scaler is not None:
            for t in e:
                t.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        torch._foreach_add_(params, e)
        torch.clear_autocast_cache()  # a caller's autocast region would run the pass at θ's old copy
        self._set_generator_states(generators)
        if self._ddp is not None and alpha != 1.0:  # DDP reduces ((1 − α)/α)·g1 + g2 once
            torch._foreach_mul_(g1, (1.0 - alpha) / alpha)
        with self._frozen_batchnorm():
            self._run(closure, keep_grads=self._ddp is not None and alpha != 1.0)
        torch._foreach_copy_(params, self._theta)
        if self.reuse is not None:
            self.reuse.refreshed(g1, [p.grad for p in params])
        if alpha == 1.0:
            return
        if self._ddp is not None:
            torch._foreach_mul_([p.grad for p in params], alpha)
            return
        g2 = [p.grad for p in params]
        lerp_(g1, g2, alpha)  # g1 + α(g2 − g1) = (1 − α)·g1 + α·g2
        for p, g in zip(params, g1):
            p.grad = g

    def _ascent_scale(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """ρ / ‖grads‖ as a device scalar; 0 when the norm is 0 or not finite (fp16 overflow: e is
        then zeroed, with a `grad_scaler`, and the perturbed pass runs at θ)."""
        norm = global_norm(grads)
        usable = torch.isfinite(norm) & (norm > 0)
        return torch.where(usable, self.rho / torch.where(usable, norm, 1.0), 0.0)

    def _update(self) -> None:
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.base_optimizer)
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self._params(), self.max_grad_norm, foreach=True)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.base_optimizer)
            self.grad_scaler.update()
        else:
            self.base_optimizer.step()

    @contextmanager
    def _frozen_batchnorm(self) -> Iterator[None]:
        """The perturbed pass normalises with batch statistics but does not move the running ones."""
        tracked = [m.track_running_stats for m in self._norms]
        try:
            for m in self._norms:
                m.track_running_stats = False
            yield
        finally:
            for m, t in zip(self._norms, tracked):
                m.track_running_stats = t

    def state_dict(self) -> dict:
        return {
            "base": self.base_optimizer.state_dict(),
            "steps": self.steps,
            "sam_steps": self.sam_steps,
            "forwards": self.forwards,
            "backwards": self.backwards,
            "propagations": self.propagations,  # for readers: loading counts from the passes
            "expected_propagations": self.expected_propagations,
            "degree_sum": self.degree_sum,
            "last_was_sam": self.last_was_sam,
            **self.rule.state_dict(),  # RST's coin: "rng"
            **(self.reuse.state_dict() if self.reuse is not None else {}),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups  # loading made new groups (lr, momentum)
        self.steps, self.sam_steps = state_dict["steps"], state_dict["sam_steps"]
        # before passes were counted (rst-tune 2026-12-06): one forward-backward pair per propagation
        self.forwards = state_dict.get("forwards", state_dict["propagations"])
        self.backwards = state_dict.get("backwards", state_dict["propagations"])
        self.expected_propagations = state_dict["expected_propagations"]
        self.degree_sum = state_dict["degree_sum"]
        self.last_was_sam = state_dict["last_was_sam"]
        self.rule.load_state_dict(state_dict)
        if self.reuse is not None:
            self.reuse.load_state_dict(state_dict)
