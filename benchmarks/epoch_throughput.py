"""Epoch throughput of the engine's loop against a torchvision DataLoader loop, and its FLOP floor.

Both loops train the same ResNet-18 (CIFAR stem) on the same CIFAR-shaped uint8 images with the same
augmentation (4-pixel pad, random 32×32 crop, horizontal flip, normalise), batch, precision and
memory format, taking plain SGD steps (p ≡ 0), so what differs is the loop, not the algorithm:
- engine: `rst_tune.train.Trainer.train_step` over `ImageData.train_batches`: images resident on
  the device, augmentation batched on the device;
- engine+compile: the same with `torch.compile` of the model (`--compile`);
- dataloader: the loop most users write: a CIFAR-style Dataset (PIL image + torchvision transforms)
  in a `DataLoader` with workers and pinned memory, `.to(device, non_blocking=True)`, then
  `zero_grad / forward / backward / step` of `torch.optim.SGD`.
Each loop runs one warm-up epoch (compilation, cuDNN autotuning, worker start), then `--epochs` timed
epochs; the median is reported. The FLOP floor is the time the epoch's FLOPs (one training step
counted by `torch.utils.flop_counter.FlopCounterMode`, × steps) take at the device's measured dense
matmul rate at the run's precision (square `--matmul-size` matmuls). That rate is a peak: the small
convolutions of a CIFAR ResNet do not reach it, so "× floor" says how far from it the epoch is, not
what is attainable; and with `--precision fp32` on CUDA, cuDNN may run convolutions in TF32 while the
reference matmul is strict fp32, so the floor is then not a floor.

    python benchmarks/epoch_throughput.py --compile --json out.json   # CUDA: batch 512, bf16, channels_last
    python benchmarks/epoch_throughput.py --device cpu --images 2048 --batch-size 128 --precision fp32
Targets (issue 6, GPU): epoch ≤ 1.3× its FLOP floor; engine ≥ 3× the DataLoader loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from rst_tune.config import load_config
from rst_tune.data import synthetic
from rst_tune.models import build_model
from rst_tune.train import Trainer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, precision: str, size: int, repeats: int = 20) -> float:
    """Dense matmul FLOP/s of the device at `precision`: best of three timed blocks of `repeats`."""
    a = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    b = torch.randn(size, size, device=device, dtype=DTYPES[precision])
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best


def step_flops(args: argparse.Namespace, device: torch.device) -> int:
    """FLOPs of one forward-backward of the model on one batch (matmuls and convolutions)."""
    model = build_model("resnet18", 10).to(device, memory_format=_memory_format(args))
    images = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(
        memory_format=_memory_format(args)
    )
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    with FlopCounterMode(display=False) as counter, _autocast(args, device):
        F.cross_entropy(model(images).float(), labels).backward()
    return counter.get_total_flops()


def _memory_format(args: argparse.Namespace) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


def _autocast(args: argparse.Namespace, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def _timed_epochs(run_epoch, device: torch.device, epochs: int) -> list[float]:
    run_epoch()  # warm-up
    seconds = []
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        run_epoch()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def engine_epochs(args: argparse.Namespace, device: torch.device, compile_model: bool) -> list[float]:
    config = load_config(
        {
            "dataset": "synthetic",
            "model": "resnet18",
            "batch_size": args.batch_size,
            "epochs": args.epochs + 1,
            "lr": 0.05,
            "schedule": {"name": "constant", "params": {"p": 0.0}},
            "device": str(device),
            "precision": args.precision,
            "channels_last": args.channels_last,
            "compile": compile_model,
        }
    )
    trainer = Trainer(config, data=synthetic(train_size=args.images, val_size=0))
    trainer.model.train()

    def run_epoch() -> None:
        for images, labels in trainer.data.train_batches(args.batch_size, trainer.data_rng):
            trainer.train_step(images, labels)

    return _timed_epochs(run_epoch, device, args.epochs)


class CifarLike(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 array -> PIL image -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def dataloader_epochs(args: argparse.Namespace, device: torch.device) -> list[float]:
    data = synthetic(train_size=args.images, val_size=0)
    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([m / 255 for m in data.mean], [s / 255 for s in data.std]),
        ]
    )
    dataset = CifarLike(data.train_x.permute(0, 2, 3, 1).numpy(), data.train_y.numpy(), transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    torch.manual_seed(0)
    model = build_model("resnet18", 10).to(device, memory_format=_memory_format(args))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()

    def run_epoch() -> None:
        for images, labels in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=_memory_format(args))
            labels = labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(args, device):
                loss = F.cross_entropy(model(images).float(), labels)
            loss.backward()
            optimizer.step()

    return _timed_epochs(run_epoch, device, args.epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=50_000, help="training images per epoch (CIFAR: 50000)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--precision", choices=list(DTYPES), default="bf16")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true", help="also time the engine with torch.compile")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    parser.add_argument(
        "--epochs", type=int, default=3, help="timed epochs per loop, after one warm-up epoch"
    )
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    steps = args.images // args.batch_size
    rate = matmul_rate(device, args.precision, args.matmul_size)
    flops = step_flops(args, device)
    floor_s = flops * steps / rate
    print(
        f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads; "
        f"ResNet-18, {args.images} images, "
        f"batch {args.batch_size}, {args.precision}, channels_last={args.channels_last}"
    )
    print(
        f"matmul rate {rate / 1e12:.1f} TFLOP/s ({args.precision}, {args.matmul_size}²); "
        f"{flops / args.batch_size / 1e9:.3f} GFLOP per image per step; FLOP floor {floor_s:.2f} s per epoch"
    )
    loops = {"engine": lambda: engine_epochs(args, device, False)}
    if args.compile:
        loops["engine+compile"] = lambda: engine_epochs(args, device, True)
    loops["dataloader"] = lambda: dataloader_epochs(args, device)
    results = {}
    print(f"  {'loop':<16}{'s/epoch':>9}{'images/s':>11}{'TFLOP/s':>9}{'of matmul':>11}{'x floor':>9}")
    for loop, run in loops.items():
        seconds = run()
        epoch_s = statistics.median(seconds)
        results[loop] = {
            "epoch_s": epoch_s,
            "all_epoch_s": seconds,
            "images_per_s": steps * args.batch_size / epoch_s,
            "achieved_flops": flops * steps / epoch_s,
            "fraction_of_matmul": floor_s / epoch_s,
            "epoch_over_floor": epoch_s / floor_s,
        }
        r = results[loop]
        print(
            f"  {loop:<16}{epoch_s:>9.2f}{r['images_per_s']:>11.0f}{r['achieved_flops'] / 1e12:>9.2f}"
            f"{r['fraction_of_matmul']:>11.1%}{r['epoch_over_floor']:>9.2f}"
        )
    base = results["dataloader"]["epoch_s"]
    speedups = {loop: base / r["epoch_s"] for loop, r in results.items() if loop != "dataloader"}
    print("  " + ", ".join(f"{loop} {s:.2f}x the DataLoader loop" for loop, s in speedups.items()))
    if args.compile:
        print(
            "  torch.compile speed-up: "
            f"{results['engine']['epoch_s'] / results['engine+compile']['epoch_s']:.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "torch": torch.__version__,
                    "device": name,
                    "args": vars(args),
                    "matmul_flops": rate,
                    "step_flops": flops,
                    "floor_s": floor_s,
                    "loops": results,
                    "speedup_vs_dataloader": speedups,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
