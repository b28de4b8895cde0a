"""The device a trial trains on comes from the GPUs Ray assigned it, not from what torch can see: the
rule, and Ray tasks on a real local cluster that declares two GPUs (none needs to exist)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rst_tune.config import ConfigError
from rst_tune.search._trainable import device_for


@pytest.mark.parametrize(
    "requested, gpu_ids, visible, device",
    [
        ("auto", [], None, "cpu"),  # a GPU node, but none assigned: the CPU
        ("auto", [], "0,1", "cpu"),
        ("auto", ["1"], "1", "cuda:0"),  # Ray shows the worker its GPU alone
        ("cuda", ["3"], "2,3", "cuda:1"),
        ("cuda:0", ["3"], "2,3", "cuda:1"),  # the assigned GPU wins over an index Ray knows nothing of
        ("auto", ["1"], None, "cuda:1"),  # Ray told not to set CUDA_VISIBLE_DEVICES
        ("cpu", ["0"], "0", "cpu"),
        ("mps", [], None, "mps"),
    ],
)
def test_the_device_is_the_assigned_gpu_or_else_the_cpu(requested, gpu_ids, visible, device):
    assert device_for(requested, gpu_ids, visible) == torch.device(device)


def test_cuda_without_an_assigned_gpu_names_the_key():
    with pytest.raises(ConfigError, match="device: cuda, but Ray assigned this trial no GPU"):
        device_for("cuda", [], "0")


PROBE = textwrap.dedent(
    """
    import json, os, ray
    from rst_tune.search._trainable import trial_device

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)

    @ray.remote
    def device(requested):
        ids = ray.get_runtime_context().get_accelerator_ids()["GPU"]
        return str(trial_device(requested)), ids, os.environ.get("CUDA_VISIBLE_DEVICES")

    @ray.remote(num_gpus=1)
    class Holder:  # holds one GPU, so the next task's is the other one
        def ids(self):
            return ray.get_runtime_context().get_accelerator_ids()["GPU"]

    seen = {"0": ray.get(device.options(num_gpus=0).remote("auto"))}
    holder = Holder.remote()
    held = ray.get(holder.ids.remote())
    seen["1"] = ray.get(device.options(num_gpus=1).remote("auto"))
    seen["held"] = held
    print(json.dumps(seen))
    """
)


@pytest.mark.slow
def test_ray_tasks_train_on_the_gpu_ray_gave_them_and_on_the_cpu_without_one():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["0"][0] == "cpu" and seen["0"][1] == []
    (held,) = seen["held"]
    device, (given,), visible = seen["1"]
    assert given != held  # the other declared GPU
    assert visible == given and device == "cuda:0"  # Ray shows it alone, so it is cuda:0
