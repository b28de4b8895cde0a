"""Epoch time of the streaming `DataLoader` path against the device-resident path, on the same data.

MNIST-1D (3,200 training signals, `mnist1d_cnn`, batch 100) and CIFAR-shaped uint8 images (5,000,
`digits_cnn` of width 16, batch 250) are trained one epoch at a time by the same `Trainer`, their data
delivered three ways: kept whole on the device (`DataSplits`), and as `Dataset`s read by a
`DataLoader` in this process (0 workers) or by 2 worker processes (`StreamingSplits`). Each round
times one epoch of every path in a shuffled order; the median over rounds is reported, with each
streaming path's ratio to the resident one taken within a round. Only RandomizedSAM at p = 0.5 trains.

    python benchmarks/data_paths.py --json benchmarks/data_paths_cpu.json
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch
from _machine import write_results
from torch.utils.data import TensorDataset

from rst_tune.config import load_config
from rst_tune.data import DataSplits, StreamingSplits, load_dataset, synthetic
from rst_tune.train import Trainer

PATHS = ("resident", "streamed, 0 workers", "streamed, 2 workers")


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


def measure(settings: dict, data: DataSplits, rounds: int) -> dict:
    trainers = {}
    for path, workers in zip(PATHS, (None, 0, 2)):
        config = load_config({**settings, "epochs": rounds + 1, "seed": 0, "device": "cpu"})
        trainers[path] = Trainer(config, data if workers is None else streamed(data, workers))
        trainers[path].train_epoch()  # warm-up: the workers start, the allocator fills
    times: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(rounds):
        for path in random.sample(PATHS, len(PATHS)):
            start = time.perf_counter()
            trainers[path].train_epoch()
            times[path].append(time.perf_counter() - start)
    ratios = {
        path: statistics.median(t / r for t, r in zip(times[path], times["resident"])) for path in PATHS[1:]
    }
    return {
        "epoch_s": {path: statistics.median(values) for path, values in times.items()},
        "ratio_to_resident": ratios,
        "steps_per_epoch": trainers["resident"].steps_per_epoch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    random.seed(0)
    machine = platform.processor() or platform.machine()
    print(f"{machine}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    for name, (settings, data) in cases().items():
        result = results[name] = measure(settings, data, args.rounds)
        print(f"\n{name}: {result['steps_per_epoch']} steps per epoch, median of {args.rounds} epochs")
        for path in PATHS:
            ratio = result["ratio_to_resident"].get(path, 1.0)
            print(f"  {path:<22}{result['epoch_s'][path]:>8.3f} s/epoch{ratio:>8.2f}x resident")
    if args.json:
        write_results(args.json, results)


if __name__ == "__main__":
    main()
