"""The tracking record of a run folder (`tracking.json`): where the run logs, its parent MLflow run,
and how many calls could not be made."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field

from rst_tune.search._folder import RunFolder


@dataclass
class TrackingRecord:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    missed: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: RunFolder) -> TrackingRecord | None:
        if not folder.tracking_file.exists():
            return None
        return cls(**json.loads(folder.tracking_file.read_text()))

    def save(self, folder: RunFolder) -> None:
        folder.tracking_file.write_text(json.dumps(asdict(self)))

    def add_missed(self, missed: Counter[str]) -> None:
        self.missed = dict(Counter(self.missed) + missed)


def tracking_uri_of(folder: RunFolder, given: str | None = None) -> str:
    """The MLflow store of a run: the one it was started with, else `given`, else $MLFLOW_TRACKING_URI,
    else SQLite inside the run folder."""
    record = TrackingRecord.load(folder)
    if record is not None:
        return record.tracking_uri
    return given or os.environ.get("MLFLOW_TRACKING_URI") or folder.mlflow_url
