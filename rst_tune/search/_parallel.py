"""Data-parallel runs on Ray Train: each worker one rank of the engine's run, launched by a Tune trial
(which then only drives the Train run) or by `rst-tune train workers=N`.

Ray Train starts the processes and the torch.distributed group (gloo on CPU, NCCL on GPU), on one node
or several; the engine does the rest (`rst_tune._train`). Rank 0 reports the all-reduced metrics and
writes the checkpoint, which any number of workers that divides the batch resumes from: in a search a
worker that dies restarts the group from it (`max_failures`); `rst-tune train` resumes from its
`--checkpoint` file when run again.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.train
import ray.tune
from ray.train.torch import TorchTrainer, get_device
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.util.placement_group import PlacementGroup
from ray.util.queue import Empty, Queue

from rst_tune._train import EpochMetrics, Trainer
from rst_tune.config import TrainConfig, load_config
from rst_tune.search._cluster import code_runtime_env, connect
from rst_tune.search._record import TrialRecord
from rst_tune.search._settings import Resources
from rst_tune.search._trainable import CHECKPOINT_FILE, KEEP_CHECKPOINTS, divergence

QUIET = ray.train.LoggingConfig(log_level="WARNING")  # not a line per report and checkpoint
PLACEMENT_GROUP = "placement_group_id"  # a data-parallel trial's result: its workers' placement group


def train_worker(loop: dict[str, Any]) -> None:
    """One rank of the run `loop["train"]` (a TrainConfig mapping): resumes from Train's checkpoint,
    else from `loop["checkpoint_file"]` when that exists; reports every epoch's metrics with
    `loop["report"]`. Rank 0 writes the checkpoint into `loop["checkpoint_file"]` when given, else
    reports it to Train when `loop["report_checkpoints"]`, and puts its metrics onto the
    `loop["epochs"]` queue when given. A diverged epoch is reported with its `failure` and ends the
    run."""
    # Ray Train's per-report INFO line comes from a logger named by its file, which its log level
    # setting misses: the worker logs from WARNING up
    logging.getLogger().setLevel(logging.WARNING)
    trainer = Trainer(load_config(loop["train"]), devices=loop["devices"], device=get_device())
    file = loop.get("checkpoint_file")
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load(Path(folder) / CHECKPOINT_FILE)
    elif file and Path(file).exists():
        trainer.load(file)
    node_id = ray.get_runtime_context().get_node_id()
    group = ray.util.get_current_placement_group().id.hex()
    for metrics in trainer.fit():
        failure = divergence(trainer, metrics)
        result = {**metrics, **loop["report"], "node_id": node_id, PLACEMENT_GROUP: group}
        if failure:
            result["failure"] = failure
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if trainer.is_main and not failure and file:
                trainer.save(file)
            elif trainer.is_main and not failure and loop["report_checkpoints"]:
                trainer.save(Path(folder) / CHECKPOINT_FILE)
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(result, checkpoint=saved)
        if trainer.is_main and loop.get("epochs") is not None:
            loop["epochs"].put(dict(metrics))
        if failure:
            return


def _scaling(resources: Resources) -> ray.train.ScalingConfig:
    return ray.train.ScalingConfig(
        num_workers=resources.workers, use_gpu=resources.gpu > 0, resources_per_worker=resources.bundle()
    )


def held_devices(resources: Resources) -> float:
    """The devices a data-parallel run holds: its workers' GPUs, else a CPU each."""
    return resources.workers * (resources.gpu or 1.0)


def train_parallel_trial(
    config: dict[str, Any], *, resources: Resources, storage: str, max_failures: int
) -> None:
    """The Tune trainable of a data-parallel trial: drives a Train run named after the trial, in
    `storage`, whose rank 0 reports each epoch to Tune (the checkpoint as `checkpoint_path`). A trial
    restarted by Tune finds that run and continues it; a diverged run raises, so the trial FAILS."""
    record = TrialRecord.from_config(config)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "train": record.train.model_dump(),
            "report": {"expected_cost": record.expected_cost},
            "devices": held_devices(resources),
            "report_checkpoints": True,
        },
        scaling_config=_scaling(resources),
        run_config=ray.train.RunConfig(
            name=ray.tune.get_context().get_trial_id(),
            storage_path=storage,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            logging_config=QUIET,
        ),
    )
    _raise_failure(trainer.fit())


