"""Bad input to search, submit, pareto and ui: refused before anything starts.

Every case ends with exit code 2 and one line on stderr, ``dynalay: error: ...``, naming the
setting and where it came from; never a traceback, never a hang, nothing created or changed.
Most cases run in this process through ``main()`` (the same code path as the console script,
without the start of a process that imports torch); ``run_search`` and ``submit_search`` are
replaced by a tripwire there, so a check that lets bad input through fails at once instead of
starting Ray. The cases about time (hangs), signals and real processes run the console script.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipeline.jobs
import pipeline.search
from pipeline.cli import main
from tests.cluster_fixtures import free_ports, refused_port
from tests.fixtures_data import write_cifar
from tests.search_helpers import ROOT, TINY_SPACE, dynalay, write_space
from tests.test_cli_train import assert_one_line_error

GOOD_SPACE = TINY_SPACE.format(max_iter_high=10)

# Each case: a change to the good space (old text -> new text) and the message pattern.
_BAD_SPACES: dict[str, tuple[str, str, str]] = {
    "integer setting as a float range": (
        "max_iter: {type: int, low: 3, high: 10}",
        "max_iter: {type: uniform, low: 3, high: 10}",
        r"{space}: params.max_iter: max_iter is an integer setting; use type: int",
    ),
    "learning rate below 0": (
        "lr:       {type: loguniform, low: 3.0e-3, high: 3.0e-2}",
        "lr:       {type: uniform, low: -0.1, high: 0.1}",
        r"{space}: params.lr \(low -0.1\): lr=-0.1 must be > 0",
    ),
    "unknown backward choice": (
        "lr:       {type: loguniform",
        "backward: {type: categorical, choices: [implicit, newton]}\n  lr:       {type: loguniform",
        r"{space}: params.backward \(choice 'newton'\): backward='newton' is not one of",
    ),
    "fixed width 0": (
        "fixed: {width: 8}",
        "fixed: {width: 0}",
        r"{space}: fixed.width: width=0 must be a positive integer",
    ),
    "contraction above 1": (
        "lr:       {type: loguniform",
        "contraction: {type: uniform, low: 1.5, high: 3}\n  lr:       {type: loguniform",
        r"{space}: params.contraction \(low 1.5\): contraction=1.5 must lie in \(0, 1\)",
    ),
    "infinite range end": (
        "alpha:    {type: uniform, low: 0.1, high: 1.0}",
        "alpha:    {type: uniform, low: 0.1, high: .inf}",
        r"{space}: params.alpha.high: Input should be a finite number \(got inf\)",
    ),
    "negative seed in the space": (
        "seed: 0",
        "seed: -1",
        r"{space}: seed: Input should be greater than or equal to 0",
    ),
    "folds in the space above the smallest class": (
        "folds: 3",
        "folds: 500",
        r"{space}: folds 500: class \d+ has only \d+ samples in the digits training split",
    ),
    "experiment name from the space escapes the run directory": (
        "name: tiny",
        "name: ../escaped",
        r"{space}: name '../escaped': must be a plain name",
    ),
}


@pytest.fixture(autouse=True)
def _tripwires(monkeypatch: pytest.MonkeyPatch) -> None:
    """No in-process case may start a search or a job: bad input stops before them."""

    def tripped(*args: object, **kwargs: object) -> None:
        raise AssertionError("bad input got past the checks")

    monkeypatch.setattr(pipeline.search, "run_search", tripped)
    monkeypatch.setattr(pipeline.jobs, "submit_search", tripped)
    # pareto sets MLflow's HTTP retry settings for its process; keep them out of this one.
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, os.environ.get(name, "7"))


def _refused(args: list[str], pattern: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(args)
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.out, captured.err, pattern)


def _bad_space(tmp_path: Path, case: str) -> Path:
    old, new, _ = _BAD_SPACES[case]
    assert old in GOOD_SPACE
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD_SPACE.replace(old, new, 1))
    return path


@pytest.fixture
def space(tmp_path: Path) -> Path:
    return write_space(tmp_path)


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MLflow SQLite store holding one experiment and no search."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").create_experiment("empty")
    return path


# ------------------------------------------------------------------------------ search, submit


@pytest.mark.parametrize("case", list(_BAD_SPACES))
def test_search_refuses_a_space_a_trial_would_refuse(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bad_space(tmp_path, case)
    run_dir = tmp_path / "runs"
    pattern = _BAD_SPACES[case][2].format(space=re.escape(str(path)))
    _refused(["search", "--space", str(path), "--run-dir", str(run_dir)], pattern, capsys)
    assert not run_dir.exists(), "a refused search wrote to the run directory"
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("case", ["integer setting as a float range", "fixed width 0"])
def test_submit_refuses_a_bad_space_before_contacting_the_cluster(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bad_space(tmp_path, case)
    # Nothing listens at the address: a submit that got that far would say "cannot reach".
    with refused_port() as port:
        pattern = _BAD_SPACES[case][2].format(space=re.escape(str(path)))
        _refused(["submit", "--address", f"http://127.0.0.1:{port}", "--space", str(path)], pattern, capsys)


def test_submit_refuses_an_experiment_name_with_a_path(
    space: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with refused_port() as port:
        _refused(["submit", "--address", f"http://127.0.0.1:{port}", "--space", str(space),
                  "--experiment", "a/b"], r"--experiment 'a/b': must be a plain name", capsys)


def test_folds_above_the_smallest_class_are_refused(
    space: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _refused(["search", "--space", str(space), "--run-dir", str(tmp_path / "runs"),
              "--folds", "200"],
             r"--folds 200: class \d+ has only \d+ samples in the digits training split; "
             r"stratified cross-validation needs at least one per fold", capsys)


@pytest.mark.parametrize("damage", ["missing folder", "truncated tarball"])
def test_unreadable_data_is_refused_before_ray_starts(
    damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "cifar.yaml"
    space.write_text(GOOD_SPACE.replace("dataset: digits", "dataset: cifar10"))
    data = tmp_path / "data"
    if damage == "truncated tarball":
        tarball = write_cifar(data, "cifar10", "tar").path
        tarball.write_bytes(tarball.read_bytes()[:2000])
        pattern = r"cifar-10-python.tar.gz\S*: (not a readable gzip tarball|truncated)"
    else:
        pattern = rf"--data-dir {re.escape(str(data))}: no such directory"
    _refused(["search", "--space", str(space), "--run-dir", str(tmp_path / "runs"),
              "--data-dir", str(data)], pattern, capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["search", "train"])
def test_a_negative_seed_is_refused(command: str, space: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--space", str(space)] if command == "search" else ["--model", "plain", "--dataset", "digits"]
    _refused([command, *args, "--seed", "-1"],
             rf"{command}: argument --seed: must be an integer >= 0 and <= 4294967295, got -1", capsys)


def test_a_negative_seed_in_a_run_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: plain\ndataset: digits\nseed: -1\n")
    _refused(["train", "--config", str(config)],
             rf"{re.escape(str(config))}: seed=-1 must lie in \[0, 4294967295\]", capsys)


def test_a_run_dir_that_is_a_file_is_refused(space: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "runs"
    run_dir.write_text("not a folder")
    _refused(["search", "--space", str(space), "--run-dir", str(run_dir)],
             rf"--run-dir {re.escape(str(run_dir))}: not a directory", capsys)


@pytest.mark.parametrize("name", ["../escaped", "..", "a/b", ""])
def test_an_experiment_name_that_is_not_a_plain_name_is_refused(
    name: str, space: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "runs"
    _refused(["search", "--space", str(space), "--run-dir", str(run_dir), "--experiment", name],
             rf"--experiment {re.escape(repr(name))}: must be a plain name", capsys)
    assert sorted(tmp_path.iterdir()) == [space], "a refused search wrote something"


def test_stores_that_cannot_be_databases_are_refused(
    space: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a database")
    args = ["search", "--space", str(space), "--run-dir", str(tmp_path / "runs")]
    _refused([*args, "--tracking-uri", f"sqlite:///{text_file}"],
             rf"--tracking-uri sqlite:///\S+: {re.escape(str(text_file))} is not an SQLite database", capsys)
    _refused([*args, "--storage", f"sqlite:///{tmp_path}/absent/optuna.db"],
             rf"--storage sqlite:///\S+: no such directory {re.escape(str(tmp_path))}/absent", capsys)
    assert text_file.read_text() == "not a database"


def test_an_unreachable_ray_address_is_refused_within_seconds(space: Path, tmp_path: Path) -> None:
    with refused_port() as port:
        address = f"127.0.0.1:{port}"
        started = time.monotonic()
        run = dynalay("search", "--space", str(space), "--run-dir", str(tmp_path / "runs"),
                      "--address", address, timeout=120)
    assert time.monotonic() - started < 60
    assert_one_line_error(run.returncode, run.stdout, run.stderr,
                          rf"--address {address}: cannot reach Ray at \S+ \(Connection refused\)")
    assert not (tmp_path / "runs").exists()


def test_a_good_search_passes_every_check_and_writes_nothing(
    space: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks refuse bad input only: the good space reaches run_search, nothing written."""

    class Reached(Exception):
        pass

    reached = []

    def run_search(options: object) -> None:
        reached.append(options)
        raise Reached

    monkeypatch.setattr(pipeline.search, "run_search", run_search)
    with pytest.raises(Reached):
        main(["search", "--space", str(space), "--run-dir", str(tmp_path / "runs")])
    [options] = reached
    assert (options.experiment, options.folds) == ("tiny", 3)  # type: ignore[attr-defined]
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------ pareto


