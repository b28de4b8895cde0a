"""The RST-Bench table: its Parquet format, its export from a finished build, and its reader.

One row per (configuration, seed, epoch), every column per epoch and cumulative up to it:

    config         int16    the configuration's index (0 SGD, 1 SAM, then the design's c000, c001, …)
    label          string   "SGD", "SAM", "c000", …
    family         string   the schedule family
    schedule.<k>   float32  each shape parameter of the space's families (null where a family has none)
    <key>          float32  each other searched setting, e.g. rho, grst_weight (null: off, plain RST)
    expected_cost  float32  1 + p̄, the propagation pairs per step the schedule costs on average
    seed_index     int8     0 … k−1; the seed trained is `seed`
    seed           int32
    epoch          int16    1 … E
    and every metric the epoch reported (rst_tune._train.METRICS, defined there): float32, except the
    counts steps, sam_steps, propagations and world_size (int32); the counts, sam_fraction, cost_ratio,
    grst_degree, wall_s and device_seconds are cumulative over the run so far

The schema's metadata (key `rst_bench`, JSON) holds the problem, the search file it tabulates
(`search`: training settings and space), the machine, the library versions, the build's attempts and
wall time, and the sizes of the build's Optuna and MLflow stores. `load_table` refuses, in one line, a
file that is not such a table, that is incomplete, or whose space is not the problem's.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow as pa
import pyarrow.parquet as pq

from rst_bench.problems import ROOT, Problem
from rst_tune._train import METRICS
from rst_tune.schedules import Schedule, make_schedule
from rst_tune.search._folder import RunFolder
from rst_tune.search._record import trial_rows
from rst_tune.study import read_study

FORMAT = 1
METADATA_KEY = b"rst_bench"
IDENTITY = ("config", "label", "family", "expected_cost", "seed_index", "seed", "epoch")  # besides settings
COUNTS = ("steps", "sam_steps", "propagations", "world_size")
CURVES = {  # every metric an epoch reports (rst_tune._train.METRICS) -> its Arrow type
    name: pa.int32() if name in COUNTS else pa.float32() for name in METRICS if name != "epoch"
}


class TableError(ValueError):
    """A table file that cannot be used, and why, in one line."""


def setting_columns(search: dict[str, Any]) -> list[str]:
    """The configuration columns of a search file's space: `schedule.<k>` per shape parameter of any
    family (in order of first appearance), then each other searched key."""
    shape: dict[str, None] = {}
    for params in search["space"].get("schedule", {}).values():
        shape.update(dict.fromkeys(f"schedule.{k}" for k in params))
    return [*shape, *(k for k in search["space"] if k != "schedule")]


@dataclass
class Table:
    """A loaded table: configurations (their settings and cost) and curves shaped [C, k, E]."""

    meta: dict[str, Any]
    labels: list[str]
    families: list[str]
    settings: dict[str, np.ndarray]  # column -> [C] (NaN: absent, or off)
    expected_cost: np.ndarray  # [C]
    seeds: np.ndarray  # [k]
    curves: dict[str, np.ndarray]  # column -> [C, k, E]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.curves["val_accuracy"].shape

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def schedule(self, c: int) -> Schedule:
        """Configuration `c`'s schedule, from its family and its (non-NaN) `schedule.*` settings."""
        params = {
            k.removeprefix("schedule."): float(v[c])
            for k, v in self.settings.items()
            if k.startswith("schedule.") and not math.isnan(v[c])
        }
        return make_schedule(self.families[c], **params)

    def sam_equivalents(self) -> np.ndarray:
        """[C, k, E]: the compute of training to each epoch, in full SAM trainings (2 propagations
        per step at every step of every epoch)."""
        full_steps = self.curves["steps"][:, :, -1:]
        return self.curves["propagations"] / (2.0 * full_steps)

    def final(self, column: str) -> np.ndarray:
        """[C, k]: `column` at the last epoch."""
        return self.curves[column][:, :, -1]

    def summary(self) -> str:
        c, k, e = self.shape
        build = self.meta.get("build", {})
        return (
            f"{c} configurations × {k} seeds × {e} epochs, built on {self.meta['machine']} in "
            f"{build.get('wall_s', float('nan')) / 3600:.2f} h over {build.get('attempts', '?')} attempt(s)"
        )


