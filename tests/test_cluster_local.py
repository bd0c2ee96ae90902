"""``cluster/local.sh``: a real multi-node Ray cluster and an MLflow server on this machine.

One cluster is brought up and taken down here (the rest of the cluster tests share the
session fixture ``local_cluster``): ``up`` must give a head and a worker node with its own
raylet that advertises a logical GPU, MLflow on 127.0.0.1, the dashboard on 127.0.0.1 behind
Ray's token; ``kill-worker``/``start-worker`` must lose and regain the node; ``down`` must
leave no process and no listening port behind.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.cluster_fixtures import (
    LocalCluster,
    local_cluster_env,
    port_listening,
    process_name,
    process_running,
    process_tree,
)

pytestmark = pytest.mark.cluster


def _processes_started_by(cluster: LocalCluster, pattern: str = "*.pid") -> list[int]:
    """Every process local.sh started (per pid file) and their descendants, Ray workers included."""
    return [pid for pid_file in cluster.state_dir.glob(pattern) for pid in process_tree(int(pid_file.read_text()))]


def _still_running(pids: list[int]) -> list[str]:
    return [f"{pid} {process_name(pid)}" for pid in pids if process_running(pid)]


def _get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_local_sh_up_status_kill_restart_down(tmp_path: Path) -> None:
    cluster = local_cluster_env(tmp_path / "state")
    processes: list[int] = []
    try:
        cluster.up()
        nodes = cluster.alive_nodes()
        heads = [node for node in nodes if node["is_head_node"]]
        workers = [node for node in nodes if not node["is_head_node"]]
        assert len(nodes) >= 2 and len(heads) == 1 and len(workers) >= 1, nodes
        assert all(worker["resources_total"].get("GPU") == 1.0 for worker in workers), workers
        assert "GPU" not in heads[0]["resources_total"]

        # The dashboard (jobs API) and MLflow listen on loopback only; the dashboard wants the token.
        node_ip = cluster.ray_address.rsplit(":", 1)[0]
        dashboard, mlflow_port = cluster.ports["dashboard"], cluster.ports["mlflow"]
        assert port_listening(dashboard) and port_listening(mlflow_port)
        if node_ip != "127.0.0.1":
            assert not port_listening(dashboard, node_ip) and not port_listening(mlflow_port, node_ip)
        assert _get(f"{cluster.dashboard_address}/api/version") == 401
        assert _get(f"{cluster.dashboard_address}/api/version", cluster.auth_token) == 200
        assert _get(f"{cluster.mlflow_uri}/health") == 200
        assert cluster.auth_token_path is not None and cluster.auth_token_path.stat().st_mode & 0o077 == 0

        status = cluster.run("status").stdout
        assert cluster.dashboard_address in status and cluster.mlflow_uri in status
        assert status.count("ALIVE") >= 2

        worker_processes = _processes_started_by(cluster, "worker-*.pid")
        cluster.kill_worker(1)
        assert not _still_running(worker_processes)
        assert len(cluster.wait_for_alive_nodes(1)) == 1  # the GCS notices the lost node
        cluster.start_worker(1)
        assert len(cluster.wait_for_alive_nodes(2)) == 2

        processes = _processes_started_by(cluster)
        raylets = [pid for pid in processes if process_name(pid) == "raylet"]
        assert len(raylets) == 2  # one per node: the head's and the worker's own
    finally:
        cluster.down()

    assert not _still_running(processes), "left running after down"
    for name, port in cluster.ports.items():
        assert not port_listening(port), f"{name} port {port} still open after down"
    assert not list(cluster.state_dir.glob("*.pid"))
    leftover_raylets = subprocess.run(["pgrep", "-f", f"raylet.*{cluster.ray_temp_dir}"], capture_output=True)
    assert leftover_raylets.returncode == 1, leftover_raylets.stdout
    assert not cluster.ray_temp_dir.exists()
    print(f"\nlocal.sh timings: " + ", ".join(f"{command} {seconds:.1f}s" for command, seconds in cluster.timings.items()))


def test_status_and_down_without_a_cluster(tmp_path: Path) -> None:
    cluster = local_cluster_env(tmp_path / "never-started")
    assert cluster.run("status", check=False).returncode == 3
    started = time.monotonic()
    assert cluster.run("down", check=False).returncode == 0
    assert time.monotonic() - started < 10
