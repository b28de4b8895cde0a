"""Does the replay tell the truth? Score live `rst-tune search` runs of a problem on the replay's metric
and set them beside the replay of the same settings.

    rst-tune search --name live-0                      # the default search: problem mnist1d_noise
    python benchmarks/rst_bench_live.py mnist1d_noise rst_runs/live-0 [more runs]

A live run's confirmed front is scored as a replay's is: each point by the seed means of the table row
that answers its configuration (the replay's off-table rule), against the same reference; its
compute is every epoch its search and confirmation trials trained, in SAM-equivalents. The band is
the interquartile range of the replays of rst-tune's pipeline at the run's trial count, stopping rule
and concurrency.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import optuna
from rst_bench.metric import Truth
from rst_bench.problems import PROBLEMS, TABLES
from rst_bench.replay import Lookup
from rst_bench.table import load_table

from rst_tune.search import read_run
from rst_tune.search._folder import RunFolder
from rst_tune.search._record import trial_rows
from rst_tune.study._confirm import confirmed_report

RESULTS = Path(__file__).resolve().parent / "rst_bench" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("problem", choices=sorted(PROBLEMS))
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    problem = PROBLEMS[args.problem]
    table = load_table(TABLES / f"{problem.name}.parquet", problem)
    expected = problem.search_spec()
    truth, lookup = Truth.of(table), Lookup(table, expected)
    full_steps = float(np.median(table.final("steps")))
    replays = [json.loads(line) for line in (RESULTS / f"{problem.name}.jsonl").read_text().splitlines()]
    for run in args.runs:
        spec = read_run(run)
        if {k: v for k, v in spec.train.items() if k != "test_every_epoch"} != {
            k: v for k, v in expected.train.items() if k != "test_every_epoch"
        } or spec.model_dump()["space"] != expected.model_dump()["space"]:
            print(f"{run}: not a search of {problem.name}'s training and space; skipped")
            continue
        report = confirmed_report(run)
        by_number = {row.number: row for row in report.trials}
        front = [p for p in report.confirmed if p.on_front]
        rows = [lookup.row(by_number[p.trial].record.train) for p in front]
        confirmation = RunFolder.existing(run).confirmation()
        confirm_study = optuna.load_study(
            study_name=f"{spec.name}-confirm", storage=confirmation.study_storage()
        )
        confirm_rows = [r for r in trial_rows(confirm_study) if r.metrics is not None]
        trained = [r for r in report.trials if r.metrics is not None] + confirm_rows
        compute = sum(r.propagations for r in trained) / (2 * full_steps)
        value = truth.value(rows)
        observed = truth.observed([(p.val_accuracy_mean, p.cost_ratio_mean) for p in front])
        same = [
            r["curve"][-1][1] if r["curve"] else 0.0
            for r in replays
            if r["searcher"] == "rst_tune"
            and r.get("search", "tables") == "default"
            and r["num_samples"] == spec.num_samples
            and r["stopping"] == spec.early_stopping.rule
            and r["workers"] == spec.max_concurrent
        ]
        if not same:
            print(
                f"{run}: no replays of rst-tune's pipeline with these settings; run rst_bench_replay.py first"
            )
            continue
        low, high = np.percentile(same, [25, 75])
        verdict = (
            "inside"
            if low <= value <= high
            else f"outside (by {min(abs(value - low), abs(value - high)):.3f})"
        )
        print(
            f"{run}: {len(report.trials)} search trials, {len(confirm_rows)} confirmation runs, "
            f"{compute:.1f} SAM-equivalents; confirmed front {len(front)} points -> table rows {rows}; "
            f"value {value:.3f} (as it saw it: {observed:.3f}); replay IQR over {len(same)} seeds "
            f"{low:.3f}–{high:.3f}: {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
