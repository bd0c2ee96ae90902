"""Shared pieces of the search tests: a tiny digits space, the CLI, and MLflow/Optuna readers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

from pipeline.search_records import SearchRecord, load_search

ROOT = Path(__file__).resolve().parents[1]

TINY_SPACE = """\
name: tiny
dataset: digits
model: dynalay
folds: 3
epochs: 1
warmup_epochs: 0
batch_size: 128
sampler: tpe
pruner: wilcoxon
num_samples: 4
seed: 0
fixed: {{width: 8}}
params:
  alpha:    {{type: uniform, low: 0.1, high: 1.0}}
  beta:     {{type: uniform, low: 0.05, high: 0.6}}
  gamma:    {{type: uniform, low: 0.05, high: 0.5}}
  fwd_tol:  {{type: loguniform, low: 1.0e-5, high: 1.0e-2}}
  bwd_tol:  {{type: loguniform, low: 1.0e-5, high: 1.0e-2}}
  max_iter: {{type: int, low: 3, high: {max_iter_high}}}
  lr:       {{type: loguniform, low: 3.0e-3, high: 3.0e-2}}
"""


def write_space(directory: Path, max_iter_high: int = 10) -> Path:
    path = directory / "tiny.yaml"
    path.write_text(TINY_SPACE.format(max_iter_high=max_iter_high))
    return path


def dynalay(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real console entry point."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'optuna.db').resolve()}"


def search_of(run_dir: Path, experiment: str) -> SearchRecord:
    return load_search(tracking_uri(run_dir), experiment)


def fold_steps(run_dir: Path, run_id: str, metric: str = "fold_accuracy") -> list[int]:
    """The fold indices at which ``metric`` was logged, in logging order (repeats kept)."""
    client = MlflowClient(tracking_uri(run_dir))
    return [m.step for m in client.get_metric_history(run_id, metric)]


def study_of(run_dir: Path, experiment: str) -> optuna.Study:
    return optuna.load_study(study_name=experiment, storage=storage_url(run_dir))


OPTUNA_STATES = {"finished": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL", "running": "RUNNING"}


def assert_stores_agree(
    run_dir: Path, experiment: str, *, storage: str | None = None, uri: str | None = None
) -> None:
    """The Optuna study and the MLflow search tell one story, trial by trial: the same trials,
    states and objective values, the same front, and each names the other's record."""
    uri = uri or tracking_uri(run_dir)
    study = optuna.load_study(study_name=experiment, storage=storage or storage_url(run_dir))
    search = load_search(uri, experiment)
    client = MlflowClient(uri)
    runs = {r.run_id: client.get_run(r.run_id) for r in search.trials}
    by_number = {int(run.data.tags["optuna_trial_number"]): run for run in runs.values()}
    assert len(by_number) == len(runs), "two MLflow runs name the same Optuna trial"
    assert sorted(by_number) == sorted(t.number for t in study.trials), (sorted(by_number), len(study.trials))
    for trial in study.trials:
        run = by_number[trial.number]
        state = run.data.tags.get("state", "running")
        assert OPTUNA_STATES[state] == trial.state.name, f"trial {trial.number}: {state}, {trial.state.name}"
        assert trial.user_attrs.get("mlflow_run_id") == run.info.run_id, f"trial {trial.number} unlinked"
        if trial.state.name == "COMPLETE":
            mlflow_values = [run.data.metrics.get("cv_accuracy"), run.data.metrics.get("cv_flops")]
            assert trial.values == mlflow_values, f"trial {trial.number}: {trial.values} vs {mlflow_values}"
        else:
            assert trial.values is None
    on_front = {n for n, run in by_number.items() if run.data.tags.get("pareto") == "true"}
    assert on_front == {t.number for t in study.best_trials}
