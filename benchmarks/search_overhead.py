"""Orchestration overhead of a search, with and without Ray actor reuse, measured in one Ray session.

For each setting the same search space runs end to end. Reported:
- wall: from the search's start to its report (Ray already started; `ray.init` is timed apart);
- training: Σ over trials of the engine's own training + evaluation time (`wall_s`);
- overhead fraction: (wall − training / concurrency) / wall;
- per-trial start cost: (wall × concurrency − training) / trials: actor start, imports, data, gaps.

    python benchmarks/search_overhead.py                       # the default space
    python benchmarks/search_overhead.py --space default --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray
from ray.tune import ExperimentAnalysis

from rst_tune.search import load_spec, parse_spec, run_search


def measure(values: dict, reuse: bool, folder: Path) -> dict:
    values = {**values, "reuse_actors": reuse, "name": f"reuse_{reuse}".lower()}
    spec = parse_spec(values)
    start = time.perf_counter()
    run_search(spec, folder / spec.name, out=lambda line: None)
    wall = time.perf_counter() - start
    trials = ExperimentAnalysis(str(folder / spec.name / "trials")).trials
    training = sum(t.last_result["wall_s"] for t in trials)
    in_trial = sum(t.last_result["time_total_s"] for t in trials)
    concurrency = spec.max_concurrent
    return {
        "reuse_actors": reuse,
        "trials": len(trials),
        "concurrency": concurrency,
        "wall_s": wall,
        "training_s": training,
        "trainable_s": in_trial,
        "overhead_fraction": (wall - training / concurrency) / wall,
        "start_cost_per_trial_s": (wall * concurrency - training) / len(trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--space", default=str(Path(__file__).parent.parent / "rst_tune" / "search_spaces" / "default.yaml")
    )
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    values = load_spec(args.space).raw
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    start = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="ERROR")
    init_s = time.perf_counter() - start
    print(f"ray.init: {init_s:.1f} s; {ray.cluster_resources().get('CPU', 0):g} CPUs")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for reuse in (True, False):
            result = measure(values, reuse, Path(folder))
            results.append(result)
            print(
                f"reuse_actors={reuse!s:<5}  {result['trials']} trials, {result['concurrency']} at a time: "
                f"wall {result['wall_s']:.1f} s, training {result['training_s']:.1f} s "
                f"(in trainables {result['trainable_s']:.1f} s), overhead {result['overhead_fraction']:.1%}, "
                f"start cost {result['start_cost_per_trial_s']:.2f} s per trial"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"ray_init_s": init_s, "results": results}, indent=2))


if __name__ == "__main__":
    main()
