"""The plots a trial's MLflow run gets: its schedule with the realised SAM fraction, and its
learning curves."""

from __future__ import annotations

from pathlib import Path

from rst_tune._train import EpochMetrics
from rst_tune.methods import METHODS
from rst_tune.search._record import TrialRecord


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_schedule(record: TrialRecord, history: list[EpochMetrics], path: Path, epochs: int) -> None:
    """p(t) of the trial's schedule (for the methods that draw from one), with the realised SAM
    fraction of every epoch."""
    plt = _pyplot()
    schedule, drawn = record.train.schedule.build(), METHODS[record.train.method.name].uses_schedule
    xs = [i / 400 for i in range(401)]
    steps, sam = [0] + [h.steps for h in history], [0] + [h.sam_steps for h in history]
    fraction = [(sam[i + 1] - sam[i]) / (steps[i + 1] - steps[i]) for i in range(len(history))]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    if drawn:
        ax.plot(
            [x * epochs for x in xs], [schedule(x) for x in xs], color="tab:blue", label=f"p(t) = {schedule}"
        )
    ax.stairs(
        fraction,
        [h.epoch - 1 for h in history[:1]] + [h.epoch for h in history],
        color="tab:red",
        label="realised SAM fraction per epoch",
    )
    ax.set(xlabel="epoch", ylabel="probability of a SAM step", ylim=(-0.05, 1.05), xlim=(0, epochs))
    ax.set_title(f"{record.train.method_words()}: expected cost {record.expected_cost:.3f}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_learning_curves(record: TrialRecord, history: list[EpochMetrics], path: Path, epochs: int) -> None:
    """Loss and accuracy per epoch, training and validation."""
    plt = _pyplot()
    epoch = [h.epoch for h in history]
    fig, (loss, accuracy) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=110)
    for ax, key in ((loss, "loss"), (accuracy, "accuracy")):
        ax.plot(epoch, [h[f"train_{key}"] for h in history], marker=".", label="train")
        ax.plot(epoch, [h[f"val_{key}"] for h in history], marker=".", label="validation")
        ax.set(xlabel="epoch", ylabel=key, xlim=(0.5, epochs + 0.5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(record.label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
