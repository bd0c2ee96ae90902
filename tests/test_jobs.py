"""``pipeline.jobs`` against the real local cluster of ``cluster/local.sh`` (session fixture).

Jobs really run: through the dashboard's job API, in an uploaded copy of the project, with
Ray's token authentication on. The end-to-end ``dynalay submit`` of a real search with a worker
node killed mid-search lives with the search tests.
"""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import jobs
from pipeline.errors import UsageError
from tests.cluster_fixtures import LocalCluster, local_cluster, process_running, refused_port  # noqa: F401

REPO_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def cluster(local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:  # noqa: F811
    """The session cluster with its worker node up (another test may have killed it), and this
    process pointed at its token the way a user's shell is."""
    local_cluster.ensure_workers()
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(local_cluster.auth_token_path))
    return local_cluster


def _python(code: str) -> str:
    return shlex.join(["python", "-c", code])


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.5)


@pytest.mark.cluster
def test_job_runs_in_an_uploaded_copy_of_the_project_with_the_tracking_uri(cluster: LocalCluster) -> None:
    code = "import os, pipeline.jobs as j; print('hello', j.__file__, os.environ['MLFLOW_TRACKING_URI'])"
    runtime_env = jobs.build_runtime_env(env_vars={"MLFLOW_TRACKING_URI": cluster.mlflow_uri})
    job_id = jobs.submit_entrypoint(cluster.dashboard_address, _python(code), runtime_env=runtime_env)
    out = io.StringIO()

    assert jobs.follow_job(cluster.dashboard_address, job_id, out=out) == "SUCCEEDED"
    line = next(line for line in out.getvalue().splitlines() if line.startswith("hello "))
    _, module_file, tracking_uri = line.split()
    assert tracking_uri == cluster.mlflow_uri
    assert not module_file.startswith(str(REPO_DIR)), "the job imported the checkout, not its uploaded copy"
    assert jobs.job_status(cluster.dashboard_address, job_id) == "SUCCEEDED"
    assert "hello" in jobs.job_logs(cluster.dashboard_address, job_id)


@pytest.mark.cluster
def test_submit_search_runs_the_dynalay_command_on_the_cluster(cluster: LocalCluster) -> None:
    out = io.StringIO()
    # `--help` answers at once, so the real entrypoint is exercised without a search's minutes.
    job_id = jobs.submit_search(cluster.dashboard_address, ["--help"], tracking_uri=cluster.mlflow_uri, out=out)
    text = out.getvalue()
    assert text.startswith(f"job {job_id} submitted to {cluster.dashboard_address}")
    assert "--gpus-per-trial" in text  # the search's own help, printed by the job's driver
    assert jobs.job_status(cluster.dashboard_address, job_id) == "SUCCEEDED"


@pytest.mark.cluster
def test_a_failed_search_job_raises_job_failed(cluster: LocalCluster) -> None:
    out = io.StringIO()
    with pytest.raises(jobs.JobFailedError) as failure:
        jobs.submit_search(cluster.dashboard_address, ["--space", "no-such-space"], out=out)
    assert failure.value.status == "FAILED" and failure.value.exit_code == 1
    assert "\n" not in str(failure.value)
    assert "dynalay: error:" in out.getvalue()  # the search's one-line usage error, from the job's log


@pytest.mark.cluster
def test_stop_job(cluster: LocalCluster) -> None:
    code = "import time; print('started', flush=True); time.sleep(600)"
    job_id = jobs.submit_entrypoint(cluster.dashboard_address, _python(code), runtime_env=jobs.build_runtime_env())
    _wait_for(lambda: "started" in jobs.job_logs(cluster.dashboard_address, job_id), 120, "the job to start")
    assert jobs.stop_job(cluster.dashboard_address, job_id) is True
    assert jobs.wait_for_job(cluster.dashboard_address, job_id, timeout_s=60) == "STOPPED"
    assert jobs.stop_job(cluster.dashboard_address, job_id) is False  # already ended


