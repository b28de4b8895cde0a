"""MLflow tracking of a search or study from the driver: a parent run per run, a nested run per trial.

    from rst_tune.tracking import tracker_for
    run_search(spec, run_dir, callbacks=[tracker_for(run_dir, spec)])

The public names are `__all__`; the modules (`_tracker`, ...) are private.
"""

from rst_tune.tracking._parent import log_report_files
from rst_tune.tracking._record import TrackingRecord
from rst_tune.tracking._tracker import RunTracker, tracker_for

__all__ = ["RunTracker", "TrackingRecord", "log_report_files", "tracker_for"]
