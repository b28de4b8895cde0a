"""Data parallelism: RandomizedSAM and the training loop on 2 gloo processes against one process and
against a reference written here (float64), the ranks' shares of the data, and data-parallel trials
on Ray Train (the CLI, a search, a worker killed mid-trial)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from conftest import Crash, crash_after_saving, rst_tune_process
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel

from rst_tune._train import Trainer
from rst_tune.config import ConfigError, load_config
from rst_tune.data._resident import DataSplits
from rst_tune.data._splits import rank_share
from rst_tune.data._streaming import StreamingSplits
from rst_tune.methods import build_method, check_method
from rst_tune.schedules import make_schedule
from rst_tune.sharpness import RandomizedSAM

B, STEPS, LR, RHO = 8, 10, 0.1, 0.05


def on_ranks(fn, world_size, tmp_path, *args):
    """`fn(rank, world_size, *args)` on `world_size` gloo processes; their return values, by rank."""
    store = tmp_path / f"store-{uuid.uuid4().hex}"  # a file, not a port another process could take first
    mp.spawn(_rank, args=(world_size, store, fn, tmp_path, args), nprocs=world_size)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _rank(rank, world_size, store, fn, tmp_path, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
    torch.save(result, tmp_path / f"rank{rank}.pt")
    # gloo's threads can outlive the group and abort the interpreter's teardown ("terminate called
    # without an active exception": 1 spawn in ~15 on the 2-core Xeon VM, results already saved)
    os._exit(0)


def mlp(batchnorm=False):
    torch.manual_seed(3)
    layers = [nn.Linear(4, 6)] + ([nn.BatchNorm1d(6)] if batchnorm else []) + [nn.Tanh(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).double()


def batches():
    generator = torch.Generator().manual_seed(11)
    return [
        (
            torch.randn(B, 4, generator=generator, dtype=torch.float64),
            torch.randint(0, 3, (B,), generator=generator),
        )
        for _ in range(STEPS)
    ]


def optimizer(model, network, p, grst_weight=None, seed=5, momentum=0.0):
    base = torch.optim.SGD(model.parameters(), lr=LR, momentum=momentum)
    return RandomizedSAM(
        base,
        make_schedule("constant", p=p),
        STEPS,
        rho=RHO,
        grst_weight=grst_weight,
        seed=seed,
        model=network,
    )


def closure_for(network, x, y):
    def closure():
        loss = F.cross_entropy(network(x), y)
        loss.backward()
        return loss

    return closure


def train_on_ranks(rank, world_size, p, grst_weight=None, seed=5, momentum=0.0, debug=False, count=False):
    """STEPS steps of RandomizedSAM on a DDP MLP, each rank on its share of every batch: the final
    parameters, the coins drawn and the gradient all-reduces each step made."""
    if debug:
        dist.set_debug_level(dist.DebugLevel.INFO)
    model = mlp()
    network = DistributedDataParallel(model)
    reduces = []
    if count:

        def counting(state, bucket):
            reduces[-1] += 1
            return allreduce_hook(state, bucket)

        network.register_comm_hook(None, counting)
    opt = optimizer(model, network, p, grst_weight, seed, momentum)
    coins = []
    for x, y in batches():
        share = rank_share(B, rank, world_size)
        reduces.append(0)
        opt.step(closure_for(network, x[share], y[share]))
        coins.append(opt.last_was_sam)
    return [t.detach().clone() for t in model.parameters()], coins, reduces


@pytest.mark.slow
def test_sgd_steps_on_two_ranks_equal_one_rank_on_the_whole_batch(tmp_path):
    """p ≡ 0, no BatchNorm: 2 ranks × B/2 take the steps 1 rank × B takes (momentum too)."""
    ranks = on_ranks(train_on_ranks, 2, tmp_path, 0.0, None, 5, 0.9)
    model = mlp()
    opt = optimizer(model, model, 0.0, momentum=0.9)
    for x, y in batches():
        opt.step(closure_for(model, x, y))
    for ours, rank0, rank1 in zip(model.parameters(), ranks[0][0], ranks[1][0]):
        assert torch.equal(rank0, rank1)
        torch.testing.assert_close(rank0, ours.detach(), rtol=0, atol=1e-10)


def method_on_ranks(rank, world_size, name, params):
    """STEPS steps of method `name` on a DDP MLP, each rank on its share: final parameters, decisions."""
    model = mlp()
    network = DistributedDataParallel(model)
    opt = method_optimizer(model, network, name, params)
    taken = []
    for x, y in batches():
        share = rank_share(B, rank, world_size)
        opt.step(closure_for(network, x[share], y[share]))
        taken.append(opt.last_was_sam)
    return [t.detach().clone() for t in model.parameters()], taken


def method_optimizer(model, network, name, params):
    parts = build_method(name, check_method(name, params), make_schedule("constant", p=0.5), model)
    base = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    return RandomizedSAM(base, None, STEPS, rho=RHO, rule=parts.rule, reuse=parts.reuse, model=network)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        pytest.param("looksam", {"k": 3, "alpha": 0.7}, marks=pytest.mark.slow),
        ("aesam", {"lambda1": 0.0, "lambda2": 0.0}),
    ],
)
def test_methods_that_read_g1_train_on_two_ranks_as_one_process_on_the_whole_batch(tmp_path, name, params):
    """LookSAM's refresh and AE-SAM's test use the reduced g1: every rank decides and refreshes alike,
    and the ranks take the steps one process takes on the whole batch (no BatchNorm)."""
    ranks = on_ranks(method_on_ranks, 2, tmp_path, name, params)
    model = mlp()
    opt = method_optimizer(model, model, name, params)
    taken = []
    for x, y in batches():
        opt.step(closure_for(model, x, y))
        taken.append(opt.last_was_sam)
    assert ranks[0][1] == ranks[1][1] == taken and 0 < sum(taken) < STEPS
    for ours, rank0, rank1 in zip(model.parameters(), ranks[0][0], ranks[1][0]):
        assert torch.equal(rank0, rank1)
        torch.testing.assert_close(rank0, ours.detach(), rtol=0, atol=1e-10)


def reference_step(params, halves, alpha):
    """One sharpness-aware step of the data-parallel form: rank r perturbs with its own g1_r; the update
    is the mean over ranks of (1 − α)·g1_r + α·g2_r."""
    model, names = mlp(), [name for name, _ in mlp().named_parameters()]

    def gradient(values, x, y):
        values = [v.detach().requires_grad_() for v in values]
        loss = F.cross_entropy(functional_call(model, dict(zip(names, values)), (x,)), y)
        return torch.autograd.grad(loss, values)

    mixed = []
    for x, y in halves:
        g1 = gradient(params, x, y)
        norm = torch.sqrt(sum((g**2).sum() for g in g1))
        g2 = gradient([w + RHO * g / norm for w, g in zip(params, g1)], x, y)
        mixed.append([(1 - alpha) * a + alpha * b for a, b in zip(g1, g2)])
    return [w - LR * (m0 + m1) / 2 for w, m0, m1 in zip(params, *mixed)]


@pytest.mark.parametrize(
    "grst_weight, alpha", [(None, 1.0), pytest.param(0.5, 0.5, marks=pytest.mark.slow), (1.5, 1.5)]
)
def test_sharpness_aware_steps_on_two_ranks_match_the_reference(tmp_path, grst_weight, alpha):
    """p ≡ 1: RST (α = 1) and G-RST (α = λ_G / p = λ_G, below and above 1)."""
    ranks = on_ranks(train_on_ranks, 2, tmp_path, 1.0, grst_weight)
    params = [w.detach() for w in mlp().parameters()]
    for x, y in batches():
        params = reference_step(params, [(x[: B // 2], y[: B // 2]), (x[B // 2 :], y[B // 2 :])], alpha)
    for expected, rank0, rank1 in zip(params, ranks[0][0], ranks[1][0]):
        assert torch.equal(rank0, rank1)
        torch.testing.assert_close(rank0, expected, rtol=0, atol=1e-10)
    assert all(ranks[0][1])


def test_every_rank_draws_the_same_coins_and_each_step_reduces_once(tmp_path):
    ranks = on_ranks(train_on_ranks, 2, tmp_path, 0.5, 0.7, 5, 0.9, True, True)
    (params0, coins0, reduces0), (params1, coins1, reduces1) = ranks
    assert coins0 == coins1 and any(coins0) and not all(coins0)
    assert reduces0 == reduces1 == [1] * STEPS  # SGD and sharpness-aware steps alike
    assert all(torch.equal(a, b) for a, b in zip(params0, params1))


def test_ranks_that_draw_different_coins_are_caught_in_debug_mode(tmp_path):
    with pytest.raises(Exception, match="ranks drew different coins"):
        on_ranks(_different_seeds, 2, tmp_path)


def _different_seeds(rank, world_size):
    return train_on_ranks(rank, world_size, 0.5, seed=rank, debug=True)


def _one_sam_step_with_batchnorm(rank, world_size):
    model = mlp(batchnorm=True)
    network = DistributedDataParallel(model)
    x, y = batches()[0]
    share = rank_share(B, rank, world_size)
    optimizer(model, network, 1.0).step(closure_for(network, x[share], y[share]))
    bn = model[1]
    return bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()


@pytest.mark.slow
def test_the_perturbed_pass_leaves_each_ranks_batchnorm_statistics_alone(tmp_path):
    """Per-rank BatchNorm: after one sharpness-aware step, rank 0's running statistics are those of
    one clean forward pass over its half of the batch."""
    (mean, var, tracked), _ = on_ranks(_one_sam_step_with_batchnorm, 2, tmp_path)
    clean = mlp(batchnorm=True)
    x, _ = batches()[0]
    clean(x[: B // 2])
    torch.testing.assert_close(mean, clean[1].running_mean, rtol=0, atol=1e-14)
    torch.testing.assert_close(var, clean[1].running_var, rtol=0, atol=1e-14)
    assert tracked.item() == 1


# ---------- the ranks' shares of the data ----------


def _images(n=40):
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=generator, dtype=torch.uint8)
    y = torch.randint(0, 5, (n,), generator=generator)
    return DataSplits(
        x, y, x[:13], y[:13], x[:0], y[:0], (0.5,) * 3, (0.25,) * 3, 5, crop_padding=2, flip=True
    )


class _Items(torch.utils.data.Dataset):
    """Items whose input depends on torch's generator (augmentation), as a transform's would."""

    def __len__(self):
        return 30

    def __getitem__(self, index):
        return torch.full((2,), float(index)) + torch.rand(2), index % 3


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("kind", ["resident", "streaming"])
def test_the_ranks_shares_make_up_every_batch_and_every_evaluation_part(kind, world_size):
    data = (
        _images()
        if kind == "resident"
        else StreamingSplits({"train": _Items(), "val": _Items()}, 3, (2,), workers=0)
    )
    batch = 8

    def epoch(splits, start=0):
        return list(splits.train_batches(batch, torch.Generator().manual_seed(4), start=start))

    whole = epoch(data)
    shards = [epoch(data.shard(r, world_size), start=1) for r in range(world_size)]
    assert len(whole) == data.steps_per_epoch(batch)
    for step, (x, y) in enumerate(whole[1:]):
        assert torch.equal(torch.cat([shard[step][0] for shard in shards]), x)  # crops and flips too
        assert torch.equal(torch.cat([shard[step][1] for shard in shards]), y)
    full = list(data.eval_batches("val", 5))
    parts = [b for r in range(world_size) for b in data.shard(r, world_size).eval_batches("val", 5)]
    # the items themselves (not a streamed item's random draw when it is read for evaluation)
    assert torch.equal(torch.cat([x.floor() for x, _ in parts]), torch.cat([x.floor() for x, _ in full]))
    assert torch.equal(torch.cat([y for _, y in parts]), torch.cat([y for _, y in full]))


# ---------- the training loop on two ranks ----------

MODEL_FILE = """
import math
from torch import nn


