"""Driver-side cost of MLflow logging: rst-tune's RunTracker against Ray's MLflowLoggerCallback.

The same search runs once with each callback, in one Ray session, against the same kind of store
(a real `mlflow server` on 127.0.0.1 over HTTP, then a SQLite file). Every hook Ray calls on the
callback is timed on the driver; the cost per reported epoch is that total over the number of
epoch results. RunTracker's end-of-search work (statuses, front tags, report, Pareto weights) is
timed apart, since Ray's callback does none of it.

    python benchmarks/tracking_cost.py --json benchmarks/tracking_cost_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import ray
from ray.air.integrations.mlflow import MLflowLoggerCallback

from rst_tune.search import load_spec, parse_spec, run_search
from rst_tune.tracking import tracker_for

HOOKS = (
    "setup",
    "on_trial_start",
    "on_trial_result",
    "on_trial_complete",
    "on_trial_error",
    "on_checkpoint",
    "on_experiment_end",
)


class RayMLflow(MLflowLoggerCallback):
    """Ray's callback, given the two calls run_search makes on the driver (neither does anything)."""

    def setup(self, *args, **kwargs):
        if args or kwargs:
            super().setup(*args, **kwargs)

    def finish(self, *args):
        return None


def timed(callback) -> dict[str, list[float]]:
    """Wrap the callback's hooks; returns the seconds of every call, by hook."""
    seconds: dict[str, list[float]] = defaultdict(list)
    for name in HOOKS + ("finish",):
        method = getattr(callback, name)

        def wrapper(*args, _method=method, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                seconds[_name].append(time.perf_counter() - start)

        setattr(callback, name, wrapper)
    return seconds


def start_server(folder: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder}/server.db",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return process
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("mlflow server did not start")


def measure(values: dict, which: str, store: str, folder: Path) -> dict:
    values = {**values, "name": f"{which}_{store.split(':')[0]}"}
    spec, run_dir = parse_spec(values), folder / values["name"]
    uri = store if store.startswith("http") else f"sqlite:///{folder / values['name']}.db"
    callback = (
        tracker_for(run_dir, spec, uri, out=lambda line: None)
        if which == "rst-tune"
        else RayMLflow(tracking_uri=uri, experiment_name=values["name"])
    )
    seconds = timed(callback)
    start = time.perf_counter()
    run_search(spec, run_dir, callbacks=[callback], out=lambda line: None)
    wall = time.perf_counter() - start
    results = len(seconds["on_trial_result"])
    during = sum(sum(seconds[h]) for h in HOOKS)
    return {
        "callback": which,
        "store": "http" if store.startswith("http") else "sqlite",
        "epoch_results": results,
        "search_wall_s": wall,
        "hooks_s": during,
        "per_epoch_ms": 1e3 * during / results,
        "on_trial_result_ms": 1e3 * sum(seconds["on_trial_result"]) / results,
        "end_of_search_s": sum(seconds["finish"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--space", default=str(Path(__file__).parent.parent / "rst_tune" / "search_spaces" / "default.yaml")
    )
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    values = load_spec(args.space, {"num_samples": args.num_samples}).raw
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False, logging_level="ERROR")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = start_server(folder, 5391)
        try:
            for store in ("http://127.0.0.1:5391", "sqlite"):
                for which in ("rst-tune", "ray"):
                    row = measure(values, which, store, folder)
                    rows.append(row)
                    print(
                        f"{row['callback']:<9} {row['store']:<7} {row['epoch_results']} epoch results: "
                        f"{row['per_epoch_ms']:.1f} ms per epoch in hooks "
                        f"(on_trial_result {row['on_trial_result_ms']:.1f} ms), "
                        f"end of search {row['end_of_search_s']:.2f} s, search {row['search_wall_s']:.1f} s",
                        flush=True,
                    )
        finally:
            os.killpg(server.pid, signal.SIGTERM)
    for store in ("http", "sqlite"):
        ours, rays = (
            next(r for r in rows if r["callback"] == c and r["store"] == store) for c in ("rst-tune", "ray")
        )
        print(f"{store}: rst-tune / Ray per epoch = {ours['per_epoch_ms'] / rays['per_epoch_ms']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
