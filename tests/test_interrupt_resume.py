"""Interrupting and resuming a search keeps the Optuna study and MLflow one record.

Real local Ray, a real MLflow SQLite store and a real Optuna RDB study, driven through the
`dynalay` console entry point: Ctrl-C (SIGINT to the process group, as a terminal sends it) and
SIGKILL of the driver, each followed by `--resume`; a configuration orphaned by a dead driver
(drawn from the study, as a driver killed between Optuna's ask and Ray Tune's state save
leaves it); budget extension; relative store URIs; stores refused before Ray starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.search import SEARCH_FILE
from pipeline.space import load_space
from tests.search_helpers import (
    ROOT,
    assert_stores_agree,
    dynalay,
    fold_steps,
    search_of,
    storage_url,
    study_of,
    write_space,
)


def _search_args(space: Path, run_dir: Path, experiment: str, *extra: str) -> list[str]:
    return [
        "search", "--space", str(space), "--experiment", experiment, "--run-dir", str(run_dir),
        "--folds", "2", *extra,
    ]


def _start(args: list[str], cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Its own process group: the driver and the local Ray it starts, as in a terminal.
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )


def _wait_until(process: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the search ended before {what}: {process.stderr.read()[-3000:]}")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - the stores may not exist yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"not {what} within {timeout} s")


def _states(run_dir: Path, experiment: str) -> list[str]:
    return [t.state for t in search_of(run_dir, experiment).trials]


def _orphan(run_dir: Path, experiment: str, space: Path) -> int:
    """Leave the study as a driver killed right after Optuna's ask leaves it."""
    study = study_of(run_dir, experiment)
    return study.ask(fixed_distributions=load_space(str(space)).to_optuna()).number


