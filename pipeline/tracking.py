"""The search's MLflow data model, written by the Ray Tune driver as trials report.

* One **parent run per search**: the space's fixed settings as params, ``hypervolume`` stepped
  by finished trials, ``pareto.csv`` and ``pareto.png`` as artifacts.
* One **nested child run per trial**: its hyperparameters as params; ``fold_accuracy`` and
  ``fold_flops`` with step = fold index; ``cv_*`` means, mean FPI iterations and action
  frequencies; tag ``state`` = finished | pruned | failed (with ``pruned_at_fold`` or
  ``error``); tag ``pareto`` = true on the front.

Only the driver writes, through :class:`pipeline.mlflow_queue.MlflowQueue`: trials never need
to reach the tracking server, and a server outage delays writes instead of losing them.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from pipeline.mlflow_queue import MlflowQueue
from pipeline.outcome import ERROR, FOLD, FOLD_ACCURACIES, RESUMED_AT_FOLD, outcome
from pipeline.pareto import TrialRecord, hypervolume, pareto_front, plot_pareto

logger = logging.getLogger(__name__)

PARENT = "parent"
# The trial's own scalars (not Ray Tune's bookkeeping such as pid or time_total_s).
_METRIC_PREFIXES = (
    "fold_accuracy",
    "fold_flops",
    "fold_train_seconds",
    "cv_",
    "mean_iterations",
    "action_freq",
)


class SearchTracker(Callback):
    """A Ray Tune callback that mirrors the search into MLflow.

    Args:
        queue: The MLflow writer for this search.
        settings: The search's fixed settings (logged as the parent run's params).
        folds: Folds per trial.
        run_dir: Where ``pareto.csv``/``pareto.png`` are written before upload, and where the
            hypervolume reference point is kept so that a resumed search uses the same one.
        scheduler: The pruning scheduler, whose decisions explain each pruned trial.
    """

    def __init__(
        self,
        queue: MlflowQueue,
        settings: dict[str, Any],
        folds: int,
        run_dir: Path,
        scheduler: Any = None,
        search_name: str = "search",
    ):
        self.queue = queue
        self.settings = settings
        self.folds = folds
        self.run_dir = Path(run_dir)
        self.scheduler = scheduler
        self.search_name = search_name
        self._pareto_tags: dict[str, str] = {}

    # -- Ray Tune hooks ---------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        self.queue.put("create_run", PARENT, name=self.search_name, tags={"kind": "search"})
        self.queue.put("log_params", PARENT, params=self.settings)
        self._flush()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.queue.put(
            "create_run",
            trial.trial_id,
            name=f"trial-{trial.trial_id}",
            tags={"trial_id": trial.trial_id, "state": "running"},
            parent=PARENT,
        )
        self.queue.put("log_params", trial.trial_id, params=_hyperparameters(trial.config))
        self._flush()

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        if ERROR in result or FOLD_ACCURACIES not in result:
            return
        if RESUMED_AT_FOLD in result:
            # A tag, not a fold metric: it must show even when the fold itself is a replay.
            self.queue.put("set_tags", trial.trial_id, tags={RESUMED_AT_FOLD: str(result[RESUMED_AT_FOLD])})
        metrics = {k: v for k, v in result.items() if _is_metric(k, v)}
        self.queue.put(
            "log_metrics",
            trial.trial_id,
            metrics=metrics,
            step=int(result[FOLD]),
            timestamp_ms=_now(),
            once_per_step="fold_accuracy",
        )
        self._flush()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._close(trial, trials, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._close(trial, trials, errored=True)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.queue.put("terminate", PARENT, status="FINISHED")
        if not self.queue.flush_until(timeout_s=60):
            logger.warning(
                "MLflow still unreachable (%s): %d writes kept in %s; `dynalay search --resume` "
                "replays them",
                self.queue.last_error,
                self.queue.pending,
                self.run_dir,
            )

    # -- internals ----------------------------------------------------------------------------
    def _close(self, trial: Trial, trials: list[Trial], errored: bool) -> None:
        ending = outcome(trial.last_result, self.folds, errored=errored)
        tags = {"state": ending.state}
        if ending.state == "pruned":
            tags["pruned_at_fold"] = str(ending.folds_done)
            decision = getattr(self.scheduler, "decisions", {}).get(trial.trial_id)
            if decision is not None:
                tags["pruned_reason"] = decision.reason[:500]
        if ending.state == "failed":
            tags["error"] = (ending.error or _error_text(trial))[:500]
        self.queue.put("set_tags", trial.trial_id, tags=tags)
        status = {"finished": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}[ending.state]
        self.queue.put("terminate", trial.trial_id, status=status)
        self._update_front(trials, closing=trial)
        self._flush()

    def _update_front(self, trials: list[Trial], closing: Trial) -> None:
        records = self.records(trials, closing)
        finished = [r for r in records if r.state == "finished"]
        if not finished:
            return
        front = pareto_front(records)
        on_front = {r.trial_id for r in front}
        for record in finished:
            flag = "true" if record.trial_id in on_front else "false"
            if self._pareto_tags.get(record.trial_id) != flag:
                self.queue.put("set_tags", record.trial_id, tags={"pareto": flag})
                self._pareto_tags[record.trial_id] = flag
        reference = self._reference_flops(finished)
        volume = hypervolume([(r.cv_accuracy, r.cv_flops) for r in front], (0.0, reference))
        self.queue.put(
            "log_metrics", PARENT, metrics={"hypervolume": volume}, step=len(finished), timestamp_ms=_now()
        )
        csv_path = self.run_dir / "pareto.csv"
        write_front_csv(front, csv_path)
        plot_path = self.run_dir / "pareto.png"
        plot_pareto(records, plot_path)
        self.queue.put("log_artifact", PARENT, path=str(csv_path))
        self.queue.put("log_artifact", PARENT, path=str(plot_path))

    def records(self, trials: list[Trial], closing: Trial | None = None) -> list[TrialRecord]:
        """Every trial that has ended, as a :class:`TrialRecord`.

        ``closing`` is the trial whose end is being handled: Ray Tune calls back before it
        sets that trial's status.
        """
        records = []
        for trial in trials:
            if trial.status not in (Trial.TERMINATED, Trial.ERROR) and trial is not closing:
                continue
            result = trial.last_result or {}
            ending = outcome(result, self.folds, errored=trial.status == Trial.ERROR)
            records.append(
                TrialRecord(
                    trial_id=trial.trial_id,
                    run_id=None,
                    state=ending.state,
                    cv_accuracy=float(result.get("cv_accuracy", float("nan"))),
                    cv_flops=float(result.get("cv_flops", float("nan"))),
                    params=_hyperparameters(trial.config),
                )
            )
        return records

    def _reference_flops(self, finished: list[TrialRecord]) -> float:
        """The hypervolume's compute bound, fixed by the first finished trials of the search."""
        path = self.run_dir / "hypervolume_reference.json"
        if path.exists():
            return float(json.loads(path.read_text())["flops"])
        reference = 2.0 * max(r.cv_flops for r in finished)
        path.write_text(json.dumps({"accuracy": 0.0, "flops": reference}))
        return reference

    def _flush(self) -> None:
        if not self.queue.flush():
            logger.warning(
                "MLflow unreachable (%s); %d writes queued, retrying", self.queue.last_error, self.queue.pending
            )


def write_front_csv(front: list[TrialRecord], path: Path) -> None:
    """``pareto.csv``: one row per front member, objectives first, then hyperparameters."""
    names = sorted({k for r in front for k in r.params})
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial_id", "cv_accuracy", "cv_flops", *names])
        for r in front:
            writer.writerow([r.trial_id, r.cv_accuracy, r.cv_flops, *(r.params.get(n, "") for n in names)])


def _hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _is_metric(key: str, value: Any) -> bool:
    return (
        key.startswith(_METRIC_PREFIXES)
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    )


def _error_text(trial: Trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        return lines[-1] if lines else "error"
    return "the trial raised an error (see the Ray Tune logs)"


def _now() -> int:
    return int(time.time() * 1000)
