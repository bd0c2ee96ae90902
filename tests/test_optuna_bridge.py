"""The Optuna bridge's orphan adoption against a real Optuna RDB storage (no Ray cluster)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from pipeline.optuna_bridge import TRIAL_NUMBER_KEY, CrossValidatedOptunaSearch
from pipeline.outcome import DIRECTIONS, OBJECTIVES

SPACE = {
    "alpha": FloatDistribution(0.0, 1.0),
    "max_iter": IntDistribution(1, 20),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
}


def test_an_orphan_killed_while_its_configuration_was_drawn_is_completed_and_run(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    # A driver that died inside `ask`: the trial is RUNNING with part of its configuration.
    orphan = study.ask()
    orphan.suggest_float("alpha", 0.0, 1.0)
    searcher = CrossValidatedOptunaSearch(
        folds=3, space=SPACE, metric=list(OBJECTIVES), mode=list(DIRECTIONS),
        storage=optuna.storages.RDBStorage(storage), study_name="s",
    )

    config = searcher.suggest("ray-trial-1")

    assert config[TRIAL_NUMBER_KEY] == orphan.number
    assert set(config) == {*SPACE, TRIAL_NUMBER_KEY}
    assert config["alpha"] == study.trials[0].params["alpha"]
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [(t.state, set(t.params)) for t in trials] == [(TrialState.RUNNING, set(SPACE))]
    # The next Ray Tune trial draws a new configuration.
    assert searcher.suggest("ray-trial-2")[TRIAL_NUMBER_KEY] == orphan.number + 1
