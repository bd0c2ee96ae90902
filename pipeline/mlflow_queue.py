"""A write-ahead queue in front of MLflow, so that a tracking outage loses nothing.

Every write the search makes to MLflow is an :class:`Op` appended to a JSON-lines spool file
before it is sent. :meth:`MlflowQueue.flush` applies pending ops in order and stops at the
first one the server does not accept for a transient reason (unreachable, 5xx); the next flush
picks up from there. A driver that dies with ops pending replays them when the search is
resumed, because the spool and the count of applied ops live in the run directory.

Ops name their run by a *key* ("parent" or a trial's key) rather than an MLflow run id: a run
that could not be created during an outage has no id yet. Runs are found again by the
``dynalay.key`` tag, so replaying a ``create_run`` after a crash never duplicates a run.

An op that MLflow refuses for good (a bad value, an op kind this version does not know) is
not retried: it is appended to ``mlflow_ops.refused.jsonl`` with the reason, counted in
:attr:`MlflowQueue.refused`, logged, and skipped, so that it cannot block the writes behind it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

KEY_TAG = "dynalay.key"
SEARCH_TAG = "dynalay.search"


def fail_fast_http() -> None:
    """Make this process's MLflow HTTP requests fail within seconds (values already in the
    environment are kept).

    MLflow's REST client retries a refused connection for minutes by default; the queue does
    its own retrying between Ray Tune events, so each request must fail fast instead. Called
    by the queue and the search's store check, not on import.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


@dataclass
class Op:
    """One MLflow write. ``kind`` is a method name of :class:`_Applier`."""

    kind: str
    key: str
    payload: dict[str, Any] = field(default_factory=dict)


