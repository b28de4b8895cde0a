"""Datasets in three parts (train, validation, test), delivered as normalised batches on the device.

Every dataset has a training, a validation and a test part; searches select on validation only.
Built in: `digits`, `mnist1d`, `cifar10`, `cifar100` (validation held out of the training data by a
fixed stratified split, the same for every trial) and `synthetic` (speed benchmarks). `imagefolder`
reads train/, val/ and test/ folders. "package.module:function" calls user code. Data that fits is
kept whole on the device (`DataSplits`); image folders and user `Dataset`s are streamed through a
`DataLoader` (`StreamingSplits`). The training loop reads both through `Splits`. The public names
are `__all__`; the modules (`_builtin`, ...) are private.
"""

from __future__ import annotations

from typing import Any

import torch

from rst_tune._imports import is_import_path
from rst_tune.data._builtin import (
    CIFAR_VAL_SIZE,
    DEFAULT_DATA_DIR,
    load_cifar,
    load_digits,
    load_mnist1d,
    make_mnist1d,
    read_cifar,
    synthetic,
)
from rst_tune.data._imagefolder import load_imagefolder
from rst_tune.data._resident import DataSplits, crop_and_flip
from rst_tune.data._splits import DEFAULT_VAL_FRACTION, SPLIT_SEED, Splits, holdout, symmetric_label_noise
from rst_tune.data._streaming import StreamingSplits
from rst_tune.data._user import load_user_dataset

DATASETS = ("digits", "mnist1d", "cifar10", "cifar100", "synthetic", "imagefolder")
"""The built-in datasets; any "package.module:function" names a user dataset."""
DATASET_PARAMS: dict[str, tuple[str, ...]] = {
    "mnist1d": ("num_samples",),
    "imagefolder": ("image_size", "augment", "padding", "flip", "mean", "std", "stats_images"),
}
"""The `dataset_params` each built-in dataset takes (the others take none; user datasets, any)."""
OWN_VALIDATION = ("imagefolder",)
"""Built-in datasets that come with their validation part (as every user dataset does)."""


def gives_validation(name: str) -> bool:
    """Whether dataset `name` brings its own validation part, so `val_size` does not apply."""
    return name in OWN_VALIDATION or is_import_path(name)


def load_dataset(
    name: str,
    *,
    data_dir: str = DEFAULT_DATA_DIR,
    download: bool = False,
    label_noise: float = 0.0,
    seed: int = 0,
    val_size: int | None = None,
    dataset_params: dict[str, Any] | None = None,
    workers: int = 2,
) -> Splits:
    """Load dataset `name` (host memory, or streamed) in its three parts. `val_size` items are held
    out of the training data for validation (None: the dataset's default); `label_noise` corrupts
    that fraction of the training part's labels (validation and test stay clean), drawn with `seed`.
    `dataset_params` are the dataset's own settings (`DATASET_PARAMS`; a user function's arguments);
    `workers` the loader processes of a streamed dataset."""
    params = dataset_params or {}
    if gives_validation(name) and val_size is not None:
        raise ValueError(f"val_size does not apply: {name} brings its own validation part")
    if name == "digits":
        data = load_digits(val_size)
    elif name == "mnist1d":
        data = load_mnist1d(val_size, **params)
    elif name in ("cifar10", "cifar100"):
        data = load_cifar(name, data_dir, download, val_size)
    elif name == "synthetic":
        data = synthetic() if val_size is None else synthetic(val_size=val_size)
    elif name == "imagefolder":
        data = load_imagefolder(data_dir, workers=workers, **params)
    elif is_import_path(name):
        data = load_user_dataset(name, params, workers)
    else:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or package.module:function"
        )
    if label_noise:
        _add_label_noise(data, label_noise, seed)
    return data


def _add_label_noise(data: Splits, fraction: float, seed: int) -> None:
    if isinstance(data, DataSplits):
        data.train_y = symmetric_label_noise(data.train_y, data.num_classes, fraction, seed)
        return
    targets = getattr(data.parts["train"], "targets", None)
    if targets is None:
        raise ValueError("label_noise needs the training labels: the train Dataset has no `targets`")
    clean = torch.as_tensor(targets, dtype=torch.long)
    data.train_labels = symmetric_label_noise(clean, data.num_classes, fraction, seed)


__all__ = [
    "CIFAR_VAL_SIZE",
    "DATASETS",
    "DATASET_PARAMS",
    "DEFAULT_DATA_DIR",
    "DEFAULT_VAL_FRACTION",
    "SPLIT_SEED",
    "DataSplits",
    "Splits",
    "StreamingSplits",
    "crop_and_flip",
    "gives_validation",
    "holdout",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_imagefolder",
    "load_mnist1d",
    "load_user_dataset",
    "make_mnist1d",
    "read_cifar",
    "symmetric_label_noise",
    "synthetic",
]
