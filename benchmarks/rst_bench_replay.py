"""Replay searchers on an RST-Bench table: every (searcher, stopping rule, workers, search seed), each
a line of JSON in the results file. Run it again and it adds only what the file lacks.

    python benchmarks/rst_bench_replay.py mnist1d_noise                 # the full grid
    python benchmarks/rst_bench_replay.py tabular --searchers gp --seeds 20 --stopping none
    python benchmarks/rst_bench_replay.py tabular --search known_cost --searchers rst_tune

`--search` names the search replayed (rst_bench.problems.VARIANTS; default: the shipped `default`):
its space, sampler and confirmation, with the problem's training. Each result names it.

The rules of a replay are in benchmarks/rst_bench/replay.py; the report is rst_bench_report.py.
"""

import argparse
import itertools
import json
import multiprocessing
import os
import sys
import time
import warnings
from pathlib import Path

import optuna
from rst_bench.problems import PROBLEMS, TABLES, VARIANTS
from rst_bench.replay import Replay
from rst_bench.searchers import SEARCHERS, STOPPING, searcher
from rst_bench.table import Table, TableError, load_table

RESULTS = Path(__file__).resolve().parent / "rst_bench" / "results"
PIPELINE_SAMPLES = (6, 9, 12, 18, 24, 36)  # the pipeline's budget is its trial count; 12 is its default
_replay = None


def _start(problem: str, table: Table, search: str) -> None:
    global _replay
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    _replay = Replay(table, PROBLEMS[problem].search_spec(search))


def _run(job: dict) -> dict:
    started = time.perf_counter()
    trace = _replay.run(
        searcher(job["searcher"]),
        job["stopping"],
        job["workers"],
        job["seed"],
        job["budget"],
        job["num_samples"],
    )
    return {
        **job,
        "curve": [[round(c, 5), round(v, 6), round(o, 6)] for c, v, o in trace.curve],
        "compute": trace.compute,
        "seconds": trace.seconds,
        "trials": trace.trials,
        "pruned": trace.pruned,
        "reported": trace.reported,
        "replay_s": time.perf_counter() - started,
    }


def key(job: dict) -> tuple:
    fields = ("searcher", "stopping", "workers", "seed", "budget", "num_samples")
    return (job.get("search", "tables"), *(job[k] for k in fields))  # "tables": before there were others


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("problem", choices=sorted(PROBLEMS))
    parser.add_argument("--table", type=Path, help="default: benchmarks/rst_bench/tables/NAME.parquet")
    parser.add_argument("--search", default="default", choices=list(VARIANTS), help="the search replayed")
    parser.add_argument(
        "--searchers",
        nargs="+",
        default=[name for name, s in SEARCHERS.items() if not s.extra],
        help="default: all but those that need other packages (botorch_cost: optuna-integration botorch)",
    )
    parser.add_argument("--stopping", nargs="+", default=list(STOPPING), choices=list(STOPPING))
    parser.add_argument("--workers", nargs="+", type=int, default=[2, 8])
    parser.add_argument("--seeds", type=int, default=20, help="search seeds 0 … N−1")
    parser.add_argument(
        "--budget", type=float, default=36.0, help="SAM-equivalents an Optuna searcher may spend"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, help="default: benchmarks/rst_bench/results/NAME.jsonl")
    args = parser.parse_args()
    for name in args.searchers:
        searcher(name)  # a bad name stops here, before anything runs
    PROBLEMS[args.problem].search_spec(args.search)  # and a bad search file
    try:  # read here, so that a bad table stops the script rather than every worker
        table = load_table(args.table or TABLES / f"{args.problem}.parquet", PROBLEMS[args.problem])
    except TableError as err:
        print(err)
        return 2
    out = args.out or RESULTS / f"{args.problem}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {key(json.loads(line)) for line in out.read_text().splitlines()} if out.exists() else set()
    jobs = []
    for name, stopping, workers, seed in itertools.product(
        args.searchers, args.stopping, args.workers, range(args.seeds)
    ):
        for samples in PIPELINE_SAMPLES if searcher(name).pipeline else (None,):
            job = {"search": args.search, "searcher": name, "stopping": stopping}
            job |= {"workers": workers, "seed": seed}
            job |= {"budget": None if samples else args.budget, "num_samples": samples}
            if key(job) not in done:
                jobs.append(job)
    print(f"{args.problem}: {len(jobs)} replays to run ({len(done)} in {out} already)", flush=True)
    started = time.perf_counter()
    with (
        multiprocessing.Pool(args.jobs, _start, (args.problem, table, args.search)) as pool,
        open(out, "a") as f,
    ):
        for i, result in enumerate(pool.imap_unordered(_run, jobs), 1):
            f.write(json.dumps(result) + "\n")
            f.flush()
            if i % 50 == 0 or i == len(jobs):
                print(f"  {i}/{len(jobs)} replays, {time.perf_counter() - started:.0f} s", flush=True)
    print(
        f"{args.problem}: {len(jobs)} replays in {time.perf_counter() - started:.1f} s, {args.jobs} processes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
