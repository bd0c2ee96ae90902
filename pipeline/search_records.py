"""A finished (or running) search read back from MLflow, as :class:`TrialRecord` objects.

MLflow is the record users browse, so ``dynalay pareto`` reads the search from there — not
from Ray Tune's files — and selects from exactly what the UI shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UsageError
from pipeline.pareto import TrialRecord


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

    client = MlflowClient(tracking_uri)
    try:
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
        trial_id=tags.get("trial_id", run.info.run_id),
        run_id=run.info.run_id,
        # "running" until the trial ends; never on the front.
        state=tags.get("state", "running"),
        cv_accuracy=_finite(metrics.get("cv_accuracy")),
        cv_flops=_finite(metrics.get("cv_flops")),
        params=dict(run.data.params),
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]

