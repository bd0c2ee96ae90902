"""The trial-report contract: what a cross-validated trial reports after each fold, and how its
last report says the trial ended.

A trial reports once per fold, as a :class:`FoldReport`. Its result dictionary
(:meth:`FoldReport.to_result`, read back with :meth:`FoldReport.from_result`) is what Ray Tune
carries to the pruning scheduler, the Optuna bridge and the MLflow tracker, and its names are
the names users see: MLflow metrics and tags, Optuna user attributes. This module owns every one
of them; no other module spells a key.

Names have one meaning each. A **fold** is a 0-based index: ``fold`` is the fold a report is
about (the one just finished, or the one that diverged) and the MLflow step of the per-fold
metrics; ``resumed_at_fold`` is the first fold a restarted trial trained again (so also the
number of folds its checkpoint restored). A **count** of folds is ``folds_done``: in the
result, as the study's user attribute and as the MLflow tag of an ended trial.

Three places must agree on how a trial ended (the Optuna study, MLflow, the pruning
scheduler), and Ray Tune tells each of them only "the trial stopped, here is its last result".
A trial is *finished* when its last result covers every fold, *failed* when it says so
(divergence) or raised, and *pruned* otherwise: a result with fewer folds than asked was cut
short by the scheduler. This is what keeps a half-trained trial off the Pareto front, which a
plain "last result = final value" reading does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np

State = Literal["finished", "pruned", "failed"]

# -- the names (result keys; MLflow metrics and tags; Optuna user attributes) ---------------------
#: The 0-based index of the fold a report is about; the MLflow step of the per-fold metrics.
FOLD = "fold"
#: How many folds the trial has finished (a count).
FOLDS_DONE = "folds_done"
#: The index of the first fold a restarted trial trained again (an MLflow tag).
RESUMED_AT_FOLD = "resumed_at_fold"
#: Why a trial failed (result key, Optuna user attribute, MLflow tag).
ERROR = "error"
#: The per-fold histories, in fold order: the paired scores the pruners compare (result keys
#: and Optuna user attributes).
FOLD_ACCURACIES = "fold_accuracies"
FOLD_FLOPS_HISTORY = "fold_flops_history"
#: The operating curve (a list of :meth:`pipeline.operating_curve.CurvePoint.to_dict`).
OPERATING_CURVE = "operating_curve"
# Scalar MLflow metrics of a trial run: the last fold's, then the running means over folds.
FOLD_ACCURACY = "fold_accuracy"
FOLD_FLOPS = "fold_flops"
FOLD_TRAIN_SECONDS = "fold_train_seconds"
CV_ACCURACY = "cv_accuracy"
CV_ACCURACY_STD = "cv_accuracy_std"
CV_FLOPS = "cv_flops"
CV_TIME_MS = "cv_time_ms"
#: Prefixes of the per-layer (``mean_iterations_l1``..) and per-action (``action_freq_0``..)
#: means; layers count from 1 as in the thesis, actions from 0.
MEAN_ITERATIONS_PREFIX = "mean_iterations_l"
ACTION_FREQ_PREFIX = "action_freq_"

# MLflow tags of a trial run, beside FOLDS_DONE, RESUMED_AT_FOLD and ERROR (written by
# pipeline.tracking, read back by pipeline.search_records).
#: finished | pruned | failed, or running until the trial ends.
STATE_TAG = "state"
#: The Ray Tune trial id.
TRIAL_ID_TAG = "trial_id"
#: true on the Pareto front, false for the other finished trials.
PARETO_TAG = "pareto"
#: The pruner's reason for stopping a pruned trial.
PRUNED_REASON_TAG = "pruned_reason"

#: The search's objectives and their directions, in the order the Optuna study holds them.
OBJECTIVES = (CV_ACCURACY, CV_FLOPS)
DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class FoldReport:
    """One report of a cross-validated trial: after a fold finished, or when one diverged.

    ``cv_accuracy``, ``cv_accuracy_std`` and ``cv_flops`` are derived from the fold histories,
    so a report cannot disagree with itself; ``cv_time_ms``, ``mean_iterations`` and
    ``action_freq`` are means the trial computed over its folds.
    """

    #: The fold this report is about (0-based); None for a trial that reported nothing.
    fold: int | None = None
    folds_done: int = 0
    fold_accuracies: tuple[float, ...] = ()
    fold_flops: tuple[float, ...] = ()
    #: Seconds the last finished fold trained.
    fold_train_seconds: float | None = None
    cv_time_ms: float | None = None
    #: Mean FPI iterations per layer (layer 1 first).
    mean_iterations: tuple[float, ...] = ()
    #: Mean frequency of each action (action 0 first).
    action_freq: tuple[float, ...] = ()
    operating_curve: tuple[Mapping[str, float], ...] | None = None
    resumed_at_fold: int | None = None
    error: str | None = None

    @property
    def scored(self) -> bool:
        """Whether at least one fold has an accuracy and a FLOP count."""
        return bool(self.fold_accuracies) and bool(self.fold_flops)

    @property
    def cv_accuracy(self) -> float:
        """The mean fold accuracy so far (NaN before the first fold)."""
        return _mean(self.fold_accuracies)

    @property
    def cv_accuracy_std(self) -> float:
        """The population standard deviation of the fold accuracies so far."""
        return float(np.std(self.fold_accuracies)) if self.fold_accuracies else float("nan")

    @property
    def cv_flops(self) -> float:
        """The mean FLOPs per sample over the folds so far (NaN before the first fold)."""
        return _mean(self.fold_flops)

    def objectives(self) -> list[float]:
        """The values of :data:`OBJECTIVES`, in that order."""
        return [self.cv_accuracy, self.cv_flops]

    def metrics(self) -> dict[str, float]:
        """The scalar MLflow metrics of this report (empty before the first fold)."""
        if not self.scored:
            return {}
        metrics = {
            FOLD_ACCURACY: self.fold_accuracies[-1],
            FOLD_FLOPS: self.fold_flops[-1],
            CV_ACCURACY: self.cv_accuracy,
            CV_ACCURACY_STD: self.cv_accuracy_std,
            CV_FLOPS: self.cv_flops,
        }
        if self.fold_train_seconds is not None:
            metrics[FOLD_TRAIN_SECONDS] = self.fold_train_seconds
        if self.cv_time_ms is not None:
            metrics[CV_TIME_MS] = self.cv_time_ms
        metrics.update({f"{MEAN_ITERATIONS_PREFIX}{i + 1}": v for i, v in enumerate(self.mean_iterations)})
        metrics.update({f"{ACTION_FREQ_PREFIX}{a}": v for a, v in enumerate(self.action_freq)})
        return metrics

    def to_result(self) -> dict[str, Any]:
        """The result dictionary handed to ``ray.tune.report``.

        The whole fold history rides along, so any reader of a trial's last result (the
        pruning scheduler after a restore, the Optuna study) has the paired fold scores.
        """
        result: dict[str, Any] = {FOLDS_DONE: self.folds_done}
        if self.fold is not None:
            result[FOLD] = self.fold
        if self.scored:
            result[FOLD_ACCURACIES] = list(self.fold_accuracies)
            result[FOLD_FLOPS_HISTORY] = list(self.fold_flops)
            result.update(self.metrics())
        if self.operating_curve is not None:
            result[OPERATING_CURVE] = [dict(point) for point in self.operating_curve]
        if self.resumed_at_fold is not None:
            result[RESUMED_AT_FOLD] = self.resumed_at_fold
        if self.error:
            result[ERROR] = self.error
        return result

    @classmethod
    def from_result(cls, result: Mapping[str, Any] | None) -> FoldReport:
        """The report a result dictionary holds; Ray Tune's own keys are ignored.

        ``None`` or an empty result (a trial that reported nothing) gives an empty report.
        """
        result = result or {}
        curve = result.get(OPERATING_CURVE)
        return cls(
            fold=_optional_int(result.get(FOLD)),
            folds_done=int(result.get(FOLDS_DONE, 0)),
            fold_accuracies=_floats(result.get(FOLD_ACCURACIES, ())),
            fold_flops=_floats(result.get(FOLD_FLOPS_HISTORY, ())),
            fold_train_seconds=_optional_float(result.get(FOLD_TRAIN_SECONDS)),
            cv_time_ms=_optional_float(result.get(CV_TIME_MS)),
            mean_iterations=_numbered(result, MEAN_ITERATIONS_PREFIX),
            action_freq=_numbered(result, ACTION_FREQ_PREFIX),
            operating_curve=tuple(dict(point) for point in curve) if curve else None,
            resumed_at_fold=_optional_int(result.get(RESUMED_AT_FOLD)),
            error=str(result[ERROR]) if result.get(ERROR) else None,
        )


@dataclass(frozen=True)
class Outcome:
    """How a trial ended, and how many folds it finished."""

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
    report = FoldReport.from_result(result)
    if report.error:
        return Outcome("failed", report.folds_done, report.error)
    if errored:
        return Outcome("failed", report.folds_done, "the trial raised an error (see the Ray Tune logs)")
    if report.folds_done >= folds:
        return Outcome("finished", report.folds_done)
    return Outcome("pruned", report.folds_done)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _floats(values: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _numbered(result: Mapping[str, Any], prefix: str) -> tuple[float, ...]:
    """The values of ``<prefix><n>`` keys, ordered by ``n``."""
    numbered = {
        int(key[len(prefix):]): float(value)
        for key, value in result.items()
        if key.startswith(prefix) and key[len(prefix):].isdigit()
    }
    return tuple(numbered[n] for n in sorted(numbered))
