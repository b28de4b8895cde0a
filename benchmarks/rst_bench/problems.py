"""The problems RST-Bench tabulates, and the configurations it trains on each: a scrambled Sobol
sample over a search file's space (schedule family and shape, ρ, the optional G-RST weight), plus the
SGD and SAM baselines, each at the same seeds."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from scipy.stats import qmc

from rst_tune.search import parse_spec
from rst_tune.search._spec import Dimension, SearchSpec

ROOT = Path(__file__).resolve().parents[2]
TABLES = Path(__file__).resolve().parent / "tables"
TABLE_SPACE = Path(__file__).resolve().parent / "spaces" / "tables.yaml"  # the space both tables cover
SEARCH = ROOT / "rst_tune" / "search_spaces" / "default.yaml"
BASELINES = {"SGD": 0.0, "SAM": 1.0}  # label -> constant p, at train.rho


@dataclass(frozen=True)
class Problem:
    """One table: the training settings of `train_file` (with `train` on top) over the space of
    `space_file`, `configs` sampled configurations × `seeds` seeds, run from `folder` (where its
    user code imports from). Replays search it as `search_file` does (its space may spell the table's
    space in other coordinates), with the same training."""

    name: str
    description: str
    train_file: Path
    space_file: Path = TABLE_SPACE
    folder: Path = ROOT
    search_file: Path = SEARCH
    train: tuple[tuple[str, Any], ...] = ()
    configs: int = 256
    seeds: int = 3
    design_seed: int = 0

    def identity(self) -> dict[str, Any]:
        """What a table of this problem must have been built from: its training, space and design."""
        values = self.search_values()
        return {
            "train": values["train"],
            "space": values["space"],
            "design": {"configs": self.configs, "seeds": self.seeds, "design_seed": self.design_seed},
        }

    def search_values(self, path: Path | None = None) -> dict[str, Any]:
        """The search file at `path` (default: the space file, which the table covers) with this
        problem's training."""
        values = yaml.safe_load((path or self.space_file).read_text())
        trained = yaml.safe_load(self.train_file.read_text())["train"]
        # every epoch's test metrics, so a replay can report test accuracy at any stopping point
        values["train"] = {**trained, **dict(self.train), "test_every_epoch": True}
        values["name"] = self.name
        return values

    def importable(self) -> None:
        """Put the problem's folder on sys.path: its user code imports as the CLI run from there does."""
        if str(self.folder) not in sys.path:
            sys.path.insert(0, str(self.folder))

    def spec(self) -> SearchSpec:
        """The search over the table's own space."""
        self.importable()
        return parse_spec(self.search_values(), str(self.space_file))

    def search_spec(self, variant: str = "default") -> SearchSpec:
        """The search a replay runs: a variant of `VARIANTS`, with this problem's training."""
        self.importable()
        if variant not in VARIANTS:
            raise ValueError(f"unknown search {variant!r}; valid: {', '.join(VARIANTS)}")
        path, overrides = VARIANTS[variant]
        values = self.search_values(path or self.search_file)
        values |= {key: value() if callable(value) else value for key, value in overrides.items()}
        return parse_spec(values, str(path or self.search_file))

    def study_values(self, max_concurrent: int = 2) -> dict[str, Any]:
        """The rst-tune study that builds the table: the baselines, then the design, at seeds 0 … k−1."""
        values = self.search_values()
        rho = values["train"].get("rho", 0.05)
        baselines = [
            {"label": label, "schedule": {"name": "constant", "params": {"p": p}}, "rho": rho}
            for label, p in BASELINES.items()
        ]
        designed = design(self.spec(), self.configs, self.design_seed)
        configurations = [{"label": f"c{i:03d}", **c} for i, c in enumerate(designed)]
        return {
            "name": self.name,
            "description": self.description,
            "train": values["train"],
            "configurations": baselines + configurations,
            "seeds": self.seeds,
            "seed": 0,
            "max_concurrent": max_concurrent,
            "resources": {"cpu": 1, "gpu": 0},
        }


def from_unit(dim: Dimension, u: float) -> Any:
    """The value of `dim` at `u` in [0, 1): uniform in its scale (log or linear), on its grid."""
    if dim.choices is not None:
        return dim.choices[min(int(u * len(dim.choices)), len(dim.choices) - 1)]
    if dim.log:
        value = math.exp(math.log(dim.low) + u * (math.log(dim.high) - math.log(dim.low)))
    else:
        value = dim.low + u * (dim.high - dim.low)
    if dim.step:
        value = dim.low + round((value - dim.low) / dim.step) * dim.step
    return int(round(value)) if dim.type == "int" else round(float(value), 4)


def shape_width(spec: SearchSpec) -> int:
    """The most searched shape parameters of any family."""
    return max(sum(isinstance(v, Dimension) for v in f.params.values()) for f in spec.schedule.values())


def design(spec: SearchSpec, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` configurations of `spec`'s space from a scrambled Sobol sequence: coordinate 0 picks the
    family, the next `shape_width` its searched parameters in order, then each other dimension (an
    optional one first draws on/off, each half the time). Training-config overrides, as a study's."""
    families, shape = list(spec.schedule), shape_width(spec)
    width = 1 + shape + sum(1 + d.optional for d in spec.dimensions.values())
    configs = []
    for row in qmc.Sobol(width, scramble=True, seed=seed).random(n):
        family = families[min(int(row[0] * len(families)), len(families) - 1)]
        shape_u = iter(row[1 : 1 + shape])
        params = {
            k: from_unit(v, next(shape_u)) if isinstance(v, Dimension) else v
            for k, v in spec.schedule[family].params.items()
        }
        config: dict[str, Any] = {"schedule": {"name": family, "params": params}}
        rest = iter(row[1 + shape :])
        for key, dim in spec.dimensions.items():
            on = next(rest) >= 0.5 if dim.optional else True
            value = from_unit(dim, next(rest))
            config[key] = value if on else None
        configs.append(config)
    return configs


VARIANTS: dict[str, tuple[Path | None, dict[str, Any]]] = {
    # name -> (search file, None: the problem's; settings that replace its own, or make them)
    "default": (None, {}),
    "tables": (TABLE_SPACE, {}),  # the default search as the tables were built: today's pipeline
    # each change of the default on its own (early stopping is the replay's own axis)
    "coordinates": (TABLE_SPACE, {"space": lambda: yaml.safe_load(SEARCH.read_text())["space"]}),
    "known_cost": (TABLE_SPACE, {"sampler": {"name": "known_cost"}}),
    "sequential": (
        TABLE_SPACE,
        {"confirm": {"seeds": 3, "margin": 0.01, "max_points": 3, "sequential": True}},
    ),
}
"""The searches a replay can run, by name (`rst_bench_replay.py --search`)."""

PROBLEMS: dict[str, Problem] = {
    p.name: p
    for p in (
        Problem(
            "mnist1d_noise",
            "The default search's problem: MNIST-1D, 30 % label noise, mnist1d_cnn, 30 epochs.",
            TABLE_SPACE,
        ),
        Problem(
            "tabular",
            "examples/tabular: 6,000 rows of 40 features in 6 classes, an MLP with dropout, 20 epochs; "
            "the default search's space.",
            ROOT / "examples" / "tabular" / "search.yaml",
            folder=ROOT / "examples" / "tabular",
            train=(("device", "cpu"),),
            design_seed=1,
        ),
    )
}