def _epochs(trial_dir: Path) -> list[dict[str, Any]]:
    """A trial's reported epochs, the last report of each epoch kept (a resumed epoch is reported again)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in (trial_dir / "result.json").read_text().splitlines():
        if line.strip():
            result = json.loads(line)
            if "epoch" in result:
                by_epoch[result["epoch"]] = result
    return [by_epoch[e] for e in sorted(by_epoch)]


def _attempts(log: Path) -> dict[str, Any]:
    """The build's attempts: how many, how many were interrupted (no end logged; each is counted up to
    the next attempt's start), their wall time, and the machine of each."""
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    wall, interrupted = 0.0, 0
    for event, after in zip(events, [*events[1:], None]):
        if event["event"] == "start":
            ended = after is not None and after["event"] == "end"
            interrupted += not ended
            wall += after["wall_s"] if ended else (after["time"] - event["time"] if after else 0.0)
    starts = [e for e in events if e["event"] == "start"]
    return {
        "attempts": len(starts),
        "interrupted": interrupted,
        "wall_s": wall,
        "machines": [e["machine"] for e in starts],
    }


def _versions() -> dict[str, str]:
    import ray
    import torch

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "torch": torch.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "rst_tune": commit,
    }


def empty_columns(settings: list[str]) -> dict[str, list[Any]]:
    """The table's columns, empty, given its setting columns (`setting_columns`)."""
    return {name: [] for name in (*IDENTITY[:3], *settings, *IDENTITY[3:], *CURVES)}


def append_run(
    columns: dict[str, list[Any]],
    config: int,
    label: str,
    values: dict[str, Any],
    expected_cost: float,
    seed: tuple[int, int],
    epochs: list[dict[str, Any]],
) -> None:
    """The rows of one (configuration, seed) run: `values` its training settings (`schedule`: name and
    params), `seed` (its index, the seed), `epochs` each epoch's reported metrics."""
    for epoch in epochs:
        columns["config"].append(config)
        columns["label"].append(label)
        columns["family"].append(values["schedule"]["name"])
        for name in columns:
            if name in IDENTITY or name in CURVES:
                continue
            group, _, key = name.rpartition(".")
            value = values["schedule"]["params"].get(key) if group == "schedule" else values[name]
            columns[name].append(None if value is None else float(value))
        columns["expected_cost"].append(expected_cost)
        columns["seed_index"].append(seed[0])
        columns["seed"].append(seed[1])
        columns["epoch"].append(epoch["epoch"])
        for name in CURVES:
            columns[name].append(epoch[name])


def export(problem: Problem, run_dir: Path, attempts_log: Path, out: Path) -> Table:
    """Write the table of the finished build in `run_dir` to `out`; TableError if a pair is missing."""
    problem.importable()
    folder = RunFolder.existing(run_dir, "study")
    study = optuna.load_study(study_name=problem.name, storage=folder.study_storage())
    identity = problem.identity()
    settings = setting_columns(identity)
    done = [row for row in trial_rows(study) if row.state == "COMPLETE"]
    plan = read_study(folder.path).raw
    missing = len(plan["configurations"]) * plan["seeds"] - len(done)
    if missing:
        raise TableError(
            f"{run_dir}: {missing} (configuration, seed) pairs have not completed; resume the build"
        )
    labels = [c["label"] for c in plan["configurations"]]
    columns = empty_columns(settings)
    for row in sorted(done, key=lambda r: (labels.index(r.configuration), r.record.seed_index)):
        train = row.record.train
        append_run(
            columns,
            labels.index(row.configuration),
            row.configuration,
            {
                **train.model_dump(),
                "schedule": {"name": train.schedule.name, "params": train.schedule.build().params},
            },
            row.expected_cost,
            (row.record.seed_index, train.seed),
            _epochs(Path(folder.experiment_path(None)) / row.ray_trial_id),
        )
    build = _attempts(attempts_log)
    meta = {
        "problem": problem.name,
        "description": problem.description,
        "search": identity,
        "machine": build["machines"][-1],
        "build": build,
        "stores_mb": {
            name: round((folder.path / name).stat().st_size / 1e6, 2) for name in ("optuna.db", "mlflow.db")
        },
        "versions": _versions(),
    }
    write_table(out, columns, meta)
    return load_table(out, problem)


