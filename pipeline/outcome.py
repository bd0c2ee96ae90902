"""What a cross-validated trial's last reported result says about how it ended.

The trial reports once per fold. Three places must agree on how a trial ended (the Optuna
study, MLflow, the pruning scheduler), and Ray Tune tells each of them only "the trial
stopped, here is its last result". A trial is *finished* when its last result covers every
fold, *failed* when it says so (divergence) or raised, and *pruned* otherwise: a result with
fewer folds than asked was cut short by the scheduler. This is what keeps a half-trained
trial off the Pareto front, which a plain "last result = final value" reading does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

State = Literal["finished", "pruned", "failed"]

FOLDS_DONE = "folds_done"
FOLD = "fold"
ERROR = "error"
FOLD_ACCURACIES = "fold_accuracies"
FOLD_FLOPS = "fold_flops_history"
RESUMED_AT_FOLD = "resumed_at_fold"
OBJECTIVES = ("cv_accuracy", "cv_flops")
DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class Outcome:
    state: State
    folds_done: int
    error: str | None = None


def outcome(result: Mapping[str, Any] | None, folds: int, *, errored: bool = False) -> Outcome:
    """Classify a trial from its last result.

    Args:
        result: The last result the trial reported (None if it reported none).
        folds: The number of folds the search asked for.
        errored: True when Ray Tune reports the trial raised (after its retries).
    """
    result = result or {}
    done = int(result.get(FOLDS_DONE, 0))
    if result.get(ERROR):
        return Outcome("failed", done, str(result[ERROR]))
    if errored:
        return Outcome("failed", done, "the trial raised an error (see the Ray Tune logs)")
    if done >= folds:
        return Outcome("finished", done)
    return Outcome("pruned", done)
