"""Shared pieces for the cluster and browser tests; nothing here is mocked.

- :class:`LocalCluster` and :func:`running_local_cluster`: ``cluster/local.sh up`` (a Ray head,
  worker nodes with their own raylets, an MLflow server) on free ports, always torn down.
- :func:`local_cluster`: that cluster as a session-scoped pytest fixture. Import it into a test
  module (``from tests.cluster_fixtures import local_cluster``) or a conftest to use it.
- :func:`mlflow_server`: a bare ``mlflow server`` on 127.0.0.1.
- :func:`check_mlflow_ui`: opens an experiment in the MLflow UI in headless Chromium and checks
  that a search's trial runs sit under its parent run and that the ``pareto`` tag shows. Also
  a command: ``python -m tests.cluster_fixtures --tracking-uri URI --experiment NAME``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parent.parent
LOCAL_SH = REPO_DIR / "cluster" / "local.sh"
VENV_BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOT_DIR = REPO_DIR / "benchmarks" / "results"

# The GCS declares a node dead after its health checks fail; Ray's defaults take about 20 s
# here. Tests that kill a worker node want to see that sooner.
FAST_NODE_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (each also has its successor free)."""
    ports: list[int] = []
    with ExitStack() as held:  # holding the sockets keeps the picks distinct
        while len(ports) < count:
            probe = held.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            if port + 1 < 65536 and _port_free(port + 1) and port + 1 not in ports and port - 1 not in ports:
                ports.append(port)
    return ports


@contextmanager
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections for as long as the context is open.

    The port is bound but never listened on: a connection gets ECONNREFUSED, and no other
    process (a parallel test's Ray dashboard, say) can take the port meanwhile, which a port
    that is merely free now cannot promise.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def process_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (an exited child nobody reaped yet)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants now (from /proc; psutil is not a dependency here)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending += children.get(current, [])
    return tree


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def port_listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


# ---------------------------------------------------------------------------------------- the local cluster


@dataclass
class LocalCluster:
    """A running ``cluster/local.sh`` cluster and the means to poke at it."""

    state_dir: Path
    env: dict[str, str]
    """The environment ``local.sh`` runs with (ports, state dir, venv)."""
    dashboard_address: str = ""
    """The Ray dashboard and job API, ``http://127.0.0.1:PORT``: what ``dynalay submit`` takes."""
    ray_address: str = ""
    """The GCS address, ``IP:PORT`` (Ray picks the host's routable IP, not 127.0.0.1)."""
    mlflow_uri: str = ""
    auth_token_path: Path | None = None
    ray_temp_dir: Path | None = None
    """Ray's ``--temp-dir``: the session's logs and sockets (removed by ``down``)."""
    ports: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds each local.sh command took (the last run of each)."""

    def run(
        self, *args: str, timeout: float = 240.0, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cluster/local.sh ARGS`` against this cluster's state dir (``env`` added to its environment)."""
        started = time.monotonic()
        result = subprocess.run(["bash", str(LOCAL_SH), *args], env={**self.env, **(env or {})}, text=True,
                                capture_output=True, timeout=timeout, cwd=REPO_DIR)
        self.timings[args[0]] = time.monotonic() - started
        if check and result.returncode != 0:
            raise RuntimeError(f"local.sh {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def up(self) -> None:
        self.run("up")
        self._read_state()

    def down(self) -> None:
        self.run("down", check=False)

    def kill_worker(self, index: int = 1) -> None:
        """SIGKILL worker node ``index``'s whole process group: the node dies as a crashed host would."""
        self.run("kill-worker", str(index))

    def start_worker(self, index: int = 1, env: dict[str, str] | None = None) -> None:
        """Start worker node ``index`` again; returns once the GCS lists it ALIVE.

        ``env`` adds variables to the node's environment, which its Ray workers (and so the
        trials it runs) inherit.
        """
        self.run("start-worker", str(index), env=env)

    def restart_worker(self, index: int = 1, env: dict[str, str] | None = None) -> None:
        """(Re)start worker node ``index`` with ``env``: a running one is killed first, and the
        new one starts only once the GCS has declared the old one dead, so that nothing is
        scheduled onto a node that is gone."""
        if (self.state_dir / f"worker-{index}.pid").exists():
            alive = len(self.alive_nodes())
            self.kill_worker(index)
            if len(self.wait_for_alive_nodes(alive - 1)) != alive - 1:
                raise RuntimeError(f"worker {index} was killed but the GCS still lists it ALIVE")
        self.start_worker(index, env=env)

    def ensure_workers(self, count: int = 1) -> None:
        """Start any of worker nodes 1..``count`` that an earlier test killed and left down."""
        for index in range(1, count + 1):
            if not (self.state_dir / f"worker-{index}.pid").exists():
                self.start_worker(index)
        nodes = self.wait_for_alive_nodes(count + 1)
        if len(nodes) != count + 1:
            raise RuntimeError(f"expected {count + 1} alive nodes, found {len(nodes)}")

    @property
    def auth_token(self) -> str | None:
        return self.auth_token_path.read_text().strip() if self.auth_token_path else None

    def client_env(self) -> dict[str, str]:
        """The environment for a ``ray``/``dynalay`` client command aimed at this cluster."""
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        if self.auth_token_path:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.auth_token_path))
        return env

    def list_nodes(self) -> list[dict]:
        """The nodes as ``ray list nodes`` (Ray's state API, through the dashboard) reports them."""
        result = subprocess.run(
            [str(VENV_BIN / "ray"), "list", "nodes", "--address", self.dashboard_address, "--format", "json",
             "--limit", "1000"],
            env=self.client_env(), text=True, capture_output=True, timeout=120, check=True,
        )
        return json.loads(result.stdout)

    def alive_nodes(self) -> list[dict]:
        return [node for node in self.list_nodes() if node["state"] == "ALIVE"]

    def wait_for_alive_nodes(self, count: int, timeout_s: float = 60.0) -> list[dict]:
        """Poll until exactly ``count`` nodes are ALIVE (a killed node needs the GCS to notice)."""
        deadline = time.monotonic() + timeout_s
        while True:
            nodes = self.alive_nodes()
            if len(nodes) == count or time.monotonic() > deadline:
                return nodes
            time.sleep(1.0)

    def _read_state(self) -> None:
        values = dict(
            line.split("=", 1) for line in (self.state_dir / "cluster.env").read_text().splitlines() if "=" in line
        )
        self.dashboard_address = values["RAY_DASHBOARD_URL"]
        self.ray_address = values["RAY_GCS_ADDRESS"]
        self.mlflow_uri = values["MLFLOW_TRACKING_URI"]
        self.auth_token_path = Path(values["TOKEN_PATH"]) if values.get("TOKEN_PATH") else None
        self.ray_temp_dir = Path(values["RAY_TEMP_DIR"])


