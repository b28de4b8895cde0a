"""Datasets kept whole on the training device, batched and augmented there (the airbench approach).

Images stay as uint8 (N, C, H, W) tensors (signals float32 (N, C, L), features (N, F)) on the device;
each batch is gathered, cropped, flipped and normalised by one indexing op and one fused multiply-add,
so no worker processes, no host copies and no per-image Python run inside an epoch. All randomness
of an epoch (order, crops, flips) comes from one host `torch.Generator`, drawn once per epoch, so a
run is reproducible across devices and its data order can be checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from rst_tune.data._splits import DEFAULT_VAL_FRACTION, Batches, holdout, normalizer, rank_share

_TENSORS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


@dataclass
class DataSplits:
    """Training, validation and test inputs and labels, whole on one device, with their
    normalisation. The validation and test parts may be empty."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    crop_padding: int = 0  # > 0: random crop after zero padding (images only)
    flip: bool = False  # random horizontal flips (images only)
    rank: int = 0
    world_size: int = 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def size(self, part: str) -> int:
        return len(getattr(self, f"{part}_y"))

    def to(self, device: torch.device | str) -> DataSplits:
        return replace(self, **{name: getattr(self, name).to(device) for name in _TENSORS})

    def shard(self, rank: int, world_size: int) -> DataSplits:
        return replace(self, rank=rank, world_size=world_size)

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.train_y) // batch_size

    def train_batches(self, batch_size: int, generator: torch.Generator, start: int = 0) -> Batches:
        n, device = len(self.train_y), self.train_y.device
        order = torch.randperm(n, generator=generator).to(device)
        pad, augment = self.crop_padding, self.crop_padding > 0 or self.flip
        if augment:
            shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).to(device)
            flips = (
                torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=bool)
            ).to(device)
            padded = torch.nn.functional.pad(self.train_x, (pad,) * 4) if pad else self.train_x
        normalize = normalizer(self.mean, self.std, self.train_x.dim() - 1, device)
        share = rank_share(batch_size, self.rank, self.world_size)
        for first in range(start * batch_size, self.steps_per_epoch(batch_size) * batch_size, batch_size):
            idx = order[first : first + batch_size][share]
            if augment:
                images = crop_and_flip(padded[idx], shifts[idx], flips[idx], self.train_x.shape[-1])
            else:
                images = self.train_x[idx]
            yield normalize(images), self.train_y[idx]

    def eval_batches(self, part: str, batch_size: int) -> Batches:
        x, y = getattr(self, f"{part}_x"), getattr(self, f"{part}_y")
        share = rank_share(len(y), self.rank, self.world_size)
        x, y = x[share], y[share]
        normalize = normalizer(self.mean, self.std, x.dim() - 1, y.device)
        for first in range(0, len(y), batch_size):
            yield normalize(x[first : first + batch_size]), y[first : first + batch_size]

    def probe(self, count: int) -> torch.Tensor:
        inputs = self.train_x[:count].cpu()
        return normalizer(self.mean, self.std, inputs.dim() - 1, inputs.device)(inputs)


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


def three_parts(
    x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, val_size: int | None, **rest: Any
) -> DataSplits:
    """Training data (x, y) split into training and validation parts, and the test part, as tensors.
    `val_size` None holds out `DEFAULT_VAL_FRACTION` of the training data."""
    size = round(DEFAULT_VAL_FRACTION * len(y)) if val_size is None else val_size
    kept, held = holdout(y, size)
    arrays = (x[kept], y[kept], x[held], y[held], test_x, test_y)
    return DataSplits(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays), **rest)
