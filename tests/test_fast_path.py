"""The training step wastes nothing: no host synchronisation on CUDA, no recompiles under torch.compile."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule
from torch._dynamo.utils import counters

from rst_tune._train import Trainer, native_bf16
from rst_tune.config import load_config

STEP_KINDS = {
    "sgd": {"schedule": {"name": "constant", "params": {"p": 0.0}}},
    "sam": {"schedule": {"name": "constant", "params": {"p": 1.0}}},
    "asam": {"schedule": {"name": "constant", "params": {"p": 1.0}}, "adaptive": True, "rho": 0.5},
    "grst": {"schedule": {"name": "constant", "params": {"p": 0.5}}, "grst_weight": 0.3},
    "sam-dropout": {  # the perturbed pass replays the clean pass's dropout masks
        "schedule": {"name": "constant", "params": {"p": 1.0}},
        "model": "wrn",
        "model_params": {"depth": 10, "width": 2, "dropout": 0.3},
    },
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine)")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", list(STEP_KINDS))
def test_training_steps_never_synchronise_the_host(kind, precision):
    config = load_config(
        {
            "dataset": "synthetic",
            "model": "resnet18",
            "batch_size": 128,
            "epochs": 1,
            "device": "cuda",
            "precision": precision,
            "channels_last": precision == "bf16",
            "grad_clip": 5.0,
            "seed": 3,
            **STEP_KINDS[kind],
        }
    )
    trainer = Trainer(config)
    trainer.model.train()
    batches = trainer.data.train_batches(config.batch_size, trainer.data_rng)
    loss_sum = torch.zeros((), device="cuda")
    correct = torch.zeros((), device="cuda", dtype=torch.long)
    for _ in range(3):  # warm-up: cuDNN/cuBLAS handles, momentum buffers, the SAM copy of θ
        trainer.train_step(*next(batches))
    torch.cuda.synchronize()
    steps_before, sam_before = trainer.optimizer.steps, trainer.optimizer.sam_steps
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(12):
            loss, right = trainer.train_step(*next(batches))
            loss_sum += loss
            correct += right
    finally:
        torch.cuda.set_sync_debug_mode("default")
    sam_steps = trainer.optimizer.sam_steps - sam_before
    assert trainer.optimizer.base_optimizer.defaults["fused"]  # no GradScaler: one fused kernel a step
    assert trainer.optimizer.steps - steps_before == 12
    assert sam_steps == {"sgd": 0, "sam": 12, "asam": 12, "sam-dropout": 12}.get(kind, sam_steps)
    if kind == "grst":
        assert 0 < sam_steps < 12  # both branches ran under the check
    assert torch.isfinite(loss_sum).item() and 0 <= correct.item() <= 12 * config.batch_size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine)")
@pytest.mark.parametrize("p", [0.0, 1.0])
def test_an_fp16_step_synchronises_once_and_its_sgd_is_not_fused(p):
    """The GradScaler reads its overflow check once a step; fused SGD would mishandle skipped steps."""
    config = {"dataset": "synthetic", "model": "resnet18", "batch_size": 128, "epochs": 1, "device": "cuda"}
    with (
        pytest.warns(UserWarning, match="bf16 needs no loss scaling")
        if native_bf16(torch.device("cuda"))
        else contextlib.nullcontext()
    ):
        trainer = Trainer(
            load_config({**config, "precision": "fp16", "schedule": {"name": "constant", "params": {"p": p}}})
        )
    assert not trainer.optimizer.base_optimizer.defaults["fused"]
    trainer.model.train()
    batches = trainer.data.train_batches(config["batch_size"], trainer.data_rng)
    for _ in range(3):
        trainer.train_step(*next(batches))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(4):
                trainer.train_step(*next(batches))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 4, [str(w.message) for w in syncs]


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
    ],
)
def test_compiled_model_does_not_recompile_across_sgd_and_sharpness_aware_steps(device):
    settings = {
        "device": device,
        "epochs": 3,  # the checked epoch is not the last: the last evaluates the test part, a new shape
        "schedule": {"name": "constant", "params": {"p": 0.5}},
        "grst_weight": 0.3,
        "seed": 1,
    }
    eager = Trainer(load_config(settings))
    compiled = Trainer(load_config({**settings, "compile": True}))
    eager_history = [eager.train_epoch() for _ in range(2)]
    graphs_before = counters["stats"]["unique_graphs"]
    compiled.train_epoch()  # warm-up: the clean pass, the perturbed pass (BatchNorm frozen) and evaluation
    graphs = counters["stats"]["unique_graphs"]
    assert isinstance(compiled.forward, OptimizedModule) and graphs > graphs_before
    sam_before, steps_before = compiled.optimizer.sam_steps, compiled.optimizer.steps
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled.train_epoch()
    sam_steps = compiled.optimizer.sam_steps - sam_before
    assert 0 < sam_steps < compiled.optimizer.steps - steps_before  # both step kinds ran after warm-up
    assert counters["stats"]["unique_graphs"] == graphs
    for eager_metrics, compiled_metrics in zip(eager_history, compiled.history):
        assert compiled_metrics["propagations"] == eager_metrics["propagations"]
        # inductor's kernels round differently and training amplifies it: on the CPU of a 2-core AMD EPYC VM
        # the mean losses of epochs 1 and 2 differed by 1.3e-4 and 1.1e-3 (relative; seed 2: 1.4e-5,
        # 2.6e-4), the same before issue 12's changes. On CUDA these tolerances are not measured yet.
        assert compiled_metrics["train_loss"] == pytest.approx(eager_metrics["train_loss"], rel=1e-2)
        assert compiled_metrics["val_accuracy"] == pytest.approx(
            eager_metrics["val_accuracy"], abs=1 / 288
        )  # one of 288 validation images