@pytest.mark.cluster
def test_gpu_task_runs_on_the_worker_node_and_dies_with_it(cluster: LocalCluster, tmp_path: Path) -> None:
    report = tmp_path / "gpu_task.txt"
    script = tmp_path / "gpu_task.py"
    script.write_text(
        "import os, sys, time, ray\n"
        "ray.init()\n"
        "@ray.remote(num_gpus=1, max_retries=0)\n"
        "def hold_gpu(path):\n"
        "    node = ray.get_runtime_context().get_node_id()\n"
        "    with open(path, 'w') as f:\n"
        "        f.write(f\"{os.getpid()} {node} {os.environ.get('CUDA_VISIBLE_DEVICES')}\")\n"
        "    time.sleep(600)\n"
        "ray.get(hold_gpu.remote(sys.argv[1]))\n"
    )
    job_id = jobs.submit_entrypoint(cluster.dashboard_address, shlex.join(["python", str(script), str(report)]),
                                    runtime_env=jobs.build_runtime_env())
    try:
        _wait_for(lambda: report.exists() and report.read_text().count(" ") == 2, 120, "the GPU task to start")
        pid, node_id, visible_devices = report.read_text().split()
        worker_ids = {node["node_id"] for node in cluster.alive_nodes() if not node["is_head_node"]}
        assert node_id in worker_ids, "the num_gpus=1 task did not land on the worker node"
        assert visible_devices == "0"  # Ray assigned the worker's one logical GPU
        assert process_running(int(pid))

        cluster.kill_worker(1)
        _wait_for(lambda: not process_running(int(pid)), 30, "the task's process to die with its node")
        assert jobs.wait_for_job(cluster.dashboard_address, job_id, timeout_s=120) == "FAILED"
    finally:
        jobs.stop_job(cluster.dashboard_address, job_id)
        cluster.ensure_workers()


@pytest.mark.cluster
def test_unknown_job_id_is_a_one_line_usage_error(cluster: LocalCluster) -> None:
    for call in (jobs.job_status, jobs.job_logs, jobs.stop_job):
        with pytest.raises(UsageError) as error:
            call(cluster.dashboard_address, "raysubmit_doesnotexist")
        assert "raysubmit_doesnotexist" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.cluster
def test_missing_or_wrong_token_is_a_one_line_usage_error(
    local_cluster: LocalCluster, tmp_path: Path  # noqa: F811
) -> None:
    # A fresh process: Ray caches its auth mode per process, and a user's shell starts clean.
    env = {key: value for key, value in local_cluster.client_env().items() if not key.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    code = (
        "import sys\nfrom pipeline import jobs\n"
        "try:\n    jobs.job_status(sys.argv[1], 'raysubmit_any')\n"
        "except Exception as error:\n    print(type(error).__name__, error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, local_cluster.dashboard_address], env=env,
                            capture_output=True, text=True, timeout=120, cwd=REPO_DIR)
    assert result.stdout.startswith("UsageError --address: the Ray cluster at"), result.stdout + result.stderr
    assert "requires an auth token" in result.stdout and result.stdout.count("\n") == 1
    with pytest.raises(UsageError, match="rejected the auth token") as error:
        jobs.job_status(local_cluster.dashboard_address, "raysubmit_any", auth_token="not-the-token")
    assert "\n" not in str(error.value)


def test_unreachable_address_is_a_one_line_usage_error() -> None:
    with refused_port() as port:
        address = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        with pytest.raises(UsageError) as error:
            jobs.submit_search(address, ["--space", "digits"], out=io.StringIO())
        assert str(error.value) == f"--address: cannot reach the Ray dashboard at {address}"
        assert time.monotonic() - started < 30
        with pytest.raises(UsageError, match="cannot reach"):
            jobs.job_status(address.removeprefix("http://"), "raysubmit_any")  # scheme-less address


def test_search_arguments_are_localized_for_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_DIR)
    args = jobs.localize_search_args(
        ["--space", "search_spaces/digits.yaml", "--run-dir", "runs", "--tracking-uri=sqlite:///runs/m.db",
         "--storage", "postgresql://db/optuna", "--num-samples", "4"],
        cwd=REPO_DIR,
    )
    assert args == ["--space", "search_spaces/digits.yaml", "--run-dir", str(REPO_DIR / "runs"),
                    "--tracking-uri", f"sqlite:///{REPO_DIR / 'runs' / 'm.db'}",
                    "--storage", "postgresql://db/optuna", "--num-samples", "4"]
    entrypoint = jobs.search_entrypoint(args, "http://127.0.0.1:5050")
    assert entrypoint.startswith("dynalay search --space search_spaces/digits.yaml")
    assert entrypoint.endswith("--address auto")  # --tracking-uri was already there
    runtime_env = jobs.build_runtime_env(env_vars={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5050"})
    assert runtime_env["working_dir"] == str(REPO_DIR)
    assert {".venv", ".git", "runs", "mlruns", "benchmarks/results"} <= set(runtime_env["excludes"])
    with pytest.raises(UsageError):
        jobs.build_runtime_env(env_vars={"RAY_AUTH_TOKEN": "secret"})
