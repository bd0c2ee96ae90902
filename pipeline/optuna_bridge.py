"""Ray Tune's ``OptunaSearch``, told the truth about how each cross-validated trial ended.

Upstream ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE with the last result's
values whenever a result exists — so a trial that the scheduler stopped after two folds enters
the study as a finished trial with a two-fold score, and can land on the Pareto front. Here the
ending is read from the result (:func:`pipeline.outcome.outcome`): finished trials are told
COMPLETE with their cross-validated objectives, pruned trials PRUNED and failed trials FAIL,
with the paired fold scores kept as user attributes for later analysis.

Two more things keep the study and the Ray Tune experiment one record across a driver that
died:

* every configuration handed to Ray Tune carries its Optuna trial number
  (:data:`TRIAL_NUMBER_KEY`), which is how the MLflow mirror names its runs;
* a driver killed between asking Optuna for a configuration and saving Ray Tune's state
  leaves a RUNNING Optuna trial that the restored experiment does not know. The restored
  experiment asks for a replacement trial; :meth:`CrossValidatedOptunaSearch.suggest` hands
  it that *orphan* (its configuration was already drawn; if the driver died while drawing it,
  the rest is drawn then) instead of drawing another, so the study holds exactly the trials
  Ray Tune runs.

:class:`StudyBudget` keeps the trial budget in the study, so that ``--resume --num-samples``
can raise it: Ray Tune restores its own count from the saved experiment otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search import SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from pipeline.outcome import (
    ERROR,
    FOLD_ACCURACIES,
    FOLD_FLOPS_HISTORY,
    FOLDS_DONE,
    FoldReport,
    Outcome,
    outcome,
)

logger = logging.getLogger(__name__)

#: The configuration key that carries a trial's Optuna trial number (``_`` keys are not
#: run-config settings: the trial ignores them and MLflow does not log them as params).
TRIAL_NUMBER_KEY = "_optuna_trial_number"
#: The study user attribute holding the search's trial budget.
BUDGET_ATTR = "num_samples"

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

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials:
            orphan = self._adoptable_orphan()
            if orphan is not None:
                logger.info("Ray Tune trial %s runs orphaned Optuna trial %d", trial_id, orphan.number)
                self._ot_trials[trial_id] = orphan
        config = super().suggest(trial_id)
        return {**config, TRIAL_NUMBER_KEY: self._ot_trials[trial_id].number}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials:
            return
        try:
            self._tell(trial_id, result, error)
        except UpdateFinishedTrialError:
            # A trial restored after the driver died may have been told already; the study
            # keeps that ending and MLflow mirrors the study.
            logger.info("Optuna already holds the end of trial %s", trial_id)
        self._completed_trials.add(trial_id)

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        ot_trial = self._ot_trials[trial_id]
        ending = outcome(result, self.folds, errored=error)
        report = FoldReport.from_result(result)
        if report.scored:
            ot_trial.set_user_attr(FOLD_ACCURACIES, list(report.fold_accuracies))
            ot_trial.set_user_attr(FOLD_FLOPS_HISTORY, list(report.fold_flops))
        ot_trial.set_user_attr(FOLDS_DONE, ending.folds_done)
        if ending.error:
            ot_trial.set_user_attr(ERROR, ending.error[:500])
        values = report.objectives() if ending.state == "finished" else None
        self._ot_study.tell(ot_trial, values, state=_STATES[ending.state], skip_if_finished=True)

    def _adoptable_orphan(self) -> optuna.Trial | None:
        """The oldest RUNNING study trial no Ray Tune trial of this searcher holds.

        One whose configuration was not completely drawn (the driver died inside ``ask``) has
        the rest drawn now, as ``Study.ask(fixed_distributions=...)`` does, so that it runs
        like any other instead of staying in the study as a trial that MLflow never saw.
        """
        held = {t._trial_id for t in self._ot_trials.values()}
        running = self._ot_study._storage.get_all_trials(
            self._ot_study._study_id, deepcopy=False, states=(TrialState.RUNNING,)
        )
        for frozen in sorted(running, key=lambda t: t.number):
            if frozen._trial_id in held:
                continue
            trial = optuna.Trial(self._ot_study, frozen._trial_id)
            for name, distribution in self._space.items():
                if name not in frozen.params:
                    trial._suggest(name, distribution)
            return trial
        return None


def fail_trial(storage: optuna.storages.BaseStorage, trial_id: int, reason: str) -> None:
    """Mark one RUNNING study trial FAIL with ``reason`` as its ``error`` user attribute."""
    storage.set_trial_user_attr(trial_id, ERROR, reason)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def base_searcher(search_alg: Any) -> Any:
    """The innermost searcher under Ray Tune's wrappers (ConcurrencyLimiter, ...)."""
    while hasattr(search_alg, "searcher"):
        search_alg = search_alg.searcher
    return search_alg


