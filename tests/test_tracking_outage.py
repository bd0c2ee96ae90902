"""A tracking-server outage in the middle of a search: the search goes on, and every trial's
folds are in MLflow once the server is back (a real `mlflow server`, stopped and restarted)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.search_records import load_search
from tests.search_helpers import ROOT, write_space

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(store: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [
            MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "artifacts"), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    _stop_server(server)
    raise AssertionError("mlflow server did not start in 90 s")


def _stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def _fold_rows(uri: str, experiment: str) -> int:
    try:
        search = load_search(uri, experiment)
    except Exception:  # noqa: BLE001 - the search run may not exist yet
        return 0
    client = MlflowClient(uri)
    return sum(len(client.get_metric_history(t.run_id, "fold_accuracy")) for t in search.trials)


def test_search_survives_a_tracking_outage_and_loses_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(store, port)
    space = write_space(tmp_path)
    driver = subprocess.Popen(
        [
            sys.executable, "-m", "pipeline.cli", "search", "--space", str(space),
            "--experiment", "outage", "--run-dir", str(tmp_path / "runs"), "--tracking-uri", uri,
            "--num-samples", "4", "--max-concurrent", "2", "--pruner", "none",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while _fold_rows(uri, "outage") < 2:
            assert driver.poll() is None, driver.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no fold logged in 300 s"
            time.sleep(1)
        _stop_server(server)  # the outage: every write now fails
        time.sleep(20)
        assert driver.poll() is None, "the search crashed while MLflow was down"
        server = _start_server(store, port)
        output, _ = driver.communicate(timeout=600)

        assert driver.returncode == 0, output[-3000:]
        assert "MLflow unreachable" in output  # it noticed, and carried on
        search = load_search(uri, "outage")
        assert len(search.trials) == 4
        client = MlflowClient(uri)
        for trial in search.trials:
            assert trial.state == "finished"
            steps = [m.step for m in client.get_metric_history(trial.run_id, "fold_accuracy")]
            assert steps == [0, 1, 2], f"{trial.trial_id}: folds logged {steps}"
            assert client.get_run(trial.run_id).data.tags.get("pareto") in ("true", "false")
        assert "hypervolume" in client.get_run(search.run_id).data.metrics
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        _stop_server(server)


def test_an_unknown_op_kind_is_refused_for_good_and_does_not_block_later_writes(tmp_path: Path) -> None:
    from pipeline.mlflow_queue import MlflowQueue

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spool = tmp_path / "spool"
    queue = MlflowQueue(uri, "queue", "search", spool)
    queue.put("create_run", "parent", name="search", tags={"kind": "search"})
    queue.put("rename_everything", "parent", to="x")  # a kind no version of the applier has
    queue.put("set_tags", "parent", tags={"after": "yes"})

    assert queue.flush(), queue.last_error
    assert queue.pending == 0 and queue.refused == 1
    refused = [json.loads(line) for line in queue.refused_log.read_text().splitlines()]
    assert [(r["kind"], r["key"]) for r in refused] == [("rename_everything", "parent")]
    assert "unknown MLflow op kind" in refused[0]["reason"]
    run_id = queue.run_id("parent")
    assert MlflowClient(uri).get_run(run_id).data.tags["after"] == "yes"
    # The spool's applied count covers the refused op: a resumed driver does not replay it.
    assert MlflowQueue(uri, "queue", "search", spool).pending == 0
