"""The `rst-tune` command: parse arguments, call the library, print results."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rst_tune.config import (
    PERTURBATION_KEYS,
    SCHEDULE_KEYS,
    ConfigError,
    TrainConfig,
    load_config,
    method_reads,
)
from rst_tune.methods import METHODS


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
                raise ConfigError(f"{part} is not a section", key=tuple(key.split(".")))
        node[leaf] = yaml.safe_load(raw)
    return values


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def read_yaml(path: str) -> dict[str, Any]:
    try:
        values = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(err.strerror, source=path) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML ({str(err).splitlines()[0]})", source=path) from None
    if not isinstance(values, dict):
        raise ConfigError("expected a mapping of config keys", source=path)
    return values


def build_train_config(args: argparse.Namespace) -> tuple[TrainConfig, int]:
    """The training config, and the number of data-parallel workers (`workers=N`, default 1)."""
    values = merge(read_yaml(args.config) if args.config else {}, parse_overrides(args.overrides))
    workers = values.pop("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"must be a whole number >= 1 (got {workers!r})", key="workers")
    return load_config(values), workers


_COLUMNS = [
    ("epoch", "{:>5}", "{:>5d}"),
    ("train_loss", "{:>10}", "{:>10.4f}"),
    ("train_accuracy", "{:>9}", "{:>9.2%}"),
    ("val_loss", "{:>8}", "{:>8.4f}"),
    ("val_accuracy", "{:>7}", "{:>7.2%}"),
    ("cost_ratio", "{:>5}", "{:>5.3f}"),
    ("sam_fraction", "{:>6}", "{:>6.3f}"),
    ("propagations", "{:>8}", "{:>8.0f}"),
    ("wall_s", "{:>7}", "{:>7.1f}"),
]
_HEADERS = {
    "train_loss": "train_loss",
    "train_accuracy": "train_acc",
    "val_accuracy": "val_acc",
    "cost_ratio": "cost",
    "sam_fraction": "sam_fr",
    "propagations": "props",
}


def format_row(metrics: Mapping[str, float] | None) -> str:
    """One line of the per-epoch table; None gives the header."""
    if metrics is None:
        return "  ".join(head.format(_HEADERS.get(key, key)) for key, head, _ in _COLUMNS)
    return "  ".join(cell.format(metrics[key]) for key, _, cell in _COLUMNS)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from rst_tune._train import Trainer

    config, workers = build_train_config(args)
    if args.checkpoint_every is not None:
        if args.checkpoint_every < 1 or not args.checkpoint or workers > 1:
            raise ConfigError(
                f"takes a number of steps >= 1, with --checkpoint FILE and one process "
                f"(got {args.checkpoint_every}, --checkpoint {args.checkpoint}, workers={workers})",
                key="--checkpoint-every",
            )
    if workers > 1:
        return _train_on_workers(config, workers, args)
    trainer = Trainer(config)
    if args.checkpoint and Path(args.checkpoint).exists():
        trainer.load(args.checkpoint)
        print(f"resumed from {args.checkpoint} at epoch {trainer.epoch}, step {trainer.step_in_epoch}")
    method, schedule = METHODS[config.method.name], config.schedule.build()
    what = (
        f"schedule {config.method_words()} (p̄ = {schedule.mean():.3f}, "
        if method.uses_schedule
        else f"method {config.method_words()} ("
    )
    print(
        f"{config.dataset} / {config.model} on {trainer.device}: {config.epochs} epochs × "
        f"{trainer.steps_per_epoch} steps, {what}expected cost {config.expected_cost():.3f}"
        f"{', an estimate' if method.estimated else ''})"
        + (f", rho {config.rho}" if method.perturbs else "")
        + (f", G-RST weight {config.grst_weight}" if config.grst_weight is not None else "")
    )
    tqdm.write(format_row(None))
    save = (lambda t: t.save(args.checkpoint)) if args.checkpoint_every else None
    for metrics in trainer.fit(progress=not args.quiet, every=args.checkpoint_every or 0, on_steps=save):
        tqdm.write(format_row(metrics))
        if args.checkpoint:
            trainer.save(args.checkpoint)
    last = trainer.history[-1] if trainer.history else None
    if last is not None and last.test_accuracy is not None:
        print(f"test part: loss {last.test_loss:.4f}, accuracy {last.test_accuracy:.2%}")
    return 0


def _train_on_workers(config: TrainConfig, workers: int, args: argparse.Namespace) -> int:
    from rst_tune._train import preflight
    from rst_tune.search._parallel import train_on_workers

    preflight(config)
    print(
        f"{config.dataset} / {config.model} on {workers} data-parallel workers: {config.epochs} epochs, "
        f"global batch {config.batch_size} ({config.batch_size // workers} per worker), "
        f"schedule {config.schedule.build()}, rho {config.rho}"
    )
    print(format_row(None))
    history = train_on_workers(
        config,
        workers,
        address=args.address,
        checkpoint_file=args.checkpoint,
        on_epoch=lambda metrics: print(format_row(metrics), flush=True),
    )
    if history and history[-1].test_accuracy is not None:
        print(f"test part: loss {history[-1].test_loss:.4f}, accuracy {history[-1].test_accuracy:.2%}")
    return 0


# flags that set the setting of the same name
_SETTINGS = ("name", "max_concurrent", "storage", "shared_storage", "cluster_config", "num_samples", "seeds")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {key: getattr(args, key) for key in _SETTINGS if getattr(args, key, None) is not None}
    return overrides | ({"train": {"epochs": args.epochs}} if args.epochs is not None else {})


def _given(args: argparse.Namespace) -> list[str]:
    """The flags given besides --resume that would change a run's settings."""
    given = ["FILE"] * bool(getattr(args, "file", None)) + ["--space"] * bool(getattr(args, "space", None))
    given += [
        f"--{key.replace('_', '-')}" for key in (*_SETTINGS, "epochs") if getattr(args, key, None) is not None
    ]
    return given + ["--check"] * args.check


