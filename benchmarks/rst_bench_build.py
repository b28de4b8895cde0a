"""Build an RST-Bench table: every (configuration, seed) of a problem trained to its last epoch by an
rst-tune study (Ray Tune, Optuna storage, MLflow, checkpoints), then written as a Parquet table.

    python benchmarks/rst_bench_build.py mnist1d_noise     # or: tabular

Run it again after an interruption (Ctrl-C, SIGKILL, a reboot) and it resumes the study where it
stopped: finished pairs are not trained again, a pair in flight goes on from its last epoch. Each
attempt is logged to <work-dir>/<problem>.build.jsonl (machine, start, end, exit status); the table's
metadata carries the machine and the attempts' wall time.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _machine import cpu_model
from rst_bench.problems import PROBLEMS, ROOT, TABLES
from rst_bench.table import export


def log(path: Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("problem", choices=sorted(PROBLEMS))
    parser.add_argument("--work-dir", type=Path, default=ROOT / "rst_runs" / "rst_bench")
    parser.add_argument(
        "--out", type=Path, help="the table (default: benchmarks/rst_bench/tables/NAME.parquet)"
    )
    parser.add_argument("--max-concurrent", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--configs", type=int, help="sampled configurations (default: the problem's)")
    parser.add_argument("--seeds", type=int, help="seeds per configuration (default: the problem's)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: the problem's)")
    args = parser.parse_args()

    problem = PROBLEMS[args.problem]
    changes = {k: getattr(args, k) for k in ("configs", "seeds") if getattr(args, k) is not None}
    if args.epochs is not None:
        changes["train"] = (*problem.train, ("epochs", args.epochs))
    problem = dataclasses.replace(problem, **changes)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = (args.work_dir / problem.name).resolve()
    cli = [sys.executable, "-m", "rst_tune.cli", "study"]
    planned = problem.study_values(args.max_concurrent)
    if (run_dir / "study.yaml").is_file():
        started = yaml.safe_load((run_dir / "study.yaml").read_text())
        differ = [key for key in ("train", "configurations", "seeds") if started.get(key) != planned[key]]
        if differ:
            print(
                f"{run_dir} was started with other {', '.join(differ)}: resume it with the options it was "
                "started with, or give another --work-dir"
            )
            return 2
        command = [*cli, "--resume", str(run_dir)]
    else:
        study_file = (args.work_dir / f"{problem.name}.study.yaml").resolve()
        study_file.write_text(yaml.safe_dump(planned, sort_keys=False, allow_unicode=True))
        command = [*cli, str(study_file), "--results-dir", str(run_dir.parent), "--name", problem.name]
    attempts = args.work_dir / f"{problem.name}.build.jsonl"
    started = time.time()
    log(attempts, {"event": "start", "time": started, "machine": cpu_model(), "cpus": os.cpu_count()})
    print(f"{problem.name}: {' '.join(command[2:])}  (from {problem.folder})", flush=True)
    code = subprocess.call(command, cwd=problem.folder)
    log(attempts, {"event": "end", "time": time.time(), "wall_s": time.time() - started, "exit": code})
    if code:
        print(f"{problem.name}: the study stopped with exit status {code}; run this again to resume")
        return code
    out = args.out or TABLES / f"{problem.name}.parquet"
    table = export(problem, run_dir, attempts, out)
    print(f"{problem.name}: {table.summary()}\nwrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
