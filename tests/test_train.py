"""The training loop: config validation, metrics, checkpoint/resume bit for bit, sanity accuracy."""

import math

import pytest
import torch
from conftest import Crash, crash_after_saving

from rst_tune._train import EPOCH_METRICS, METRICS, Trainer, train
from rst_tune.config import ConfigError, TrainConfig, load_config

FAST = {
    "epochs": 4,
    "batch_size": 128,
    "schedule": {"name": "linear", "params": {"p_start": 0.2, "p_end": 0.8}},
    "grst_weight": 0.3,
    "label_noise": 0.1,
    "grad_clip": 5.0,
}


def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path):
    config = load_config(FAST | {"device": "cpu"})  # bit for bit: cuDNN's benchmark mode does not promise it
    straight = Trainer(config)
    list(straight.fit())

    first = Trainer(config)
    for _ in range(2):
        first.train_epoch()
    first.save(tmp_path / "ckpt.pt")
    older = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del older["epoch_sums"]  # as written before mid-epoch checkpoints
    timed = ("wall_s", "device_seconds")
    strip = lambda h: [{k: v for k, v in m.items() if k not in timed} for m in h]  # noqa: E731
    for state in (torch.load(tmp_path / "ckpt.pt", weights_only=True), older):
        torch.manual_seed(999)  # the resumed process starts with another global RNG state
        resumed = Trainer(config)
        resumed.load_state_dict(state)
        assert resumed.epoch == 2
        list(resumed.fit())

        for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
            assert torch.equal(a, b)
        assert strip(straight.history) == strip(resumed.history)
        assert resumed.optimizer.state_dict()["rng"] == straight.optimizer.state_dict()["rng"]


def test_a_mid_epoch_checkpoint_resumes_at_its_step_bit_for_bit(tmp_path):
    config = load_config(FAST | {"device": "cpu"})  # bit for bit: cuDNN's benchmark mode does not promise it
    straight = Trainer(config)
    list(straight.fit())
    assert straight.steps_per_epoch == 8  # 1,150 digits / 128: the checkpoint below is mid-epoch

    first = Trainer(config)
    with pytest.raises(Crash):
        list(first.fit(every=3, on_steps=crash_after_saving(tmp_path / "ckpt.pt", 1, 6)))
    torch.manual_seed(999)
    resumed = Trainer(config)
    resumed.load(tmp_path / "ckpt.pt")
    assert (resumed.epoch, resumed.step_in_epoch, resumed.optimizer.steps) == (1, 6, 14)
    list(resumed.fit())

    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    timed = ("wall_s", "device_seconds")
    strip = lambda h: [{k: v for k, v in m.items() if k not in timed} for m in h]  # noqa: E731
    assert strip(straight.history) == strip(resumed.history)  # epoch 2's train loss spans the resume
    assert resumed.optimizer.state_dict()["rng"] == straight.optimizer.state_dict()["rng"]


def test_checkpoint_from_another_config_is_refused(tmp_path):
    trainer = Trainer(load_config(FAST | {"epochs": 1}))
    trainer.save(tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="different config"):
        Trainer(load_config(FAST | {"epochs": 1, "rho": 0.1})).load(tmp_path / "ckpt.pt")


def test_a_resumed_run_steps_fused_as_its_own_device_asks_not_as_the_writers_did():
    config = load_config(FAST | {"epochs": 1, "device": "cpu"})
    state = Trainer(config).state_dict()
    for group in state["optimizer"]["base"]["param_groups"]:
        group["fused"] = True  # as a CUDA run writes it
    resumed = Trainer(config)
    resumed.load_state_dict(state)
    assert [group["fused"] for group in resumed.optimizer.base_optimizer.param_groups] == [False]


