"""A search submitted to a real multi-node Ray cluster (cluster/local.sh: a head, a worker node
with its own raylet, an MLflow server) survives the death of its worker node; then the MLflow
UI, in headless Chromium, shows that search."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.search_records import load_search
from tests.cluster_fixtures import LocalCluster, check_mlflow_ui, local_cluster  # noqa: F401
from tests.search_helpers import ROOT

pytestmark = pytest.mark.cluster

FOLDS = 6

SPACE = f"""\
name: faults
dataset: digits
folds: {FOLDS}
epochs: 3
warmup_epochs: 1
batch_size: 128
num_samples: 4
pruner: none
seed: 0
fixed: {{width: 8}}
params:
  alpha:    {{type: uniform, low: 0.1, high: 1.0}}
  beta:     {{type: uniform, low: 0.0, high: 0.3}}
  max_iter: {{type: int, low: 3, high: 10}}
  lr:       {{type: loguniform, low: 3.0e-3, high: 3.0e-2}}
"""


def _fold_steps(client: MlflowClient, run_id: str, metric: str = "fold_accuracy") -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, metric)]


def _running_mid_search(cluster: LocalCluster, experiment: str) -> int:
    """Trials still running that have logged at least one fold and have two or more to go."""
    try:
        search = load_search(cluster.mlflow_uri, experiment)
    except Exception:  # noqa: BLE001 - the search run may not exist yet
        return 0
    client = MlflowClient(cluster.mlflow_uri)
    return sum(
        1 for t in search.trials if t.state == "running" and 1 <= len(_fold_steps(client, t.run_id)) <= FOLDS - 2
    )


def test_submitted_search_survives_a_dead_worker_node(local_cluster: LocalCluster, tmp_path: Path) -> None:
    cluster = local_cluster
    space = tmp_path / "faults.yaml"
    space.write_text(SPACE)
    submit = subprocess.Popen(
        [
            sys.executable, "-m", "pipeline.cli", "submit", "--address", cluster.dashboard_address,
            "--space", str(space), "--experiment", "faults", "--run-dir", str(tmp_path / "runs"),
            "--tracking-uri", cluster.mlflow_uri, "--max-concurrent", "2",
            # Only the worker node advertises a (logical) GPU: every trial runs there.
            "--gpus-per-trial", "0.5",
        ],
        cwd=ROOT, env=cluster.client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(submit.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while _running_mid_search(cluster, "faults") < 1:
            assert submit.poll() is None, "".join(output)[-3000:]
            assert time.monotonic() < deadline, "no trial got past its first fold"
            time.sleep(0.5)
        cluster.kill_worker(1)  # mid-search, with trials on it
        assert len(cluster.wait_for_alive_nodes(1)) == 1
        cluster.start_worker(1)
        submit.wait(timeout=900)
    finally:
        if submit.poll() is None:
            submit.kill()
        reader.join(timeout=10)
    log = "".join(output)
    assert submit.returncode == 0, log[-3000:]

    client = MlflowClient(cluster.mlflow_uri)
    search = load_search(cluster.mlflow_uri, "faults")
    assert len(search.trials) == 4
    resumed = []
    for trial in search.trials:
        assert trial.state in ("finished", "pruned", "failed")
        if trial.state == "failed":
            assert client.get_run(trial.run_id).data.tags.get("error")
            continue
        steps = _fold_steps(client, trial.run_id)
        assert steps == list(range(len(steps))), f"{trial.trial_id}: folds logged {steps}"
        assert "replayed_fold" not in client.get_run(trial.run_id).data.tags, "a fold was trained twice"
        resumed_at = client.get_run(trial.run_id).data.tags.get("resumed_at_fold")
        if resumed_at is not None:
            # The retry started after the folds the dead attempt had finished.
            assert 0 < int(resumed_at) < FOLDS
            resumed.append(trial.trial_id)
    assert resumed, "no trial was retried from a fold checkpoint"
    assert all(t.state == "finished" for t in search.trials), [t.state for t in search.trials]

    ui = check_mlflow_ui(
        cluster.mlflow_uri, "faults", screenshot_paths=[tmp_path / "mlflow_ui.png", ROOT / "benchmarks/results/mlflow_ui.png"]
    )
    assert set(ui.children_listed) == {f"trial-{t.trial_id}" for t in search.trials}
    assert ui.pareto_in_table
    assert all(path.exists() for path in ui.screenshots)