def mlp(num_classes, input_shape):
    inputs = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, 32), nn.Tanh(), nn.Linear(32, num_classes))
"""


def _config(**changes):
    values = {
        "epochs": 2,
        "device": "cpu",
        "model": "dp_models:mlp",
        "schedule": {"name": "constant", "params": {"p": 0.0}},
    }
    return load_config({**values, **changes})


def _trainer_on_ranks(rank, world_size, checkpoint):
    trainer, history = Trainer(_config()), []
    for metrics in trainer.fit():
        history.append(dict(metrics))
        if metrics.epoch == 1 and trainer.is_main:
            trainer.save(checkpoint)
    return [p.detach().clone() for p in trainer.model.parameters()], history


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "dp_models.py").write_text(MODEL_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_two_ranks_train_as_one_and_resume_with_one(tmp_path, user_models):
    """p ≡ 0 on digits without BatchNorm: 2 ranks give 1 rank's weights and metrics, all-reduced and
    reported with world_size 2; rank 0's checkpoint of epoch 1 resumes on 1 rank to the same end."""
    torch.set_num_threads(1)
    (weights0, history0), (weights1, _) = on_ranks(_trainer_on_ranks, 2, tmp_path, tmp_path / "ranks.pt")
    one = Trainer(_config())
    expected = [dict(m) for m in one.fit()]
    resumed = Trainer(_config())
    resumed.load(tmp_path / "ranks.pt")  # written by rank 0 of 2 after epoch 1
    assert resumed.epoch == 1 and resumed.history[0].world_size == 2
    list(resumed.fit())
    assert all(torch.equal(a, b) for a, b in zip(weights0, weights1))
    for ours, single, continued in zip(weights0, one.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(ours, single.detach(), rtol=0, atol=1e-5)
        torch.testing.assert_close(continued.detach(), single.detach(), rtol=0, atol=1e-5)
    assert [m["world_size"] for m in history0] == [2, 2] and expected[-1]["world_size"] == 1
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        assert history0[-1][key] == pytest.approx(expected[-1][key], rel=1e-4, abs=1e-4), key
    assert history0[-1]["propagations"] == expected[-1]["propagations"]


def _refusals(rank, world_size, mid_epoch):
    refused = []
    for start in (lambda: Trainer(_config(batch_size=63)), lambda: Trainer(_config(sync_bn=True)),
                  lambda: Trainer(_config()).load(mid_epoch)):  # fmt: skip
        try:
            start()
        except ConfigError as err:
            refused.append(str(err))
    return refused


def test_what_cannot_run_on_the_ranks_names_the_key(tmp_path, user_models):
    with pytest.raises(Crash):
        list(Trainer(_config()).fit(every=4, on_steps=crash_after_saving(tmp_path / "mid.pt", 0, 4)))
    expected = [
        "batch_size: 63 does not divide among 2 workers",
        "sync_bn: SyncBatchNorm runs on GPUs only (torch has no CPU form)",
        "checkpoint was written at step 4 of an epoch by one process; 2 ranks resume only from an "
        "epoch's end",
    ]
    assert on_ranks(_refusals, 2, tmp_path, tmp_path / "mid.pt") == [expected] * 2


# ---------- on Ray Train ----------


def _ray_train_workers() -> set[int]:
    """The pids of Ray Train workers that descend from this process (never another user's)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"RayTrainWorker" not in (entry / "cmdline").read_bytes():
                continue
            pid = int(entry.name)
            while pid > 1:
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if pid == os.getpid():
                    found.add(int(entry.name))
                    break
        except (OSError, ValueError):
            continue
    return found


def _kill_a_worker_after_the_first_checkpoint(runs: Path, seen: dict):
    deadline = time.time() + 180
    while time.time() < deadline and not list(runs.glob("*/checkpoint_*")):
        time.sleep(0.05)
    before = _ray_train_workers()
    os.kill(min(before), signal.SIGKILL)
    seen["killed"] = before
    while time.time() < deadline:
        if _ray_train_workers() - before:
            seen["restarted"] = True
            return
        time.sleep(0.1)


@pytest.mark.slow
def test_a_search_trains_on_two_workers_and_a_killed_worker_resumes_to_the_same_end(local_ray, tmp_path):
    from ray.tune import ExperimentAnalysis

    from rst_tune.search import parse_spec, run_search

    values = {
        "name": "dp",
        "train": {"epochs": 8, "batch_size": 64, "device": "cpu"},
        "space": {"schedule": {"constant": {"p": {"low": 0.0, "high": 1.0}}}},
        "baselines": False,
        "points_to_evaluate": [{"schedule": {"name": "constant", "params": {"p": 0.5}}}],
        "num_samples": 1,
        "max_failures": 1,
        "resources": {"workers": 2, "cpu": 0.5},
        "confirm": {"seeds": 0},
        "seed": 9,
    }
    finals, seen = {}, {}
    for name in ("clean", "killed"):
        run_dir = tmp_path / name
        if name == "killed":
            threading.Thread(
                target=_kill_a_worker_after_the_first_checkpoint,
                args=(run_dir / "workers", seen),
                daemon=True,
            ).start()
        report = run_search(parse_spec(values), run_dir, out=lambda line: None)
        (trial,) = ExperimentAnalysis(str(run_dir / "trials")).trials
        assert trial.status == "TERMINATED"
        finals[name] = trial.last_result
        assert report.front and report.front[0].metrics.world_size == 2
    assert len(seen["killed"]) == 2 and seen.get("restarted")
    assert finals["killed"]["epoch"] == 8
    for key in ("val_accuracy", "val_loss", "train_loss", "train_accuracy", "propagations", "sam_fraction"):
        assert finals["killed"][key] == finals["clean"][key], key


@pytest.mark.slow
def test_the_cli_trains_on_two_workers(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "rst_tune.cli", "train", "workers=3", "epochs=2", "device=cpu"]
    refused = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr == "rst-tune: error: batch_size: 64 does not divide among 3 workers\n"
    command[4:5] = ["--quiet", "--checkpoint", str(tmp_path / "run.pt"), "workers=2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"]
    saved = torch.load(tmp_path / "run.pt", weights_only=True)
    assert saved["epoch"] == 2 and [m["world_size"] for m in saved["history"]] == [2, 2]
    assert f"{saved['history'][-1]['val_accuracy']:.2%}" == rows[-1][4]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"resources": {"workers": 3}}, "train.batch_size: 64 does not divide among 3 workers"),
        (
            {"resources": {"workers": 2}, "train": {"grst_weight": 0}},
            "train.grst_weight: 0 has no data-parallel form",
        ),
        (
            {"resources": {"workers": 2}, "train": {"sync_bn": True}},
            "train.sync_bn: SyncBatchNorm runs on GPUs only",
        ),
        (
            {"resources": {"workers": 2}, "space": {"batch_size": {"low": 32, "high": 128, "type": "int"}}},
            "space.batch_size: every batch size must divide among the 2 workers: give choices that do",
        ),
        (
            {"resources": {"workers": 2, "gpu": 0.5}},
            "resources.gpu: 0.5 with 2 workers: each data-parallel worker drives one whole GPU",
        ),
    ],
)
def test_a_search_file_whose_workers_cannot_run_names_the_key(changes, message):
    from rst_tune.search import parse_spec

    space = {"schedule": {"constant": {"p": {"low": 0.0, "high": 1.0}}}, **changes.get("space", {})}
    values = {**changes, "space": space}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_spec(values)
    values["space"].pop("batch_size", None)
    values.pop("train", None)
    values["resources"] = {"workers": 2, "gpu": 1}
    values["space"]["batch_size"] = {"choices": [32, 64]}
    assert parse_spec(values).resources.workers == 2


@pytest.mark.slow
def test_trials_stopped_early_give_their_workers_back(tmp_path):
    """`rst-tune search` with pareto_fair stopping on 2 workers of 1 CPU each, on a 2-CPU machine: a
    stopped trial's Train run must release its workers, or the next trial waits for them forever."""
    space = {
        "name": "stops",
        "train": {"epochs": 3, "batch_size": 64, "device": "cpu"},
        "space": {"schedule": {"constant": {"p": {"low": 0.0, "high": 1.0}}}},
        "num_samples": 3,
        "max_concurrent": 1,
        "seed": 3,
        "early_stopping": {"rule": "pareto_fair", "grace_epochs": 1},
        "resources": {"workers": 2, "cpu": 1},
        "confirm": {"seeds": 0},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    process = rst_tune_process(
        "search", "--space", str(tmp_path / "space.yaml"), "--results-dir", str(tmp_path)
    )
    try:
        out, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, out
    assert "2 data-parallel workers each" in out and "stopped early after epoch 1" in out
    ended = re.findall(r"^\[(\d)/3\]", out, flags=re.MULTILINE)
    assert ended == ["1", "2", "3"]
    states = optuna.load_study(study_name="stops", storage=f"sqlite:///{tmp_path}/stops/optuna.db").trials
    assert [t.user_attrs["world_size"] for t in states] == [2, 2, 2]
