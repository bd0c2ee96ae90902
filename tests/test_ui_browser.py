"""The MLflow UI in a real headless Chromium, against a real ``mlflow server`` on 127.0.0.1.

The runs follow the search's MLflow data model (docs/architecture.md): one parent run, nested
trial runs (tag ``mlflow.parentRunId``) with ``cv_accuracy``/``cv_flops`` and the tags
``state`` and, on the front, ``pareto=true``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.cluster_fixtures import SCREENSHOT_DIR, check_mlflow_ui, chromium_path, mlflow_server

pytestmark = pytest.mark.browser

EXPERIMENT = "ui-check"
# (name, state, pareto, cv_accuracy, cv_flops): trial-0 and trial-1 are on the front.
TRIALS = [
    ("trial-0", "finished", True, 0.93, 2.0e5),
    ("trial-1", "finished", True, 0.97, 6.0e5),
    ("trial-2", "finished", False, 0.91, 7.0e5),
    ("trial-3", "pruned", False, 0.80, 9.0e5),
]


def _log_search(tracking_uri: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    parent = client.create_run(experiment_id, run_name="search-digits", tags={"dynalay.search": "digits"})
    for name, state, pareto, accuracy, flops in TRIALS:
        tags = {"mlflow.parentRunId": parent.info.run_id, "state": state}
        if pareto:
            tags["pareto"] = "true"
        child = client.create_run(experiment_id, run_name=name, tags=tags)
        client.log_metric(child.info.run_id, "cv_accuracy", accuracy)
        client.log_metric(child.info.run_id, "cv_flops", flops)
        client.set_terminated(child.info.run_id, "FINISHED" if state == "finished" else "KILLED")
    client.log_metric(parent.info.run_id, "hypervolume", 0.5)
    client.set_terminated(parent.info.run_id)


def test_mlflow_ui_lists_trials_under_their_search_and_shows_pareto(tmp_path: Path) -> None:
    try:
        chromium_path()
    except RuntimeError as error:
        pytest.fail(str(error))
    with mlflow_server(tmp_path / "mlflow") as tracking_uri:
        _log_search(tracking_uri)
        result = check_mlflow_ui(tracking_uri, EXPERIMENT, screenshot_paths=[tmp_path / "mlflow_ui.png"])

    assert result.parent_run == "search-digits"
    # Newest first: the table lists the children in reverse creation order.
    assert result.children_listed == [name for name, *_ in reversed(TRIALS)]
    assert sorted(result.pareto_in_table) == ["trial-0", "trial-1"]
    assert result.pareto_run_page in {"trial-0", "trial-1"}
    for shot in result.screenshots:
        assert shot.stat().st_size > 10_000, f"{shot} looks empty"
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    for shot in result.screenshots:
        shutil.copyfile(shot, SCREENSHOT_DIR / shot.name)
