"""Datasets from user code: `dataset: "package.module:function"` calls `function(**dataset_params)`.

The function returns a mapping with "train" and "val" (and optionally "test"), each either an
(inputs, labels) pair of tensors or arrays, kept whole on the device, or a `torch.utils.data.Dataset`
of (input, label) items, streamed. Optional keys describe the data: "num_classes" (else from the
labels), "mean" and "std" (per channel; else uint8 inputs get their training part's statistics and
other inputs are used as given), "crop_padding" and "flip" (device-side augmentation of N×C×H×W
images). Whatever is wrong raises ValueError with one line saying what was found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rst_tune._imports import one_line, resolve
from rst_tune.data._resident import DataSplits
from rst_tune.data._streaming import StreamingSplits, first_item

_DESCRIPTION = ("num_classes", "mean", "std", "crop_padding", "flip")
_STREAMED_DESCRIPTION = ("num_classes", "mean", "std")


def load_user_dataset(path: str, params: Mapping[str, Any], workers: int) -> DataSplits | StreamingSplits:
    """The splits `path(**params)` returns, checked."""
    function = resolve(path)
    try:
        returned = function(**params)
    except Exception as err:
        raise ValueError(f"{path}({_arguments(params)}) raised {one_line(err)}") from None
    if not isinstance(returned, Mapping):
        raise ValueError(
            f"{path} returned a {type(returned).__name__}; expected a mapping with train, val (and test)"
        )
    missing = [key for key in ("train", "val") if key not in returned]
    unknown = [str(key) for key in returned if key not in ("train", "val", "test", *_DESCRIPTION)]
    if missing or unknown:
        found = f"keys {', '.join(map(str, returned)) or 'none'}"
        raise ValueError(
            f"{path} returned {found}; expected train, val, optionally test, {', '.join(_DESCRIPTION)}"
        )
    parts = {key: returned[key] for key in ("train", "val", "test") if key in returned}
    streamed = [key for key, part in parts.items() if isinstance(part, Dataset)]
    if streamed and len(streamed) < len(parts):
        raise ValueError(
            f"{path} returned Datasets for {', '.join(streamed)} but not for the other parts: "
            "give every part as a Dataset, or every part as (inputs, labels)"
        )
    description = {key: returned[key] for key in _DESCRIPTION if key in returned}
    if streamed:
        return _streamed(path, parts, description, workers)
    return _resident(path, parts, description)


def _arguments(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in params.items())


def _resident(path: str, parts: dict[str, Any], description: dict[str, Any]) -> DataSplits:
    tensors = {key: _pair(path, key, part) for key, part in parts.items()}
    x, y = tensors["train"]
    for key, (inputs, _) in tensors.items():
        if inputs.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"{path}: {key} inputs have shape {tuple(inputs.shape[1:])}, train {tuple(x.shape[1:])}"
            )
    if not y.numel():
        raise ValueError(f"{path}: train is empty")
    if x.dtype == torch.uint8:
        channels = [x.select(1, c).double() for c in range(x.shape[1])]
        mean, std = tuple(float(c.mean()) for c in channels), tuple(float(c.std()) for c in channels)
    else:
        mean, std = (0.0,), (1.0,)
    num_classes = description.get(
        "num_classes", 1 + max(int(labels.max()) for _, labels in tensors.values() if labels.numel())
    )
    _check_labels(path, {key: labels for key, (_, labels) in tensors.items()}, num_classes)
    crop_padding, flip = description.get("crop_padding", 0), bool(description.get("flip", False))
    if (crop_padding or flip) and x.dim() != 4:
        raise ValueError(
            f"{path}: crop_padding and flip need N×C×H×W images; train inputs are {tuple(x.shape)}"
        )
    empty = (x[:0], torch.zeros(0, dtype=torch.long))
    test_x, test_y = tensors.get("test", empty)
    return DataSplits(
        x,
        y,
        *tensors["val"],
        test_x,
        test_y,
        mean=tuple(description.get("mean", mean)),
        std=tuple(description.get("std", std)),
        num_classes=num_classes,
        crop_padding=crop_padding,
        flip=flip,
    )


def _pair(path: str, key: str, part: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) as tensors: labels int64, one per input."""
    if not isinstance(part, (tuple, list)) or len(part) != 2:
        raise ValueError(
            f"{path}: {key} is a {type(part).__name__}; expected (inputs, labels) or a torch Dataset"
        )
    try:
        x, y = (torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a) for a in part)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: {key} is not a pair of arrays ({one_line(err)})") from None
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(
            f"{path}: {key} labels are {y.dtype} of shape {tuple(y.shape)}; expected one integer class each"
        )
    if x.dim() < 2 or len(x) != len(y):
        raise ValueError(f"{path}: {key} has {len(x) if x.dim() else 0} inputs but {len(y)} labels")
    return x.contiguous(), y.long()


def _check_labels(path: str, labels: dict[str, torch.Tensor], num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"{path}: {num_classes} class; a classifier needs at least 2")
    for key, values in labels.items():
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{path}: {key} labels range over {int(values.min())}..{int(values.max())}, "
                f"outside 0..{num_classes - 1}"
            )


def _streamed(
    path: str, parts: dict[str, Dataset], description: dict[str, Any], workers: int
) -> StreamingSplits:
    unsupported = [key for key in description if key not in _STREAMED_DESCRIPTION]
    if unsupported:
        raise ValueError(f"{path}: {', '.join(unsupported)} apply to (inputs, labels) parts, not Datasets")
    shape = None
    for key, dataset in parts.items():
        try:
            x, _ = first_item(dataset, key)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        if shape is not None and tuple(x.shape) != shape:
            raise ValueError(f"{path}: {key} inputs have shape {tuple(x.shape)}, train {shape}")
        shape = shape or tuple(x.shape)
    targets = getattr(parts["train"], "targets", None)
    if "num_classes" in description:
        num_classes = description["num_classes"]
    elif targets is not None:
        num_classes = 1 + int(max(targets))
    else:
        raise ValueError(f"{path}: train is a Dataset without `targets`; return num_classes with the parts")
    return StreamingSplits(
        parts,
        num_classes=num_classes,
        shape=shape,
        mean=tuple(description.get("mean", (0.0,))),
        std=tuple(description.get("std", (1.0,))),
        workers=workers,
    )
