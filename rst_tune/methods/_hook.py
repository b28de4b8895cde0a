"""The one hook through which a method that works beside the step (MESA's loss term, late-phase SAM's
momentum restart) plugs into the Trainer; each method overrides what it needs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TrainerHook:
    """Called by the Trainer around each optimizer step: `before_step(optimizer)`, then `term(inputs,
    logits)` is added to the clean pass's loss wherever `active(epoch)` (each call one forward pass,
    counted by the Trainer), and `after_step(model)`. Its state travels in the Trainer's checkpoint."""

    def before_step(self, optimizer: Any) -> None:
        """Before the step's first pass (`optimizer` is the RandomizedSAM)."""

    def active(self, epoch: int) -> bool:
        """Whether `term` adds to the loss in this epoch (0-based)."""
        return False

    def term(self, inputs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        """After the base optimizer's step."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MomentumRestart(TrainerHook):
    """Drop the base optimizer's momentum at the first step past `switch` (late-phase SAM's official
    code trains the SAM phase with an optimizer of its own)."""

    def __init__(self, switch: float):
        self.switch, self.done = switch, False

    def before_step(self, optimizer: Any) -> None:
        if not self.done and optimizer.steps / optimizer.total_steps > self.switch:
            for state in optimizer.base_optimizer.state.values():
                state.pop("momentum_buffer", None)
            self.done = True

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = state["done"]
