"""Epoch throughput of the engine's loop against the DataLoader loop most users write, as model-FLOP
utilisation (MFU) of the device's measured matmul rate.

Both loops train the same ResNet-18 (CIFAR stem) on the same CIFAR-shaped uint8 images with the same
augmentation (4-pixel pad, random 32×32 crop, horizontal flip, normalise), batch, precision and
memory format:
- engine: `rst_tune._train.Trainer.train_epoch` (images resident on the device, augmentation batched
  on the device), SGD epochs (p ≡ 0) and SAM epochs (p ≡ 1);
- engine+compile: SGD epochs with `torch.compile` of the model (`--compile`);
- dataloader: the loop most users write: a CIFAR-style Dataset (PIL image + torchvision transforms)
  in a `DataLoader` with pinned memory, `.to(device, non_blocking=True)`, then
  `zero_grad / forward / backward / step` of `torch.optim.SGD`, at each of `--workers` worker counts;
  its best count is the baseline.
Each loop runs one warm-up epoch (compilation, cuDNN autotuning, worker start), then `--epochs` timed
epochs; the median is reported. MFU is the model FLOPs an epoch runs (one forward-backward counted
by `torch.utils.flop_counter.FlopCounterMode`, × passes) per second over the dense matmul rate
measured at the run's precision (square `--matmul-size` matmuls). A CIFAR ResNet's BatchNorm and ReLU
are memory-bound, so MFU, not a FLOP floor, is the yardstick: airbench's 94 % CIFAR-10 run does
0.36 PFLOP in 3.83 s on an A100, about 30 % of its 312 TFLOP/s (github.com/KellerJordan/cifar10-airbench).

    python benchmarks/epoch_throughput.py --compile --json out.json   # CUDA: batch 512, bf16, channels_last
    python benchmarks/epoch_throughput.py --device cpu --images 2048 --batch-size 128 --precision fp32
Targets (issue 22, GPU): an SGD epoch at ≥ 35 % MFU; a SAM epoch ≤ 2.05× an SGD epoch; the engine
≥ 2× the DataLoader loop at its best worker count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from _machine import device_name
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from rst_tune._train import Trainer
from rst_tune.config import load_config
from rst_tune.data import synthetic
from rst_tune.models import build_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = {"sgd_mfu": 0.35, "sam_over_sgd": 2.05, "engine_over_dataloader": 2.0}


@dataclass
class Setup:
    """What every loop trains: `images` per epoch in batches of `batch_size`, `epochs` timed epochs."""

    device: str
    images: int = 50_000
    batch_size: int = 512
    precision: str = "bf16"
    channels_last: bool = True
    epochs: int = 3
    matmul_size: int = 8192
    model: str = "resnet18"
    model_params: dict = field(default_factory=dict)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        return torch.autocast(
            torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )


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


def step_flops(setup: Setup) -> int:
    """FLOPs of one forward-backward of the model on one batch (matmuls and convolutions)."""
    device = torch.device(setup.device)
    model = build_model(setup.model, 10, (3, 32, 32), **setup.model_params)
    model = model.to(device, memory_format=setup.memory_format)
    images = torch.randn(setup.batch_size, 3, 32, 32, device=device).contiguous(
        memory_format=setup.memory_format
    )
    labels = torch.randint(0, 10, (setup.batch_size,), device=device)
    with FlopCounterMode(display=False) as counter, setup.autocast():
        F.cross_entropy(model(images).float(), labels).backward()
    return counter.get_total_flops()


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


def engine_epochs(setup: Setup, p: float, compile_model: bool) -> tuple[list[float], float]:
    """The engine's epochs at constant p: their seconds, and the passes per step they ran."""
    config = load_config(
        {
            "dataset": "synthetic",
            "model": setup.model,
            "model_params": setup.model_params,
            "batch_size": setup.batch_size,
            "epochs": setup.epochs + 1,
            "lr": 0.05,
            "schedule": {"name": "constant", "params": {"p": p}},
            "device": setup.device,
            "precision": setup.precision,
            "channels_last": setup.channels_last,
            "compile": compile_model,
        }
    )
    trainer = Trainer(config, data=synthetic(train_size=setup.images, val_size=0))
    seconds = _timed_epochs(trainer.train_epoch, trainer.device, setup.epochs)
    return seconds, trainer.history[-1].cost_ratio