def test_epoch_metrics_are_consistent():
    config = load_config(FAST | {"epochs": 2, "device": "cpu"})  # two runs, two evaluations: exactly equal
    trainer = Trainer(config, devices=0.5)
    history = list(trainer.fit())
    assert history == trainer.history and len(history) == 2
    seen = train(config)
    assert [m.val_accuracy for m in seen] == [m.val_accuracy for m in history]
    first, last = history
    assert tuple(first) == EPOCH_METRICS  # the test part is measured at the last epoch only
    assert tuple(last) == METRICS
    steps = 2 * (1150 // 128)
    assert last["epoch"] == 2
    assert last["cost_ratio"] == last["propagations"] / steps
    assert last["sam_fraction"] == pytest.approx(last["cost_ratio"] - 1)
    assert last["acc_per_prop"] == pytest.approx(last["val_accuracy"] / last["cost_ratio"])
    # linear 0.2 -> 0.8 over the run: Σ (1 + p(s/T)); G-RST 0.3 with alpha_max 4: p·α = 0.3 throughout
    expected = sum(1 + 0.2 + 0.6 * s / steps for s in range(steps))
    assert last["expected_propagations"] == pytest.approx(expected)
    assert last["grst_degree"] == pytest.approx(0.3)
    assert 0.0 <= last["train_accuracy"] <= 1.0 and math.isfinite(last["val_loss"])
    assert last["wall_s"] > first["wall_s"] > 0
    assert last["device_seconds"] == pytest.approx(0.5 * last["wall_s"])
    # the test part: its own loss and accuracy, the same as evaluating it directly
    assert (last["test_loss"], last["test_accuracy"]) == trainer.evaluate("test")
    assert last["test_accuracy"] != last["val_accuracy"] or last["test_loss"] != last["val_loss"]
    every = list(Trainer(load_config(FAST | {"epochs": 2, "test_every_epoch": True})).fit())
    assert [tuple(m) for m in every] == [METRICS] * 2


def test_val_size_zero_reports_no_validation_figures_and_tests_at_the_end():
    history = train(load_config(FAST | {"epochs": 1, "val_size": 0}))
    assert math.isnan(history[-1]["val_accuracy"]) and 0 <= history[-1]["test_accuracy"] <= 1


def test_default_digits_run_reaches_90_percent_in_10_epochs():
    config = TrainConfig()
    assert config.epochs == 10 and config.dataset == "digits"
    history = train(config)
    assert history[-1]["val_accuracy"] >= 0.90
    assert 1.3 < history[-1]["cost_ratio"] < 1.7  # constant p = 0.5


@pytest.mark.parametrize(
    "values, match",
    [
        ({"learning_rate": 0.1}, "learning_rate: unknown key"),
        ({"rho": -1}, "rho: Input should be greater than or equal to 0"),
        ({"schedule": {"name": "constant", "params": {"p": 1.5}}}, r"schedule: .*p=1\.5"),
        ({"schedule": {"name": "zigzag"}}, "schedule: unknown schedule 'zigzag'"),
        ({"dataset": "mnist"}, "dataset: not a built-in dataset"),
        ({"precision": "fp8"}, "precision"),
        ({"device": "tpu"}, "device 'tpu'"),
    ],
)
def test_bad_config_errors_name_the_key(values, match):
    with pytest.raises(ConfigError, match=match):
        load_config(values)


def test_missing_cifar_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="dataset: cifar10 not found"):
        Trainer(load_config({"dataset": "cifar10", "model": "resnet18", "data_dir": str(tmp_path)}))


def test_batch_larger_than_the_training_set_is_a_config_error():
    with pytest.raises(ConfigError, match="batch_size: 5000 exceeds the 1150 training items"):
        Trainer(load_config({"batch_size": 5000}))


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])
def test_mixed_precision_runs_learn(precision):
    """bf16 autocast, and fp16 with a GradScaler through sharpness-aware steps, both train."""
    history = train(
        load_config(
            {
                "epochs": 2,
                "precision": precision,
                "channels_last": True,
                "schedule": {"name": "constant", "params": {"p": 1.0}},
            }
        )
    )
    assert history[-1]["cost_ratio"] == 2.0
    assert history[-1]["val_accuracy"] > 0.5 and history[-1]["train_loss"] < history[0]["train_loss"]
