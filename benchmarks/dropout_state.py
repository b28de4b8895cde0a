"""Per-step cost of replaying the random state in a sharpness-aware step, against the step itself.

On a sharpness-aware step RandomizedSAM saves the CPU generator's state (and the CUDA generator's of
every device holding parameters) before the clean pass and sets it back before the perturbed pass, so
both passes draw the same dropout masks. This times that save + restore as the optimizer does it
(`_generator_states` then `_set_generator_states`: torch.get_rng_state / set_rng_state, and
torch.cuda.get_rng_state / set_rng_state per CUDA device) against one whole sharpness-aware step
(p ≡ 1, which includes it) of two small models with dropout, on one fixed batch each. Each round times
`--steps` steps, each followed by one save + restore timed on its own (with the caches the step left, as
inside a real step); the ratio is taken within a round and the median over rounds is reported.
It also times the Trainer's per-step reseed of the CPU's and the device's generator (`train.seed_step`,
so that a run resumed mid-epoch draws the same masks), which SGD and sharpness-aware steps both pay,
beside `torch.manual_seed`, which it avoids.

    python benchmarks/dropout_state.py     # CPU, and CUDA when present
Writes dropout_state_<devices>.txt (what it prints) and .json (every figure) next to itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _machine import cpu_model
from torch import nn

from rst_tune._train import seed_step
from rst_tune.schedules import make_schedule
from rst_tune.sharpness import RandomizedSAM


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 256),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(256, 10),
    )


def digits_cnn(width: int = 32) -> nn.Module:
    """rst_tune's digits_cnn layout (8×8 images) with dropout before its linear head."""

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *conv(1, width),
        *conv(width, 2 * width),
        nn.MaxPool2d(2),
        *conv(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(4 * width, 10),
    )


# name -> (builder, input shape without batch, batch size)
MODELS = {"mlp": (mlp, (64,), 128), "digits_cnn": (digits_cnn, (1, 8, 8), 64)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_name: str, device: torch.device, steps: int, rounds: int, warmup: int) -> dict:
    build, shape, batch_size = MODELS[model_name]
    torch.manual_seed(0)
    model = build().to(device)
    images = torch.randn(batch_size, *shape, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    base = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    total = warmup + rounds * steps
    optimizer = RandomizedSAM(base, make_schedule("constant", p=1.0), total, rho=0.05, model=model)

    def closure():
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        return loss

    for _ in range(warmup):
        optimizer.step(closure)
    _sync(device)
    state_s, step_s, seed_s, manual_s = [], [], [], []
    for _ in range(rounds):
        state = step = seed = manual = 0.0
        for index in range(steps):
            start = time.perf_counter()
            optimizer.step(closure)
            _sync(device)
            step += time.perf_counter() - start
            start = time.perf_counter()  # host work only: no sync needed
            optimizer._set_generator_states(optimizer._generator_states())
            state += time.perf_counter() - start
            start = time.perf_counter()
            seed_step(device, 2**61 + index)
            seed += time.perf_counter() - start
            start = time.perf_counter()
            torch.manual_seed(2**61 + index)
            manual += time.perf_counter() - start
        state_s.append(state / steps)
        step_s.append(step / steps)
        seed_s.append(seed / steps)
        manual_s.append(manual / steps)
    assert optimizer.sam_steps == optimizer.steps == total
    return {
        "model": model_name,
        "device": str(device),
        "batch_size": batch_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "rounds": rounds,
        "steps_per_round": steps,
        "save_restore_us": 1e6 * statistics.median(state_s),
        "sam_step_ms": 1e3 * statistics.median(step_s),
        "ratio": statistics.median(s / t for s, t in zip(state_s, step_s)),
        "reseed_us": 1e6 * statistics.median(seed_s),
        "reseed_ratio": statistics.median(s / t for s, t in zip(seed_s, step_s)),
        "torch_manual_seed_us": 1e6 * statistics.median(manual_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    parser.add_argument("--steps", type=int, default=10, help="sharpness-aware steps per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    lines = [
        f"$ python benchmarks/dropout_state.py   ({datetime.date.today()}, {cpu_model()}, "
        f"{torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if "cuda" in args.devices else ", no GPU")
        + f", torch {torch.__version__})"
    ]
    results = []
    for device_name in args.devices:
        for model_name in MODELS:
            r = measure(model_name, torch.device(device_name), args.steps, args.rounds, args.warmup)
            results.append(r)
            lines += [
                "",
                f"{model_name} on {device_name}, batch {r['batch_size']}, {r['parameters']} parameters "
                f"(median of {args.rounds} rounds)",
                f"  sharpness-aware step       {r['sam_step_ms']:10.3f} ms",
                f"  generator save + restore   {r['save_restore_us']:10.2f} us",
                f"  save + restore / step      {100 * r['ratio']:10.3f} % (median of per-round ratios)",
                f"  per-step reseed            {r['reseed_us']:10.2f} us",
                f"  reseed / step              {100 * r['reseed_ratio']:10.3f} %",
                f"  torch.manual_seed          {r['torch_manual_seed_us']:10.2f} us",
            ]
    print("\n".join(lines))
    stem = Path(__file__).with_name("dropout_state_" + "_".join(args.devices))
    stem.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                "date": str(datetime.date.today()),
                "torch": torch.__version__,
                "cpu": cpu_model(),
                "threads": torch.get_num_threads(),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
