"""Pareto-aware pruning decisions on paired fold scores.

Each trial is a k-fold cross-validation; after every fold it reports the fold's accuracy and
its FLOPs per sample. All trials use the same seeded folds, so fold ``j`` of one trial and
fold ``j`` of another were trained and tested on the same data: their accuracies are *paired*.

With two objectives (maximise accuracy, minimise FLOPs) a trial may only be pruned for losing
to a trial that is at least as cheap: a cheap, less accurate trial can still be Pareto-optimal
and is never pruned for being beaten by an expensive one.

Each pruner is an :class:`optuna.pruners.BasePruner` with two entrances to one decision,
:meth:`FoldPruner.should_prune` on plain :class:`FoldHistory` records:

* the Ray Tune scheduler (``pipeline/scheduler.py``) calls ``should_prune`` after each fold;
* a plain Optuna study calls :meth:`FoldPruner.prune` (``study.pruner.prune(study, trial)``),
  which reads the paired fold scores from the trials' user attributes (``fold_accuracies`` and
  ``fold_flops_history``, appended by :func:`record_fold`), as OptunaHub's multi-metric pruners
  do: ``Trial.report``/``should_prune`` refuse multi-objective studies.

Nothing here imports Ray.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from pipeline.errors import UsageError
from pipeline.outcome import FOLD_ACCURACIES, FOLD_FLOPS_HISTORY

if TYPE_CHECKING:
    import optuna

__all__ = [
    "PRUNERS",
    "FoldHistory",
    "FoldPruner",
    "NopPruner",
    "ParetoMedianPruner",
    "ParetoWilcoxonPruner",
    "PruneDecision",
    "make_pruner",
    "min_decidable_folds",
    "record_fold",
]


@dataclass(frozen=True)
class FoldHistory:
    """What one trial has reported so far, one entry per completed fold, in fold order."""

    trial_id: str
    accuracies: list[float] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)

    @property
    def n_folds(self) -> int:
        """The number of folds with both an accuracy and a FLOP count."""
        return min(len(self.accuracies), len(self.flops))

    @property
    def mean_accuracy(self) -> float:
        """The mean fold accuracy so far (NaN before the first fold)."""
        return _mean(self.accuracies[: self.n_folds])

    @property
    def mean_flops(self) -> float:
        """The mean FLOPs per sample so far: the trial's compute estimate (NaN before any fold)."""
        return _mean(self.flops[: self.n_folds])

    def is_finite(self) -> bool:
        """True when every reported value is a finite number."""
        n = self.n_folds
        values = np.asarray([*self.accuracies[:n], *self.flops[:n]], dtype=float)
        return bool(np.all(np.isfinite(values)))


@dataclass(frozen=True)
class PruneDecision:
    """A pruner's answer: whether to stop the trial, why, and which trial it lost to."""

    prune: bool
    reason: str
    compared_with: str | None = None


