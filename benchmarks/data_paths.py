"""Epoch time of the streaming `DataLoader` path against the device-resident path, on the same data.

MNIST-1D (3,200 training signals, `mnist1d_cnn`, batch 100) and CIFAR-shaped uint8 images (5,000,
`digits_cnn` of width 16, batch 250) are trained one epoch at a time by the same `Trainer` on
`--device` (a GPU when there is one), their data delivered two ways: kept whole on the device
(`DataSplits`), and as `Dataset`s read by a `DataLoader` (`StreamingSplits`) with each of `--workers`
loader-worker counts (0: in the training process), in pinned memory on a GPU. Each round times one
epoch of every path in a shuffled order; the median over rounds is reported, with each streaming
path's ratio to the resident one taken within a round. Only RandomizedSAM at p = 0.5 trains. On a
GPU the CIFAR-shaped case trains as the engine's GPU setup does (bf16 autocast, channels_last);
MNIST-1D's signals are not images (N, C, H, W), so it trains in fp32 without channels_last, as on
the CPU.

    python benchmarks/data_paths.py --json benchmarks/data_paths_cpu.json --device cpu
    python benchmarks/data_paths.py --json benchmarks/data_paths_cuda.json --workers 0 2 4

`measure_all(device, workers, rounds)` is the measurement itself, `report` its table.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Iterable

import torch
from _machine import cpu_model, device_name, engine_setup
from torch.utils.data import TensorDataset

from rst_tune._train import Trainer
from rst_tune.config import load_config
from rst_tune.data import DataSplits, StreamingSplits, load_dataset, synthetic

RESIDENT = "resident"


def path_name(workers: int) -> str:
    return f"streamed, {workers} worker{'' if workers == 1 else 's'}"


def streamed(data: DataSplits, workers: int) -> StreamingSplits:
    """The same inputs and labels as `data`, as Datasets read through a DataLoader."""
    parts = {
        part: TensorDataset(getattr(data, f"{part}_x"), getattr(data, f"{part}_y"))
        for part in ("train", "val")
    }
    return StreamingSplits(
        parts, num_classes=data.num_classes, shape=data.shape, mean=data.mean, std=data.std, workers=workers
    )


def cases() -> dict[str, tuple[dict, DataSplits]]:
    images = synthetic(train_size=5000, val_size=1000)
    images.crop_padding, images.flip = 0, False  # the streamed Datasets do not augment
    return {
        "mnist1d": (
            {"dataset": "mnist1d", "model": "mnist1d_cnn", "batch_size": 100},
            load_dataset("mnist1d"),
        ),
        "cifar-shaped": (
            {"dataset": "synthetic", "model": "digits_cnn", "model_params": {"width": 16}, "batch_size": 250},
            images,
        ),
    }


def measure(
    settings: dict,
    data: DataSplits,
    device: torch.device,
    workers: Iterable[int],
    rounds: int,
    rng: random.Random,
) -> dict:
    """Epoch times of `data` resident on `device` and streamed with each of `workers` loader workers."""
    counts = list(workers)
    paths = [RESIDENT, *(path_name(n) for n in counts)]
    setup = engine_setup(device, images=len(data.shape) == 3)
    trainers = {}
    for path, count in zip(paths, [None, *counts]):
        config = load_config({**settings, **setup, "epochs": rounds + 1, "seed": 0, "device": str(device)})
        trainers[path] = Trainer(config, data if count is None else streamed(data, count))
        trainers[path].train_epoch()  # warm-up: the workers start, the allocator fills, cuDNN picks
    times: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(rounds):
        for path in rng.sample(paths, len(paths)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            trainers[path].train_epoch()  # ends reading its sums back: the device has finished
            times[path].append(time.perf_counter() - start)
    ratios = {
        path: statistics.median(t / r for t, r in zip(times[path], times[RESIDENT])) for path in paths[1:]
    }
    return {
        **setup,
        "epoch_s": {path: statistics.median(values) for path, values in times.items()},
        "ratio_to_resident": ratios,
        "steps_per_epoch": trainers[RESIDENT].steps_per_epoch,
    }


def measure_all(
    device: str | torch.device,
    workers: Iterable[int] = (0, 2),
    rounds: int = 3,
) -> dict:
    """Every case on `device`, streamed with each of `workers` loader workers,
    median of `rounds` epochs: the machine, the settings and, under "results", each case's figures.
    The paths' order in each round is drawn from a generator of its own, seeded 0."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: torch sees no CUDA GPU")
    workers = list(dict.fromkeys(int(n) for n in workers))  # each count once: it names its path
    if any(n < 0 for n in workers):
        raise ValueError(f"workers {workers}: counts of worker processes, 0 or more")
    rng = random.Random(0)
    results = {
        name: measure(settings, data, device, workers, rounds, rng)
        for name, (settings, data) in cases().items()
    }
    return {
        "device": device_name(device),
        "device_type": device.type,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "workers": workers,
        "rounds": rounds,
        "results": results,
    }


def report(measured: dict) -> list[str]:
    """The lines that present `measure_all`'s result."""
    host = "" if measured["device_type"] == "cpu" else f", host CPU {measured['cpu']}"
    lines = [
        f"{measured['device']} ({measured['device_type']}){host}, torch {measured['torch']}, "
        f"{measured['threads']} threads"
    ]
    for name, result in measured["results"].items():
        layout = ", channels_last" if result["channels_last"] else ""
        lines += [
            "",
            f"{name}: {result['steps_per_epoch']} steps per epoch, {result['precision']}{layout}, "
            f"median of {measured['rounds']} epochs",
        ]
        for path, seconds in result["epoch_s"].items():
            ratio = result["ratio_to_resident"].get(path, 1.0)
            lines.append(f"  {path:<22}{seconds:>8.3f} s/epoch{ratio:>8.2f}x resident")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the Trainer trains (default: cuda when there is a GPU)",
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="loader-worker counts of the streamed path"
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    try:
        measured = measure_all(args.device, args.workers, args.rounds)
    except ValueError as err:
        print(f"data_paths.py: {err}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(report(measured)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(measured, f, indent=2)


if __name__ == "__main__":
    main()