def local_cluster_env(state_dir: Path, *, workers: int = 1, fast_failure_detection: bool = True) -> LocalCluster:
    """A not-yet-started :class:`LocalCluster` on free ports with its state in ``state_dir``."""
    ray_port, client_port, dashboard_port, mlflow_port, agent_port = free_ports(5)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(
        DYNALAY_CLUSTER_DIR=str(state_dir),
        DYNALAY_VENV=str(VENV_BIN.parent),
        DYNALAY_RAY_PORT=str(ray_port),
        DYNALAY_RAY_CLIENT_PORT=str(client_port),
        DYNALAY_DASHBOARD_PORT=str(dashboard_port),
        DYNALAY_MLFLOW_PORT=str(mlflow_port),
        DYNALAY_AGENT_PORT=str(agent_port),
        DYNALAY_WORKERS=str(workers),
    )
    if fast_failure_detection:
        env.update(FAST_NODE_FAILURE_DETECTION)
    ports = {"ray": ray_port, "ray_client": client_port, "dashboard": dashboard_port, "mlflow": mlflow_port,
             "agent": agent_port}
    return LocalCluster(state_dir=state_dir, env=env, ports=ports)


@contextmanager
def running_local_cluster(state_dir: Path, *, workers: int = 1) -> Iterator[LocalCluster]:
    """``cluster/local.sh up`` on free ports; ``down`` on the way out, whatever happened."""
    cluster = local_cluster_env(state_dir, workers=workers)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One local multi-node cluster (head + 1 worker advertising 1 GPU, MLflow) per test session.

    Yields the :class:`LocalCluster`: ``dashboard_address``, ``ray_address``, ``mlflow_uri``,
    ``kill_worker()``/``start_worker()``, ``client_env()`` for subprocesses.
    """
    with running_local_cluster(tmp_path_factory.mktemp("local-cluster")) as cluster:
        yield cluster


# ---------------------------------------------------------------------------------------- MLflow server


@contextmanager
def mlflow_server(root: Path, *, timeout_s: float = 120.0) -> Iterator[str]:
    """An ``mlflow server`` on 127.0.0.1 (SQLite store and artifacts under ``root``); yields its URI."""
    port = free_ports(1)[0]
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (root / "mlflow-server.log").open("w")
    process = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _http_ok(f"{uri}/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not come up on {uri}; see {root / 'mlflow-server.log'}")
            time.sleep(0.25)
        yield uri
    finally:
        _stop_process_group(process)
        log.close()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the group led by ``process`` (started with start_new_session), then SIGKILL it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=15)


# ---------------------------------------------------------------------------------------- the MLflow UI check


@dataclass(frozen=True)
class MlflowUiCheck:
    """What :func:`check_mlflow_ui` saw."""

    experiment_url: str
    parent_run: str
    children_listed: list[str]
    """Child run names shown in the rows right under the parent, in order (the rendered ones)."""
    pareto_in_table: list[str]
    """Children whose ``pareto`` column reads ``true`` in the runs table."""
    pareto_run_page: str
    """The child whose own page was opened and showed the tag ``pareto: true``."""
    screenshots: list[Path]


def chromium_path() -> Path:
    """Debian's Chromium; raises RuntimeError naming the package when it is missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    found = shutil.which("chromium")
    if found:
        return Path(found)
    raise RuntimeError(
        f"Chromium not found at {CHROMIUM}: install Debian's `chromium` package "
        "(apt-get install -y chromium, or `make browser-deps`)"
    )