def cmd_run(args: argparse.Namespace) -> int:
    """`rst-tune search` and `rst-tune study`: a thin layer on `rst_tune.api`."""
    from rst_tune import api

    kind = args.command
    if args.resume and (given := _given(args)):
        raise ConfigError(f"--resume continues a {kind} as it was started; drop {', '.join(given)}")
    if not args.resume:
        name = args.space or "default" if kind == "search" else args.file
        if name is None:
            raise ConfigError("give a study file (e.g. study_label_noise), or --resume RUN")
        settings = api.load(kind, name, _overrides(args), flag="--space" if kind == "search" else "FILE")
        if args.check:
            print(f"{name}: valid; {api.check(settings)}")
            return 0
    report = api.run(
        kind,
        None if args.resume else settings,
        results_dir=args.results_dir,
        exact_name=args.name is not None,
        resume=args.resume,
        address=args.address,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
    )
    folder = report.run_dir
    print()
    print(report.table())
    print(f"\nfiles: {folder}/{', '.join(report.files)}")
    print(
        f"browse the trials: rst-tune ui {folder}"
        + ("  (add --optuna for optuna-dashboard on the study)" if kind == "search" else "")
    )
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from rst_tune._ui import serve

    return serve(args.run_dir, args.results_dir, host=args.host, port=args.port, optuna=args.optuna)


def cmd_methods(args: argparse.Namespace) -> int:
    """The methods table: each method, its parameters with their defaults, its cost and source."""
    for name, method in METHODS.items():
        params = ", ".join(f"{key}={param.default}" for key, param in method.params.items())
        cost = "an estimate (known after training)" if method.estimated else "known before training"
        shared = [key for key in (*SCHEDULE_KEYS, *PERTURBATION_KEYS) if method_reads(name, key)]
        print(f"{name}({params})\n  {method.description}.")
        print(f"  Reads {', '.join(shared) or 'none of the shared keys'}. Expected cost: {cost}.")
        print(f"  Source: {method.reference}.\n")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    import json

    from rst_tune.study._confirm import confirmed_report

    report = confirmed_report(args.run_dir, cost=args.cost)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0


