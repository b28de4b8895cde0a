"""What a benchmark records about the machine it ran on."""

import json
import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (else what `platform` knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def pythonpath(*folders: str | Path) -> str:
    """PYTHONPATH with `folders` first, for a child process that imports from them."""
    return os.pathsep.join([*map(str, folders), *filter(None, [os.environ.get("PYTHONPATH")])])


def engine_setup(device: torch.device, images: bool = True) -> dict:
    """The precision and memory format to run the engine with on `device`: bf16 where the device has
    it natively, else fp32; channels_last for image batches on CUDA."""
    from rst_tune._train import (
        native_bf16,  # the engine's needs may arrive after this loads (gpu_run --wheels)
    )

    return {
        "precision": "bf16" if native_bf16(device) else "fp32",
        "channels_last": device.type == "cuda" and images,
    }


def write_results(path: str, results: dict) -> None:
    """`results` as JSON at `path`, with the torch version and thread count they were measured with."""
    with open(path, "w") as f:
        json.dump(
            {"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}, f, indent=2
        )
