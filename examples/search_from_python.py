"""A search from Python, as `rst-tune search` runs it (MLflow tracking, seed confirmation, report), and
its report read back: the confirmed front, each point against SGD.

    python examples/search_from_python.py [RESULTS_DIR]

A small run of the shipped `default` space: 6 trials of 4 epochs, confirmed with 2 seeds.
"""

import sys

from rst_tune import api

results_dir = sys.argv[1] if len(sys.argv) > 1 else "rst_runs"
settings = api.load(
    "search",
    "default",
    overrides={"name": "from_python", "num_samples": 6, "train": {"epochs": 4}, "confirm": {"seeds": 2}},
)
report = api.search(settings, results_dir=results_dir, out=lambda line: None)

print(f"run folder: {report.run_dir}")
print(
    f"{len(report.trials)} trials, {len(report.front)} on the search's front, "
    f"hypervolume {report.hypervolume:.4f}"
)
for point in sorted(report.confirmed, key=report.confirmed_cost):
    versus = "" if point.vs_sgd is None else f", {100 * point.vs_sgd[0]:+.1f} pp vs SGD"
    where = "on the confirmed front" if point.on_front else f"beaten by trial {point.beaten_by}"
    print(
        f"trial {point.trial} ({point.label}): val_accuracy {point.val_accuracy_mean:.2%} over {point.seeds} "
        f"seeds at cost {report.confirmed_cost(point):.3f}{versus}; {where}"
    )