def test_reading_an_empty_file_as_a_store_leaves_it_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "mine.db"
    empty.touch()
    _refused(["pareto", "--experiment", "x", "--tracking-uri", f"sqlite:///{empty}"],
             rf"{re.escape(str(empty))} is an empty file, not an SQLite database", capsys)
    assert empty.stat().st_size == 0


def test_reading_a_database_mlflow_would_migrate_leaves_it_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE trials (id INTEGER)")
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as connection:
        connection.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    before = {path: path.read_bytes() for path in (foreign, old)}
    _refused(["pareto", "--experiment", "x", "--tracking-uri", f"sqlite:///{foreign}"],
             r"is an SQLite database but not an MLflow store", capsys)
    _refused(["pareto", "--experiment", "x", "--tracking-uri", f"sqlite:///{old}"],
             r"was written by an older MLflow \(no table \w+\); upgrade a backup", capsys)
    assert {path: path.read_bytes() for path in before} == before


def test_reading_creates_no_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "runs"
    _refused(["pareto", "--experiment", "x", "--run-dir", str(run_dir)],
             rf"--run-dir {re.escape(str(run_dir))}: no MLflow database at \S+/mlflow.db", capsys)
    _refused(["pareto", "--experiment", "x", "--tracking-uri", str(tmp_path / "mlruns")],
             r"no MLflow store there \(no such directory\)", capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_tracking_uri_naming_a_plain_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    _refused(["pareto", "--experiment", "x", "--tracking-uri", str(text_file)],
             r"notes.txt: a file, not an MLflow store", capsys)
    _refused(["pareto", "--experiment", "x", "--tracking-uri", f"sqlite:///{text_file}"],
             r"notes.txt is not an SQLite database", capsys)


def test_an_unknown_tracking_scheme_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["pareto", "--experiment", "x", "--tracking-uri", "foo://bar"],
             r"--tracking-uri: cannot read foo://bar: .*unsupported URI 'foo://bar'", capsys)


