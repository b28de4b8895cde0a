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
          f"schedule {schedule} (p̄ = {schedule.mean():.3f}, expected cost {schedule.expected_cost():.3f}), rho {config.rho}"
          + (f", G-RST weight {config.grst_weight}" if config.grst_weight is not None else ""))
    tqdm.write(format_row(None))
    for metrics in trainer.fit(progress=not args.quiet):
        tqdm.write(format_row(metrics))
        if args.checkpoint:
            trainer.save(args.checkpoint)
    return 0


SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


def find_space(name: str, flag: str = "--space") -> Path:
    """A search-space or study file by path, or by name in ./search_spaces or the project's search_spaces/."""
    for candidate in (Path(name), Path("search_spaces") / f"{name}.yaml", SPACES_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
    raise ConfigError(f"{flag} {name}: no such file (shipped: {shipped or 'none found'})")


def cmd_search(args: argparse.Namespace) -> int:
    from rst_tune.search import load_spec, read_run, run_search
    from rst_tune.search.runner import new_run_dir
    from rst_tune.tracking import tracker_for

    if args.resume:
        run_dir = Path(args.resume)
        values, spec = read_run(run_dir)
    else:
        overrides = {key: value for key, value in (("name", args.name), ("num_samples", args.num_samples),
                                                   ("max_concurrent", args.max_concurrent), ("storage", args.storage))
                     if value is not None}
        if args.epochs is not None:
            overrides["train"] = {"epochs": args.epochs}
        values, spec = load_spec(find_space(args.space), overrides)
        if args.check:
            from rst_tune.search.space import points_to_evaluate

            first = points_to_evaluate(spec)
            print(f"{args.space}: valid; {spec.num_samples} trials of {spec.train_config().epochs} epochs, objective "
                  f"{spec.objective}, searching {', '.join(['schedule'] * bool(spec.schedule) + list(spec.dimensions)) or 'nothing'}, "
                  f"{len(first)} points first")
            return 0
        run_dir = new_run_dir(args.results_dir, spec.name, exact=args.name is not None)
    tracker = tracker_for(run_dir, spec, args.tracking_uri, args.experiment)
    report = run_search(values, spec, run_dir, address=args.address, resume=bool(args.resume), callbacks=[tracker])
    print("\nPareto front (val_accuracy up, propagations down):")
    print(report.table())
    print(f"\nfiles: {run_dir}/pareto.csv, pareto.json, pareto.png, pareto.html")
    print(f"browse the trials: rst-tune ui {run_dir}  (add --optuna for optuna-dashboard on the study)")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from rst_tune.search.runner import new_run_dir
    from rst_tune.study import load_study, read_study, run_study
    from rst_tune.tracking import tracker_for

    if args.resume:
        given = [flag for flag, value in (("FILE", args.file), ("--seeds", args.seeds), ("--epochs", args.epochs),
                                          ("--name", args.name), ("--max-concurrent", args.max_concurrent),
                                          ("--storage", args.storage), ("--check", args.check)) if value]
        if given:
            raise ConfigError(f"--resume continues a study as it was started; drop {', '.join(given)}")
        run_dir = Path(args.resume)
        values, spec = read_study(run_dir)
    else:
        if not args.file:
            raise ConfigError("give a study file (e.g. study_label_noise), or --resume RUN")
        overrides = {key: value for key, value in (("name", args.name), ("seeds", args.seeds),
                                                   ("max_concurrent", args.max_concurrent), ("storage", args.storage))
                     if value is not None}
        if args.epochs is not None:
            overrides["train"] = {"epochs": args.epochs}
        values, spec = load_study(find_space(args.file, "FILE"), overrides)
        if args.check:
            print(f"{args.file}: valid; {len(spec.configurations)} configurations × {spec.seeds} seeds = "
                  f"{spec.num_samples} trials of {spec.train_config().epochs} epochs:")
            for index in range(len(spec.configurations)):
                config = spec.train_config_of(index)
                print(f"  {spec.label(index)}: expected cost {config.schedule.build().expected_cost():.3f}")
            return 0
        run_dir = new_run_dir(args.results_dir, spec.name, exact=args.name is not None)
    tracker = tracker_for(run_dir, spec.search_spec(), args.tracking_uri, args.experiment, kind="study",
                          settings=spec.model_dump())
    report = run_study(values, spec, run_dir, address=args.address, resume=bool(args.resume), callbacks=[tracker])
    print()
    print(report.table())
    print(f"\nfiles: {run_dir}/study.md, study.csv, study.json, study.png")
    print(f"browse the trials: rst-tune ui {run_dir}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from rst_tune.ui import serve

    return serve(args.run_dir, args.results_dir, host=args.host, port=args.port, optuna=args.optuna)


def cmd_pareto(args: argparse.Namespace) -> int:
    import json

    from rst_tune.search import report

    result = report(args.run_dir)
    print(json.dumps(result.to_json(), indent=2) if args.json else result.table())
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
    train.set_defaults(handler=cmd_train)

    search = commands.add_parser("search", help="a Ray Tune + Optuna search; ends with the Pareto front",
                                 description="Search schedules, rho and the G-RST weight for the Pareto front of "
                                             "accuracy against propagations.")
    search.add_argument("--space", default="default", help="search-space YAML file, or the name of a shipped one (default: default)")
    search.add_argument("--name", help="run name (default: the space's name; -2, -3, ... when taken)")
    search.add_argument("--num-samples", type=int, help="number of trials")
    search.add_argument("--max-concurrent", type=int, help="trials running at once")
    search.add_argument("--epochs", type=int, help="epochs per trial")
    search.add_argument("--results-dir", default="rst_runs", help="where runs live (default: ./rst_runs)")
    search.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    search.add_argument("--storage", help="where Ray keeps trials and checkpoints: s3://, gs://, or a shared path; "
                                          "required on a multi-node cluster (default: the run folder)")
    search.add_argument("--check", action="store_true", help="validate the space, print a summary, start nothing")
    search.add_argument("--resume", metavar="RUN", help="continue the interrupted run in this folder")
    search.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite in the run folder)")
    search.add_argument("--experiment", help="MLflow experiment (default: the search's name)")
    search.set_defaults(handler=cmd_search)

    study = commands.add_parser("study", help="configurations × seeds, with error bars and t-tests against SGD and SAM",
                                description="Train a fixed list of configurations with several seeds each; report "
                                            "mean ± sd, 95 % intervals and Welch's t-test against SGD and SAM.")
    study.add_argument("file", metavar="FILE", nargs="?",
                       help="study YAML file, or the name of a shipped one (e.g. study_label_noise)")
    study.add_argument("--seeds", type=int, help="seeds per configuration")
    study.add_argument("--epochs", type=int, help="epochs per trial")
    study.add_argument("--name", help="run name (default: the study's name; -2, -3, ... when taken)")
    study.add_argument("--max-concurrent", type=int, help="trials running at once")
    study.add_argument("--results-dir", default="rst_runs", help="where runs live (default: ./rst_runs)")
    study.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    study.add_argument("--storage", help="where Ray keeps trials and checkpoints (see rst-tune search --help)")
    study.add_argument("--check", action="store_true", help="validate the study, list its configurations, start nothing")
    study.add_argument("--resume", metavar="RUN", help="continue the interrupted study in this folder")
    study.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite in the run folder)")
    study.add_argument("--experiment", help="MLflow experiment (default: the study's name)")
    study.set_defaults(handler=cmd_study)

    pareto = commands.add_parser("pareto", help="the Pareto front of a search run",
                                 description="Print a run's Pareto front and write pareto.csv, pareto.json, pareto.png.")
    pareto.add_argument("run_dir", metavar="RUN", help="the run folder, e.g. rst_runs/default")
    pareto.add_argument("--json", action="store_true", help="print pareto.json instead of the table")
    pareto.set_defaults(handler=cmd_pareto)

    ui = commands.add_parser("ui", help="the MLflow UI (and optuna-dashboard) on a search or study run",
                             description="Start `mlflow server` on a run's store and print its experiment's URL; "
                                         "Ctrl-C stops what was started.")
    ui.add_argument("run_dir", metavar="RUN", nargs="?", help="the run folder (default: the newest in --results-dir)")
    ui.add_argument("--results-dir", default="rst_runs", help="where runs live (default: ./rst_runs)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    ui.add_argument("--port", type=int, default=5000, help="MLflow port (default: 5000; optuna-dashboard takes the next)")
    ui.add_argument("--optuna", action="store_true", help="also start optuna-dashboard on the run's study")
    ui.set_defaults(handler=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"rst-tune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
