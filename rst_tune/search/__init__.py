"""The search: Ray Tune runs trials of the engine, Optuna chooses them, and the result is the Pareto
front of accuracy against propagations.

    from rst_tune.search import load_spec, run_search
    spec = load_spec("rst_tune/search_spaces/default.yaml", {"num_samples": 4})
    report = run_search(spec, "rst_runs/default")
    print(report.table())

The public names are `__all__`. `RunCallback` is the extension point: a Ray Tune callback that also
hears of the run's start and gets its report at the end, as `rst_tune.tracking`'s tracker does. The
modules (`_runner`, ...) are private: they may change without notice.
"""

from rst_tune.search._cost_axis import CostAxis
from rst_tune.search._folder import RunFolder
from rst_tune.search._objectives import OBJECTIVES
from rst_tune.search._pareto import ParetoReport, hypervolume, pareto_front
from rst_tune.search._record import TrialRecord, TrialRow
from rst_tune.search._runner import RunCallback, read_run, run_search, search_report
from rst_tune.search._spec import SearchSpec, load_spec, parse_spec

__all__ = [
    "OBJECTIVES",
    "CostAxis",
    "ParetoReport",
    "RunCallback",
    "RunFolder",
    "SearchSpec",
    "TrialRecord",
    "TrialRow",
    "hypervolume",
    "load_spec",
    "parse_spec",
    "pareto_front",
    "read_run",
    "run_search",
    "search_report",
]