class CifarLike(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 array -> PIL image -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def dataloader_epochs(setup: Setup, workers: int) -> list[float]:
    device = torch.device(setup.device)
    data = synthetic(train_size=setup.images, val_size=0)
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
        batch_size=setup.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    torch.manual_seed(0)
    model = build_model(setup.model, 10, (3, 32, 32), **setup.model_params)
    model = model.to(device, memory_format=setup.memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()

    def run_epoch() -> None:
        for images, labels in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=setup.memory_format)
            labels = labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with setup.autocast():
                loss = F.cross_entropy(model(images).float(), labels)
            loss.backward()
            optimizer.step()

    return _timed_epochs(run_epoch, device, setup.epochs)


def measure(setup: Setup, compile_model: bool, workers: list[int], report=print) -> dict:
    """Every loop of `setup`, `report`ing a line as each finishes; returns every figure."""
    device = torch.device(setup.device)
    torch.backends.cudnn.benchmark = True
    steps = setup.images // setup.batch_size
    rate = matmul_rate(device, setup.precision, setup.matmul_size)
    flops = step_flops(setup)
    report(
        f"{setup.model}, {setup.images} images, batch {setup.batch_size}, {setup.precision}, "
        f"channels_last={setup.channels_last}; matmul rate {rate / 1e12:.3g} TFLOP/s ({setup.precision}, "
        f"{setup.matmul_size}²); {flops / setup.batch_size / 1e9:.3f} GFLOP per image per pass"
    )
    loops = {"engine sgd": lambda: engine_epochs(setup, 0.0, False)}
    loops["engine sam"] = lambda: engine_epochs(setup, 1.0, False)
    for count in workers:
        loops[f"dataloader {count} workers"] = lambda count=count: (dataloader_epochs(setup, count), 1.0)
    if compile_model:  # last: a compiler that fails on a new machine costs no other loop
        loops["engine+compile sgd"] = lambda: engine_epochs(setup, 0.0, True)
    results = {}
    report(f"  {'loop':<22}{'s/epoch':>9}{'images/s':>11}{'TFLOP/s':>9}{'MFU':>8}")
    for loop, run in loops.items():
        try:
            seconds, passes = run()
        except Exception as err:  # one loop failing is a finding, not the end of the others
            results[loop] = {"error": f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"}
            report(f"  {loop:<22}FAILED: {results[loop]['error']}")
            continue
        epoch_s = statistics.median(seconds)
        achieved = flops * passes * steps / epoch_s
        results[loop] = {
            "epoch_s": epoch_s,
            "all_epoch_s": seconds,
            "passes_per_step": passes,
            "images_per_s": steps * setup.batch_size / epoch_s,
            "achieved_flops": achieved,
            "mfu": achieved / rate,
        }
        r = results[loop]
        report(
            f"  {loop:<22}{epoch_s:>9.3f}{r['images_per_s']:>11.0f}{achieved / 1e12:>9.2f}{r['mfu']:>8.1%}"
        )
    figures, verdicts = _figures(results)
    report("  " + ", ".join(f"{name} {value:.3f}" for name, value in figures.items()))
    report("  " + ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in verdicts.items()))
    return {
        "setup": asdict(setup),
        "matmul_flops": rate,
        "step_flops": flops,
        "loops": results,
        "figures": figures,
        "verdicts": verdicts,
    }


def _figures(results: dict) -> tuple[dict[str, float], dict[str, bool]]:
    """The targets' figures and verdicts, from the loops that ran."""
    ran = {loop: r for loop, r in results.items() if "error" not in r}
    loaders = [loop for loop in ran if loop.startswith("dataloader")]
    sgd = ran.get("engine sgd")
    figures, verdicts = {}, {}
    if sgd:
        figures["sgd_mfu"] = sgd["mfu"]
        verdicts["SGD epoch >= 35% MFU"] = sgd["mfu"] >= TARGETS["sgd_mfu"]
    if sgd and "engine sam" in ran:
        figures["sam_over_sgd"] = ran["engine sam"]["epoch_s"] / sgd["epoch_s"]
        verdicts["SAM epoch <= 2.05x SGD epoch"] = figures["sam_over_sgd"] <= TARGETS["sam_over_sgd"]
    if sgd and loaders:
        best = min(loaders, key=lambda loop: ran[loop]["epoch_s"])
        figures["engine_over_dataloader"] = ran[best]["epoch_s"] / sgd["epoch_s"]
        verdicts[f"engine >= 2x DataLoader at its best ({best})"] = (
            figures["engine_over_dataloader"] >= TARGETS["engine_over_dataloader"]
        )
    if sgd and "engine+compile sgd" in ran:
        figures["compile_speedup"] = sgd["epoch_s"] / ran["engine+compile sgd"]["epoch_s"]
    return figures, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=50_000, help="training images per epoch (CIFAR: 50000)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--precision", choices=list(DTYPES), default="bf16")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true", help="also time the engine with torch.compile")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[n for n in (0, 2, 4, 8, 16) if n <= (os.cpu_count() or 1)],
        help="DataLoader worker counts to sweep",
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="timed epochs per loop, after one warm-up epoch"
    )
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    args = parser.parse_args()
    setup = Setup(
        device=args.device,
        images=args.images,
        batch_size=args.batch_size,
        precision=args.precision,
        channels_last=args.channels_last,
        epochs=args.epochs,
        matmul_size=args.matmul_size,
    )
    name = device_name(torch.device(args.device))
    print(f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads")
    result = measure(setup, args.compile, args.workers)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": name, **result}, f, indent=2)


if __name__ == "__main__":
    main()
