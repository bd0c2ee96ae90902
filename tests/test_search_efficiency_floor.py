"""benchmarks.search_efficiency.pruning_floor: the fewest fold-trainings any pruner needs."""

from __future__ import annotations

from benchmarks.search_efficiency import pruning_floor


def trial(accuracy: float, flops: float) -> dict[str, object]:
    return {"state": "finished", "folds_done": 9, "cv_accuracy": accuracy, "cv_flops": flops}


# Against the reference (0.5, 10): trial 0 alone dominates [1, 10] × [0.5, 0.7], an area of 1.8;
# trial 2 alone [5, 10] × [0.5, 0.9], 2.0; together 2.8. Trials 1 and 3 add nothing to trial 0.
CURVE = [trial(0.7, 1.0), trial(0.6, 2.0), trial(0.9, 5.0), trial(0.55, 3.0)]
REFERENCE = (0.5, 10.0)


def test_the_floor_runs_the_trials_it_needs_and_stops_the_others_before_the_last_of_them() -> None:
    both = 0.2 * 4 + 0.4 * 5  # trial 0 alone from 1 to 5, then trial 2 from 5 to 10
    # trials 0 and 2 are needed; trial 1 ends between them and costs `stop_after` folds; trial 3
    # ends after the threshold is reached and costs nothing
    assert pruning_floor(CURVE, REFERENCE, both, stop_after=4) == 9 + 4 + 9
    assert pruning_floor(CURVE, REFERENCE, both, stop_after=1) == 9 + 1 + 9
    # trial 2 alone (2.0) reaches a lower threshold: the two before it are stopped early
    assert pruning_floor(CURVE, REFERENCE, 2.0, stop_after=4) == 4 + 4 + 9
    # trial 0 alone (1.8, up to rounding) is cheaper still
    assert pruning_floor(CURVE, REFERENCE, 1.79, stop_after=4) == 9


def test_the_floor_is_none_when_no_trial_set_reaches_the_threshold() -> None:
    assert pruning_floor(CURVE, REFERENCE, 100.0, stop_after=4) is None
    assert pruning_floor([], REFERENCE, 1.0, stop_after=4) is None
