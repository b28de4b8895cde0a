"""Per-step cost of RandomizedSAM against a plain torch SGD step, measured side by side.

For each model and device, five optimizers train identical copies of the model on one fixed batch:
plain `torch.optim.SGD`, and RandomizedSAM with p ≡ 0, p ≡ 0.5, p ≡ 1 and G-RST (p ≡ 0.5,
weight 0.25). Each round times `--steps` steps of every variant in a shuffled order, so drift of a
shared machine hits all of them alike; ratios are taken within a round and the median over rounds is
reported. The ideal ratio of a variant is 1 + (its realised SAM fraction in that round).

    python benchmarks/step_cost.py                      # CPU, and CUDA when present
    python benchmarks/step_cost.py --json out.json      # also write every figure as JSON
Targets (issues 2 and 6): p ≡ 0 ≤ 1.02× SGD, p ≡ 1 ≤ 2.03× SGD, p̄ = 0.5 within 3 % of its ideal,
G-RST ≤ 1.02× RST at p̄ = 0.5 (both draw the same coins: same seed, same schedule).
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import statistics
import time

import torch
import torch.nn.functional as F
from _machine import write_results

from rst_tune.models import build_model
from rst_tune.schedules import make_schedule
from rst_tune.sharpness import RandomizedSAM

# name -> (model name, build kwargs, input shape without batch, default batch size)
MODELS = {
    "digits_cnn": ("digits_cnn", {"num_classes": 10, "input_shape": (1, 8, 8)}, (1, 8, 8), 64),
    "resnet18": ("resnet18", {"num_classes": 10}, (3, 32, 32), 32),
}
# variant -> (p, grst_weight); None for p marks plain torch SGD
VARIANTS = {
    "sgd": (None, None),
    "p=0": (0.0, None),
    "p=0.5": (0.5, None),
    "p=1": (1.0, None),
    "grst p=0.5": (0.5, 0.25),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stepper(model: torch.nn.Module, variant: str, total_steps: int):
    """A function running one training step of `variant`; returns 1 when it was sharpness-aware."""
    p, grst_weight = VARIANTS[variant]
    base = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if p is None:

        def sgd_step(closure):
            base.zero_grad(set_to_none=True)
            closure()
            base.step()
            return 0

        return sgd_step
    optimizer = RandomizedSAM(
        base,
        make_schedule("constant", p=p),
        total_steps,
        rho=0.05,
        grst_weight=grst_weight,
        model=model,
        seed=1,
    )

    def rst_step(closure):
        optimizer.step(closure)
        return int(optimizer.last_was_sam)

    return rst_step


def measure(
    model_name: str, device: torch.device, batch_size: int, steps: int, rounds: int, warmup: int
) -> dict:
    name, kwargs, shape, _ = MODELS[model_name]
    torch.manual_seed(0)
    reference = build_model(name, **kwargs).to(device)
    images = torch.randn(batch_size, *shape, device=device)
    labels = torch.randint(0, kwargs["num_classes"], (batch_size,), device=device)
    total = rounds * steps + warmup
    runners = {}
    for variant in VARIANTS:
        model = copy.deepcopy(reference)

        def closure(model=model):
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            return loss

        runners[variant] = (_stepper(model, variant, total), closure)
    for step, closure in runners.values():
        for _ in range(warmup):
            step(closure)
    _sync(device)
    order, shuffle = list(VARIANTS), random.Random(0)
    seconds = {v: [] for v in VARIANTS}
    sam_fraction = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        shuffle.shuffle(order)
        for variant in order:
            step, closure = runners[variant]
            start = time.perf_counter()
            sam = sum(step(closure) for _ in range(steps))
            _sync(device)
            seconds[variant].append((time.perf_counter() - start) / steps)
            sam_fraction[variant].append(sam / steps)
    result = {
        "model": model_name,
        "device": str(device),
        "batch_size": batch_size,
        "steps_per_round": steps,
        "rounds": rounds,
        "sgd_ms": 1e3 * statistics.median(seconds["sgd"]),
        "variants": {},
        "grst_over_rst": statistics.median(g / r for g, r in zip(seconds["grst p=0.5"], seconds["p=0.5"])),
    }
    for variant in VARIANTS:
        ratios = [t / s for t, s in zip(seconds[variant], seconds["sgd"])]
        of_ideal = [r / (1 + f) for r, f in zip(ratios, sam_fraction[variant])]
        result["variants"][variant] = {
            "ms": 1e3 * statistics.median(seconds[variant]),
            "ratio_to_sgd": statistics.median(ratios),
            "sam_fraction": statistics.fmean(sam_fraction[variant]),
            "ratio_to_ideal": statistics.median(of_ideal),
        }
    return result


def verdicts(result: dict) -> dict[str, bool]:
    v = result["variants"]
    return {
        "p=0 <= 1.02x SGD": v["p=0"]["ratio_to_sgd"] <= 1.02,
        "p=1 <= 2.03x SGD": v["p=1"]["ratio_to_sgd"] <= 2.03,
        "p=0.5 within 3% of ideal": abs(v["p=0.5"]["ratio_to_ideal"] - 1) <= 0.03,
        "G-RST <= 1.02x RST": result["grst_over_rst"] <= 1.02,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    parser.add_argument(
        "--batch-size", type=int, help="default: 64 for digits_cnn, 32 for resnet18 on the CPU, 256 on CUDA"
    )
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    args = parser.parse_args()
    results = []
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    for device_name in args.devices:
        device = torch.device(device_name)
        for model_name in args.models:
            batch = args.batch_size or (256 if device.type == "cuda" else MODELS[model_name][3])
            result = measure(model_name, device, batch, args.steps, args.rounds, args.warmup)
            result["verdicts"] = verdicts(result)
            results.append(result)
            print(
                f"\n{model_name} on {device_name}, batch {batch}: plain SGD {result['sgd_ms']:.2f} ms/step "
                f"(median of {args.rounds} rounds x {args.steps} steps)"
            )
            print(f"  {'variant':<12}{'ms/step':>9}{'x SGD':>8}{'SAM frac':>10}{'ideal':>7}{'x ideal':>9}")
            for variant, v in result["variants"].items():
                print(
                    f"  {variant:<12}{v['ms']:>9.2f}{v['ratio_to_sgd']:>8.3f}{v['sam_fraction']:>10.3f}"
                    f"{1 + v['sam_fraction']:>7.3f}{v['ratio_to_ideal']:>9.3f}"
                )
            print(f"  G-RST / RST at p=0.5: {result['grst_over_rst']:.3f} (median of per-round ratios)")
            print("  " + ", ".join(f"{k}: {'yes' if ok else 'NO'}" for k, ok in result["verdicts"].items()))
    if args.json:
        write_results(args.json, results)


if __name__ == "__main__":
    main()
