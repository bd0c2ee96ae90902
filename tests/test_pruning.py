"""Pruning decisions on recorded fold sequences (paired folds, two objectives)."""

from __future__ import annotations

import pytest

from pipeline.errors import UsageError
from pipeline.pruning import (
    FoldHistory,
    PRUNERS,
    NopPruner,
    ParetoMedianPruner,
    ParetoWilcoxonPruner,
    make_pruner,
    min_decidable_folds,
    record_fold,
)

# A finished 9-fold trial: accurate, at 1e5 FLOPs per sample. Fold difficulty varies (fold 3
# is hard for everyone), which is what makes the paired test sharper than comparing means.
STRONG = FoldHistory(
    "strong",
    [0.95, 0.93, 0.88, 0.96, 0.94, 0.92, 0.95, 0.93, 0.94],
    [1.0e5] * 9,
)
# 3 to 5 points behind STRONG on every fold.
WEAKER = [a - d for a, d in zip(STRONG.accuracies, [0.03, 0.04, 0.05] * 3)]


def running(accuracies: list[float], flops: float, trial_id: str = "run") -> FoldHistory:
    return FoldHistory(trial_id, list(accuracies), [flops] * len(accuracies))


@pytest.mark.parametrize(
    ("p_threshold", "folds"), [(0.2, 3), (0.1, 4), (0.05, 5), (0.01, 7), (0.5, 2)]
)
def test_min_decidable_folds(p_threshold: float, folds: int) -> None:
    assert min_decidable_folds(p_threshold) == folds
    assert 0.5**folds < p_threshold <= 0.5 ** (folds - 1) or folds == 2


def test_prunes_a_dominated_trial() -> None:
    """Lower on every paired fold and at least as costly: pruned, naming the winner."""
    pruner = ParetoWilcoxonPruner()
    decision = pruner.should_prune(running(WEAKER[:5], 1.2e5), [STRONG])
    assert decision.prune
    assert decision.compared_with == "strong"
    assert "Wilcoxon" in decision.reason
    # Equal compute counts as "no cheaper": still pruned.
    assert pruner.should_prune(running(WEAKER[:5], 1.0e5), [STRONG]).prune


def test_keeps_a_cheaper_less_accurate_trial() -> None:
    """Clearly less accurate but cheaper: it may be on the front, so it is never pruned."""
    far_worse = [a - 0.2 for a in STRONG.accuracies]
    decision = ParetoWilcoxonPruner().should_prune(running(far_worse, 0.5e5), [STRONG])
    assert not decision.prune
    assert decision.compared_with is None


def test_compares_only_with_no_costlier_trials_and_reports_the_lowest_p() -> None:
    cheap_but_close = FoldHistory("close", [a - 0.035 for a in STRONG.accuracies], [0.9e5] * 9)
    costly = FoldHistory("costly", [0.99] * 9, [9e5] * 9)
    trial = running([a - 0.2 for a in STRONG.accuracies[:6]], 1.0e5)
    decision = ParetoWilcoxonPruner().should_prune(trial, [costly, cheap_but_close, STRONG])
    assert decision.prune
    # "costly" is out of bounds; "strong" and "close" both win on all 6 folds, so both give
    # the smallest p; the first with the lowest p is reported.
    assert decision.compared_with in {"strong", "close"}
    only_costly = ParetoWilcoxonPruner().should_prune(trial, [costly])
    assert not only_costly.prune


@pytest.mark.parametrize("p_threshold", [0.2, 0.1, 0.05, 0.01])
def test_never_prunes_before_the_test_can_decide(p_threshold: float) -> None:
    pruner = ParetoWilcoxonPruner(p_threshold=p_threshold)
    needed = min_decidable_folds(p_threshold)
    assert pruner.min_folds == needed
    hopeless = [a - 0.3 for a in STRONG.accuracies]
    for n in range(1, needed):
        assert not pruner.should_prune(running(hopeless[:n], 2e5), [STRONG]).prune
    assert pruner.should_prune(running(hopeless[:needed], 2e5), [STRONG]).prune


def test_min_folds_below_the_decidable_bound_is_raised_to_it() -> None:
    assert ParetoWilcoxonPruner(p_threshold=0.1, min_folds=2).min_folds == 4
    assert ParetoWilcoxonPruner(p_threshold=0.1, min_folds=6).min_folds == 6
    with pytest.raises(ValueError):
        ParetoWilcoxonPruner(p_threshold=0.0)


def test_ties_are_no_evidence() -> None:
    pruner = ParetoWilcoxonPruner()
    same = running(STRONG.accuracies, 1.0e5, "twin")
    assert not pruner.should_prune(same, [STRONG]).prune
    flat = FoldHistory("flat", [0.9] * 9, [1e5] * 9)
    assert not pruner.should_prune(running([0.9] * 9, 1e5), [flat]).prune
    # Mostly ties with a single worse fold: not enough evidence at p < 0.1.
    one_off = list(STRONG.accuracies)
    one_off[4] -= 0.1
    assert not pruner.should_prune(running(one_off, 1e5), [STRONG]).prune


