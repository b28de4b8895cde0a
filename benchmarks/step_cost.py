"""Per-step cost of every sharpness-aware method against a plain torch SGD step, measured side by side.

For each model and device, the steppers train identical copies of the model on one fixed batch:
a plain `torch.optim.SGD` loop, and the engine's own step (`Trainer.train_step`) with RST at p ≡ 0,
p ≡ 0.5, p ≡ 1, G-RST (p ≡ 0.5, weight 0.25), and each rival of `rst_tune.methods` (`VARIANTS`). All
run the engine's device setup: on CUDA bf16 autocast, channels_last inputs, cuDNN's benchmark mode and
fused SGD (the plain loop copies the engine's SGD settings); on the CPU fp32. Each round times
`--steps` steps of every variant in a shuffled order, so drift of a shared machine hits all of them
alike; ratios are taken within a round and the median over rounds is reported. The ideal ratio of a
variant is its pass count in that round (`rst_tune._cost`: 1 + its realised SAM fraction, plus 1/3 per
EMA forward for MESA).

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
from _machine import engine_setup, write_results

from rst_tune._train import Trainer
from rst_tune.config import load_config
from rst_tune.data import load_dataset, synthetic

# name -> (the training settings of its data and model, default batch size on the CPU)
MODELS = {
    "digits_cnn": ({"dataset": "digits", "model": "digits_cnn"}, 64),
    "resnet18": ({"dataset": "synthetic", "model": "resnet18"}, 32),
}


def _rst(p: float, grst_weight: float | None = None) -> dict:
    return {"schedule": {"name": "constant", "params": {"p": p}}, "grst_weight": grst_weight}


def _method(name: str, **params) -> dict:
    return {"method": {"name": name, "params": params}}


# variant -> its training settings; None marks plain torch SGD
VARIANTS: dict[str, dict | None] = {
    "sgd": None,
    "p=0": _rst(0.0),
    "p=0.5": _rst(0.5),
    "p=1": _rst(1.0),
    "grst p=0.5": _rst(0.5, 0.25),
    "determ. 0.5": {**_method("deterministic"), **_rst(0.5)},
    "periodic k=2": _method("periodic", k=2),
    "late 0.1": _method("late_phase", switch=0.1),
    "looksam k=2": _method("looksam", k=2),
    "aesam": _method("aesam"),
    "mesa": _method("mesa", start=0),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_batch(model_name: str, device: torch.device) -> int:
    """The batch a model is timed at: 256 on CUDA, its own on the CPU."""
    return 256 if device.type == "cuda" else MODELS[model_name][1]


def _trainer(
    model_name: str, variant: str, device: torch.device, data, batch_size: int, setup: dict
) -> Trainer:
    settings, _ = MODELS[model_name]
    config = load_config(
        {
            **settings,
            **setup,
            "device": str(device),
            "batch_size": batch_size,
            "lr": 0.01,
            "lr_schedule": "constant",
            **VARIANTS[variant],
            "seed": 1,
        }
    )
    return Trainer(config, data=data)


def _plain_sgd(reference: Trainer, images: torch.Tensor, labels: torch.Tensor):
    """The loop most users write (with its batch's loss and accuracy), on a copy of `reference`'s model,
    with its SGD settings and device setup."""
    model = copy.deepcopy(reference.model)
    keys = ("lr", "momentum", "nesterov", "weight_decay", "fused")
    base = torch.optim.SGD(
        model.parameters(), **{k: reference.optimizer.base_optimizer.defaults[k] for k in keys}
    )
    device, dtype = reference.device, reference.autocast_dtype

    def step() -> tuple[float, bool]:
        base.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images.contiguous(memory_format=reference.memory_format))
            loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        base.step()
        (logits.detach().argmax(1) == labels).sum()  # the batch's accuracy, which the engine counts too
        return 1.0, False

    return step


def measure(
    model_name: str, device: torch.device, batch_size: int, steps: int, rounds: int, warmup: int
) -> dict:
    setup = engine_setup(device)
    dataset = MODELS[model_name][0]["dataset"]
    data = synthetic(train_size=batch_size, val_size=0) if dataset == "synthetic" else load_dataset(dataset)
    trainers = {v: _trainer(model_name, v, device, data, batch_size, setup) for v in VARIANTS if v != "sgd"}
    reference = trainers["p=0"]
    reference.model.train()
    images, labels = next(reference.data.train_batches(batch_size, reference.data_rng))
    runners = {"sgd": _plain_sgd(reference, images, labels)}
    for variant, trainer in trainers.items():
        trainer.model.train()

        def rst_step(trainer=trainer) -> tuple[float, bool]:
            before = trainer.optimizer.propagations
            trainer.train_step(images, labels)
            return trainer.optimizer.propagations - before, trainer.optimizer.last_was_sam

        runners[variant] = rst_step
    for step in runners.values():
        for _ in range(warmup):
            step()
    _sync(device)
    order, shuffle = list(VARIANTS), random.Random(0)
    seconds = {v: [] for v in VARIANTS}
    passes = {v: [] for v in VARIANTS}
    sam_fraction = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        shuffle.shuffle(order)
        for variant in order:
            step = runners[variant]
            start = time.perf_counter()
            taken = [step() for _ in range(steps)]
            _sync(device)
            seconds[variant].append((time.perf_counter() - start) / steps)
            passes[variant].append(sum(cost for cost, _ in taken) / steps)
            sam_fraction[variant].append(sum(sam for _, sam in taken) / steps)
    result = {
        "model": model_name,
        "device": str(device),
        **setup,
        "batch_size": batch_size,
        "steps_per_round": steps,
        "rounds": rounds,
        "sgd_ms": 1e3 * statistics.median(seconds["sgd"]),
        "variants": {},
        "grst_over_rst": statistics.median(g / r for g, r in zip(seconds["grst p=0.5"], seconds["p=0.5"])),
    }
    for variant in VARIANTS:
        ratios = [t / s for t, s in zip(seconds[variant], seconds["sgd"])]
        of_ideal = [r / ideal for r, ideal in zip(ratios, passes[variant])]
        result["variants"][variant] = {
            "ms": 1e3 * statistics.median(seconds[variant]),
            "ratio_to_sgd": statistics.median(ratios),
            "ideal": statistics.fmean(passes[variant]),
            "sam_fraction": statistics.fmean(sam_fraction[variant]),
            "ratio_to_ideal": statistics.median(of_ideal),
        }
    result["verdicts"] = verdicts(result)
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
    torch.backends.cudnn.benchmark = True  # as the Trainer sets it on CUDA
    results = []
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    for device_name in args.devices:
        device = torch.device(device_name)
        for model_name in args.models:
            batch = args.batch_size or default_batch(model_name, device)
            result = measure(model_name, device, batch, args.steps, args.rounds, args.warmup)
            results.append(result)
            print(
                f"\n{model_name} on {device_name}, batch {batch}, {result['precision']}"
                f"{', channels_last' if result['channels_last'] else ''}: plain SGD {result['sgd_ms']:.2f} "
                f"ms/step (median of {args.rounds} rounds x {args.steps} steps)"
            )
            print(f"  {'variant':<13}{'ms/step':>9}{'x SGD':>8}{'ideal':>7}{'x ideal':>9}")
            for variant, v in result["variants"].items():
                print(
                    f"  {variant:<13}{v['ms']:>9.2f}{v['ratio_to_sgd']:>8.3f}{v['ideal']:>7.3f}"
                    f"{v['ratio_to_ideal']:>9.3f}"
                )
            print(f"  G-RST / RST at p=0.5: {result['grst_over_rst']:.3f} (median of per-round ratios)")
            print("  " + ", ".join(f"{k}: {'yes' if ok else 'NO'}" for k, ok in result["verdicts"].items()))
    if args.json:
        write_results(args.json, results)


if __name__ == "__main__":
    main()
