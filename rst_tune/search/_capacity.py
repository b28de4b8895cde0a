"""What a Ray cluster config (`cluster.yaml`) can scale to, against what one trial asks for: a trial
that no node of it could ever hold is refused before anything starts, instead of waiting forever."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from rst_tune.config import ConfigError
from rst_tune.search._settings import Resources

RAY_MAX_WORKERS = 2  # Ray's default for a config's `max_workers`; a node type's defaults to that


def _words(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{key}: {value:g}" for key, value in resources.items()) + "}"


def check_capacity(config_file: str | Path, resources: Resources) -> None:
    """Raise ConfigError, in one line naming the resources, unless the nodes the Ray cluster config
    `config_file` scales to (the head, and each worker type at its `max_workers`) hold one trial's
    `resources.workers` bundles of `resources.cpu` CPUs and `resources.gpu` GPUs. A node type whose
    resources Ray detects at launch (`resources: {}`) can hold anything: nothing is refused then."""
    try:
        config = yaml.safe_load(Path(config_file).read_text())
        types, head = config["available_node_types"], config["head_node_type"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        problem = f"{config_file}: not a readable Ray cluster config ({err})"
        raise ConfigError(problem, key="cluster_config") from None
    need = resources.bundle()
    limit = config.get("max_workers", RAY_MAX_WORKERS)
    holds, offered = 0, []
    for name, node in types.items():
        have = node.get("resources") or {}
        if not have:
            return
        count = 1 if name == head else min(node.get("max_workers", limit), limit)
        each = min(math.floor(have.get(key, 0) / value + 1e-9) for key, value in need.items() if value > 0)
        holds += count * each
        offered.append(f"{count} × {name} {_words(have)}")
    if holds < resources.workers:
        raise ConfigError(
            f"a trial asks for {resources.workers} × {_words(need)}, but {config_file} scales to "
            f"{', '.join(offered)}, which hold {holds}; raise max_workers there or ask for less",
            key="resources",
        )