class StudyBudget(SearchGenerator):
    """Ray Tune's search generator with the trial budget read from the Optuna study.

    Ray Tune restores a search's trial count *and budget* from its saved state; this
    generator replaces the restored budget with the study's :data:`BUDGET_ATTR`, which
    ``dynalay search --resume --num-samples N`` sets before the restore.
    """

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        budget = base_searcher(self.searcher)._ot_study.user_attrs.get(BUDGET_ATTR)
        if budget is not None:
            self._total_samples = int(budget)


#: The study trial user attribute holding the trial's MLflow run id.
MLFLOW_RUN_ID_ATTR = "mlflow_run_id"

_ENDINGS = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna RDB storage at ``url``; SQLite waits for other writers instead of failing."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def study_outcome(trial: optuna.trial.FrozenTrial) -> Outcome | None:
    """How the study says ``trial`` ended; None while it runs."""
    state = _ENDINGS.get(trial.state)
    if state is None:
        return None
    error = trial.user_attrs.get(ERROR)
    return Outcome(state, int(trial.user_attrs.get(FOLDS_DONE, 0)), str(error) if error else None)


class StudyLink:
    """A search's Optuna study seen from outside the searcher: read its trials, link them to
    their MLflow runs, fail orphans, keep the budget.

    Pickles as its URL and name (Ray Tune pickles the callbacks that hold one); the storage is
    opened on first use.
    """

    def __init__(self, storage_url: str, study_name: str):
        self.storage_url = storage_url
        self.study_name = study_name
        self._storage: optuna.storages.RDBStorage | None = None
        self._study_id: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_storage": None, "_study_id": None}

    @property
    def storage(self) -> optuna.storages.RDBStorage:
        if self._storage is None:
            self._storage = open_storage(self.storage_url)
            self._study_id = self._storage.get_study_id_from_name(self.study_name)
        return self._storage

    @property
    def study_id(self) -> int:
        self.storage  # noqa: B018 - opens the storage and resolves the id
        assert self._study_id is not None
        return self._study_id

    def trials(self) -> dict[int, optuna.trial.FrozenTrial]:
        return {t.number: t for t in self.storage.get_all_trials(self.study_id, deepcopy=False)}

    def trial(self, number: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self._trial_id(number))

    def running(self) -> dict[int, optuna.trial.FrozenTrial]:
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return {t.number: t for t in trials}

    def link(self, number: int, run_id: str) -> None:
        """Record ``run_id`` as trial ``number``'s MLflow run, unless the trial has ended."""
        try:
            self.storage.set_trial_user_attr(self._trial_id(number), MLFLOW_RUN_ID_ATTR, run_id)
        except UpdateFinishedTrialError:
            pass

    def fail(self, number: int, reason: str) -> None:
        fail_trial(self.storage, self._trial_id(number), reason)

    def budget(self) -> int | None:
        budget = self.storage.get_study_user_attrs(self.study_id).get(BUDGET_ATTR)
        return None if budget is None else int(budget)

    def set_budget(self, num_samples: int) -> None:
        self.storage.set_study_user_attr(self.study_id, BUDGET_ATTR, num_samples)

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
