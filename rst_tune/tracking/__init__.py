"""MLflow tracking of a search or study from the driver: a parent run per run, a nested run per trial.

    from rst_tune.tracking import tracker_for
    run_search(values, spec, run_dir, callbacks=[tracker_for(run_dir, spec)])

Public names: `tracker_for`, `RunTracker`, `TrackingRecord`. Everything else is private.
"""

from rst_tune.tracking.record import TrackingRecord
from rst_tune.tracking.tracker import RunTracker, tracker_for

__all__ = ["RunTracker", "TrackingRecord", "tracker_for"]
