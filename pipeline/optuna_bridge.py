"""Ray Tune's ``OptunaSearch``, told the truth about how each cross-validated trial ended.

Upstream ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE with the last result's
values whenever a result exists — so a trial that the scheduler stopped after two folds enters
the study as a finished trial with a two-fold score, and can land on the Pareto front. Here the
ending is read from the result (:func:`pipeline.outcome.outcome`): finished trials are told
COMPLETE with their cross-validated objectives, pruned trials PRUNED and failed trials FAIL,
with the paired fold scores kept as user attributes for later analysis.
"""

from __future__ import annotations

import logging
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from pipeline.outcome import ERROR, FOLD_ACCURACIES, FOLD_FLOPS, OBJECTIVES, outcome

logger = logging.getLogger(__name__)

_STATES = {"finished": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


class CrossValidatedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` for k-fold trials: COMPLETE only when every fold ran.

    Args:
        folds: Folds per trial.
        **kwargs: Passed to ``OptunaSearch`` (space, metric, mode, sampler, storage, ...).
    """

    def __init__(self, folds: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.folds = folds

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials:
            return
        try:
            self._tell(trial_id, result, error)
        except UpdateFinishedTrialError:
            # A trial restored after the driver died may have been told already.
            logger.info("Optuna already holds the end of trial %s", trial_id)
        self._completed_trials.add(trial_id)

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        ot_trial = self._ot_trials[trial_id]
        ending = outcome(result, self.folds, errored=error)
        result = result or {}
        for key in (FOLD_ACCURACIES, FOLD_FLOPS):
            if key in result:
                ot_trial.set_user_attr(key, list(result[key]))
        ot_trial.set_user_attr("folds_done", ending.folds_done)
        if ending.error:
            ot_trial.set_user_attr(ERROR, ending.error[:500])
        values = [float(result[m]) for m in OBJECTIVES] if ending.state == "finished" else None
        self._ot_study.tell(ot_trial, values, state=_STATES[ending.state], skip_if_finished=True)
