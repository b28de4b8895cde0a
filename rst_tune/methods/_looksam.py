"""LookSAM's reuse (Liu et al., CVPR 2022): a sharpness-aware step keeps g_v, the part of g2 orthogonal
to g1; the plain steps after it add α·‖g‖·g_v/‖g_v‖ to their gradient. Norms and dot products are
global, over all parameters (as Leminhbinh0209/LookSAM and MarlonBecker/MSAM)."""

from __future__ import annotations

from typing import Any

import torch

from rst_tune.sharpness import add_scaled_, global_norm


class LookSAMReuse:
    """The `Reuse` strategy of LookSAM with weight `alpha`; g_v starts absent (a plain step before the
    first refresh is plain SGD) and is kept as g_v/‖g_v‖: zero where ‖g_v‖ is 0, the previous one where
    it is not finite (an fp16 overflow, whose step the scaler skips)."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.unit: list[torch.Tensor] | None = None

    def refreshed(self, g1: list[torch.Tensor], g2: list[torch.Tensor]) -> None:
        g1_norm = global_norm(g1)
        g1_unit = [t / torch.where(g1_norm > 0, g1_norm, 1.0) for t in g1]
        along = torch.stack([(a * b).sum() for a, b in zip(g2, g1_unit)]).sum()
        gv = [b - along * a for a, b in zip(g1_unit, g2)]  # g2 − (g2·ĝ1)ĝ1, once every k steps
        norm = global_norm(gv)
        finite = torch.isfinite(norm)
        usable = finite & (norm > 0)
        scale = torch.where(usable, 1.0 / torch.where(usable, norm, 1.0), 0.0)
        gv = [t * scale for t in gv]
        previous = [t.to(g2[0].device) for t in self.unit] if self.unit else [torch.zeros_like(t) for t in gv]
        self.unit = [torch.where(finite, new, old) for new, old in zip(gv, previous)]

    def plain(self, g: list[torch.Tensor]) -> None:
        if self.unit is None:
            return
        if self.unit[0].device != g[0].device:  # loaded from a checkpoint on the host
            self.unit = [t.to(g[0].device) for t in self.unit]
        add_scaled_(g, self.unit, self.alpha * global_norm(g))

    def state_dict(self) -> dict[str, Any]:
        return {"unit": [t.detach().cpu() for t in self.unit] if self.unit is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unit = state["unit"]
