"""The `rst-tune` command: parse arguments, call the library, print results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from rst_tune.config import ConfigError, TrainConfig, load_config


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs (dotted keys nest, values parse as YAML) into a nested mapping."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r}: expected key=value")
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return values


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def read_yaml(path: str) -> dict[str, Any]:
    try:
        values = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"{path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return values


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    values = read_yaml(args.config) if args.config else {}
    return load_config(merge(values, parse_overrides(args.overrides)))


_COLUMNS = [("epoch", "{:>5}", "{:>5d}"), ("train_loss", "{:>10}", "{:>10.4f}"), ("train_accuracy", "{:>9}", "{:>9.2%}"),
            ("val_loss", "{:>8}", "{:>8.4f}"), ("val_accuracy", "{:>7}", "{:>7.2%}"), ("cost_ratio", "{:>5}", "{:>5.3f}"),
            ("sam_fraction", "{:>6}", "{:>6.3f}"), ("propagations", "{:>8}", "{:>8d}"), ("wall_s", "{:>7}", "{:>7.1f}")]
_HEADERS = {"train_loss": "train_loss", "train_accuracy": "train_acc", "val_accuracy": "val_acc",
            "cost_ratio": "cost", "sam_fraction": "sam_fr", "propagations": "props"}


def format_row(metrics: dict[str, float] | None) -> str:
    """One line of the per-epoch table; None gives the header."""
    if metrics is None:
        return "  ".join(head.format(_HEADERS.get(key, key)) for key, head, _ in _COLUMNS)
    return "  ".join(cell.format(metrics[key]) for key, _, cell in _COLUMNS)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from rst_tune.train import Trainer

    config = build_train_config(args)
    trainer = Trainer(config)
    if args.checkpoint and Path(args.checkpoint).exists():
        trainer.load(args.checkpoint)
        print(f"resumed from {args.checkpoint} at epoch {trainer.epoch}")
    schedule = config.schedule.build()
    print(f"{config.dataset} / {config.model} on {trainer.device}: {config.epochs} epochs × {trainer.steps_per_epoch} steps, "
          f"schedule {schedule} (p̄ = {schedule.mean():.3f}, expected cost {1 + schedule.mean():.3f}), rho {config.rho}"
          + (f", G-RST weight {config.grst_weight}" if config.grst_weight is not None else ""))
    tqdm.write(format_row(None))
    for metrics in trainer.fit(progress=not args.quiet):
        tqdm.write(format_row(metrics))
        if args.checkpoint:
            trainer.save(args.checkpoint)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rst-tune", description="Randomized sharpness-aware training and its search.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="one training run, with a per-epoch table",
                                description="Train one configuration. Keys: see rst_tune.config.TrainConfig; "
                                            "dotted keys nest, e.g. schedule.name=step_up schedule.params.switch=0.5")
    train.add_argument("--config", help="YAML file of config keys (overrides on the command line win)")
    train.add_argument("--checkpoint", help="checkpoint file: written every epoch, resumed from if present")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.set_defaults(run=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"rst-tune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