@pytest.mark.parametrize("target", ["a directory", "under a file"])
def test_export_to_an_unusable_path_is_refused_before_reading(
    target: str, mlflow_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    path, pattern = {
        "a directory": (tmp_path, rf"--export {re.escape(str(tmp_path))}: is a directory"),
        "under a file": (blocker / "front.yaml", rf"{re.escape(str(blocker))} is not a directory"),
    }[target]
    _refused(["pareto", "--experiment", "empty", "--tracking-uri", f"sqlite:///{mlflow_db}",
              "--export", str(path)], pattern, capsys)


def test_pareto_against_a_refused_port_answers_within_seconds() -> None:
    with refused_port() as port:
        uri = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        run = dynalay("pareto", "--experiment", "x", "--tracking-uri", uri, timeout=120)
    assert time.monotonic() - started < 30
    assert_one_line_error(run.returncode, run.stdout, run.stderr,
                          rf"--tracking-uri {uri}: cannot reach the MLflow server \(Connection refused\)")


# ------------------------------------------------------------------------------ ui


def test_ui_refuses_a_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["ui", "--port", "99999"], r"ui: argument --port: must be a TCP port >= 1 and <= 65535, got 99999",
             capsys)


def test_ui_refuses_a_busy_port(mlflow_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _refused(["ui", "--tracking-uri", f"sqlite:///{mlflow_db}", "--port", str(port)],
                 rf"--port {port}: already in use on 127.0.0.1", capsys)


def test_sigterm_to_ui_stops_every_mlflow_process(mlflow_db: Path) -> None:
    port = free_ports(1)[0]
    ui = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "ui", "--tracking-uri", f"sqlite:///{mlflow_db}",
         "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    group = None
    try:
        group = _wait_for_server_group(ui, timeout=240)
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0
        deadline = time.monotonic() + 15
        while _live_members(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _live_members(group) == [], "MLflow processes outlived `dynalay ui`"
    finally:
        if ui.poll() is None:
            ui.kill()
        if group is not None and _live_members(group):
            os.killpg(group, signal.SIGKILL)


def _wait_for_server_group(ui: subprocess.Popen[bytes], timeout: float) -> int:
    """The process group of the MLflow server ``ui`` started, once the server has workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert ui.poll() is None, "dynalay ui ended by itself"
        children = Path(f"/proc/{ui.pid}/task/{ui.pid}/children").read_text().split()
        if children and len(_live_members(int(children[0]))) >= 2:
            return int(children[0])  # started in its own session: its pid is the group id
        time.sleep(0.5)
    raise AssertionError(f"the MLflow server started no workers in {timeout} s")


def _live_members(group: int) -> list[int]:
    """The pids in process group ``group`` that are alive (zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == group and state != "Z":
            members.append(int(entry.name))
    return members
