"""A Ray Tune scheduler that prunes cross-validated trials between folds with our pruners.

Ray Tune's ``OptunaSearch`` fixes Optuna's pruner to ``NopPruner``, and Optuna's pruners refuse
multi-objective studies, so the decision is made here: after each fold this scheduler hands
the running trial's paired fold scores, and those of every finished trial, to a
:mod:`pipeline.pruning` pruner (Pareto-aware Wilcoxon by default). A stopped trial's last
result covers fewer folds than asked, which is how :mod:`pipeline.outcome` (and so the Optuna
study and MLflow) knows it was pruned.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from pipeline.outcome import FoldReport, outcome
from pipeline.pruning import FoldHistory, PruneDecision, make_pruner


class FoldPruningScheduler(FIFOScheduler):
    """Stops a trial after a fold when its pruner says the trial cannot reach the front.

    Args:
        pruner: ``wilcoxon``, ``median`` or ``none`` (see :func:`pipeline.pruning.make_pruner`).
        folds: Folds per trial; a trial whose last result covers them all is finished.
    """

    # Each fold's result must reach the pruner on its own, not merged with the next.
    _supports_buffered_results = False

    def __init__(self, pruner: str, folds: int):
        super().__init__()
        self.pruner_name = pruner
        self.folds = folds
        self._pruner = make_pruner(pruner)
        self._running: dict[str, FoldHistory] = {}
        self._finished: dict[str, FoldHistory] = {}
        self.decisions: dict[str, PruneDecision] = {}

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        # A restored search hands back its finished trials here, each with its last result.
        if trial.status == Trial.TERMINATED:
            self._record_completion(trial, trial.last_result)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        report = FoldReport.from_result(result)
        history = _history(trial.trial_id, report)
        if history is None or report.error or len(history.accuracies) >= self.folds:
            return TrialScheduler.CONTINUE  # nothing scored yet, failed, or finished
        self._running[trial.trial_id] = history
        decision = self._pruner.should_prune(history, list(self._finished.values()))
        if decision.prune:
            self.decisions[trial.trial_id] = decision
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._record_completion(trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._running.pop(trial.trial_id, None)

    def _record_completion(self, trial: Trial, result: dict | None) -> None:
        self._running.pop(trial.trial_id, None)
        history = _history(trial.trial_id, FoldReport.from_result(result))
        if history is not None and outcome(result, self.folds).state == "finished":
            self._finished[trial.trial_id] = history

    def debug_string(self) -> str:
        return (
            f"Fold pruning ({self.pruner_name}): {len(self._finished)} finished, "
            f"{len(self.decisions)} pruned."
        )


def _history(trial_id: str, report: FoldReport) -> FoldHistory | None:
    """The paired fold scores the pruner compares; None before the first fold."""
    if not report.fold_accuracies:
        return None
    return FoldHistory(trial_id, list(report.fold_accuracies), list(report.fold_flops))
