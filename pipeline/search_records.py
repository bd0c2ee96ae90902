"""A finished (or running) search read back from MLflow, as :class:`TrialRecord` objects.

MLflow is the record users browse, so ``dynalay pareto`` reads the search from there — not
from Ray Tune's files — and selects from exactly what the UI shows.

Reading must leave the store as it was: MLflow creates (and migrates) a SQLite database that
lacks its tables, and a file store's folder that is missing, on first contact.
:func:`check_readable_store` refuses such a store before MLflow touches it, and a server
nothing answers at before MLflow's HTTP client retries it for minutes;
:func:`check_database_file` refuses a store a search would write that is no database.
"""

from __future__ import annotations

import math
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.errors import UsageError
from pipeline.outcome import CV_ACCURACY, CV_FLOPS, STATE_TAG, TRIAL_ID_TAG
from pipeline.pareto import TrialRecord
from pipeline.preflight import unreachable

__all__ = [
    "SearchRecord",
    "check_database_file",
    "check_readable_store",
    "fail_fast_over_http",
    "load_search",
    "sqlite_path",
]

SQLITE_HEADER = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file."""


@dataclass(frozen=True)
class SearchRecord:
    """One search: its parent run's id and params, and one record per trial run."""

    run_id: str
    params: dict[str, str]
    trials: list[TrialRecord]


def load_search(tracking_uri: str, experiment: str) -> SearchRecord:
    """The newest search in ``experiment`` with all its trials.

    Raises:
        UsageError: the store is unreachable, or holds no such experiment or search.
    """
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
        found = client.get_experiment_by_name(experiment)
    except Exception as exc:  # noqa: BLE001 - unreachable store, bad URI
        raise UsageError(f"--tracking-uri: cannot read {tracking_uri}: {_first_line(exc)}") from None
    if found is None:
        raise UsageError(f"--experiment: no experiment {experiment!r} in {tracking_uri}")
    parents = client.search_runs(
        [found.experiment_id],
        filter_string="tags.kind = 'search'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise UsageError(f"--experiment: {experiment!r} holds no search run")
    parent = parents[0]
    children = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        max_results=10_000,
    )
    return SearchRecord(
        run_id=parent.info.run_id,
        params=dict(parent.data.params),
        trials=[_record(run) for run in children],
    )


def _record(run: Any) -> TrialRecord:
    metrics, tags = run.data.metrics, run.data.tags
    return TrialRecord(
        trial_id=tags.get(TRIAL_ID_TAG, run.info.run_id),
        run_id=run.info.run_id,
        # "running" until the trial ends; never on the front.
        state=tags.get(STATE_TAG, "running"),
        cv_accuracy=_finite(metrics.get(CV_ACCURACY)),
        cv_flops=_finite(metrics.get(CV_FLOPS)),
        params=dict(run.data.params),
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]



# ------------------------------------------------------------------------------ store checks