class MlflowQueue:
    """Ordered, persistent, retrying MLflow writer for one search.

    Args:
        tracking_uri: The MLflow tracking URI.
        experiment_name: The experiment every run of this search belongs to.
        search_id: Identifies the search among others in the experiment (tag ``dynalay.search``).
        spool_dir: Where the spool (``mlflow_ops.jsonl``) and its applied count are kept.
        artifact_location: Where a newly created experiment keeps its artifacts (None: the
            tracking server's default).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        search_id: str,
        spool_dir: Path,
        artifact_location: str | None = None,
    ):
        fail_fast_http()
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.experiment_name = experiment_name
        self.search_id = search_id
        self._spool = Path(spool_dir) / "mlflow_ops.jsonl"
        self._applied_marker = Path(spool_dir) / "mlflow_ops.applied"
        self.refused_log = Path(spool_dir) / "mlflow_ops.refused.jsonl"
        #: Ops refused for good by this queue object (each is also in :attr:`refused_log`).
        self.refused = 0
        self._spool.parent.mkdir(parents=True, exist_ok=True)
        self._pending: list[Op] = self._load_pending()
        self._applier: _Applier | None = None
        self.last_error: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles its callbacks with the experiment; the client is rebuilt on demand.
        state = self.__dict__.copy()
        state["_applier"] = None
        return state

    @property
    def pending(self) -> int:
        return len(self._pending)

    def put(self, kind: str, key: str, **payload: Any) -> None:
        op = Op(kind, key, payload)
        with self._spool.open("a") as spool:
            spool.write(json.dumps(asdict(op)) + "\n")
        self._pending.append(op)

    def flush(self) -> bool:
        """Apply pending ops in order. Returns True when none is left."""
        while self._pending:
            try:
                self._applier_or_new().apply(self._pending[0])
            except Exception as exc:  # noqa: BLE001 - any failure leaves the op for later
                if _is_permanent(exc):
                    self._record_refusal(self._pending[0], exc)
                else:
                    self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    self._applier = None
                    return False
            self._pending.pop(0)
            self._mark_applied()
        self.last_error = None
        return True

    def flush_until(self, timeout_s: float, interval_s: float = 2.0) -> bool:
        """Retry :meth:`flush` until it succeeds or ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        while not self.flush():
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval_s)
        return True

    def run_id(self, key: str) -> str | None:
        """The MLflow run id for ``key`` if that run exists (and the server answers)."""
        try:
            return self._applier_or_new().find_run(key)
        except Exception:  # noqa: BLE001
            return None

    def _applier_or_new(self) -> _Applier:
        if self._applier is None:
            self._applier = _Applier(
                self.tracking_uri, self.experiment_name, self.search_id, self.artifact_location
            )
        return self._applier

    def _record_refusal(self, op: Op, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        logger.warning(
            "MLflow refused %s for %s (%s); skipped, kept in %s", op.kind, op.key, reason, self.refused_log
        )
        with self.refused_log.open("a") as log:
            log.write(json.dumps({**asdict(op), "reason": reason}) + "\n")
        self.refused += 1

    def _load_pending(self) -> list[Op]:
        if not self._spool.exists():
            return []
        ops = [Op(**json.loads(line)) for line in self._spool.read_text().splitlines() if line]
        applied = int(self._applied_marker.read_text()) if self._applied_marker.exists() else 0
        return ops[applied:]

    def _mark_applied(self) -> None:
        applied = int(self._applied_marker.read_text()) if self._applied_marker.exists() else 0
        tmp = self._applied_marker.with_suffix(".tmp")
        tmp.write_text(str(applied + 1))
        tmp.replace(self._applied_marker)


class _Applier:
    """Turns :class:`Op` records into MlflowClient calls; resolves keys to run ids."""

    def __init__(
        self, tracking_uri: str, experiment_name: str, search_id: str, artifact_location: str | None
    ):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.search_id = search_id
        experiment = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(experiment_name, artifact_location=artifact_location)
        )
        self._run_ids: dict[str, str] = {}

    #: The op kinds, each a method below.
    KINDS = frozenset(
        {"create_run", "set_status", "log_params", "log_metrics", "set_tags", "log_artifact", "terminate"}
    )

    def apply(self, op: Op) -> None:
        if op.kind not in self.KINDS:
            raise UnknownOpError(f"unknown MLflow op kind {op.kind!r}")
        getattr(self, op.kind)(op.key, **op.payload)

    def find_run(self, key: str) -> str | None:
        if key in self._run_ids:
            return self._run_ids[key]
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{SEARCH_TAG}` = '{self.search_id}' and tags.`{KEY_TAG}` = '{key}'",
            max_results=1,
        )
        if runs:
            self._run_ids[key] = runs[0].info.run_id
            return self._run_ids[key]
        return None

    def _run(self, key: str) -> str:
        run_id = self.find_run(key)
        if run_id is None:
            raise LookupError(f"no MLflow run for {key!r} in search {self.search_id}")
        return run_id

    # -- op kinds -------------------------------------------------------------------------
    def create_run(self, key: str, name: str, tags: dict[str, str], parent: str | None = None) -> None:
        """Create the run for ``key``; when it exists (a replay, a resumed trial), set ``tags``."""
        if self.find_run(key) is not None:
            self.set_tags(key, tags)
            return
        all_tags = {**tags, KEY_TAG: key, SEARCH_TAG: self.search_id}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = self._run(parent)
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        self._run_ids[key] = run.info.run_id

    def log_params(self, key: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        run_id = self._run(key)
        existing = self.client.get_run(run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        if new:
            self.client.log_batch(run_id, params=new)

    def log_metrics(
        self,
        key: str,
        metrics: dict[str, float],
        step: int,
        timestamp_ms: int,
        once_per_step: str | None = None,
    ) -> None:
        """Log ``metrics`` at ``step``; with ``once_per_step`` naming a metric, skip the batch
        if that metric already has a value at ``step`` (a replayed fold is logged once)."""
        from mlflow.entities import Metric

        run_id = self._run(key)
        if once_per_step is not None:
            history = self.client.get_metric_history(run_id, once_per_step)
            if any(m.step == step for m in history):
                # Said once, not hidden: the record shows that a fold result came twice.
                self.client.set_tag(run_id, "replayed_fold", str(step))
                return
        batch = [Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, key: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self._run(key), tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, key: str, path: str) -> None:
        if Path(path).exists():
            self.client.log_artifact(self._run(key), path)

    def set_status(self, key: str, status: str) -> None:
        self.client.update_run(self._run(key), status=status)

    def terminate(self, key: str, status: str) -> None:
        self.client.set_terminated(self._run(key), status=status)


class UnknownOpError(LookupError):
    """An op kind this version cannot apply (a spool written by another version, or a bug)."""


def _is_permanent(exc: Exception) -> bool:
    """A refusal that retrying cannot fix (a bad value, an unknown op), as opposed to an outage."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS"}
    return isinstance(exc, (LookupError, TypeError, ValueError))
