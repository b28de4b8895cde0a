"""Datasets kept whole on the training device, in three parts, with batched on-device augmentation.

Every dataset has a training, a validation and a test part. The validation part is held out of the
training data by a stratified split with a fixed seed (`SPLIT_SEED`), the same for every trial and
training seed; the test part is the dataset's own test set. Searches select on validation only.

Images stay as uint8 (N, C, H, W) tensors (signals as float32 (N, C, L)) on the device; each batch
is gathered, cropped, flipped and normalised by one indexing op and one fused multiply-add, so no
worker processes, no host copies and no per-image Python run inside an epoch (the airbench
approach). All randomness of an epoch (order, crops, flips) comes from one host `torch.Generator`,
drawn once per epoch, so a run is reproducible across devices and its data order can be checkpointed.

Datasets: scikit-learn's digits and MNIST-1D (Greydanus & Kobak, generated locally by the `mnist1d`
package, nothing downloaded), both embedded; CIFAR-10/100 from a local directory in the official
python format (optional download); `synthetic`, random CIFAR-shaped data for speed benchmarks only.
"""

from __future__ import annotations

import functools
import os
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

DATASETS = ("digits", "mnist1d", "cifar10", "cifar100", "synthetic")
SPLIT_SEED = 0  # fixes every validation split (and digits' test split): the same for every trial
DEFAULT_VAL_FRACTION = 0.2  # of the training part, where a dataset has no default validation size
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
CIFAR_VAL_SIZE = 5_000  # held out of the 50,000 training images
_CIFAR_MEAN = {"cifar10": (125.3, 123.0, 113.9), "cifar100": (129.3, 124.1, 112.4)}
_CIFAR_STD = {"cifar10": (63.0, 62.1, 66.7), "cifar100": (68.2, 65.4, 70.4)}


_PARTS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


@dataclass
class DataSplits:
    """Training, validation and test inputs (uint8 images N×C×H×W, or float signals N×C×L) and labels,
    with their normalisation. The validation part may be empty (a study that trains on everything)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    crop_padding: int = 0  # > 0: random crop after zero padding, plus horizontal flips
    flip: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device | str) -> DataSplits:
        return replace(self, **{name: getattr(self, name).to(device) for name in _PARTS})

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.train_y) // batch_size

    def train_batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, augmented, normalised batches; the last partial batch is dropped."""
        n, device = len(self.train_y), self.train_y.device
        order = torch.randperm(n, generator=generator).to(device)
        pad, augment = self.crop_padding, self.crop_padding > 0 or self.flip
        if augment:
            shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).to(device)
            flips = (
                torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=bool)
            ).to(device)
            padded = torch.nn.functional.pad(self.train_x, (pad,) * 4) if pad else self.train_x
        normalize = self._normalizer(device)
        for start in range(0, self.steps_per_epoch(batch_size) * batch_size, batch_size):
            idx = order[start : start + batch_size]
            if augment:
                images = crop_and_flip(padded[idx], shifts[idx], flips[idx], self.train_x.shape[-1])
            else:
                images = self.train_x[idx]
            yield normalize(images), self.train_y[idx]

    def eval_batches(self, part: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The `part` ("val" or "test") in order, normalised, in batches of `batch_size`."""
        x, y = getattr(self, f"{part}_x"), getattr(self, f"{part}_y")
        normalize = self._normalizer(y.device)
        for start in range(0, len(y), batch_size):
            yield normalize(x[start : start + batch_size]), y[start : start + batch_size]

    def _normalizer(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """inputs ↦ (inputs − mean) / std per channel, its constants copied to the device once per epoch:
        a copy per batch would be a host synchronisation per step."""
        per_channel = (-1,) + (1,) * (self.train_x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(per_channel).to(device)
        inv_std = 1 / torch.tensor(self.std, dtype=torch.float32).view(per_channel).to(device)
        return lambda inputs: (inputs.float() - mean) * inv_std


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


def holdout(labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) of a split that holds `size` items out, each part in its original
    order: stratified by label where every class has two items and both parts room for every class
    (else a plain random split). It depends on the labels and `SPLIT_SEED` only."""
    from sklearn.model_selection import train_test_split

    if size == 0:
        return np.arange(len(labels)), np.arange(0)
    if not 0 < size < len(labels):
        raise ValueError(f"val_size={size} must be between 0 and the {len(labels)} training items")
    counts = np.unique(labels, return_counts=True)[1]
    stratify = counts.min() >= 2 and min(size, len(labels) - size) >= len(counts)
    kept, held = train_test_split(
        np.arange(len(labels)),
        test_size=size,
        random_state=SPLIT_SEED,
        stratify=labels if stratify else None,
    )
    return np.sort(kept), np.sort(held)


def three_parts(
    x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, val_size: int | None, **rest: Any
) -> DataSplits:
    """Training data (x, y) split into training and validation parts, and the test part, as tensors.
    `val_size` None holds out `DEFAULT_VAL_FRACTION` of the training data."""
    size = round(DEFAULT_VAL_FRACTION * len(y)) if val_size is None else val_size
    kept, held = holdout(y, size)
    arrays = (x[kept], y[kept], x[held], y[held], test_x, test_y)
    return DataSplits(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays), **rest)


