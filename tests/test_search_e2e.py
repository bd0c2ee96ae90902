"""End-to-end searches on digits against a real local Ray, a real MLflow store and a real
Optuna RDB storage: the data model, the front, failure, export, and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from pipeline.operating_curve import BIASES, load_trial_curve

from tests.search_helpers import (
    ROOT,
    assert_stores_agree,
    dynalay,
    fold_steps,
    search_of,
    study_of,
    tracking_uri,
    write_space,
)

FOLD_METRICS = ("fold_accuracy", "fold_flops")
TRIAL_METRICS = (
    "cv_accuracy",
    "cv_accuracy_std",
    "cv_flops",
    "cv_time_ms",
    "mean_iterations_l1",
    "action_freq_0",
)
OPTUNA_STATE = {"finished": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real search: 4 trials, 3 folds, 1 epoch; one trial made to diverge at fold 1."""
    run_dir = tmp_path_factory.mktemp("runs")
    space = write_space(run_dir)
    fault_dir = run_dir / "faults"
    fault_dir.mkdir()
    done = dynalay(
        "search", "--space", str(space), "--experiment", "e2e", "--run-dir", str(run_dir),
        "--max-concurrent", "2",
        env={"DYNALAY_INJECT_NAN_DIR": str(fault_dir)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Tune's ResultGrid reads the trials' JSON results at the end of fit(); without them every
    # search ended on a warning that it found no metrics for any trial.
    assert "Failed to fetch metrics" not in done.stderr + done.stdout, done.stderr[-3000:]
    return run_dir, done.stdout


def test_parent_and_nested_runs_hold_the_data_model(finished_search: tuple[Path, str]) -> None:
    run_dir, _ = finished_search
    search = search_of(run_dir, "e2e")
    client = MlflowClient(tracking_uri(run_dir))
    parent = client.get_run(search.run_id)
    for param in ("dataset", "model", "folds", "seed", "sampler", "pruner"):
        assert param in parent.data.params
    assert parent.data.params["folds"] == "3"
    assert "hypervolume" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(search.run_id)}
    assert {"pareto.csv", "pareto.png"} <= artifacts

    assert len(search.trials) == 4
    states = {t.state for t in search.trials}
    assert states <= {"finished", "pruned", "failed"}
    assert "finished" in states
    for trial in search.trials:
        run = client.get_run(trial.run_id)
        assert {"alpha", "beta", "gamma", "fwd_tol", "bwd_tol", "max_iter", "lr"} <= set(run.data.params)
        steps = fold_steps(run_dir, trial.run_id)
        assert steps == sorted(set(steps)), "a fold was logged twice"
        if trial.state == "finished":
            assert steps == [0, 1, 2]
            assert run.data.tags["folds_done"] == "3"
            for metric in (*FOLD_METRICS, *TRIAL_METRICS):
                assert metric in run.data.metrics, metric
            assert run.data.tags.get("pareto") in ("true", "false")
        if trial.state == "pruned":
            assert int(run.data.tags["folds_done"]) == len(steps) < 3
            assert "pareto" not in run.data.tags or run.data.tags["pareto"] == "false"


def test_a_diverging_trial_is_failed_with_its_reason_and_the_search_goes_on(
    finished_search: tuple[Path, str],
) -> None:
    run_dir, _ = finished_search
    search = search_of(run_dir, "e2e")
    failed = [t for t in search.trials if t.state == "failed"]
    assert len(failed) == 1
    run = MlflowClient(tracking_uri(run_dir)).get_run(failed[0].run_id)
    assert "nan" in run.data.tags["error"].lower()
    assert run.data.tags.get("pareto") != "true"
    assert len([t for t in search.trials if t.state != "failed"]) == 3


def test_optuna_study_agrees_with_mlflow(finished_search: tuple[Path, str]) -> None:
    run_dir, _ = finished_search
    study = study_of(run_dir, "e2e")
    search = search_of(run_dir, "e2e")
    assert len(study.trials) == len(search.trials) == 4
    assert sorted(t.state.name for t in study.trials) == sorted(
        OPTUNA_STATE[t.state].name for t in search.trials
    )
    # Only trials that ran every fold carry objective values.
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            assert len(trial.user_attrs["fold_accuracies"]) == 3
        else:
            assert trial.values is None
    assert_stores_agree(run_dir, "e2e")


def test_the_front_is_non_dominated_and_holds_only_finished_trials(
    finished_search: tuple[Path, str], tmp_path: Path
) -> None:
    run_dir, search_output = finished_search
    assert "Pareto front" in search_output
    search = search_of(run_dir, "e2e")
    tagged = {t.trial_id for t in search.trials if _tag(run_dir, t.run_id, "pareto") == "true"}
    assert tagged
    by_id = {t.trial_id: t for t in search.trials}
    for trial_id in tagged:
        assert by_id[trial_id].state == "finished"
    finished = [t for t in search.trials if t.state == "finished"]
    for a in tagged:
        for b in finished:
            ra, rb = by_id[a], b
            dominated = (
                rb.cv_accuracy >= ra.cv_accuracy
                and rb.cv_flops <= ra.cv_flops
                and (rb.cv_accuracy > ra.cv_accuracy or rb.cv_flops < ra.cv_flops)
            )
            assert not dominated, f"{a} is dominated by {b.trial_id}"

    export = tmp_path / "front.yaml"
    shown = dynalay(
        "pareto", "--experiment", "e2e", "--tracking-uri", tracking_uri(run_dir),
        "--export", str(export),
    )
    assert shown.returncode == 0, shown.stderr
    files = sorted(tmp_path.glob("front*.yaml"))
    assert len(files) == len(tagged)
    exported = [yaml.safe_load(f.read_text()) for f in files]
    for config in exported:
        assert config["dataset"] == "digits" and config["model"] == "dynalay"
        assert {"alpha", "beta", "gamma", "max_iter", "lr", "width"} <= set(config)

    knee = tmp_path / "knee.yaml"
    picked = dynalay(
        "pareto", "--experiment", "e2e", "--tracking-uri", tracking_uri(run_dir),
        "--knee", "--export", str(knee),
    )
    assert picked.returncode == 0, picked.stderr
    trained = dynalay("train", "--config", str(knee), "--epochs", "1", "--no-progress")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "accuracy" in trained.stdout


def test_finished_trials_record_their_operating_curve_and_pareto_exports_a_point(
    finished_search: tuple[Path, str], tmp_path: Path
) -> None:
    run_dir, _ = finished_search
    client = MlflowClient(tracking_uri(run_dir))
    finished = [t for t in search_of(run_dir, "e2e").trials if t.state == "finished"]
    assert finished
    for trial in finished:
        assert {"operating_curve.csv", "operating_curve.png"} <= {a.path for a in client.list_artifacts(trial.run_id)}
        curve = load_trial_curve(tracking_uri(run_dir), trial.run_id)
        assert [p.bias for p in curve] == list(BIASES)
        # Bias 0 is the model as trained: its point is the trial's own objective pair.
        as_trained = next(p for p in curve if p.bias == 0.0)
        assert as_trained.accuracy == pytest.approx(trial.cv_accuracy, abs=1e-9)
        assert as_trained.flops == pytest.approx(trial.cv_flops, rel=1e-6)
        assert curve[0].fpi_fraction == 1.0 and curve[-1].fpi_fraction == 0.0

    export = tmp_path / "point.yaml"
    picked = dynalay(
        "pareto", "--experiment", "e2e", "--tracking-uri", tracking_uri(run_dir),
        "--knee", "--operating-point", "max-accuracy", "--export", str(export),
    )
    assert picked.returncode == 0, picked.stderr
    config = yaml.safe_load(export.read_text())
    assert f"route_bias {config['route_bias']:g}" in picked.stdout
    assert config["route_bias"] in BIASES
    trained = dynalay("train", "--config", str(export), "--epochs", "1", "--no-progress")
    assert trained.returncode == 0, trained.stderr[-2000:]

    refused = dynalay(
        "pareto", "--experiment", "e2e", "--tracking-uri", tracking_uri(run_dir),
        "--knee", "--operating-point", "bias=0.3",
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "biases recorded are" in refused.stderr


def test_resume_finishes_without_repeating_finished_trials(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    space = write_space(run_dir)
    args = [
        "search", "--space", str(space), "--experiment", "resumed", "--run-dir", str(run_dir),
        "--num-samples", "5", "--max-concurrent", "1", "--pruner", "none",
    ]
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_finished_trials(run_dir, "resumed", at_least=2, process=driver, timeout=300)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    before = {t.trial_id: t for t in search_of(run_dir, "resumed").trials if t.state == "finished"}
    before_steps = {t.run_id: fold_steps(run_dir, t.run_id) for t in before.values()}
    assert len(before) >= 2

    again = dynalay(*args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]

    after = search_of(run_dir, "resumed")
    ids = [t.trial_id for t in after.trials]
    assert len(ids) == len(set(ids)), "a trial has two MLflow runs"
    assert {t.state for t in after.trials} == {"finished"}
    assert len([t for t in after.trials if t.state == "finished"]) >= 5
    for run_id, steps in before_steps.items():
        assert fold_steps(run_dir, run_id) == steps, "a finished trial was trained again"
    for trial in after.trials:
        assert fold_steps(run_dir, trial.run_id) == [0, 1, 2]
    study = study_of(run_dir, "resumed")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    assert_stores_agree(run_dir, "resumed")


def _wait_for_finished_trials(
    run_dir: Path, experiment: str, at_least: int, process: subprocess.Popen, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the search ended before it could be interrupted"
        try:
            finished = [t for t in search_of(run_dir, experiment).trials if t.state == "finished"]
        except Exception:  # noqa: BLE001 - the store may not exist yet
            finished = []
        if len(finished) >= at_least:
            return
        time.sleep(1)
    raise AssertionError(f"fewer than {at_least} trials finished in {timeout} s")


def _tag(run_dir: Path, run_id: str, tag: str) -> str | None:
    return MlflowClient(tracking_uri(run_dir)).get_run(run_id).data.tags.get(tag)


# The seam benchmarks use, run in its own process (a Ray driver of its own): the scheduler and
# a callback injected, the searcher left at the search's Optuna study.
BUILD_TUNER_SCRIPT = """
import json, os, sys
from pathlib import Path

from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from pipeline.outcome import outcome
from pipeline.search import SearchOptions, build_tuner, init_ray
from pipeline.space import load_space

run_dir, space = Path(sys.argv[1]), load_space(sys.argv[2])


class StopAfterFirstFold(FIFOScheduler):
    def on_trial_result(self, tune_controller, trial, result):
        return TrialScheduler.STOP


class Ended(tune.Callback):
    def __init__(self):
        self.endings = []

    def on_trial_complete(self, iteration, trials, trial, **info):
        ending = outcome(trial.last_result, space.folds)
        self.endings.append([ending.state, ending.folds_done])


ended = Ended()
options = SearchOptions(space=space, experiment="seam", run_dir=run_dir, num_samples=2,
                        folds=space.folds, max_concurrent=2, verbose=0)
init_ray(num_cpus=2)
cwd, environment = os.getcwd(), dict(os.environ)
build_tuner(options, scheduler=StopAfterFirstFold(), callbacks=[ended]).fit()
changed = sorted(k for k in set(os.environ) | set(environment) if os.environ.get(k) != environment.get(k))
print(json.dumps({"endings": ended.endings, "cwd_kept": os.getcwd() == cwd, "changed": changed,
                  "files": sorted(p.name for p in run_dir.iterdir())}))
"""


def test_build_tuner_takes_an_injected_scheduler_and_callbacks_and_keeps_the_process_as_is(
    tmp_path: Path,
) -> None:
    space = write_space(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", BUILD_TUNER_SCRIPT, str(tmp_path), str(space)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["endings"] == [["pruned", 1], ["pruned", 1]]
    # Libraries imported during fit() may set their own variables; Ray's and Ray Tune's stay.
    assert seen["cwd_kept"]
    assert not [name for name in seen["changed"] if name.startswith(("RAY_", "TUNE_"))], seen["changed"]
    # The study searcher is the default; MLflow is run_search's (a callback it adds), not the seam's.
    assert "optuna.db" in seen["files"] and "mlflow.db" not in seen["files"]
    study = study_of(tmp_path, "seam")
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