def write_table(path: Path, columns: dict[str, list[Any]], meta: dict[str, Any]) -> None:
    """Columns (one value per row, named as the module says) and metadata as a table file."""
    types = {"config": pa.int16(), "label": pa.string(), "family": pa.string(), "seed_index": pa.int8()}
    types |= {"seed": pa.int32(), "epoch": pa.int16(), **CURVES}
    schema = pa.schema([(name, types.get(name, pa.float32())) for name in columns])
    schema = schema.with_metadata({METADATA_KEY: json.dumps({"format": FORMAT, **meta})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path, compression="zstd", compression_level=9)


def load_table(path: str | Path, problem: Problem | None = None) -> Table:
    """The table at `path`, checked whole and, given `problem`, against its search file; TableError
    (one line) otherwise."""
    try:
        data = pq.read_table(path)
        meta = json.loads((data.schema.metadata or {})[METADATA_KEY])
        meta["search"]["space"]
    except (KeyError, TypeError) as err:
        raise TableError(f"{path}: not an RST-Bench table (its metadata lacks {err})") from None
    except (OSError, pa.ArrowException, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise TableError(f"{path}: not a readable RST-Bench table ({reason})") from None
    if meta.get("format") != FORMAT:
        raise TableError(f"{path}: table format {meta.get('format')!r}, this reader reads {FORMAT}")
    if problem is not None:
        expected = problem.identity()
        for part in expected:
            if meta["search"].get(part) != expected[part]:
                keys = sorted(
                    k
                    for k in {*meta["search"].get(part, {}), *expected[part]}
                    if meta["search"].get(part, {}).get(k) != expected[part].get(k)
                )
                raise TableError(
                    f"{path}: built for another {part} than {problem.name}'s ({', '.join(keys)} differ); "
                    "rebuild it with benchmarks/rst_bench_build.py"
                )
    settings = setting_columns(meta["search"])
    needed = list(empty_columns(settings))
    absent = [name for name in needed if name not in data.column_names]
    if absent:
        raise TableError(f"{path}: columns missing: {', '.join(absent)}")
    cols = {name: data.column(name).to_numpy(zero_copy_only=False) for name in needed}
    config, seed_index, epoch = (cols[n].astype(int) for n in ("config", "seed_index", "epoch"))
    shape = (config.max() + 1, seed_index.max() + 1, epoch.max())
    cells = np.zeros(shape, int)
    np.add.at(cells, (config, seed_index, epoch - 1), 1)
    if (cells != 1).any():
        c, k, e = np.argwhere(cells != 1)[0]
        raise TableError(
            f"{path}: configuration {c}, seed index {k}, epoch {e + 1}: {cells[c, k, e]} rows, not one"
        )
    order = np.lexsort((epoch, seed_index, config))
    first = order[:: shape[1] * shape[2]]
    curves = {name: cols[name][order].astype(float).reshape(shape) for name in CURVES}
    return Table(
        meta,
        [str(x) for x in cols["label"][first]],
        [str(x) for x in cols["family"][first]],
        {name: cols[name][first].astype(float) for name in settings},
        cols["expected_cost"][first].astype(float),
        cols["seed"][order][: shape[1] * shape[2] : shape[2]].astype(int),
        curves,
    )
