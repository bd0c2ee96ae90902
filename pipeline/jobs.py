"""Ray job submission: run ``dynalay search`` on a Ray cluster and follow it.

A search submitted here runs as a Ray job (``ray.job_submission.JobSubmissionClient``): its
driver, ``dynalay search ... --address auto``, runs on the cluster's head node and its trials
on whatever nodes have the resources. The project directory travels with the job as its
``working_dir`` (Ray puts it first on the job's ``PYTHONPATH``, so the cluster runs the code
that was submitted, not whatever copy the image holds); the Python environment does not travel:
every node must already have the dependencies and the ``dynalay`` command (the local cluster of
``cluster/local.sh`` shares this checkout's venv; a cloud image installs the package).

Every function takes the address of the Ray dashboard (``http://HEAD:8265``; ``HEAD:8265`` is
read as http). Clusters with Ray token authentication (``RAY_AUTH_MODE=token``) get the token
in an ``Authorization: Bearer`` header; see :func:`resolve_auth_token` for where it is read.
An unreachable address, a refused token or an unknown job id raises
:class:`~pipeline.errors.UsageError` with one line; a followed job that ends FAILED or STOPPED
raises :class:`JobFailedError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TextIO

from pipeline.errors import UsageError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

__all__ = [
    "JOB_EXCLUDES",
    "JobFailedError",
    "build_runtime_env",
    "follow_job",
    "job_logs",
    "job_status",
    "localize_search_args",
    "resolve_auth_token",
    "search_entrypoint",
    "stop_job",
    "submit_entrypoint",
    "submit_search",
    "wait_for_job",
]

PROJECT_DIR = Path(__file__).resolve().parent.parent
"""The checkout this module belongs to: the default ``working_dir`` of a submitted job."""

JOB_EXCLUDES = [
    ".venv",
    ".git",
    "runs",
    "mlruns",
    "mlartifacts",
    "benchmarks/results",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
]
"""Paths (gitignore syntax) left out of the uploaded ``working_dir``: environments, results
and caches, which are large, machine-specific or both. Ray also honours ``.gitignore``."""

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

# Search flags whose value is a local path (or a URI naming one). A job runs in a temporary
# copy of the project, so a relative path would silently point into that copy.
_PATH_FLAGS = ("--run-dir", "--data-dir")
_URI_FLAGS = ("--tracking-uri", "--storage")


class JobFailedError(Exception):
    """A followed job ended FAILED or STOPPED; the message is one line naming it.

    ``exit_code`` is what a command line should exit with (1: the job ran and failed, as
    opposed to 2 for bad input).
    """

    exit_code = 1

    def __init__(self, job_id: str, status: str, message: str = "") -> None:
        self.job_id = job_id
        self.status = status
        detail = f": {_one_line(message)}" if message else ""
        super().__init__(f"job {job_id} ended {status}{detail}")


# ------------------------------------------------------------------------------ submission


def submit_search(
    address: str,
    search_args: Sequence[str],
    *,
    follow: bool = True,
    tracking_uri: str | None = None,
    env: Mapping[str, str] | None = None,
    project_dir: Path = PROJECT_DIR,
    auth_token: str | None = None,
    out: TextIO | None = None,
) -> str:
    """Submit ``dynalay search <search_args>`` as a Ray job; returns the job id.

    Prints ``job <id> submitted to <address>`` to ``out`` (default stdout) and, with
    ``follow``, the job's log as it comes until the job ends. ``tracking_uri`` (default: a
    ``--tracking-uri`` already in ``search_args``, else ``$MLFLOW_TRACKING_URI``) reaches the
    job both as ``--tracking-uri`` and as ``MLFLOW_TRACKING_URI``, so the driver and anything it
    starts log to the server the submitter names. ``env`` adds environment variables to the job.

    Raises:
        UsageError: the dashboard cannot be reached or refuses the token.
        JobFailedError: ``follow`` and the job ended FAILED or STOPPED.
    """
    out = out or sys.stdout
    args = localize_search_args(search_args, cwd=Path.cwd(), project_dir=project_dir)
    tracking_uri = tracking_uri or _flag_value(args, "--tracking-uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri:
        tracking_uri = _localize_uri(tracking_uri, Path.cwd())
    env_vars = dict(env or {})
    if tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    job_id = submit_entrypoint(
        address,
        search_entrypoint(args, tracking_uri),
        runtime_env=build_runtime_env(project_dir, env_vars),
        metadata={"application": "dynalay-search"},
        auth_token=auth_token,
    )
    print(f"job {job_id} submitted to {_normalize_address(address)}", file=out, flush=True)
    if follow:
        status = follow_job(address, job_id, out=out, auth_token=auth_token)
        if status != "SUCCEEDED":
            raise JobFailedError(job_id, status, _job_message(address, job_id, auth_token))
    return job_id


def search_entrypoint(search_args: Sequence[str], tracking_uri: str | None = None) -> str:
    """The shell command a search job runs: ``dynalay search <args>``.

    Adds ``--address auto`` (inside a job, Ray's ``RAY_ADDRESS`` names the cluster; without it
    the search would start a private Ray instance on the head node) and ``--tracking-uri`` when
    given and not already there.
    """
    args = list(search_args)
    if _flag_value(args, "--address") is None:
        args += ["--address", "auto"]
    if tracking_uri and _flag_value(args, "--tracking-uri") is None:
        args += ["--tracking-uri", tracking_uri]
    return shlex.join(["dynalay", "search", *args])


def build_runtime_env(project_dir: Path = PROJECT_DIR, env_vars: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The job's runtime environment: the project as ``working_dir`` and ``env_vars``.

    No ``pip`` or ``py_modules``: the nodes already hold the dependencies (the local cluster's
    venv, or a cloud image), and installing torch per job would take minutes.
    """
    env_vars = dict(env_vars or {})
    if "RAY_AUTH_TOKEN" in env_vars:
        # The runtime env is shown in the dashboard and stored in the GCS in clear text; the
        # nodes' own token already reaches every job process.
        raise UsageError("env: RAY_AUTH_TOKEN must not be passed to a job (it would be stored in clear text)")
    return {"working_dir": str(project_dir), "excludes": list(JOB_EXCLUDES), "env_vars": env_vars}