def check_mlflow_ui(
    tracking_uri: str,
    experiment_name: str,
    *,
    screenshot_paths: Sequence[Path] = (SCREENSHOT_DIR / "mlflow_ui.png",),
    timeout_s: float = 60.0,
) -> MlflowUiCheck:
    """Open ``experiment_name`` in the MLflow UI at ``tracking_uri`` in headless Chromium and check it.

    Takes the newest parent run that has nested children (tag ``mlflow.parentRunId``), expands
    it in the runs table, and asserts that the rows right under it are its children, indented
    under it; adds the ``pareto``, ``state``, ``cv_accuracy`` and ``cv_flops`` columns and checks
    each listed child's ``pareto`` cell against its tag; opens one Pareto child's run page and
    finds ``pareto: true`` among its tags. Saves the runs table to every path in
    ``screenshot_paths`` and the run page next to the first as ``<stem>_run.png``.

    Raises AssertionError when the UI does not show what the tracking server holds.
    """
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    if not tracking_uri.startswith(("http://", "https://")):
        raise ValueError(f"the MLflow UI needs a tracking server URI (http://...), got {tracking_uri}")
    base = tracking_uri.rstrip("/")
    client = MlflowClient(base)
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"no experiment {experiment_name!r} on {base}"
    runs = client.search_runs([experiment.experiment_id], max_results=5000, order_by=["attributes.start_time DESC"])
    children_of: dict[str, list] = {}
    for run in runs:
        parent_id = run.data.tags.get("mlflow.parentRunId")
        if parent_id:
            children_of.setdefault(parent_id, []).append(run)
    parent = next((run for run in runs if run.info.run_id in children_of), None)
    assert parent is not None, f"experiment {experiment_name!r} has no run with nested child runs"
    children = children_of[parent.info.run_id]
    child_names = {child.info.run_name for child in children}
    pareto_children = [child for child in children if child.data.tags.get("pareto") == "true"]
    assert pareto_children, f"no child of run {parent.info.run_name!r} has the tag pareto=true"
    experiment_url = f"{base}/#/experiments/{experiment.experiment_id}/runs"
    screenshots = [Path(path) for path in screenshot_paths]
    timeout_ms = timeout_s * 1000

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path()), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.set_default_timeout(timeout_ms)
            page.goto(experiment_url, wait_until="domcontentloaded")
            parent_row = page.locator(".ag-row", has_text=parent.info.run_name).first
            parent_row.wait_for()
            _close_assistant_panel(page)
            rows = _run_name_rows(page)
            if not any(name in child_names for _, name, _ in rows):
                parent_row.locator('[col-id*="Run Name"] button').first.click()  # the expander
                page.get_by_text(children[0].info.run_name, exact=True).first.wait_for()
            _show_columns(page, ["cv_accuracy", "cv_flops", "state", "pareto"])

            rows = _run_name_rows(page)
            parent_index, parent_x = next((index, x) for index, name, x in rows if name == parent.info.run_name)
            listed = []
            for index, name, x in rows:
                if index <= parent_index or name not in child_names:
                    continue
                assert index == parent_index + len(listed) + 1, f"run {name!r} is not in the rows right under its parent"
                assert x > parent_x, f"run {name!r} is not indented under its parent"
                listed.append(name)
            assert listed, f"no child of {parent.info.run_name!r} is listed under it"
            pareto_cells = _cells_by_row(page, "pareto")
            names_by_index = {index: name for index, name, _ in rows}
            pareto_in_table = [names_by_index[index] for index, text in pareto_cells.items()
                               if text == "true" and index in names_by_index]
            expected_pareto = {child.info.run_name for child in pareto_children} & set(listed)
            assert set(pareto_in_table) == expected_pareto, (
                f"pareto column shows {sorted(pareto_in_table)}, the tags say {sorted(expected_pareto)}"
            )
            for path in screenshots:
                path.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(path))

            shown = pareto_children[0]
            page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs/{shown.info.run_id}",
                      wait_until="domcontentloaded")
            page.get_by_text("pareto", exact=True).first.wait_for()
            body = page.inner_text("body")
            assert re.search(r"\bpareto\s*:\s*true\b", body), f"run page of {shown.info.run_name!r} lacks 'pareto: true'"
            if screenshots:
                run_page_shot = screenshots[0].with_name(f"{screenshots[0].stem}_run{screenshots[0].suffix}")
                page.screenshot(path=str(run_page_shot), full_page=True)
                screenshots.append(run_page_shot)
        finally:
            browser.close()
    return MlflowUiCheck(experiment_url, parent.info.run_name, listed, pareto_in_table, shown.info.run_name, screenshots)