def load_digits(val_size: int | None = None) -> DataSplits:
    """scikit-learn's 8×8 digits (1797 images, 10 classes): a fixed stratified 20 % test part, and
    validation held out of the rest."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = digits.images.astype(np.uint8)[:, None]  # values 0..16
    train, test = holdout(digits.target, round(0.2 * len(digits.target)))
    x, y = images[train], digits.target[train]
    return three_parts(
        x,
        y,
        images[test],
        digits.target[test],
        val_size,
        mean=(float(x.mean()),),
        std=(float(x.std()),),
        num_classes=10,
    )


@functools.lru_cache(maxsize=2)
def make_mnist1d(num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D as published (Greydanus & Kobak): the `mnist1d` package's generator with its default
    arguments (seed 42, 80 % / 20 % train/test split), `num_samples` signals of length 40. Generated
    here, never downloaded; cached in the process (2 s for 5,000 signals)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    state, python_state = np.random.get_state(), random.getstate()
    try:  # make_dataset seeds the global generators: leave them as they were
        data = make_dataset(args)
    finally:
        np.random.set_state(state)
        random.setstate(python_state)
    return data["x"], data["y"], data["x_test"], data["y_test"]


def load_mnist1d(val_size: int | None = None, num_samples: int = 5000) -> DataSplits:
    """MNIST-1D: 1-D signals of 40 samples, 10 classes; the published 4,000/1,000 train/test split
    (scaled by `num_samples`), validation held out of the 4,000. Already standardised."""
    if num_samples < 100 or num_samples % 10:
        raise ValueError(f"num_samples={num_samples} must be a multiple of 10, at least 100")
    x, y, test_x, test_y = make_mnist1d(num_samples)
    x, test_x = (signals.astype(np.float32)[:, None] for signals in (x, test_x))  # N×1×40
    return three_parts(x, y, test_x, test_y, val_size, mean=(0.0,), std=(1.0,), num_classes=10)


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


def load_cifar(
    name: str, root: str | os.PathLike, download: bool = False, val_size: int | None = None
) -> DataSplits:
    """CIFAR-10 or CIFAR-100: validation (default 5,000 images) held out of the training files, the
    rest trained on with crop and flip; the official test files as the test part."""
    root = Path(root).expanduser()
    if download:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, _CIFAR[name][5])
        for train in (True, False):
            dataset_class(str(root), train=train, download=True)
    x, y = read_cifar(name, root, train=True)
    test_x, test_y = read_cifar(name, root, train=False)
    return three_parts(
        x,
        y,
        test_x,
        test_y,
        CIFAR_VAL_SIZE if val_size is None else val_size,
        mean=_CIFAR_MEAN[name],
        std=_CIFAR_STD[name],
        num_classes=_CIFAR[name][4],
        crop_padding=4,
        flip=True,
    )


def synthetic(
    train_size: int = 10_000, val_size: int = 2_000, num_classes: int = 10, seed: int = 0, test_size: int = 0
) -> DataSplits:
    """Random CIFAR-shaped images and labels: for speed benchmarks only, nothing can be learned."""
    generator = torch.Generator().manual_seed(seed)
    total = train_size + val_size + test_size
    x = torch.randint(0, 256, (total, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, num_classes, (total,), generator=generator)
    ends = (train_size, train_size + val_size, total)
    return DataSplits(
        x[: ends[0]],
        y[: ends[0]],
        x[ends[0] : ends[1]],
        y[ends[0] : ends[1]],
        x[ends[1] :],
        y[ends[1] :],
        mean=(127.5,) * 3,
        std=(73.9,) * 3,
        num_classes=num_classes,
        crop_padding=4,
        flip=True,
    )


DATA_PARAMS: dict[str, tuple[str, ...]] = {"mnist1d": ("num_samples",)}
"""The `data_params` each dataset takes (the others take none)."""


def load_dataset(
    name: str,
    *,
    data_dir: str = DEFAULT_DATA_DIR,
    download: bool = False,
    label_noise: float = 0.0,
    seed: int = 0,
    val_size: int | None = None,
    data_params: dict[str, Any] | None = None,
) -> DataSplits:
    """Load a dataset by name (host memory) in its three parts. `val_size` items are held out of the
    training data for validation (None: the dataset's default); `label_noise` corrupts that fraction
    of the training part's labels (validation and test stay clean), drawn with `seed`. `data_params`
    are the dataset's own settings (`DATA_PARAMS`)."""
    if name == "digits":
        data = load_digits(val_size)
    elif name == "mnist1d":
        data = load_mnist1d(val_size, **(data_params or {}))
    elif name in _CIFAR:
        data = load_cifar(name, data_dir, download, val_size)
    elif name == "synthetic":
        data = synthetic() if val_size is None else synthetic(val_size=val_size)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if label_noise:
        data.train_y = symmetric_label_noise(data.train_y, data.num_classes, label_noise, seed)
    return data
