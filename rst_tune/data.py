"""Datasets kept whole on the training device, with batched on-device augmentation.

Images stay as uint8 (N, C, H, W) tensors on the device; each batch is gathered, cropped, flipped
and normalised by one indexing op and one fused multiply-add, so no worker processes, no host
copies and no per-image Python run inside an epoch (the airbench approach). All randomness of an
epoch (order, crops, flips) comes from one host `torch.Generator`, drawn once per epoch, so a run
is reproducible across devices and its data order can be checkpointed.

Datasets: scikit-learn's digits (embedded, the default), CIFAR-10/100 from a local directory in the
official python format (optional download), and `synthetic`, random CIFAR-shaped data for speed
benchmarks only.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "cifar10", "cifar100", "synthetic")
DEFAULT_DATA_DIR = os.environ.get("RST_TUNE_DATA", "~/.cache/rst-tune/data")

# name -> (folder, train files, test files, label key, classes, torchvision class for download)
_CIFAR = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
        10,
        "CIFAR10",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100, "CIFAR100"),
}
_CIFAR_MEAN = {"cifar10": (125.3, 123.0, 113.9), "cifar100": (129.3, 124.1, 112.4)}
_CIFAR_STD = {"cifar10": (63.0, 62.1, 66.7), "cifar100": (68.2, 65.4, 70.4)}


@dataclass
class ImageData:
    """Train and validation images (uint8, N×C×H×W) and labels, with their normalisation."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    crop_padding: int = 0  # > 0: random crop after zero padding, plus horizontal flips
    flip: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device | str) -> ImageData:
        move = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y")}
        return ImageData(
            **move,
            mean=self.mean,
            std=self.std,
            num_classes=self.num_classes,
            crop_padding=self.crop_padding,
            flip=self.flip,
        )

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.train_y) // batch_size

    def train_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, augmented, normalised batches; the last partial batch is dropped."""
        n, device = len(self.train_y), self.train_y.device
        order = torch.randperm(n, generator=generator)
        pad = self.crop_padding
        shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        order, shifts, flips = order.to(device), shifts.to(device), flips.to(device)
        padded = torch.nn.functional.pad(self.train_x, (pad,) * 4) if pad else self.train_x
        normalize = self._normalizer(device)
        for start in range(0, self.steps_per_epoch(batch_size) * batch_size, batch_size):
            idx = order[start : start + batch_size]
            images = crop_and_flip(padded[idx], shifts[idx], flips[idx], self.train_x.shape[-1])
            yield normalize(images), self.train_y[idx]

    def val_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        normalize = self._normalizer(self.val_y.device)
        for start in range(0, len(self.val_y), batch_size):
            yield normalize(self.val_x[start : start + batch_size]), self.val_y[start : start + batch_size]

    def _normalizer(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """images ↦ (images − mean) / std, its constants copied to the device once per epoch: a copy
        per batch would be a host synchronisation per step."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1).to(device)
        inv_std = 1 / torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1).to(device)
        return lambda images: (images.float() - mean) * inv_std


def crop_and_flip(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Crop size×size windows at per-image offsets `shifts` (B×2: row, col) and mirror where `flips`."""
    b, c = images.shape[:2]
    span = torch.arange(size, device=images.device)
    rows = shifts[:, 0:1] + span
    cols = shifts[:, 1:2] + torch.where(flips[:, None], span.flip(0), span)
    return images[
        torch.arange(b, device=images.device)[:, None, None, None],
        torch.arange(c, device=images.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def symmetric_label_noise(labels: torch.Tensor, num_classes: int, fraction: float, seed: int) -> torch.Tensor:
    """Replace round(fraction·N) labels, chosen at random, by a uniformly drawn *different* class."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label_noise={fraction} must be in [0, 1]")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(labels), generator=generator)[: round(fraction * len(labels))]
    offsets = torch.randint(1, num_classes, (len(chosen),), generator=generator)
    noisy = labels.clone()
    noisy[chosen] = (labels[chosen] + offsets) % num_classes
    return noisy


def load_digits(val_fraction: float = 0.2) -> ImageData:
    """scikit-learn's 8×8 digits (1797 images, 10 classes) with a fixed stratified split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = digits.images.astype(np.uint8)[:, None]  # values 0..16
    x_train, x_val, y_train, y_val = train_test_split(
        images, digits.target, test_size=val_fraction, random_state=0, stratify=digits.target
    )
    mean, std = float(x_train.mean()), float(x_train.std())
    return ImageData(
        *(torch.from_numpy(a) for a in (x_train, y_train, x_val, y_val)),
        mean=(mean,),
        std=(std,),
        num_classes=10,
    )


def read_cifar(name: str, root: str | os.PathLike, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N×3×32×32 uint8) and labels from the official python-format CIFAR files under root."""
    folder_name, train_files, test_files, label_key, _, _ = _CIFAR[name]
    folder = Path(root).expanduser() / folder_name
    files = [folder / f for f in (train_files if train else test_files)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} not found: {', '.join(missing)} missing in {folder}. Put the extracted official python "
            f"version of {name} there (data_dir={root}), or set download=true on a machine that is online."
        )
    images, labels = [], []
    for path in files:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def load_cifar(name: str, root: str | os.PathLike, download: bool = False) -> ImageData:
    """CIFAR-10 or CIFAR-100: the training set (with crop and flip) and the test set as validation."""
    root = Path(root).expanduser()
    if download:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, _CIFAR[name][5])
        for train in (True, False):
            dataset_class(str(root), train=train, download=True)
    x_train, y_train = read_cifar(name, root, train=True)
    x_val, y_val = read_cifar(name, root, train=False)
    return ImageData(
        *(torch.from_numpy(a) for a in (x_train, y_train, x_val, y_val)),
        mean=_CIFAR_MEAN[name],
        std=_CIFAR_STD[name],
        num_classes=_CIFAR[name][4],
        crop_padding=4,
        flip=True,
    )


def synthetic(
    train_size: int = 10_000, val_size: int = 2_000, num_classes: int = 10, seed: int = 0
) -> ImageData:
    """Random CIFAR-shaped images and labels: for speed benchmarks only, nothing can be learned."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (train_size + val_size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, num_classes, (train_size + val_size,), generator=generator)
    return ImageData(
        x[:train_size],
        y[:train_size],
        x[train_size:],
        y[train_size:],
        mean=(127.5,) * 3,
        std=(73.9,) * 3,
        num_classes=num_classes,
        crop_padding=4,
        flip=True,
    )


def load_dataset(
    name: str,
    *,
    data_dir: str = DEFAULT_DATA_DIR,
    download: bool = False,
    label_noise: float = 0.0,
    seed: int = 0,
) -> ImageData:
    """Load a dataset by name (host memory); `label_noise` corrupts that fraction of training labels."""
    if name == "digits":
        data = load_digits()
    elif name in _CIFAR:
        data = load_cifar(name, data_dir, download)
    elif name == "synthetic":
        data = synthetic()
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if label_noise:
        data.train_y = symmetric_label_noise(data.train_y, data.num_classes, label_noise, seed)
    return data