def test_not_pruned_when_not_worse_on_average() -> None:
    """Optuna's guard: worse on most folds, but the mean is at least the other's mean."""
    # The other trial won the 5 folds paired so far (p = 1/32) but collapsed later: its mean
    # over all folds (0.72) is below this trial's mean so far (0.89).
    other = FoldHistory("other", [0.90] * 5 + [0.50] * 4, [1e5] * 9)
    trial = running([0.89] * 5, 1e5)
    assert not ParetoWilcoxonPruner(p_threshold=0.1).should_prune(trial, [other]).prune
    # The same paired folds against a trial that kept its level: pruned.
    steady = FoldHistory("steady", [0.90] * 9, [1e5] * 9)
    assert ParetoWilcoxonPruner(p_threshold=0.1).should_prune(trial, [steady]).prune


def test_non_finite_values_never_prune() -> None:
    pruner = ParetoWilcoxonPruner()
    broken = running([*WEAKER[:4], float("nan")], 1.2e5)
    assert not pruner.should_prune(broken, [STRONG]).prune
    nan_winner = FoldHistory("nan", [1.0, 1.0, 1.0, float("nan"), 1.0], [1e5] * 5)
    assert not pruner.should_prune(running(WEAKER[:5], 1.2e5), [nan_winner]).prune


def test_no_finished_trials_no_prune() -> None:
    assert not ParetoWilcoxonPruner().should_prune(running(WEAKER, 1e5), []).prune


def _peers(n: int) -> list[FoldHistory]:
    # Finished trials at 1e5 FLOPs with mean accuracies 0.80, 0.82, ..., one per trial.
    return [FoldHistory(f"p{i}", [0.80 + 0.02 * i] * 9, [1e5] * 9) for i in range(n)]


def test_median_pruner_prunes_below_median_of_no_costlier_trials() -> None:
    pruner = ParetoMedianPruner(n_startup_trials=5, n_warmup_folds=1)
    peers = _peers(5)  # median 0.84
    assert pruner.should_prune(running([0.83, 0.83], 1e5), peers).prune
    assert not pruner.should_prune(running([0.85, 0.85], 1e5), peers).prune
    # Cheaper than every finished trial: nobody to compare with.
    assert not pruner.should_prune(running([0.5, 0.5], 0.5e5), peers).prune


def test_median_pruner_warmup_and_startup() -> None:
    pruner = ParetoMedianPruner(n_startup_trials=5, n_warmup_folds=2)
    assert not pruner.should_prune(running([0.1, 0.1], 1e5), _peers(5)).prune  # warm-up
    assert pruner.should_prune(running([0.1, 0.1, 0.1], 1e5), _peers(5)).prune
    assert not pruner.should_prune(running([0.1, 0.1, 0.1], 1e5), _peers(4)).prune  # startup


def test_median_pruner_uses_running_means_at_the_same_fold() -> None:
    # Peers start badly and recover: at fold 2 their running mean is 0.6, so 0.7 survives.
    peers = [FoldHistory(f"p{i}", [0.6, 0.6] + [1.0] * 7, [1e5] * 9) for i in range(5)]
    assert not ParetoMedianPruner().should_prune(running([0.7, 0.7], 1e5), peers).prune


def test_nop_and_factory() -> None:
    assert not NopPruner().should_prune(running([0.0] * 9, 1e9), [STRONG]).prune
    assert isinstance(make_pruner("wilcoxon"), ParetoWilcoxonPruner)
    assert isinstance(make_pruner("median"), ParetoMedianPruner)
    assert isinstance(make_pruner("none"), NopPruner)
    with pytest.raises(UsageError, match="unknown pruner 'hyperband'"):
        make_pruner("hyperband")


def test_pruners_are_optuna_pruners_in_a_plain_multi_objective_study(tmp_path) -> None:
    """Without Ray: an Optuna study (RDB storage) with the Pareto Wilcoxon pruner prunes the
    trial that loses to an as-cheap finished one and keeps the cheaper, less accurate one."""
    import optuna

    assert all(issubclass(cls, optuna.pruners.BasePruner) for cls in PRUNERS.values())
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        directions=["maximize", "minimize"],
        pruner=ParetoWilcoxonPruner(),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    # (points below STRONG on every fold, FLOPs per sample)
    plan = {"strong": (0.0, 1.0e5), "weak": (0.04, 1.2e5), "cheap": (0.2, 0.5e5)}
    for name in plan:
        study.enqueue_trial({"name": name})
    folds_run: dict[str, int] = {}

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        name = trial.suggest_categorical("name", list(plan))
        deficit, flops = plan[name]
        for fold, accuracy in enumerate(STRONG.accuracies):
            record_fold(trial, accuracy - deficit, flops)
            folds_run[name] = fold + 1
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
            if study.pruner.prune(study, frozen):
                raise optuna.TrialPruned()
        return sum(STRONG.accuracies) / len(STRONG.accuracies) - deficit, flops

    study.optimize(objective, n_trials=len(plan))
    states = {t.params["name"]: t.state for t in study.trials}
    assert states == {
        "strong": optuna.trial.TrialState.COMPLETE,
        "weak": optuna.trial.TrialState.PRUNED,
        "cheap": optuna.trial.TrialState.COMPLETE,
    }
    assert folds_run["weak"] == ParetoWilcoxonPruner().min_folds  # the first decidable fold
    assert folds_run["cheap"] == len(STRONG.accuracies)
    assert [t.params["name"] for t in study.best_trials] == ["strong", "cheap"]