def sqlite_path(uri: str) -> Path | None:
    """The file a ``sqlite:`` URI names (relative paths as SQLite reads them: from the working
    directory); ``None`` for other URIs and for an in-memory database."""
    if not uri.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(uri).database
    except Exception:  # noqa: BLE001 - SQLAlchemy's ArgumentError and friends
        raise UsageError(f"{uri}: not a valid SQLAlchemy URL (e.g. sqlite:////abs/path/mlflow.db)") from None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def check_database_file(uri: str, source: str) -> None:
    """Refuse a SQLite store a search would write to that cannot be one.

    The file may be absent (it is created in an existing folder) or an SQLite database; an
    empty file is an empty database. Other URIs are left to their clients.

    Raises:
        UsageError: ``<source>: ...`` naming the folder or file; ``source`` names the setting,
            e.g. ``--storage sqlite:///optuna.db``.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    if not path.exists():
        if not path.parent.is_dir():
            raise UsageError(f"{source}: no such directory {path.parent}")
        return
    _check_sqlite_header(path, uri, source, allow_empty=True)


def check_readable_store(uri: str, source: str) -> None:
    """Refuse a tracking store that reading would create, migrate or wait minutes for.

    * ``sqlite:`` — the file must exist, be an SQLite database and hold every table this
      MLflow expects (MLflow would otherwise create or migrate them). It is opened read-only.
    * ``http(s):`` — something must accept a TCP connection at the server's host and port.
    * a path or ``file:`` URI (MLflow's file store) — the folder must exist.
    * anything else is left to MLflow, whose error :func:`load_search` reports.

    Raises:
        UsageError: ``<source>: ...`` naming what is wrong; ``source`` names the setting, e.g.
            ``--tracking-uri sqlite:///mlflow.db`` or ``--run-dir runs``.
    """
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ("file" if uri.startswith("file:") else "")
    if scheme.startswith("sqlite"):
        path = sqlite_path(uri)
        if path is None:
            raise UsageError(f"{source}: an in-memory database holds no search")
        _check_mlflow_database(path, uri, source)
    elif scheme in ("http", "https"):
        parts = urlsplit(uri)
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise UsageError(f"{source}: the port is not a number in 1..65535") from None
        reason = unreachable(parts.hostname or "", port)
        if reason is not None:
            raise UsageError(f"{source}: cannot reach the MLflow server ({reason})")
    elif scheme in ("", "file"):
        path = Path(urlsplit(uri).path if scheme else uri)
        if path.is_file():
            hint = f"; for an SQLite database give sqlite:///{path}" if _has_sqlite_header(path) else ""
            raise UsageError(f"{source}: a file, not an MLflow store{hint}")
        if not path.is_dir():
            raise UsageError(f"{source}: no MLflow store there (no such directory)")


def fail_fast_over_http() -> None:
    """Make this process's MLflow HTTP client give up within seconds, not minutes.

    MLflow retries a failing request 7 times with exponential backoff (about 4 minutes) and
    waits 120 s for an answer: right for a long search that must ride out an outage, wrong
    for a command someone waits on. Values already in the environment are kept.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _check_mlflow_database(path: Path, uri: str, source: str) -> None:
    if not path.exists():
        raise UsageError(f"{source}: no MLflow database at {path}")
    _check_sqlite_header(path, uri, source, allow_empty=False)
    try:
        # mode=ro: opening must not create the file, nor anything in it.
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as connection:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error as error:
        raise UsageError(f"{source}: cannot read {path} ({error})") from None
    tables = {name for (name,) in rows}
    if "experiments" not in tables:
        raise UsageError(f"{source}: {path} is an SQLite database but not an MLflow store")
    missing = sorted(_mlflow_tables() - tables)
    if missing:
        raise UsageError(
            f"{source}: {path} was written by an older MLflow (no table {missing[0]}); "
            f"upgrade a backup of it with `mlflow db upgrade {uri}`"
        )


def _mlflow_tables() -> set[str]:
    """The tables MLflow creates (and migrates to) when one of them is missing."""
    import mlflow.store.db.utils  # noqa: F401 - registers every ORM table with Base
    from mlflow.store.db.base_sql_model import Base

    return {name for name in Base.metadata.tables if not name.startswith("alembic_")}


def _check_sqlite_header(path: Path, uri: str, source: str, *, allow_empty: bool) -> None:
    if path.is_dir():
        raise UsageError(f"{source}: {path} is a directory, not a database file")
    try:
        size = path.stat().st_size
        header = _read_header(path)
    except OSError as error:
        raise UsageError(f"{source}: cannot read {path} ({error.strerror})") from None
    if size == 0 and allow_empty:
        return
    if header != SQLITE_HEADER:
        kind = "an empty file, not an SQLite database" if size == 0 else "not an SQLite database"
        raise UsageError(f"{source}: {path} is {kind}")


def _has_sqlite_header(path: Path) -> bool:
    try:
        return _read_header(path) == SQLITE_HEADER
    except OSError:
        return False


def _read_header(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(len(SQLITE_HEADER))
