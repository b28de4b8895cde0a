"""The search: Ray Tune runs trials of the engine, Optuna chooses them, and the result is the Pareto
front of accuracy against propagations.

    from rst_tune.search import load_spec, run_search
    spec = load_spec("rst_tune/search_spaces/default.yaml", {"num_samples": 4})
    report = run_search(spec, "rst_runs/default")
    print(report.table())

Public names: `load_spec`, `parse_spec`, `SearchSpec`, `run_search`, `search_report`, `read_run`,
`ParetoReport`, `pareto_front`, `hypervolume`, `CostAxis`, `OBJECTIVES`, `TrialRecord`, `TrialRow`,
`RunFolder`.
Everything else is private.
"""

from rst_tune.search.cost_axis import CostAxis
from rst_tune.search.folder import RunFolder
from rst_tune.search.objectives import OBJECTIVES
from rst_tune.search.pareto import ParetoReport, hypervolume, pareto_front
from rst_tune.search.record import TrialRecord, TrialRow
from rst_tune.search.runner import read_run, run_search, search_report
from rst_tune.search.spec import SearchSpec, load_spec, parse_spec

__all__ = [
    "OBJECTIVES",
    "CostAxis",
    "ParetoReport",
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