def submit_entrypoint(
    address: str,
    entrypoint: str,
    *,
    runtime_env: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    submission_id: str | None = None,
    auth_token: str | None = None,
) -> str:
    """Submit any shell ``entrypoint`` as a Ray job; returns its id. The lower-level helper."""
    with _client(address, auth_token) as client:
        return client.submit_job(
            entrypoint=entrypoint,
            runtime_env=dict(runtime_env) if runtime_env else None,
            metadata=dict(metadata) if metadata else None,
            submission_id=submission_id,
        )


# ------------------------------------------------------------------------------ job control


def job_status(address: str, job_id: str, *, auth_token: str | None = None) -> str:
    """The job's status: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    with _client(address, auth_token, job_id) as client:
        return str(client.get_job_status(job_id).value)


def job_logs(address: str, job_id: str, *, auth_token: str | None = None) -> str:
    """Everything the job's driver has printed so far."""
    with _client(address, auth_token, job_id) as client:
        return client.get_job_logs(job_id)


def stop_job(address: str, job_id: str, *, auth_token: str | None = None) -> bool:
    """Ask Ray to stop the job (SIGTERM to its driver); False if it had already ended."""
    with _client(address, auth_token, job_id) as client:
        return bool(client.stop_job(job_id))


def wait_for_job(address: str, job_id: str, *, timeout_s: float = 600.0, auth_token: str | None = None) -> str:
    """Poll until the job ends; returns its final status. Raises TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = job_status(address, job_id, auth_token=auth_token)
        if status in TERMINAL_STATUSES:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:g}s")
        time.sleep(0.5)


def follow_job(address: str, job_id: str, *, out: TextIO | None = None, auth_token: str | None = None) -> str:
    """Copy the job's log to ``out`` as it is written until the job ends; returns its final status.

    Ctrl-C detaches (the job keeps running) and is re-raised after a line saying so.
    """
    out = out or sys.stdout
    with _client(address, auth_token, job_id) as client:
        try:
            asyncio.run(_copy_log_stream(client, job_id, out))
        except KeyboardInterrupt:
            print(f"detached from job {job_id}; it keeps running (stop it with: dynalay jobs stop {job_id} "
                  f"--address {_normalize_address(address)})", file=sys.stderr)
            raise
    # The log stream closes when the driver exits, a moment before the status turns terminal.
    return wait_for_job(address, job_id, timeout_s=60.0, auth_token=auth_token)


async def _copy_log_stream(client: JobSubmissionClient, job_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def _job_message(address: str, job_id: str, auth_token: str | None) -> str:
    with _client(address, auth_token, job_id) as client:
        return client.get_job_info(job_id).message or ""


# ------------------------------------------------------------------------------ auth and client


def resolve_auth_token(explicit: str | None = None) -> str | None:
    """The Ray auth token to send, or None; the first of:

    ``explicit``; ``$RAY_AUTH_TOKEN``; the file ``$RAY_AUTH_TOKEN_PATH``; ``~/.ray/auth_token``
    when ``RAY_AUTH_MODE=token``. This is Ray's own order; unlike Ray's client, a token given
    through ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` is sent even without ``RAY_AUTH_MODE``,
    since naming it is asking for it to be used. The default file is only read in token mode,
    so that a token is never sent to a cluster nobody said needs one.
    """
    if explicit:
        return explicit.strip()
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token_path:
        try:
            token = Path(token_path).expanduser().read_text().strip()
        except OSError as error:
            raise UsageError(f"RAY_AUTH_TOKEN_PATH: cannot read {token_path}: {error.strerror}") from None
        if not token:
            raise UsageError(f"RAY_AUTH_TOKEN_PATH: {token_path} is empty")
        return token
    default_path = Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and default_path.is_file():
        return default_path.read_text().strip() or None
    return None


@contextmanager
def _client(address: str, auth_token: str | None, job_id: str | None = None) -> Iterator[JobSubmissionClient]:
    """A JobSubmissionClient for ``address``; Ray's errors inside become one-line UsageErrors."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = _normalize_address(address)
    token = resolve_auth_token(auth_token)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    # Ray logs "WebSocket closed ..." at INFO after every followed job: noise here.
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
    try:
        client = JobSubmissionClient(url, headers=headers)
        yield client
    except AuthenticationError as error:
        hint = "set RAY_AUTH_TOKEN_PATH to the cluster's token (local cluster: eval \"$(cluster/local.sh env)\")"
        if "required" in str(error).lower():
            raise UsageError(f"--address: the Ray cluster at {url} requires an auth token; {hint}") from None
        raise UsageError(f"--address: the Ray cluster at {url} rejected the auth token; {hint}") from None
    except OSError:
        # ConnectionError from the version check, or requests'/aiohttp's errors (OSErrors too)
        # when the dashboard goes away later.
        raise UsageError(f"--address: cannot reach the Ray dashboard at {url}") from None
    except RuntimeError as error:
        text = str(error)
        if job_id is not None and ("404" in text or "does not exist" in text):
            raise UsageError(f"no job {job_id!r} on the Ray cluster at {url}") from None
        raise UsageError(f"Ray at {url}: {_one_line(text)}") from None


def _normalize_address(address: str) -> str:
    address = address.strip().rstrip("/")
    if address.startswith("ray://"):
        raise UsageError(f"--address: {address} is a Ray client address; give the dashboard's, e.g. http://HEAD:8265")
    if "://" not in address:
        address = f"http://{address}"
    return address


# ------------------------------------------------------------------------------ search arguments


def localize_search_args(search_args: Sequence[str], *, cwd: Path, project_dir: Path = PROJECT_DIR) -> list[str]:
    """``search_args`` with local paths made meaningful inside the job.

    The job runs in a temporary copy of ``project_dir``. A ``--space`` file inside the project
    becomes project-relative (it travels with the job); paths for ``--run-dir``, ``--data-dir``,
    ``--space`` files outside the project and SQLite/file URIs for ``--tracking-uri`` and
    ``--storage`` become absolute (right where the nodes share this file system, as on the local
    cluster; elsewhere give paths and URIs the nodes can reach).
    """
    args = _split_equals(search_args)
    for index in range(len(args) - 1):
        flag, value = args[index], args[index + 1]
        if flag in _PATH_FLAGS:
            args[index + 1] = str((cwd / value).resolve())
        elif flag in _URI_FLAGS:
            args[index + 1] = _localize_uri(value, cwd)
        elif flag == "--space" and (cwd / value).is_file():
            path = (cwd / value).resolve()
            args[index + 1] = str(path.relative_to(project_dir)) if path.is_relative_to(project_dir) else str(path)
    return args


def _localize_uri(uri: str, cwd: Path) -> str:
    """A SQLite or file URI, or a bare path, with its path made absolute; other URIs unchanged."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        return uri if path.startswith("/") else f"sqlite:///{(cwd / path).resolve()}"
    if uri.startswith("file:"):
        path = uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:")
        return (cwd / path).resolve().as_uri()
    if "://" not in uri:
        return str((cwd / uri).resolve())
    return uri


def _split_equals(args: Sequence[str]) -> list[str]:
    """``--flag=value`` split into ``--flag value``, so each flag is looked up one way."""
    split: list[str] = []
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            split += arg.split("=", 1)
        else:
            split.append(arg)
    return split


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    args = _split_equals(args)
    for index, arg in enumerate(args[:-1]):
        if arg == flag:
            return args[index + 1]
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())
