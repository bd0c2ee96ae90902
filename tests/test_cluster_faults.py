"""A search submitted to a real multi-node Ray cluster (cluster/local.sh: a head, a worker node
with its own raylet, an MLflow server) survives the death of its worker node; then the MLflow
UI, in headless Chromium, shows that search.

The node dies at a known point of a trial: the worker node's trials carry the pause hook of
:mod:`pipeline.trial`, so the first trial to checkpoint fold ``PAUSE_AFTER_FOLD`` waits there,
its checkpoint held by the driver and folds still to go, while the test kills its node. (Killing
when MLflow showed a trial part-way raced the trial: it could finish its last folds before the
kill landed, and then only a fresh trial, with no checkpoint, died.)
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.search_records import load_search
from pipeline.trial import PAUSE_AFTER_CHECKPOINT_ENV, PAUSE_AFTER_FOLD, PAUSED_MARKER, RELEASE_MARKER
from tests.cluster_fixtures import LocalCluster, check_mlflow_ui, local_cluster  # noqa: F401
from tests.search_helpers import ROOT

pytestmark = pytest.mark.cluster

FOLDS = 4

SPACE = f"""\
name: faults
dataset: digits
folds: {FOLDS}
epochs: 2
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


def _wait_for_file(path: Path, submit: subprocess.Popen, output: list[str], timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert submit.poll() is None, "".join(output)[-3000:]
        assert time.monotonic() < deadline, f"no trial checkpointed fold {PAUSE_AFTER_FOLD} within {timeout_s:.0f} s"
        time.sleep(0.2)


def test_submitted_search_survives_a_dead_worker_node(local_cluster: LocalCluster, tmp_path: Path) -> None:
    cluster = local_cluster
    hook = tmp_path / "pause-hook"
    hook.mkdir()
    # Only the worker node advertises a (logical) GPU: every trial runs there, with the hook.
    cluster.restart_worker(1, env={PAUSE_AFTER_CHECKPOINT_ENV: str(hook)})
    space = tmp_path / "faults.yaml"
    space.write_text(SPACE)
    submit = subprocess.Popen(
        [
            sys.executable, "-m", "pipeline.cli", "submit", "--address", cluster.dashboard_address,
            "--space", str(space), "--experiment", "faults", "--run-dir", str(tmp_path / "runs"),
            "--tracking-uri", cluster.mlflow_uri, "--max-concurrent", "2",
            "--gpus-per-trial", "0.5",
        ],
        cwd=ROOT, env=cluster.client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(submit.stdout), daemon=True)
    reader.start()
    try:
        _wait_for_file(hook / PAUSED_MARKER, submit, output)
        cluster.kill_worker(1)  # under the paused trial
        assert len(cluster.wait_for_alive_nodes(1)) == 1
        cluster.start_worker(1)  # without the hook
        submit.wait(timeout=900)
    finally:
        # Frees a trial still paused (the test failed before the kill) and disarms the hook.
        (hook / RELEASE_MARKER).touch()
        if submit.poll() is None:
            submit.kill()
        reader.join(timeout=10)
    log = "".join(output)
    assert submit.returncode == 0, log[-3000:]

    client = MlflowClient(cluster.mlflow_uri)
    search = load_search(cluster.mlflow_uri, "faults")
    assert len(search.trials) == 4
    killed = (hook / PAUSED_MARKER).read_text()
    assert killed in {t.trial_id for t in search.trials}
    for trial in search.trials:
        tags = client.get_run(trial.run_id).data.tags
        # The trial whose node died is retried, not failed.
        assert trial.state == "finished", f"{trial.trial_id}: {trial.state} ({tags.get('error')})"
        assert _fold_steps(client, trial.run_id) == list(range(FOLDS)), trial.trial_id
        assert "replayed_fold" not in tags, f"{trial.trial_id}: fold {tags.get('replayed_fold')} was trained twice"
        if trial.trial_id == killed:
            # Retried from its last fold checkpoint: it resumed right after the fold it held.
            assert tags.get("resumed_at_fold") == str(PAUSE_AFTER_FOLD + 1), tags
        elif "resumed_at_fold" in tags:
            assert 0 < int(tags["resumed_at_fold"]) < FOLDS, tags

    ui = check_mlflow_ui(
        cluster.mlflow_uri, "faults", screenshot_paths=[tmp_path / "mlflow_ui.png", ROOT / "benchmarks/results/mlflow_ui.png"]
    )
    assert set(ui.children_listed) == {f"trial-{t.trial_id}" for t in search.trials}
    assert ui.pareto_in_table
    assert all(path.exists() for path in ui.screenshots)
