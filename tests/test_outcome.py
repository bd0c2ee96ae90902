"""The trial-report contract: FoldReport to and from a Ray Tune result, and the ending it implies."""

from __future__ import annotations

import pytest

from pipeline.outcome import OBJECTIVES, FoldReport, outcome
from pipeline.trial import FoldResult, fold_report


def _fold(index: int, accuracy: float, flops: float, curve: list[dict[str, float]] | None = None) -> FoldResult:
    return FoldResult(
        fold=index,
        accuracy=accuracy,
        flops=flops,
        time_ms=0.5 + index,
        train_seconds=10.0 + index,
        action_freq=[0.25, 0.25, 0.25, 0.25],
        mean_iterations=[1.0 + index, 2.0, 3.0],
        curve=curve,
    )


def test_a_trial_report_round_trips_through_a_result() -> None:
    curve = [{"bias": 0.0, "accuracy": 0.9, "flops": 1e5, "fpi_fraction": 0.5}]
    done = [_fold(0, 0.8, 1e5, curve), _fold(1, 0.9, 3e5, curve)]
    report = fold_report(done)
    # A fold is an index, folds_done a count.
    assert (report.fold, report.folds_done) == (1, 2)
    assert report.objectives() == [pytest.approx(0.85), pytest.approx(2e5)]
    result = report.to_result()
    assert FoldReport.from_result(result) == report
    # Ray Tune adds its own bookkeeping to every result; it is not part of the report.
    assert FoldReport.from_result({**result, "time_total_s": 3.0, "pid": 7, "done": False}) == report


def test_metrics_are_the_trial_runs_scalars() -> None:
    report = fold_report([_fold(0, 0.8, 1e5), _fold(1, 0.9, 3e5)])
    metrics = report.metrics()
    assert set(metrics) == {
        "fold_accuracy", "fold_flops", "fold_train_seconds", *OBJECTIVES, "cv_accuracy_std", "cv_time_ms",
        "mean_iterations_l1", "mean_iterations_l2", "mean_iterations_l3",
        "action_freq_0", "action_freq_1", "action_freq_2", "action_freq_3",
    }
    assert (metrics["fold_accuracy"], metrics["fold_flops"], metrics["fold_train_seconds"]) == (0.9, 3e5, 11.0)
    assert metrics["cv_accuracy_std"] == pytest.approx(0.05)
    assert metrics["mean_iterations_l1"] == pytest.approx(1.5)
    assert all(isinstance(v, float) for v in metrics.values())
    assert FoldReport().metrics() == {} and FoldReport.from_result(None) == FoldReport()


def test_the_last_report_decides_how_the_trial_ended() -> None:
    two_folds = fold_report([_fold(0, 0.8, 1e5), _fold(1, 0.9, 3e5)]).to_result()
    assert outcome(two_folds, folds=2).state == "finished"
    pruned = outcome(two_folds, folds=3)
    assert (pruned.state, pruned.folds_done) == ("pruned", 2)
    diverged = FoldReport(fold=0, error="loss is nan").to_result()
    assert outcome(diverged, folds=3) == outcome({"folds_done": 0, "fold": 0, "error": "loss is nan"}, folds=3)
    assert outcome(diverged, folds=3).state == "failed"
    assert outcome(None, folds=3, errored=True).state == "failed"
    assert outcome(None, folds=3).state == "pruned"