def _close_assistant_panel(page) -> None:
    """The MLflow Assistant side panel narrows the runs table; close it when it is open."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()


def _run_name_rows(page) -> list[tuple[int, str, float]]:
    """(row index, run name, x of the name) for every rendered row of the runs table."""
    rows = []
    for cell in page.locator('.ag-row [col-id*="Run Name"]').all():
        link = cell.locator("a").first
        index = int(cell.evaluate("element => element.closest('.ag-row').getAttribute('row-index')"))
        rows.append((index, link.inner_text().strip(), link.bounding_box()["x"]))
    return sorted(rows)


def _show_columns(page, names: Sequence[str]) -> None:
    """Tick metric/param/tag columns by name in the table's Columns menu (those that exist)."""
    page.get_by_role("button", name="Columns", exact=True).click()
    menu = page.get_by_role("dialog")
    for name in names:
        entry = menu.get_by_title(name, exact=True)
        if entry.count():
            entry.first.click()
    page.keyboard.press("Escape")


def _cells_by_row(page, column: str) -> dict[int, str]:
    """Row index → text of the cell in the column whose id names ``column``."""
    cells = {}
    for cell in page.locator(f'.ag-row .ag-cell[col-id*="`{column}`"]').all():
        index = int(cell.evaluate("element => element.closest('.ag-row').getAttribute('row-index')"))
        cells[index] = cell.inner_text().strip()
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.cluster_fixtures --tracking-uri URI --experiment NAME [--screenshot PNG]``."""
    parser = argparse.ArgumentParser(description=check_mlflow_ui.__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--screenshot", type=Path, default=SCREENSHOT_DIR / "mlflow_ui.png")
    args = parser.parse_args(argv)
    result = check_mlflow_ui(args.tracking_uri, args.experiment, screenshot_paths=[args.screenshot])
    print(f"parent {result.parent_run!r}: {len(result.children_listed)} child runs listed under it; "
          f"pareto in table: {result.pareto_in_table}; run page of {result.pareto_run_page!r} shows pareto: true")
    print("screenshots: " + ", ".join(map(str, result.screenshots)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
