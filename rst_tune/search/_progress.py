"""The progress a run prints: a line when a trial starts, one when it ends with what it reached, and
one when it lost its process or node and starts again from its checkpoint."""

from __future__ import annotations

from collections.abc import Callable

from ray import tune

from rst_tune.search._record import TrialRecord


class Progress(tune.Callback):
    """Pickles without `out` (Ray saves its callbacks): a resumed run prints."""

    def __init__(self, total: int, epochs: int, out: Callable[[str], None]):
        self.total, self.epochs, self.out = total, epochs, out
        self._labels: dict[str, str] = {}  # Ray trial id -> its record's label

    def __getstate__(self) -> dict:
        return {"total": self.total, "epochs": self.epochs}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["total"], state["epochs"], print)

    def _finished(self, trials, trial) -> int:
        return len({t.trial_id for t in trials if t.is_finished()} | {trial.trial_id})

    def _label(self, trial) -> str:
        if trial.trial_id not in self._labels:
            self._labels[trial.trial_id] = TrialRecord.from_config(trial.config).label
        return self._labels[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.out(f"  start  {trial.trial_id}  {self._label(trial)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result
        early = (
            f", stopped early after epoch {r['epoch']}" if r.get("epoch", self.epochs) < self.epochs else ""
        )
        self.out(
            f"[{self._finished(trials, trial)}/{self.total}] {trial.trial_id}  {self._label(trial)}: "
            f"val_acc {r.get('val_accuracy', float('nan')):.2%}, "
            f"cost {r.get('cost_ratio', float('nan')):.3f} "
            f"({r.get('wall_s', 0):.1f} s{early})"
        )

    def on_trial_recover(self, iteration, trials, trial, **info):
        done = trial.last_result.get("epoch", 0)
        start = f"the checkpoint of epoch {done}" if done else "the start"
        line = f"lost in epoch {done + 1}, from {start} on"
        self.out(f"  retry  {trial.trial_id}  {self._label(trial)}: {line}")

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = trial.last_result.get("failure", "raised an error: see error.txt in its folder")
        self.out(
            f"[{self._finished(trials, trial)}/{self.total}] {trial.trial_id}  "
            f"{self._label(trial)}: FAILED, {reason}"
        )
