"""Datasets read item by item through a `DataLoader`, for data that does not fit on the device.

Worker processes decode and augment; batches come in pinned memory and are copied to the device
without blocking, then normalised there as on the device-resident path. The order of an epoch and
each item's augmentation seed are drawn from the run's data generator, so the data order is
reproducible, independent of the number of workers, and resumable mid-epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rst_tune.data._splits import Batches, normalizer, rank_share

_SEED_BOUND = 2**62


class _Plan(Sampler):
    """Yields the (index, seed) pairs it was last given: one epoch's order."""

    def __init__(self) -> None:
        self.pairs: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)


class SeededItems(Dataset):
    """`dataset`'s items as (input tensor, label). Indexed by (index, seed), an item is drawn with
    torch's generator seeded by `seed` (and the caller's generator left as it was), so its random
    augmentation depends on the seed only. `labels`, when given, replace the items' own labels."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor | None = None):
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            index, seed = key
            generator = torch.random.default_generator  # the CPU one: transforms draw from it
            state = generator.get_state()
            generator.manual_seed(seed)
            try:
                x, y = self.dataset[index]
            finally:
                generator.set_state(state)
        else:
            index = key
            x, y = self.dataset[index]
        return torch.as_tensor(x), int(y if self.labels is None else self.labels[index])


@dataclass
class StreamingSplits:
    """Training, validation and test `Dataset`s (validation and test may be absent) whose items are
    (input, integer label), read by `workers` processes (0: in this process)."""

    parts: dict[str, Dataset]
    num_classes: int
    shape: tuple[int, ...]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    train_labels: torch.Tensor | None = None  # replaces the training items' labels (label noise)
    workers: int = 2
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _loaders: dict[tuple[str, int], tuple[DataLoader, _Plan | None]] = field(
        default_factory=dict, init=False, repr=False
    )

    def size(self, part: str) -> int:
        return len(self.parts[part]) if part in self.parts else 0

    def to(self, device: torch.device | str) -> StreamingSplits:
        return replace(self, device=torch.device(device))

    def shard(self, rank: int, world_size: int) -> StreamingSplits:
        return replace(self, rank=rank, world_size=world_size)

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.size("train") // batch_size

    def train_batches(self, batch_size: int, generator: torch.Generator, start: int = 0) -> Batches:
        n = self.size("train")
        order = torch.randperm(n, generator=generator)
        seeds = torch.randint(0, _SEED_BOUND, (n,), generator=generator)
        pairs = list(zip(order.tolist(), seeds.tolist()))
        share = rank_share(batch_size, self.rank, self.world_size)
        loader, plan = self._loader("train", share.stop - share.start)
        plan.pairs = [
            pair
            for first in range(start * batch_size, self.steps_per_epoch(batch_size) * batch_size, batch_size)
            for pair in pairs[first : first + batch_size][share]
        ]
        return self._on_device(loader)

    def eval_batches(self, part: str, batch_size: int) -> Batches:
        return self._on_device(self._loader(part, batch_size)[0])

    def probe(self, count: int) -> torch.Tensor:
        items = SeededItems(self.parts["train"])
        inputs = torch.stack([items[index][0] for index in range(count)])
        return normalizer(self.mean, self.std, len(self.shape), inputs.device)(inputs)

    def _on_device(self, loader: DataLoader) -> Batches:
        normalize = normalizer(self.mean, self.std, len(self.shape), self.device)
        for x, y in loader:
            yield normalize(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)

    def _loader(self, part: str, batch_size: int) -> tuple[DataLoader, _Plan | None]:
        """One loader per part and batch size, kept for the run so its workers persist across epochs."""
        if (part, batch_size) not in self._loaders:
            train = part == "train"
            plan = _Plan() if train else None
            items = SeededItems(self.parts[part], self.train_labels if train else None)
            share = rank_share(len(items), self.rank, self.world_size)
            loader = DataLoader(
                items,
                batch_size=batch_size,
                sampler=plan if train else range(share.start, share.stop),
                drop_last=train,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0,
                generator=torch.Generator(),  # worker seeds: not from the global generator
            )
            self._loaders[part, batch_size] = loader, plan
        return self._loaders[part, batch_size]


def first_item(dataset: Dataset, part: str) -> tuple[torch.Tensor, int]:
    """Item 0 of `dataset` as (input tensor, label), or ValueError saying what `part` holds instead."""
    if len(dataset) == 0:
        raise ValueError(f"{part} is an empty Dataset")
    item = dataset[0]
    if not isinstance(item, Sequence) or len(item) != 2:
        raise ValueError(f"{part}[0] is a {type(item).__name__}; expected an (input, label) pair")
    x, y = item
    try:
        return torch.as_tensor(x), int(y)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{part}[0] is not an (input, integer label) pair ({err})") from None