def test_ctrl_c_saves_the_search_and_resume_finishes_it_in_both_stores(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs"
    space = write_space(tmp_path)
    args = _search_args(
        space, run_dir, "ctrlc", "--num-samples", "4", "--max-concurrent", "2", "--pruner", "none"
    )
    driver = _start(args)
    try:
        _wait_until(
            driver,
            lambda: "finished" in _states(run_dir, "ctrlc") and "running" in _states(run_dir, "ctrlc"),
            "a trial finished while another ran",
        )
        os.killpg(driver.pid, signal.SIGINT)
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()

    assert driver.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "interrupted" in last and "--resume" in last, last
    assert "Pareto front" not in out
    study = study_of(run_dir, "ctrlc")
    assert TrialState.FAIL not in {t.state for t in study.trials}, "a resumable trial was failed"
    assert TrialState.RUNNING in {t.state for t in study.trials}
    assert_stores_agree(run_dir, "ctrlc")  # the unfinished trials are running in both
    finished_before = {
        t.run_id: fold_steps(run_dir, t.run_id)
        for t in search_of(run_dir, "ctrlc").trials
        if t.state == "finished"
    }

    again = dynalay(*args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_stores_agree(run_dir, "ctrlc")
    study = study_of(run_dir, "ctrlc")
    assert len(study.trials) == 4
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    for run_id, steps in finished_before.items():
        assert fold_steps(run_dir, run_id) == steps, "a finished trial was trained again"
    for trial in search_of(run_dir, "ctrlc").trials:
        assert fold_steps(run_dir, trial.run_id) == [0, 1]


def test_sigkill_then_resume_runs_the_orphaned_configuration_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs"
    space = write_space(tmp_path)
    args = _search_args(space, run_dir, "killed", "--num-samples", "3", "--max-concurrent", "1")
    driver = _start(args)
    try:
        _wait_until(driver, lambda: "finished" in _states(run_dir, "killed"), "a trial finished")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate()
    orphan = _orphan(run_dir, "killed", space)
    orphan_params = study_of(run_dir, "killed").trials[orphan].params

    again = dynalay(*args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_stores_agree(run_dir, "killed")
    study = study_of(run_dir, "killed")
    assert len(study.trials) == 3, "the resumed search drew a configuration instead of running the orphan"
    assert study.trials[orphan].state != TrialState.RUNNING
    assert study.trials[orphan].user_attrs.get("folds_done", 0) >= 1, "the orphan never ran"
    assert study.trials[orphan].params == orphan_params


def test_relative_stores_resume_from_search_json_and_extend_the_budget(tmp_path: Path) -> None:
    space = write_space(tmp_path)
    args = [
        "search", "--space", str(space), "--experiment", "rel", "--run-dir", "runs", "--folds", "2",
        "--pruner", "none", "--max-concurrent", "2",
    ]
    stores = ["--tracking-uri", "sqlite:///mlflow.db", "--storage", "sqlite:///optuna.db"]
    first = _run_in(tmp_path, *args, *stores, "--num-samples", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "optuna.db").is_file()
    assert not (tmp_path / "runs" / "rel" / "mlflow.db").exists()
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    assert json.loads((tmp_path / "runs" / "rel" / SEARCH_FILE).read_text())["storage"] == storage
    assert_stores_agree(tmp_path, "rel", storage=storage, uri=uri)

    # An orphan left in a finished search, then a larger budget: the orphan runs as the new trial.
    study = optuna.load_study(study_name="rel", storage=storage)
    adopted = study.ask(fixed_distributions=load_space(str(space)).to_optuna()).number
    extended = _run_in(tmp_path, *args, "--resume", "--num-samples", "3")  # stores from search.json
    assert extended.returncode == 0, extended.stderr[-3000:]
    study = optuna.load_study(study_name="rel", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert study.trials[adopted].user_attrs["folds_done"] == 2
    assert_stores_agree(tmp_path, "rel", storage=storage, uri=uri)

    # An orphan nothing will run (the budget is spent) is failed in both stores.
    unrun = study.ask(fixed_distributions=load_space(str(space)).to_optuna()).number
    closed = _run_in(tmp_path, *args, "--resume")
    assert closed.returncode == 0, closed.stderr[-3000:]
    study = optuna.load_study(study_name="rel", storage=storage)
    assert len(study.trials) == 4 and study.trials[unrun].state == TrialState.FAIL
    assert "orphaned" in study.trials[unrun].user_attrs["error"]
    assert_stores_agree(tmp_path, "rel", storage=storage, uri=uri)

    fewer = _run_in(tmp_path, *args, "--resume", "--num-samples", "2")
    assert fewer.returncode == 2
    assert fewer.stderr.strip().splitlines() == [fewer.stderr.strip()], fewer.stderr
    assert "--num-samples 2" in fewer.stderr and "at least 4" in fewer.stderr


def test_every_trial_failing_exits_1_with_one_line(tmp_path: Path) -> None:
    space = tmp_path / "diverge.yaml"
    # A learning rate this large makes every trial's loss non-finite in its first fold.
    write_space(tmp_path)
    tiny = (tmp_path / "tiny.yaml").read_text()
    space.write_text(tiny.replace("low: 3.0e-3, high: 3.0e-2", "low: 1.0e+12, high: 1.0e+13"))
    run_dir = tmp_path / "runs"
    done = dynalay(*_search_args(space, run_dir, "diverge", "--num-samples", "2", "--max-concurrent", "2"))
    assert done.returncode == 1, done.stderr[-3000:]
    # Ray Tune logs each trial's error as it happens; the driver ends with one line.
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("dynalay: every trial of search 'diverge' failed (2)"), last
    assert "Pareto front" not in done.stdout
    assert {t.state for t in study_of(run_dir, "diverge").trials} == {TrialState.FAIL}
    assert_stores_agree(run_dir, "diverge")


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--tracking-uri", "foo://bar", "--tracking-uri: cannot open foo://bar"),
        ("--storage", "foo://bar", "--storage: cannot open foo://bar"),
    ],
)
def test_an_unopenable_store_is_refused_before_ray_starts(
    tmp_path: Path, flag: str, value: str, named: str
) -> None:
    space = write_space(tmp_path)
    run_dir = tmp_path / "runs"
    refused = dynalay(*_search_args(space, run_dir, "bad", flag, value), timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()], refused.stderr
    assert named in refused.stderr
    assert "Started a local Ray instance" not in refused.stdout + refused.stderr
    # Nothing recorded the search: the name is free for the corrected command.
    assert not (run_dir / "bad" / SEARCH_FILE).exists()


def test_resume_of_a_search_that_never_started_is_one_line(tmp_path: Path) -> None:
    space = write_space(tmp_path)
    run_dir = tmp_path / "runs"
    # What an earlier version left after failing before its first trial: a record, no Tune state.
    (run_dir / "early").mkdir(parents=True)
    (run_dir / "early" / SEARCH_FILE).write_text(json.dumps({"search_id": "early"}))
    resumed = dynalay(*_search_args(space, run_dir, "early"), "--resume", timeout=120)
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines() == [resumed.stderr.strip()], resumed.stderr
    assert "never started" in resumed.stderr and "early" in resumed.stderr


def test_resume_refuses_a_store_other_than_the_recorded_one(tmp_path: Path) -> None:
    space = write_space(tmp_path)
    run_dir = tmp_path / "runs"
    (run_dir / "moved").mkdir(parents=True)
    record = {
        "search_id": "moved",
        "tracking_uri": "sqlite:////somewhere/mlflow.db",
        "storage": storage_url(run_dir),
    }
    (run_dir / "moved" / SEARCH_FILE).write_text(json.dumps(record))
    (run_dir / "moved" / "tuner.pkl").write_bytes(b"")
    (run_dir / "moved" / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    args = _search_args(space, run_dir, "moved", "--tracking-uri", other)
    resumed = dynalay(*args, "--resume", timeout=120)
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines() == [resumed.stderr.strip()], resumed.stderr
    assert "records to sqlite:////somewhere/mlflow.db" in resumed.stderr


def _run_in(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )
