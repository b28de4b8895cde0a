"""Joining the Ray cluster, and whether its trials can share the storage they were given."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from rst_tune._imports import is_import_path, source_folder
from rst_tune.config import ConfigError


def code_runtime_env(values: dict[str, Any]) -> dict[str, Any] | None:
    """A `runtime_env` that puts the folders of the user code `values` names (models and datasets by
    import path) on the Ray workers' PYTHONPATH; None when it names none."""
    named = {text for text in _strings(values) if is_import_path(text)}
    folders = sorted({folder for path in named if (folder := source_folder(path))})
    if not folders:
        return None
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return {"env_vars": {"PYTHONPATH": os.pathsep.join([*folders, *inherited])}}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def connect(address: str | None, runtime_env: dict[str, Any] | None = None) -> None:
    """Join the Ray cluster at `address` (None: start a local one), unless joined already. Ray's own
    messages below ERROR stay in its log files: a local cluster has no dashboard, whose state API Ray
    Train's placement-group cleaner would otherwise warn about every few seconds."""
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            configure_logging=True,
            logging_level="ERROR",
            logging_config=ray.LoggingConfig(log_level="ERROR"),
            runtime_env=runtime_env,
        )


NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "9p")


def filesystem_type(path: str | Path) -> str:
    """The type of the filesystem holding `path` (from /proc/mounts), or "unknown"."""
    target, best, kind = str(Path(path).resolve()), "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        _, point, fstype = line.split()[:3]
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, fstype
    return kind


def spans_machines(nodes: list[dict], here: str) -> bool:
    """Whether a cluster (`ray.nodes()`) runs, or will run, trials on machines other than `here`:
    a live node elsewhere, or no live node with a CPU or GPU (its workers are still to come)."""
    alive = [n for n in nodes if n["Alive"]]
    runs_trials = [n for n in alive if n["Resources"].get("CPU", 0) > 0 or n["Resources"].get("GPU", 0) > 0]
    return not runs_trials or any(n["NodeManagerAddress"] != here for n in alive)


def check_shared(path: str) -> None:
    """Raise ConfigError unless every machine of a cluster can reach `path`."""
    if "://" in path and not path.startswith("file://"):
        return
    kind = filesystem_type(path.removeprefix("file://"))
    if kind not in NETWORK_FILESYSTEMS and not kind.startswith("fuse."):
        raise ConfigError(
            f"{path} is a local {kind} path, but this cluster runs trials on other machines; "
            "give storage they all reach: s3://bucket/prefix, gs://bucket/prefix, or a shared NFS mount "
            "(shared_storage: true if they do reach this one)",
            key="--storage",
        )