def _run_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    """The flags a search and a study share."""
    parser.add_argument("--name", help=f"run name (default: the {kind}'s name; -2, -3, ... when taken)")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once")
    parser.add_argument("--epochs", type=int, help="epochs per trial")
    parser.add_argument("--results-dir", default="rst_runs", help="where runs live (default: ./rst_runs)")
    parser.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    parser.add_argument(
        "--storage",
        help="where Ray keeps trials and checkpoints: s3://, gs://, or a shared path; "
        "required on a multi-node cluster (default: the run folder)",
    )
    parser.add_argument(
        "--shared-storage",
        action="store_true",
        default=None,
        help="every node reaches --storage although rst-tune cannot tell: skip its check",
    )
    parser.add_argument(
        "--cluster-config",
        metavar="FILE",
        help="the Ray cluster config the cluster scales by (cluster.yaml): a trial none of its nodes "
        "could hold is refused before anything starts",
    )
    parser.add_argument(
        "--check", action="store_true", help=f"validate the {kind}, print what it would run, start nothing"
    )
    parser.add_argument("--resume", metavar="RUN", help=f"continue the interrupted {kind} in this folder")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite in the run folder)",
    )
    parser.add_argument("--experiment", help=f"MLflow experiment (default: the {kind}'s name)")
    parser.set_defaults(handler=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rst-tune", description="Randomized sharpness-aware training and its search."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="one training run, with a per-epoch table",
        description="Train one configuration. Keys: see rst_tune.config.TrainConfig; "
        "dotted keys nest, e.g. schedule.name=step_up schedule.params.switch=0.5",
    )
    train.add_argument("--config", help="YAML file of config keys (overrides on the command line win)")
    train.add_argument("--checkpoint", help="checkpoint file: written every epoch, resumed from if present")
    train.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="STEPS",
        help="also write the checkpoint every STEPS steps within an epoch (one process; a resume "
        "continues at that step, with the same data order)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--address", help="Ray cluster address for workers=N (default: a local Ray)")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.set_defaults(handler=cmd_train)

    search = commands.add_parser(
        "search",
        help="a Ray Tune + Optuna search; ends with the Pareto front",
        description="Search schedules, rho and the G-RST weight for the Pareto front of "
        "accuracy against propagations.",
    )
    search.add_argument(
        "--space", help="search-space YAML file, or the name of a shipped one (default: default)"
    )
    search.add_argument("--num-samples", type=int, help="number of trials")
    _run_arguments(search, "search")

    study = commands.add_parser(
        "study",
        help="configurations × seeds, with error bars and t-tests against SGD and SAM",
        description="Train a fixed list of configurations with several seeds each; report "
        "mean ± sd, 95 % intervals and Welch's t-test against SGD and SAM.",
    )
    study.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        help="study YAML file, or the name of a shipped one (e.g. study_label_noise)",
    )
    study.add_argument("--seeds", type=int, help="seeds per configuration")
    _run_arguments(study, "study")

    methods = commands.add_parser(
        "methods",
        help="the sharpness-aware methods a config or search file can name",
        description="List the methods (method: {name, params}) with their parameters' defaults.",
    )
    methods.set_defaults(handler=cmd_methods)

    pareto = commands.add_parser(
        "pareto",
        help="the Pareto front of a search run",
        description="Print a search run's Pareto front (and its seed-confirmed front) and write its report "
        "files again.",
    )
    pareto.add_argument("run_dir", metavar="RUN", help="the run folder, e.g. rst_runs/default")
    pareto.add_argument("--json", action="store_true", help="print pareto.json instead of the table")
    pareto.add_argument(
        "--cost",
        help="the front's cost axis: propagations or device_seconds (default: the search file's cost)",
    )
    pareto.set_defaults(handler=cmd_pareto)

    ui = commands.add_parser(
        "ui",
        help="the MLflow UI (and optuna-dashboard) on a search or study run",
        description="Start `mlflow server` on a run's store and print its experiment's URL; "
        "Ctrl-C stops what was started.",
    )
    ui.add_argument(
        "run_dir", metavar="RUN", nargs="?", help="the run folder (default: the newest in --results-dir)"
    )
    ui.add_argument("--results-dir", default="rst_runs", help="where runs live (default: ./rst_runs)")
    ui.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    ui.add_argument(
        "--port", type=int, default=5000, help="MLflow port (default: 5000; optuna-dashboard takes the next)"
    )
    ui.add_argument("--optuna", action="store_true", help="also start optuna-dashboard on the run's study")
    ui.set_defaults(handler=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as uvicorn and gunicorn do: user code is found from here
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"rst-tune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
