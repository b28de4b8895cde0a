"""The MLflow client the tracker writes through: a failed call is counted, not raised, and after a
failure calls are skipped for `RETRY_S` seconds, so an unreachable server never stops a run."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import mlflow
import requests
from mlflow.exceptions import MlflowException

RETRY_S = 30.0
FAILED = object()  # what a call returns when it could not be made


class GuardedClient:
    """`call(what, method, *args)` runs `MlflowClient(tracking_uri).method(*args)`; `missed` counts the
    calls that could not be made, by `what`. The first failure is announced through `out`."""

    def __init__(self, tracking_uri: str, out: Callable[[str], None]):
        self.tracking_uri, self.out = tracking_uri, out
        if tracking_uri.startswith("http"):  # fail fast on a dead server rather than retrying for minutes
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # not a line per ended run
        self._client: mlflow.MlflowClient | None = None  # made on first use: a SQLite store is created then
        self._down_until = 0.0
        self.missed: Counter[str] = Counter()

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() < self._down_until:
            self.missed[what] += 1
            return FAILED
        try:
            if self._client is None:
                self._client = mlflow.MlflowClient(self.tracking_uri)
            return getattr(self._client, method)(*args, **kwargs)
        except (MlflowException, requests.RequestException, OSError) as err:
            self.missed[what] += 1
            if self._down_until == 0.0:
                self.out(
                    f"warning: MLflow at {self.tracking_uri} failed ({' '.join(str(err).split())[:200]}); "
                    "the run goes on and reports at the end what was not logged"
                )
            self._down_until = time.monotonic() + RETRY_S
            return FAILED
