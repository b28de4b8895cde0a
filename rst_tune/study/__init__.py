"""Studies: fixed configurations × seeds, run like a search, summarised with error bars and tests.

    from rst_tune.study import load_study, run_study
    spec = load_study("rst_tune/search_spaces/study_label_noise.yaml", {"seeds": 3})
    report = run_study(spec, "rst_runs/study_label_noise")
    print(report.table())

The public names are `__all__`; the modules (`_runner`, ...) are private.
"""

from rst_tune.study._report import StudyReport
from rst_tune.study._runner import read_study, run_study, study_report
from rst_tune.study._spec import StudySpec, load_study, parse_study

__all__ = ["StudyReport", "StudySpec", "load_study", "parse_study", "read_study", "run_study", "study_report"]
