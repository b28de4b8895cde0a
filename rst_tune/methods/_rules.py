"""When to take a sharpness-aware step, beside RST's coin (`rst_tune.sharpness.Coin`): deterministic
forms of a schedule, a fixed interval, and AE-SAM's test on the gradient norm."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


class Deterministic:
    """A sharpness-aware step whenever ⌊Σ p⌋ rises (Σ over the steps so far, this one included): the
    coin's schedule and mean without its randomness. Late-phase SAM is this rule on a step from 0 to 1."""

    needs_gradient = False

    def __init__(self, schedule: Callable[[float], float]):
        self.schedule, self.total = schedule, 0.0

    def probability(self, x: float) -> float:
        return float(self.schedule(x))

    def decide(self, step: int, x: float, p: float | None, sq_norm: float | None = None) -> bool:
        before, self.total = self.total, self.total + p
        return math.floor(self.total + 1e-9) > math.floor(before + 1e-9)  # 1e-9: sums of 0.1 and kin

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = state["total"]


class Every:
    """A sharpness-aware step when (step + offset) mod k == 0: Composer's periodic SAM takes offset 1
    (steps k − 1, 2k − 1, …), LookSAM's refresh offset 0 (steps 0, k, 2k, …)."""

    needs_gradient = False

    def __init__(self, k: int, offset: int):
        self.k, self.offset = k, offset

    def probability(self, x: float) -> float:
        return 1.0 / self.k

    def decide(self, step: int, x: float, p: float | None, sq_norm: float | None = None) -> bool:
        return (step + self.offset) % self.k == 0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class AdaptiveNorm:
    """AE-SAM's rule: with s = ‖g1‖², μ ← δμ + (1 − δ)s, then σ² ← δσ² + (1 − δ)(s − μ)² (μ and σ² from
    0); a sharpness-aware step when s ≥ μ + c·σ, c = x·λ1 + (1 − x)·λ2 at progress x. A non-finite s
    (fp16 overflow: the step is skipped) takes a plain step and leaves μ and σ² as they were."""

    needs_gradient = True

    def __init__(self, delta: float, lambda1: float, lambda2: float):
        self.delta, self.lambda1, self.lambda2 = delta, lambda1, lambda2
        self.mean = self.variance = 0.0

    def probability(self, x: float) -> None:
        return None

    def decide(self, step: int, x: float, p: float | None, sq_norm: float | None) -> bool:
        if not math.isfinite(sq_norm):
            return False
        self.mean = self.delta * self.mean + (1 - self.delta) * sq_norm
        self.variance = self.delta * self.variance + (1 - self.delta) * (sq_norm - self.mean) ** 2
        c = x * self.lambda1 + (1 - x) * self.lambda2
        return sq_norm >= self.mean + c * math.sqrt(self.variance)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "variance": self.variance}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.variance = state["mean"], state["variance"]
