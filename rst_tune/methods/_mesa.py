"""MESA (Du et al., NeurIPS 2022, "Sharpness-Aware Training for Free"): a loss term that pulls the
model towards an exponential moving average of itself, at the cost of the EMA model's forward pass.

    loss = CE(z, y) + [epoch ≥ start]·λ·τ²·KL(softmax(z_ema/τ) ‖ softmax(z/τ))
with z the model's logits, z_ema the EMA model's on the same batch (eval mode, no gradient), and after
every step EMA ← decay·EMA + (1 − decay)·w over the whole state dict (buffers too), as AngusDujw/SAF
`MESA_train.py` with timm's `ModelEmaV2` (which starts the term at epoch > kl_start_epoch: its 5 is 6 here).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rst_tune.methods._hook import TrainerHook
from rst_tune.sharpness import lerp_


def distillation(logits: torch.Tensor, ema_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """τ²·KL(softmax(ema_logits/τ) ‖ softmax(logits/τ)), averaged over the batch."""
    return (
        F.kl_div(
            F.log_softmax(logits / tau, dim=-1),
            F.log_softmax(ema_logits / tau, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        * tau**2
    )


class MESA(TrainerHook):
    """MESA's Trainer hook: `term` is the weighted distillation loss, `after_step` moves the EMA."""

    def __init__(self, model: nn.Module, weight: float, tau: float, decay: float, start: int):
        self.weight, self.tau, self.decay, self.start = weight, tau, decay, start
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)

    def active(self, epoch: int) -> bool:
        return self.weight > 0 and epoch >= self.start

    @torch.no_grad()
    def _ema_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.ema(inputs).float()

    def term(self, inputs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.weight * distillation(logits, self._ema_logits(inputs), self.tau)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        ours, theirs = [], []
        for mine, value in zip(self.ema.state_dict().values(), model.state_dict().values()):
            if mine.is_floating_point():
                ours.append(mine)
                theirs.append(value)
            else:
                mine.copy_(value)  # counters such as num_batches_tracked
        lerp_(ours, theirs, 1 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["ema"])
