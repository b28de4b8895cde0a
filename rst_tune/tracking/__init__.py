"""MLflow tracking of a search or study from the driver: a parent run per run, a nested run per trial.

    from rst_tune.tracking import tracker_for
    run_search(spec, run_dir, callbacks=[tracker_for(run_dir, spec)])

Public names: `tracker_for`, `RunTracker`, `TrackingRecord`, `log_report_files`. Everything else is private.
"""

from rst_tune.tracking.parent import log_report_files
from rst_tune.tracking.record import TrackingRecord
from rst_tune.tracking.tracker import RunTracker, tracker_for

__all__ = ["RunTracker", "TrackingRecord", "log_report_files", "tracker_for"]
