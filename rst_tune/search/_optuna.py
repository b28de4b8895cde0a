"""The one place rst-tune reaches past Optuna's recommended API: taking up a trial that an
interrupted driver left RUNNING.

Optuna's public ask/tell creates new trials only. A driver killed between `ask` and `tell` leaves a
RUNNING trial that no process will finish; a resumed search takes it up (same number, same
parameters) so that the study ends with exactly `num_samples` trials. `optuna.trial.Trial(study,
trial_id)` is a public constructor whose direct use the Optuna docs discourage; the trial id comes
from the storage's public API. `tests/test_search_parts.py::test_optuna_takes_up_a_running_trial`
fails if the installed Optuna changes what this relies on.
"""

from __future__ import annotations

import optuna


def take_up(study: optuna.Study, storage: optuna.storages.BaseStorage, number: int) -> optuna.Trial:
    """A live handle on trial `number` of `study` (RUNNING), as `study.ask()` would have returned it."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
