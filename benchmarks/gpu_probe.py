"""Checks, on one device, that a sharpness-aware step does there what the CPU tests show it does here.

- `dropout_masks`: both passes of a sharpness-aware step draw the same dropout masks (on CUDA from the
  device's own generator), and the next step draws new ones;
- `batchnorm`: only the clean pass moves BatchNorm's running statistics;
- `bf16_perturbation`: under bf16 autocast, entered around the step (a user's loop) or inside the
  closure (the Trainer), the update is the SAM update of the float64 closed form, not the SGD one;
- `fp16_syncs` (CUDA only): an fp16 step (GradScaler) synchronises the host once, SGD or SAM;
- `float64_reference`: one SAM and one G-RST step of a small CNN in fp32 on the device match the same
  step in float64 on the CPU (strict fp32, and torch's default TF32 convolutions).
Each check returns its figures and `passed`; an exception is reported as a failed check.

    python benchmarks/gpu_probe.py [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rst_tune._imports import one_line
from rst_tune._train import Trainer
from rst_tune.config import load_config
from rst_tune.models import build_model
from rst_tune.schedules import make_schedule
from rst_tune.sharpness import RandomizedSAM

CUDA_ONLY = {"fp16_syncs"}


def _sgd(model: nn.Module, lr: float = 0.05) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-3)


def _sam(model: nn.Module, **kwargs) -> RandomizedSAM:
    return RandomizedSAM(_sgd(model), make_schedule("constant", p=1.0), 10, model=model, **kwargs)


def _closure(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def _batch(device: torch.device, features: int = 16, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, features, generator=generator), torch.randint(0, 4, (n,), generator=generator)
    return x.to(device), y.to(device)


class _Masks(nn.Module):
    """A linear layer behind dropout that keeps every mask it drew."""

    def __init__(self):
        super().__init__()
        self.linear, self.masks = nn.Linear(16, 4), []

    def forward(self, x):
        mask = F.dropout(torch.ones_like(x), p=0.5, training=self.training)
        self.masks.append(mask)
        return self.linear(x * mask)


def dropout_masks(device: torch.device) -> dict:
    torch.manual_seed(0)
    model = _Masks().to(device)
    optimizer = _sam(model)
    x, y = _batch(device)
    for _ in range(2):
        optimizer.step(_closure(model, x, y))
    first, perturbed, second, _ = model.masks
    same, fresh = torch.equal(first, perturbed), not torch.equal(first, second)
    return {"passed": same and fresh, "passes_share_masks": same, "next_step_draws_new_masks": fresh}


def batchnorm(device: torch.device) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4)).to(device)
    clean = copy.deepcopy(model)
    x, y = _batch(device)
    clean(x)  # one training-mode forward: what the clean pass alone does to the statistics
    _sam(model, rho=0.5).step(_closure(model, x, y))
    norm, reference = model[1], clean[1]
    gap = max(
        (norm.running_mean - reference.running_mean).abs().max().item(),
        (norm.running_var - reference.running_var).abs().max().item(),
    )
    batches = int(norm.num_batches_tracked.item())
    return {
        "passed": gap <= 1e-6 and batches == 1,
        "max_gap_to_clean_pass_only": gap,
        "batches_tracked": batches,
    }


# L(W) = ½·mean over rows of ‖W·x − y‖²: its gradient in float64 is the reference
_X = np.array([[1.0, -0.5, 2.0], [0.3, 1.5, -1.0], [-1.2, 0.8, 0.5], [2.0, 0.1, -0.7]])
_Y = np.array([[0.5, -1.0], [1.0, 0.2], [-0.3, 0.8], [0.7, -0.4]])
_W = np.array([[0.4, -0.9, 0.3], [1.1, 0.2, -0.6]])
_RHO, _LR = 0.5, 0.5


def _grad(w: np.ndarray) -> np.ndarray:
    return (_X @ w.T - _Y).T @ _X / len(_X)


def _bf16_step(device: torch.device, inside: bool) -> np.ndarray:
    """W after one SAM step under bf16 autocast, entered inside the closure or around the step."""
    linear = nn.Linear(3, 2, bias=False).to(device)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(_W))
    x = torch.tensor(_X, dtype=torch.float32, device=device)
    y = torch.tensor(_Y, dtype=torch.float32, device=device)
    optimizer = RandomizedSAM(
        torch.optim.SGD(linear.parameters(), lr=_LR), make_schedule("constant", p=1.0), 5, rho=_RHO
    )

    def closure() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=inside):
            loss = 0.5 * ((linear(x).float() - y) ** 2).sum(1).mean()
        loss.backward()
        return loss

    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not inside):
        optimizer.step(closure)
    return linear.weight.detach().double().cpu().numpy()


def bf16_perturbation(device: torch.device) -> dict:
    g1 = _grad(_W)
    sam = _W - _LR * _grad(_W + _RHO * g1 / np.linalg.norm(g1))
    sgd = _W - _LR * g1
    tolerance = float(_LR * np.linalg.norm(g1) * 2**-6)  # bf16 keeps 8 bits
    figures = {"sam_minus_sgd": float(np.linalg.norm(sam - sgd)), "tolerance": tolerance}
    passed = figures["sam_minus_sgd"] > 10 * tolerance
    for style, inside in (("around the step", False), ("inside the closure", True)):
        stepped = _bf16_step(device, inside)
        to_sam, to_sgd = float(np.linalg.norm(stepped - sam)), float(np.linalg.norm(stepped - sgd))
        figures[style] = {"distance_to_sam": to_sam, "distance_to_sgd": to_sgd}
        passed = passed and to_sam < tolerance
    return {"passed": bool(passed), **figures}


def fp16_syncs(device: torch.device) -> dict:
    counts = {}
    for p in (0.0, 1.0):
        settings = {"epochs": 1, "device": str(device), "precision": "fp16", "batch_size": 128}
        config = load_config({**settings, "schedule": {"name": "constant", "params": {"p": p}}})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the advice to use bf16
            trainer = Trainer(config)
        trainer.model.train()
        batches = trainer.data.train_batches(config.batch_size, trainer.data_rng)
        for _ in range(3):
            trainer.train_step(*next(batches))
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for _ in range(4):
                    trainer.train_step(*next(batches))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts["sam" if p else "sgd"] = sum("synchroniz" in str(w.message) for w in caught) / 4
    return {"passed": counts == {"sgd": 1.0, "sam": 1.0}, "syncs_per_step": counts}


def _relative_update_error(device: torch.device, grst_weight: float | None) -> float:
    """‖Δθ on `device` in fp32 − Δθ on the CPU in float64‖ / ‖Δθ in float64‖ after one step."""
    torch.manual_seed(0)
    model = build_model("digits_cnn", 4, (1, 8, 8), width=8)
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 1, 8, 8, generator=generator), torch.randint(0, 4, (32,), generator=generator)
    updates = []
    for where, dtype in ((device, torch.float32), (torch.device("cpu"), torch.float64)):
        net = copy.deepcopy(model).to(where, dtype)
        before = [p.detach().clone() for p in net.parameters()]
        _sam(net, rho=0.05, grst_weight=grst_weight).step(_closure(net, x.to(where, dtype), y.to(where)))
        updates.append(
            torch.cat([(p.detach() - b).flatten().cpu().double() for p, b in zip(net.parameters(), before)])
        )
    (fp32, float64) = updates
    return float(torch.linalg.vector_norm(fp32 - float64) / torch.linalg.vector_norm(float64))


def float64_reference(device: torch.device) -> dict:
    figures, passed = {}, True
    cudnn = torch.backends.cudnn
    settings = cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic
    try:
        cudnn.benchmark, cudnn.deterministic = False, True  # no Winograd or FFT a Trainer's autotuning chose
        for tf32, tolerance in ((False, 1e-4), (True, 2e-2)):
            cudnn.allow_tf32 = tf32
            for name, weight in (("sam", None), ("grst", 0.5)):
                error = _relative_update_error(device, weight)
                figures[f"{name}, {'tf32 convolutions' if tf32 else 'strict fp32'}"] = error
                passed = passed and error <= tolerance
    finally:
        cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic = settings
    return {"passed": passed, "relative_update_error": figures, "tolerances": {"strict": 1e-4, "tf32": 2e-2}}


CHECKS: dict[str, Callable[[torch.device], dict]] = {
    "dropout_masks": dropout_masks,
    "batchnorm": batchnorm,
    "bf16_perturbation": bf16_perturbation,
    "fp16_syncs": fp16_syncs,
    "float64_reference": float64_reference,
}


def probe(device: torch.device) -> dict[str, dict]:
    """Every check on `device`; those that need CUDA are reported skipped elsewhere."""
    results = {}
    for name, check in CHECKS.items():
        if name in CUDA_ONLY and device.type != "cuda":
            results[name] = {"skipped": "needs CUDA"}
            continue
        try:
            results[name] = check(device)
        except Exception as err:  # a failed check, not a failed probe
            results[name] = {"passed": False, "error": one_line(err)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(json.dumps(probe(torch.device(args.device)), indent=2))


if __name__ == "__main__":
    main()
