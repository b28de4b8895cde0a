"""The built-in datasets: scikit-learn's digits and MNIST-1D (Greydanus & Kobak, generated locally by
the `mnist1d` package, nothing downloaded), both embedded; CIFAR-10/100 from a local directory in the
official python format (optional download); `synthetic`, random CIFAR-shaped data for speed
benchmarks only. Each comes in three parts, kept whole on the device (`DataSplits`); the validation
part is held out of the training data by the fixed stratified split, the test part is the dataset's
own test set."""

from __future__ import annotations

import functools
import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from rst_tune.data._resident import DataSplits, three_parts
from rst_tune.data._splits import holdout

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
