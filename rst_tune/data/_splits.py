"""What every dataset's three parts share: the interface the training loop reads, the fixed
validation split, label noise and per-channel normalisation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch

SPLIT_SEED = 0  # fixes every validation split (and digits' test split): the same for every trial
DEFAULT_VAL_FRACTION = 0.2  # of the training part, where a dataset has no default validation size
PARTS = ("train", "val", "test")

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


class Splits(Protocol):
    """A dataset's training, validation and test parts as the training loop reads them: normalised
    batches on the device, a seeded order per epoch. The device-resident `DataSplits` and the
    streaming `StreamingSplits` both are one."""

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rank: int  # which of `world_size` data-parallel ranks reads these batches (0 of 1: all of them)
    world_size: int

    @property
    def shape(self) -> tuple[int, ...]:
        """One input's shape: (C, H, W) images, (C, L) signals, (F,) feature vectors."""

    def size(self, part: str) -> int:
        """Items in `part` ("train", "val" or "test"); 0 where the dataset has none."""

    def to(self, device: torch.device | str) -> Splits:
        """The same parts, their batches delivered on `device`."""

    def shard(self, rank: int, world_size: int) -> Splits:
        """The same parts as rank `rank` of `world_size` reads them: `rank_share` of every training
        batch (batch sizes stay global) and of each evaluation part."""

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full training batches per epoch (the last partial batch is dropped)."""

    def train_batches(self, batch_size: int, generator: torch.Generator, start: int = 0) -> Batches:
        """One epoch of shuffled, augmented, normalised batches, from batch `start` on. The epoch's
        randomness is drawn from `generator` in full, whatever `start` is: resuming at `start` from
        the generator's state at the epoch's beginning gives the batches an unbroken epoch gives."""

    def eval_batches(self, part: str, batch_size: int) -> Batches:
        """The `part` ("val" or "test") in order, normalised, in batches of `batch_size`."""

    def probe(self, count: int) -> torch.Tensor:
        """The first `count` training inputs, normalised, on the CPU: to try a model on."""


def rank_share(length: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous share of `length` items split over `world_size` ranks: the shares
    differ in size by one at most and, in rank order, make up the whole."""
    return slice(rank * length // world_size, (rank + 1) * length // world_size)


def normalizer(
    mean: tuple[float, ...], std: tuple[float, ...], input_dims: int, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """inputs ↦ (inputs − mean) / std per channel (dimension 1 of a batch of `input_dims`-dimensional
    inputs), its constants copied to the device once: a copy per batch would be a host
    synchronisation per step."""
    per_channel = (-1,) + (1,) * (input_dims - 1)
    shift = torch.tensor(mean, dtype=torch.float32).view(per_channel).to(device)
    scale = 1 / torch.tensor(std, dtype=torch.float32).view(per_channel).to(device)
    return lambda inputs: (inputs.float() - shift) * scale


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
