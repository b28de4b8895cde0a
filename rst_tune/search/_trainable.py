"""The Ray Tune function trainable: one trial is one engine training run, reported epoch by epoch."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import ray.tune
import torch

from rst_tune._train import EpochMetrics, Trainer
from rst_tune.config import ConfigError
from rst_tune.search._record import TrialRecord

CHECKPOINT_FILE = "trainer.pt"
# Ray deletes a trial's older checkpoints as soon as it registers a new one, but saves the experiment
# state (which names the checkpoint to resume from) at most once a second: with one kept, a driver
# killed in between resumes a trial from a checkpoint that is gone (seen in CI: the trial then FAILED).
# Two kept leave the one the saved state names, unless two epochs end within that second.
KEEP_CHECKPOINTS = 2


def train_trial(config: dict[str, Any]) -> None:
    """Train the trial whose record is `config`, resuming from Tune's checkpoint if there is one. Every
    epoch reports the engine's metrics (`device_seconds` counts the devices it holds) with
    `expected_cost`, the Ray node it ran on, and a checkpoint. A diverged epoch is reported with a
    `failure` reason, then raised, so the trial ends FAILED with that reason."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per checkpoint
    record = TrialRecord.from_config(config)
    trainer = Trainer(record.train, devices=held_devices(), device=trial_device(record.train.device))
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load(Path(folder) / CHECKPOINT_FILE)
    node_id = ray.get_runtime_context().get_node_id()
    for metrics in trainer.fit():
        result = {**metrics, "expected_cost": record.expected_cost, "node_id": node_id}
        failure = divergence(trainer, metrics)
        if failure:
            ray.tune.report({**result, "failure": failure})
            raise FloatingPointError(failure)
        with tempfile.TemporaryDirectory() as folder:
            trainer.save(Path(folder) / CHECKPOINT_FILE)
            ray.tune.report(result, checkpoint=ray.tune.Checkpoint.from_directory(folder))


def divergence(trainer: Trainer, metrics: EpochMetrics) -> str | None:
    """Why the epoch `metrics` ends the trial (a loss that is not finite), or None."""
    watched = ("train_loss", "val_loss") if trainer.data.size("val") else ("train_loss",)
    diverged = [key for key in watched if not math.isfinite(metrics[key])]
    if diverged:
        return f"diverged: {diverged[0]} is {metrics[diverged[0]]} at epoch {metrics.epoch}"
    return None


def trial_device(requested: str) -> torch.device:
    """The device this trial trains on, given the GPUs Ray assigned it (`device_for`)."""
    gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    return device_for(requested, gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES"))


def device_for(requested: str, gpu_ids: Sequence[str], visible: str | None) -> torch.device:
    """The device of a Ray worker assigned `gpu_ids` whose config asks for `requested`: "auto" and
    "cuda" mean its first GPU (numbered as in `visible`, the CUDA_VISIBLE_DEVICES Ray set), "auto"
    without a GPU the CPU. Ray 2.60 no longer hides GPUs from workers that hold none, so what torch
    sees is not what the trial holds."""
    kind = requested.split(":")[0]
    if kind in ("cpu", "mps"):
        return torch.device(requested)
    if not gpu_ids:
        if kind == "cuda":
            raise ConfigError("cuda, but Ray assigned this trial no GPU: set resources.gpu", key="device")
        return torch.device("cpu")
    numbering = visible.split(",") if visible else []
    first = str(gpu_ids[0])
    return torch.device("cuda", numbering.index(first) if first in numbering else int(first))


def held_devices() -> float:
    """The devices this trial holds: its GPUs (a fraction when it shares one), else its CPU as one."""
    return ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0) or 1.0


def saved_weights(checkpoint: ray.tune.Checkpoint) -> dict[str, Any]:
    """The model's state dict in a trial's checkpoint."""
    import torch

    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["model"]