class FoldPruner(BasePruner):
    """An Optuna pruner that decides on paired fold scores.

    Subclasses implement :meth:`should_prune`; :meth:`prune` is Optuna's entrance to it.
    """

    def should_prune(self, running: FoldHistory, finished: Sequence[FoldHistory]) -> PruneDecision:
        """Compare ``running`` with the trials that completed all their folds."""
        raise NotImplementedError

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Optuna's entrance: ``trial``'s fold scores against the study's COMPLETE trials.

        Both come from user attributes (see :func:`record_fold`); a COMPLETE trial without
        them is not compared against.
        """
        finished = [
            _history_of(other)
            for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if other.number != trial.number
        ]
        running = _history_of(trial)
        return self.should_prune(running, [h for h in finished if h.n_folds > 0]).prune


def record_fold(trial: optuna.Trial, accuracy: float, flops: float) -> None:
    """Append one fold's accuracy and FLOPs per sample to ``trial``'s user attributes.

    Call it after each fold, before ``study.pruner.prune(...)``; every trial of a study must
    score the same folds in the same order, so that fold ``j`` scores are paired.
    """
    accuracies = list(trial.user_attrs.get(FOLD_ACCURACIES, []))
    flops_history = list(trial.user_attrs.get(FOLD_FLOPS_HISTORY, []))
    trial.set_user_attr(FOLD_ACCURACIES, [*accuracies, float(accuracy)])
    trial.set_user_attr(FOLD_FLOPS_HISTORY, [*flops_history, float(flops)])


def _history_of(trial: FrozenTrial) -> FoldHistory:
    return FoldHistory(
        str(trial.number),
        list(trial.user_attrs.get(FOLD_ACCURACIES, [])),
        list(trial.user_attrs.get(FOLD_FLOPS_HISTORY, [])),
    )


def min_decidable_folds(p_threshold: float) -> int:
    """The fewest paired folds at which a one-sided Wilcoxon test can reach ``p < p_threshold``.

    With ``n`` paired differences the smallest exact one-sided p-value is ``1 / 2**n`` (every
    difference has the same sign), so this is the smallest ``n`` with ``1 / 2**n < p_threshold``,
    and never below 2: one fold is no sample. E.g. 0.1 → 4, 0.05 → 5, 0.01 → 7.
    """
    if not 0.0 < p_threshold <= 1.0:
        raise ValueError(f"p_threshold must be in (0, 1], got {p_threshold}")
    n = 1
    while 0.5**n >= p_threshold:
        n += 1
    return max(2, n)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _no_costlier(running: FoldHistory, finished: Sequence[FoldHistory]) -> list[FoldHistory]:
    """The finished trials with finite scores whose mean compute is no higher than ``running``'s.

    A finished trial's compute is its mean over all its folds (its objective value); the running
    trial's is its running mean, its best estimate of the same quantity.
    """
    budget = running.mean_flops
    return [
        other
        for other in finished
        if other.trial_id != running.trial_id
        and other.n_folds > 0
        and other.is_finite()
        and other.mean_flops <= budget
    ]


class ParetoWilcoxonPruner(FoldPruner):
    """Prune a trial whose paired fold accuracies lose to an at-least-as-cheap finished trial.

    For each finished trial whose mean FLOPs are no higher than the running trial's, the fold
    accuracies the running trial has so far are paired with that trial's accuracies on the same
    folds, and a one-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``,
    ``alternative="greater"`` on ``finished − running``) asks whether the finished trial is
    better. The trial is pruned if any such test gives ``p < p_threshold``; the decision names the
    trial with the lowest p.

    The ideas follow :class:`optuna.pruners.WilcoxonPruner` (optuna/pruners/_wilcoxon.py), with
    the "best trial" replaced by "every finished trial no costlier than this one":

    * ties: ``zero_method="zsplit"`` (zero differences count half for each side, so equal folds
      weaken the evidence instead of being dropped), and all-zero differences are no evidence
      at all (SciPy would divide by zero there);
    * the "average is worse" guard: even when the test says "worse", a trial whose mean accuracy
      so far is at least the other trial's mean over all its folds is not pruned against it;
    * non-finite values never lead to pruning (a running trial with NaN/inf is kept; a finished
      trial with them is not compared against).

    Like Optuna's, this repeats the test after every fold, so the false-positive rate is above
    the nominal ``p_threshold``; pass a Pocock-corrected threshold for the nominal rate.

    Args:
        p_threshold: prune when the one-sided p-value falls below this. Defaults to 0.1.
        min_folds: folds the running trial must have completed before it may be pruned. Raised
            to :func:`min_decidable_folds` of ``p_threshold`` when lower (before that the test
            cannot reach the threshold). Defaults to exactly that bound: 4 for 0.1.
    """

    def __init__(self, p_threshold: float = 0.1, min_folds: int | None = None) -> None:
        decidable = min_decidable_folds(p_threshold)
        if min_folds is not None and min_folds < 1:
            raise ValueError(f"min_folds must be positive, got {min_folds}")
        self.p_threshold = p_threshold
        self.min_folds = decidable if min_folds is None else max(min_folds, decidable)

    def should_prune(self, running: FoldHistory, finished: Sequence[FoldHistory]) -> PruneDecision:
        """Prune when an at-least-as-cheap finished trial has significantly better paired folds."""
        import scipy.stats  # imported here: SciPy adds a second to importing this module

        n = running.n_folds
        if n < self.min_folds:
            return PruneDecision(False, f"{n} of {self.min_folds} folds needed for a decision")
        if not running.is_finite():
            return PruneDecision(False, "non-finite fold values; never pruned")
        candidates = _no_costlier(running, finished)
        if not candidates:
            return PruneDecision(False, "no finished trial is as cheap")

        mine = np.asarray(running.accuracies[:n], dtype=float)
        best: tuple[float, FoldHistory, int] | None = None
        for other in candidates:
            paired = min(n, other.n_folds)
            if paired < self.min_folds:
                continue
            diff = np.asarray(other.accuracies[:paired], dtype=float) - mine[:paired]
            if not np.any(diff):
                continue  # identical folds: no evidence either way
            if other.mean_accuracy <= running.mean_accuracy:
                continue  # Optuna's "average is best" guard: not worse on average
            test = scipy.stats.wilcoxon(diff, alternative="greater", zero_method="zsplit")
            p = float(test.pvalue)
            if p < self.p_threshold and (best is None or p < best[0]):
                best = (p, other, paired)

        if best is None:
            return PruneDecision(False, "no as-cheap finished trial is significantly more accurate")
        p, other, paired = best
        return PruneDecision(
            True,
            f"fold accuracies below trial {other.trial_id} over {paired} paired folds "
            f"(one-sided Wilcoxon p={p:.3g} < {self.p_threshold:g}) at no lower compute "
            f"({other.mean_flops:.3g} <= {running.mean_flops:.3g} FLOPs/sample)",
            compared_with=other.trial_id,
        )


class ParetoMedianPruner(FoldPruner):
    """Prune a trial whose running mean accuracy is below the median of no-costlier trials.

    After fold ``j`` the running trial's mean accuracy over folds ``1..j`` is compared with the
    median of the same quantity (mean over *their* folds ``1..j``, the same data) of the finished
    trials whose mean FLOPs are no higher than the running trial's; it is pruned when strictly
    below. The median-stopping rule of :class:`optuna.pruners.MedianPruner`, restricted to
    trials that are at least as cheap so that a cheap trial is never pruned for losing to
    expensive ones.

    Args:
        n_startup_trials: the fewest comparable (no-costlier) finished trials whose median is
            trusted; fewer means no pruning. Defaults to 5, as Optuna's MedianPruner.
        n_warmup_folds: no pruning until the running trial has completed more than this many
            folds. Defaults to 1: one fold's accuracy alone is too noisy to act on.
    """

    def __init__(self, n_startup_trials: int = 5, n_warmup_folds: int = 1) -> None:
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be positive, got {n_startup_trials}")
        if n_warmup_folds < 0:
            raise ValueError(f"n_warmup_folds must be non-negative, got {n_warmup_folds}")
        self.n_startup_trials = n_startup_trials
        self.n_warmup_folds = n_warmup_folds

    def should_prune(self, running: FoldHistory, finished: Sequence[FoldHistory]) -> PruneDecision:
        """Prune when below the median running mean of at-least-as-cheap finished trials."""
        j = running.n_folds
        if j <= self.n_warmup_folds:
            return PruneDecision(False, f"warm-up: {j} of more than {self.n_warmup_folds} folds")
        if not running.is_finite():
            return PruneDecision(False, "non-finite fold values; never pruned")
        peers = [other for other in _no_costlier(running, finished) if other.n_folds >= j]
        if len(peers) < self.n_startup_trials:
            return PruneDecision(
                False, f"{len(peers)} of {self.n_startup_trials} as-cheap finished trials needed"
            )
        median = statistics.median(_mean(other.accuracies[:j]) for other in peers)
        mine = running.mean_accuracy
        if mine < median:
            return PruneDecision(
                True,
                f"mean accuracy {mine:.4g} after {j} folds is below the median {median:.4g} "
                f"of {len(peers)} finished trials at no higher compute",
            )
        return PruneDecision(False, f"mean accuracy {mine:.4g} >= median {median:.4g}")


class NopPruner(FoldPruner):
    """Never prunes: every trial runs all its folds."""

    def should_prune(self, running: FoldHistory, finished: Sequence[FoldHistory]) -> PruneDecision:
        """Always keep the trial."""
        return PruneDecision(False, "pruning disabled")


#: The pruners a search space or ``--pruner`` can name.
PRUNERS: dict[str, type[FoldPruner]] = {
    "wilcoxon": ParetoWilcoxonPruner,
    "median": ParetoMedianPruner,
    "none": NopPruner,
}


def make_pruner(name: str) -> FoldPruner:
    """The pruner ``name`` in :data:`PRUNERS`, with its default settings.

    Raises:
        UsageError: for a name not in :data:`PRUNERS`.
    """
    if name not in PRUNERS:
        raise UsageError(f"unknown pruner {name!r} (known: {', '.join(PRUNERS)})")
    return PRUNERS[name]()