def _raise_failure(result: ray.train.Result) -> None:
    """Raise the divergence a Train run ended with, if it did (its last report's `failure`)."""
    failure = (result.metrics or {}).get("failure")
    if failure:
        raise FloatingPointError(failure)


class ReleaseWorkers(ray.tune.Callback):
    """Removes the placement group of a data-parallel trial's Train run when the trial ends. A trial
    stopped early (a scheduler's decision) takes its Train controller down with it, and the reserved
    resources would stay reserved until the search ends: Ray Train's own cleaner needs the dashboard's
    state API, which a local cluster started without the dashboard does not have."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._release(trial)

    @staticmethod
    def _release(trial) -> None:
        group = (trial.last_result or {}).get(PLACEMENT_GROUP)
        if group and ray.util.placement_group_table().get(group, {}).get("state") not in (None, "REMOVED"):
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group))))


def trial_checkpoint(result: ray.tune.Result, storage: str | None) -> ray.tune.Checkpoint | None:
    """A finished trial's last checkpoint: Tune's, or the one its Train run reported (a path on the
    file system of `storage`, the run's storage URI; None: local)."""
    if result.checkpoint is not None:
        return result.checkpoint
    path = (result.metrics or {}).get(CHECKPOINT_PATH_KEY)
    if not path:
        return None
    filesystem = pyarrow.fs.FileSystem.from_uri(storage)[0] if storage and "://" in storage else None
    return ray.tune.Checkpoint(path, filesystem=filesystem)


def train_on_workers(
    config: TrainConfig,
    workers: int,
    *,
    address: str | None = None,
    checkpoint_file: str | None = None,
    on_epoch: Callable[[EpochMetrics], None] = lambda metrics: None,
) -> list[EpochMetrics]:
    """Run `config` as `workers` data-parallel processes on Ray (a local one unless `address`), each
    with a CPU and, when `config.device` is cuda (or auto and the cluster has GPUs), a GPU; calls
    `on_epoch` with each epoch's metrics as rank 0 reports them and returns them all.
    `checkpoint_file` is written every epoch and resumed from when present (on several machines it
    must be on storage all of them share)."""
    Resources(workers=workers, gpu=1.0).check(config, ())  # all but the GPU's: before Ray starts
    connect(address, code_runtime_env(config.model_dump()))
    gpus = ray.cluster_resources().get("GPU", 0) > 0 if config.device == "auto" else "cuda" in config.device
    resources = Resources(workers=workers, gpu=1.0 if gpus else 0.0)
    resources.check(config, ())
    epochs: Queue = Queue()
    history: list[EpochMetrics] = []
    with tempfile.TemporaryDirectory() as storage:  # Train's run state only: the checkpoint is the file
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={
                "train": config.model_dump(),
                "report": {},
                "devices": held_devices(resources),
                "checkpoint_file": str(Path(checkpoint_file).resolve()) if checkpoint_file else None,
                "report_checkpoints": False,  # Train's storage here is a folder on this machine only
                "epochs": epochs,
            },
            scaling_config=_scaling(resources),
            run_config=ray.train.RunConfig(name="train", storage_path=storage, logging_config=QUIET),
        )
        outcome: dict[str, Any] = {}
        run = threading.Thread(target=lambda: outcome.update(result=_fit(trainer)), daemon=True)
        run.start()
        while run.is_alive() or not epochs.empty():
            try:
                metrics = EpochMetrics.from_mapping(epochs.get(timeout=0.5))
            except Empty:
                continue
            history.append(metrics)
            on_epoch(metrics)
        result = outcome["result"]
    if isinstance(result, Exception):
        raise result
    _raise_failure(result)
    return history


def _fit(trainer: TorchTrainer) -> ray.train.Result | Exception:
    try:
        return trainer.fit()
    except Exception as err:  # raised on the caller's thread
        return err
