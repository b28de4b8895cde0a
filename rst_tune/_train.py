"""One training run end to end, on one process or as one rank of several: RST/G-RST epochs,
evaluation, per-epoch metrics, checkpoint/restore at an epoch's end or within it.

This is what a search trial wraps. Inside an epoch nothing is read back from the device (but the
fp16 GradScaler's overflow check, once per step): losses and correct counts accumulate on it and are
read once, when the epoch's metrics are made. Where a torch.distributed process group exists (Ray
Train's workers, torchrun), the run is data-parallel: each rank trains on its share of every global
batch through DistributedDataParallel, and the epoch's sums are all-reduced before they are read.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from rst_tune._imports import one_line
from rst_tune.config import EXECUTION_KEYS, ConfigError, TrainConfig
from rst_tune.data import Splits, load_dataset
from rst_tune.methods import build_method
from rst_tune.models import build_model
from rst_tune.sharpness import RandomizedSAM


@dataclass(frozen=True)
class EpochMetrics(Mapping[str, float]):
    """What one epoch of a run measured. Counts are cumulative over the run: `steps` optimizer steps,
    `sam_steps` of them sharpness-aware, `propagations` the cost of the passes run, in SGD steps
    (`rst_tune._cost`: a forward-backward pair 1, a forward-only pass 1/3; SGD 1 per step, SAM 2, MESA 4/3),
    `expected_propagations` their expectation Σ (1 + p(t)) (where a method knows no p(t) beforehand,
    AE-SAM, the realised count). `cost_ratio` is propagations per step, `acc_per_prop` val_accuracy /
    cost_ratio, `grst_degree` the mean over steps of p(t)·α_t, the sharpness regularisation applied in
    expectation (plain RST: p̄ so far; without a p(t), the sharpness-aware share), `wall_s` the seconds spent
    training and evaluating so far and `device_seconds` those seconds × the devices the run held,
    `world_size` the data-parallel ranks that trained the epoch (each step's counts are global: a
    propagation is one pass over the global batch, however many ranks share it).
    `test_loss` and `test_accuracy` are measured on the test part at the run's last epoch (every epoch
    with `test_every_epoch`), else None. Reads as a mapping of metric name to value, in `METRICS`
    order, without the metrics not measured."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    steps: int
    sam_steps: int
    propagations: float
    expected_propagations: float
    cost_ratio: float
    sam_fraction: float
    acc_per_prop: float
    grst_degree: float
    wall_s: float
    device_seconds: float
    world_size: int
    test_loss: float | None = None
    test_accuracy: float | None = None

    @classmethod
    def measured(
        cls,
        *,
        steps: int,
        sam_steps: int,
        propagations: float,
        val_accuracy: float,
        degree_sum: float,
        wall_s: float,
        devices: float,
        **rest: float | None,
    ) -> EpochMetrics:
        """The metrics from the counters, with the ratios derived from them."""
        cost_ratio = propagations / steps
        return cls(
            steps=steps,
            sam_steps=sam_steps,
            propagations=propagations,
            val_accuracy=val_accuracy,
            cost_ratio=cost_ratio,
            sam_fraction=sam_steps / steps,
            acc_per_prop=val_accuracy / cost_ratio,
            grst_degree=degree_sum / steps,
            wall_s=wall_s,
            device_seconds=wall_s * devices,
            **rest,
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EpochMetrics:
        """The metrics among `values` (a Ray result, Optuna user attributes, a checkpoint's history);
        KeyError if one of `EPOCH_METRICS` is missing."""
        return cls(**{name: values[name] for name in METRICS if name in values or name in EPOCH_METRICS})

    def __getitem__(self, name: str) -> float:
        if name not in METRICS or getattr(self, name) is None:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return (name for name in METRICS if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


METRICS: tuple[str, ...] = tuple(field.name for field in fields(EpochMetrics))
"""Every metric name a run reports, in order: the keys a trial reports to Ray, Optuna and MLflow."""
TEST_METRICS: tuple[str, ...] = ("test_loss", "test_accuracy")
"""The metrics of the test part, measured at a run's end only (unless asked for every epoch)."""
EPOCH_METRICS: tuple[str, ...] = tuple(name for name in METRICS if name not in TEST_METRICS)
"""The metrics every epoch has."""


def resolve_device(name: str) -> torch.device:
    """The device `name` means; "auto" and "cuda" on a data-parallel rank: its GPU, LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of the random ops in one rank's forward and backward passes (dropout, stochastic depth)
    at its epoch's start; step k of the epoch is seeded with `epoch_seed + k` (below 2**62: room for
    k). Resuming at any step needs no saved generator state, with any number of ranks."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 2)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU of compute capability 8.0 (Ampere) or
    later (older ones emulate it, slowly)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def seed_step(device: torch.device, seed: int) -> None:
    """Seed the generators a training step on `device` draws from: the CPU's and the device's own.
    4–6 µs a step on the 2-core CPU VM; torch.manual_seed, which also seeds (or, before CUDA starts,
    queues with a stack trace) every other device's, 300–400 µs (benchmarks/dropout_state.py)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


def check_ranks(config: TrainConfig, world_size: int, gpus: bool) -> None:
    """Raise ConfigError, naming the key, for what `config` cannot do as a data-parallel run of
    `world_size` ranks (on GPUs when `gpus`)."""
    if config.batch_size % world_size:
        raise ConfigError(f"{config.batch_size} does not divide among {world_size} workers", key="batch_size")
    if config.grst_weight == 0:
        raise ConfigError(
            "0 has no data-parallel form (α = 0): leave G-RST off, or use p = 0", key="grst_weight"
        )
    if config.sync_bn and not gpus:
        raise ConfigError("SyncBatchNorm runs on GPUs only (torch has no CPU form)", key="sync_bn")


class Trainer:
    """Builds data, model and optimizer from a TrainConfig and runs it epoch by epoch. `devices` is how
    many devices the run holds (a fraction when it shares one; all ranks' together), for
    `device_seconds`; `device` overrides the config's (a launcher's choice for its rank)."""

    def __init__(
        self,
        config: TrainConfig,
        data: Splits | None = None,
        devices: float = 1.0,
        device: torch.device | None = None,
    ):
        self.config, self.devices = config, devices
        distributed = dist.is_available() and dist.is_initialized()
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        self.device = device or resolve_device(config.device)
        if distributed:
            check_ranks(config, self.world_size, gpus=self.device.type == "cuda")
        if self.device.type == "cuda":
            # batches have one shape: let cuDNN time and keep its fastest kernels
            torch.backends.cudnn.benchmark = True
            torch.cuda.init()  # its generators exist from here on (seed_step)
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        if data is None:
            data = load_data(config)
        self.data = data.shard(self.rank, self.world_size).to(self.device)
        self.steps_per_epoch = data.steps_per_epoch(config.batch_size)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{config.batch_size} exceeds the {data.size('train')} training items", key="batch_size"
            )
        total_steps = self.steps_per_epoch * config.epochs

        model = make_model(config, data)
        if config.sync_bn and distributed:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        network = self.model
        if distributed:
            network = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
        compiled = torch.compile if config.compile else lambda module: module
        self.forward = compiled(network)
        # evaluation runs the module itself: no DDP collectives, which a rank with no items would miss
        self.evaluate_forward = compiled(self.model) if distributed else self.forward

        fp16 = config.precision == "fp16"
        if fp16 and native_bf16(self.device):
            warnings.warn(
                f"precision fp16 on {torch.cuda.get_device_name(self.device)}, which has bf16: bf16 needs "
                "no loss scaling, so no overflow check and no host synchronisation each step",
                stacklevel=2,
            )
        base = torch.optim.SGD(
            self.model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            # one kernel for the whole update; not beside a GradScaler, whose skipped steps fused SGD's
            # momentum mishandles (reported in LibreYOLO/libreyolo#771)
            fused=self.device.type == "cuda" and not fp16,
        )
        self.lr_scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=total_steps)
            if config.lr_schedule == "cosine"
            else None
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        schedule = config.schedule.build()
        method = build_method(config.method.name, config.method.settings(), schedule, self.model)
        self.hook = method.hook
        self.optimizer = RandomizedSAM(
            base,
            schedule,
            total_steps,
            rho=config.rho,
            adaptive=config.adaptive,
            grst_weight=config.grst_weight,
            alpha_max=config.alpha_max,
            seed=config.seed,
            model=network,
            max_grad_norm=config.grad_clip,
            grad_scaler=self.scaler,
            rule=method.rule,
            reuse=method.reuse,
        )
        self.data_rng = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.wall_s = 0.0
        self.history: list[EpochMetrics] = []
        self._start_epoch()

    def _start_epoch(self) -> None:
        """Remember the data generator at the epoch's start (its order is drawn from there again on a
        mid-epoch resume) and zero the epoch's sums of loss and correct predictions."""
        self.epoch_data_state = self.data_rng.get_state()
        self.epoch_sums = (
            torch.zeros((), device=self.device),
            torch.zeros((), device=self.device, dtype=torch.long),
        )

    def _autocast(self):
        return torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

    def _loss(
        self, images: torch.Tensor, labels: torch.Tensor, term: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cross-entropy, the loss to minimise (with the method hook's term when `term`: its
        forward pass is counted) and the logits."""
        with self._autocast():
            inputs = images.contiguous(memory_format=self.memory_format)
            logits = self.forward(inputs)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)
            total = loss + self.hook.term(inputs, logits.float()) if term else loss
        if term:
            self.optimizer.count_forward()
        return loss, total, logits

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step, SGD or sharpness-aware as the method decides, then the learning-rate
        step. Returns the clean pass's cross-entropy and number of correct predictions, left on the
        device."""
        first_logits: list[torch.Tensor] = []
        term = self.hook is not None and self.hook.active(self.epoch)
        if self.hook is not None:
            self.hook.before_step(self.optimizer)

        def closure() -> torch.Tensor:
            loss, total, logits = self._loss(images, labels, term)
            (self.scaler.scale(total) if self.scaler else total).backward()
            if not first_logits:
                first_logits.append(logits.detach())
            return loss

        loss = self.optimizer.step(closure)
        if self.hook is not None:
            self.hook.after_step(self.model)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return loss.detach(), (first_logits[0].argmax(1) == labels).sum()

    @property
    def step_in_epoch(self) -> int:
        """The steps of the unfinished epoch already trained (the optimizer counts every step)."""
        return self.optimizer.steps - self.epoch * self.steps_per_epoch

    @property
    def is_main(self) -> bool:
        """Whether this process reports and writes checkpoints: rank 0, or the only one."""
        return self.rank == 0

    def _summed(self, *values: torch.Tensor) -> list[float]:
        """`values` summed over the ranks, read back to the host in one go."""
        totals = torch.stack(
            [v.to(torch.float64 if self.device.type != "mps" else torch.float32) for v in values]
        )
        if self.world_size > 1:
            dist.all_reduce(totals)
        return totals.tolist()

    def train_epoch(
        self, progress: bool = False, every: int = 0, on_steps: Callable[[Trainer], None] | None = None
    ) -> EpochMetrics:
        """Train the rest of the epoch, evaluate, and return (and record) the epoch's metrics. Every
        `every` steps short of the epoch's end, `on_steps(self)` is called (to write a mid-epoch
        checkpoint: one process only)."""
        if every and self.world_size > 1:
            raise ValueError("mid-epoch checkpoints are for one process: each rank holds only its sums")
        start = time.perf_counter()
        seed = epoch_seed(self.config.seed, self.epoch, self.rank)
        self.model.train()
        batches = self.data.train_batches(self.config.batch_size, self.data_rng, start=self.step_in_epoch)
        if progress:
            batches = tqdm(
                batches,
                initial=self.step_in_epoch,
                total=self.steps_per_epoch,
                desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                leave=False,
                unit="step",
            )
        for images, labels in batches:
            seed_step(self.device, seed + self.step_in_epoch)
            loss, right = self.train_step(images, labels)
            self.epoch_sums[0].add_(loss)
            self.epoch_sums[1].add_(right)
            if (
                every
                and on_steps
                and self.step_in_epoch % every == 0
                and self.step_in_epoch < self.steps_per_epoch
            ):
                self.wall_s += time.perf_counter() - start  # the checkpoint's writing is not training
                on_steps(self)
                start = time.perf_counter()
        val_loss, val_accuracy = self.evaluate("val")
        self.epoch += 1
        test = self.config.test_every_epoch or self.epoch == self.config.epochs
        test_loss, test_accuracy = self.evaluate("test") if test and self.data.size("test") else (None, None)
        train_loss, train_correct = self._summed(*self.epoch_sums)
        self._start_epoch()
        self.wall_s += time.perf_counter() - start
        opt = self.optimizer
        metrics = EpochMetrics.measured(
            epoch=self.epoch,
            train_loss=train_loss / (self.steps_per_epoch * self.world_size),
            train_accuracy=train_correct / (self.steps_per_epoch * self.config.batch_size),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            steps=opt.steps,
            sam_steps=opt.sam_steps,
            propagations=opt.propagations,
            expected_propagations=opt.expected_propagations,
            degree_sum=opt.degree_sum,
            wall_s=self.wall_s,
            devices=self.devices,
            world_size=self.world_size,
        )
        self.history.append(metrics)
        return metrics

    @torch.no_grad()
    def evaluate(self, part: str = "val") -> tuple[float, float]:
        """Loss and accuracy over the whole `part` ("val" or "test"), each rank evaluating its share
        with rank 0's BatchNorm statistics (broadcast first); NaN for an empty part."""
        n = self.data.size(part)
        if n == 0:
            return math.nan, math.nan
        if self.world_size > 1:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, 0)
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for images, labels in self.data.eval_batches(part, self.config.eval_batch_size):
            with self._autocast():
                logits = self.evaluate_forward(images.contiguous(memory_format=self.memory_format)).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            correct += (logits.argmax(1) == labels).sum()
        loss, right = self._summed(loss_sum, correct)
        return loss / n, right / n

    def fit(
        self, progress: bool = False, every: int = 0, on_steps: Callable[[Trainer], None] | None = None
    ) -> Iterator[EpochMetrics]:
        """Run the remaining epochs, yielding each epoch's metrics (`every`, `on_steps`: `train_epoch`)."""
        while self.epoch < self.config.epochs:
            yield self.train_epoch(progress, every, on_steps)

    def state_dict(self) -> dict:
        return {
            "config": self.config.model_dump(),
            "epoch": self.epoch,
            "epoch_sums": [total.cpu() for total in self.epoch_sums],
            "wall_s": self.wall_s,
            "history": [dict(metrics) for metrics in self.history],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "method": self.hook.state_dict() if self.hook else None,
            "data_rng": self.epoch_data_state,
        }

    def load_state_dict(self, state: dict) -> None:
        written = {key: value for key, value in state["config"].items() if key not in EXECUTION_KEYS}
        if written != self.config.model_dump(exclude=set(EXECUTION_KEYS)):
            raise ConfigError("checkpoint was written by a run with a different config")
        step_in_epoch = state["optimizer"]["steps"] - state["epoch"] * self.steps_per_epoch
        if step_in_epoch and self.world_size > 1:
            raise ConfigError(
                f"checkpoint was written at step {step_in_epoch} of an epoch by one process; "
                f"{self.world_size} ranks resume only from an epoch's end"
            )
        try:
            history = [EpochMetrics.from_mapping(metrics) for metrics in state["history"]]
        except KeyError as missing:
            raise ConfigError(
                f"checkpoint was written by an older rst-tune (no {missing} metric); start again"
            ) from None
        self.epoch, self.wall_s, self.history = state["epoch"], state["wall_s"], history
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # this run's choice, not the writer's (another device)
            group["fused"] = self.optimizer.base_optimizer.defaults["fused"]
        if self.lr_scheduler:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler:
            self.scaler.load_state_dict(state["scaler"])
        if self.hook:
            self.hook.load_state_dict(state["method"])
        self.data_rng.set_state(state["data_rng"])
        self._start_epoch()
        if "epoch_sums" in state:
            self.epoch_sums = tuple(total.to(self.device) for total in state["epoch_sums"])

    def save(self, path: str | Path) -> None:
        """Write a checkpoint atomically (a crash mid-write leaves the previous one intact). Every rank
        holds the same state; a data-parallel run writes it from rank 0 (`is_main`)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    def load(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def load_data(config: TrainConfig) -> Splits:
    """The data `config` trains on; ConfigError naming the key when it cannot be had."""
    try:
        return load_dataset(
            config.dataset,
            data_dir=config.data_dir,
            download=config.download,
            label_noise=config.label_noise,
            seed=config.seed,
            val_size=config.val_size,
            dataset_params=config.dataset_params,
            workers=config.loader_workers,
        )
    except (ValueError, OSError) as err:
        raise ConfigError(str(err), key="dataset") from None


def make_model(config: TrainConfig, data: Splits) -> torch.nn.Module:
    """The model `config` names, for `data`'s inputs and classes, checked by running two training
    inputs through it on the CPU: ConfigError naming the key when it cannot be built, its output
    is not one logit per class, or `channels_last` is asked of inputs that are not images."""
    if config.channels_last and len(data.shape) != 3:
        raise ConfigError(
            f"is a layout of images (C, H, W); {config.dataset}'s inputs have shape {tuple(data.shape)}: "
            "leave it false",
            key="channels_last",
        )
    key = "model" if ":" in config.model else "model_params"  # user or torchvision code: its own key
    try:
        model = build_model(config.model, data.num_classes, data.shape, **config.model_params)
    except ValueError as err:
        raise ConfigError(str(err), key=key) from None
    inputs = data.probe(min(2, data.size("train")))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(inputs)
    except Exception as err:
        raise ConfigError(
            f"{config.model} fails on inputs of shape {tuple(inputs.shape)}: {one_line(err)}", key="model"
        ) from None
    finally:
        model.train(was_training)
    expected = (len(inputs), data.num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        found = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(
            f"{config.model} returns {found} for {len(inputs)} inputs; expected logits of shape {expected}",
            key="model",
        )
    return model


def preflight(config: TrainConfig) -> None:
    """Raise ConfigError for what a run of `config` would fail on at its start (the data cannot be
    loaded, the model not built or not run on it), before anything is started."""
    make_model(config, load_data(config))


def train(
    config: TrainConfig, callback: Callable[[EpochMetrics], None] | None = None, progress: bool = False
) -> list[EpochMetrics]:
    """Run `config` to the end, calling `callback` with each epoch's metrics; returns them all."""
    trainer = Trainer(config)
    for metrics in trainer.fit(progress):
        if callback is not None:
            callback(metrics)
    return trainer.history
