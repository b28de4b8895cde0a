"""The cost axis: what a trial costs, defined once for the front, its plot, the budget, the schedulers,
the sampler and the hypervolume.

A trial's compute is its passes (`rst_tune._cost`) weighted by the examples each carries: its
propagations × its batch size (every training batch is full; an epoch drops its partial last batch).
The axis reads it in two units, one constant factor apart within a search:
- `value`, propagations over batches of the spec's `train.batch_size`: the front, Optuna's objective,
  pareto.json and the hypervolume. Where batch_size is not searched, a trial's own propagations.
- `cost`, compute over that of SGD at the spec's settings (its epochs and batch size): SGD 1, SAM 2,
  SAM for twice the epochs 4. The plot, the budget, the schedulers and the sampler's price. Known
  before training from the method's expected cost per step, realised from the counters.
With batch_size searched, the factor between two batch sizes needs the training part's size: the
search reads it from the data once. Every search keeps its axis among its Optuna study's user
attributes (`cost_axis`), and pareto.json repeats it. The axis takes every trial to train on the same
training part: a search may not draw val_size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rst_tune.config import TrainConfig
from rst_tune.search._objectives import COSTS
from rst_tune.search._record import TrialRow

if TYPE_CHECKING:
    from rst_tune.search._spec import SearchSpec

KEPT = "cost_axis"  # the Optuna study's user attribute that keeps it


@dataclass(frozen=True)
class CostAxis:
    """The axis of a search whose fixed training settings have `epochs` and `batch_size`, against
    `name` (one of `COSTS`); `train_size`, the training examples, where a batch size differs."""

    name: str
    epochs: int
    batch_size: int
    train_size: int | None = None

    def __post_init__(self) -> None:
        if self.name not in COSTS:
            raise ValueError(f"cost {self.name!r}: choose one of {', '.join(COSTS)}")

    @classmethod
    def of(cls, spec: SearchSpec, name: str | None = None, attrs: Mapping[str, Any] = {}) -> CostAxis:
        """The axis of `spec` against `name` (default: the spec's cost); the training part's size from
        `attrs` (a study's user attributes, where `keep` put it), else from the data when batch_size
        is searched."""
        base = spec.train_config()
        size = attrs.get(KEPT, {}).get("train_size")
        if size is None and "batch_size" in spec.dimensions:
            from rst_tune._train import load_data

            size = load_data(base).size("train")
        return cls(name or spec.cost, base.epochs, base.batch_size, size)

    def keep(self, study) -> None:
        """Keep the axis among `study`'s user attributes (the cost is the reader's to choose)."""
        if KEPT not in study.user_attrs:
            study.set_user_attr(KEPT, self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "train_size": self.train_size}

    def share(self, batch_size: int) -> float:
        """The examples an epoch at `batch_size` trains on over those at the spec's."""
        if batch_size == self.batch_size:
            return 1.0
        if self.train_size is None:
            raise ValueError(
                f"batch size {batch_size} differs from {self.batch_size}: the axis needs train_size"
            )
        n = self.train_size
        return (n // batch_size) * batch_size / ((n // self.batch_size) * self.batch_size)

    def cost(self, cost_ratio: float, epochs: float, batch_size: int) -> float:
        """The cost of `epochs` epochs at `cost_ratio` per step and `batch_size`: compute over SGD's at
        the spec's settings. With the expected cost per step, the cost known before training."""
        return cost_ratio * epochs / self.epochs * self.share(batch_size)

    def known(self, train: TrainConfig) -> float:
        """What training `train` will cost, known before it trains."""
        return self.cost(train.expected_cost(), train.epochs, train.batch_size)

    def cost_of(self, row: TrialRow) -> float:
        """What a trial's epochs so far cost."""
        return self.cost(row.cost_ratio, row.epochs, row.record.train.batch_size)

    def propagations(self, propagations: float, batch_size: int) -> float:
        """`propagations` over batches of `batch_size`, counted in batches of the spec's size."""
        return propagations * batch_size / self.batch_size

    def propagations_of(self, row: TrialRow) -> float:
        """A trial's propagations so far, counted in batches of the spec's size."""
        return self.propagations(row.propagations, row.record.train.batch_size)

    def value(self, row: TrialRow) -> float:
        """A trial's place on the front's axis: its propagations (`propagations_of`), or device_seconds."""
        return row.device_seconds if self.name == "device_seconds" else self.propagations_of(row)

    def result(self, result: Mapping[str, Any], batch_size: int) -> dict[str, Any]:
        """A trial's result (an epoch's metrics) at `batch_size` with its propagations on the axis, as
        Optuna's objective is told them."""
        return {**result, "propagations": self.propagations(result["propagations"], batch_size)}

    def x(self, row: TrialRow) -> float:
        """A trial's place on the plot: its cost, or its device_seconds."""
        return self.cost_of(row) if self.name == "propagations" else row.device_seconds

    def reference(self, rows: Sequence[TrialRow]) -> float | None:
        """The hypervolume's reference cost: the dearest of `rows` had it taken a sharpness-aware step at
        every step (propagations), or the longest of them (device_seconds)."""
        if self.name == "device_seconds":
            return max((r.device_seconds for r in rows), default=None)
        return max(
            (self.propagations(2 * r.metrics.steps, r.record.train.batch_size) for r in rows), default=None
        )

    def label(self) -> str:
        """The plot's axis label."""
        if self.name == "propagations":
            return "cost (compute ÷ SGD's at the spec's epochs and batch size; SGD 1, SAM 2)"
        return "device seconds (training wall time × devices)"


def compute(row: TrialRow, name: str) -> float:
    """A trial's cost `name` (one of `COSTS`) in a unit of its own, proportional to any search's axis:
    pass-weighted examples (propagations × batch size), or device_seconds. What a study orders by."""
    return CostAxis(name, epochs=1, batch_size=1).value(row)
