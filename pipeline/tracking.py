"""The search's MLflow data model, written by the Ray Tune driver as trials report.

* One **parent run per search**: the space's fixed settings as params, ``hypervolume`` stepped
  by finished trials (:func:`pipeline.pareto.search_hypervolume`: the front of the trials
  finished so far against their nadir reference), ``pareto.csv`` and ``pareto.png`` as
  artifacts.
* One **nested child run per trial**: its hyperparameters as params; the metrics of each
  :class:`pipeline.outcome.FoldReport` (``fold_accuracy`` and ``fold_flops`` with step = fold
  index; ``cv_*`` means, mean FPI iterations and action frequencies); tag ``state`` =
  finished | pruned | failed, tag ``folds_done`` (how many folds it finished), ``error`` for a
  failed trial, ``pruned_reason`` for a pruned one, ``resumed_at_fold`` for a restarted one;
  tag ``pareto`` = true on the front; a finished DynaLay trial's operating curve
  (``pipeline.operating_curve``) as ``operating_curve.csv`` and ``operating_curve.png``.

The tracker only emits records: the front, the hypervolume and the files are
:mod:`pipeline.pareto`'s.

Only the driver writes, through :class:`pipeline.mlflow_queue.MlflowQueue`: trials never need
to reach the tracking server, and a server outage delays writes instead of losing them.

MLflow mirrors the Optuna study, which is the record of how each trial ended: a trial's run is
named by its Optuna trial number (``trial-<n>``, tag ``optuna_trial_number``), its ``state``
tag and the front are read from the study once the searcher has told it, and each study trial
carries its run's id (user attribute ``mlflow_run_id``). A driver that died and was resumed
therefore cannot leave the two stores telling different stories: a restored trial whose end
the study already holds is recorded with that end, and a configuration drawn just before the
crash keeps its one run when the resumed search runs it.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from pipeline.mlflow_queue import MlflowQueue
from pipeline.operating_curve import CURVE_CSV, CURVE_PNG, CurvePoint, plot_curve, write_curve_csv
from pipeline.optuna_bridge import TRIAL_NUMBER_KEY, StudyLink, study_outcome
from pipeline.outcome import (
    ERROR,
    FOLD_ACCURACY,
    FOLDS_DONE,
    PARETO_TAG,
    PRUNED_REASON_TAG,
    RESUMED_AT_FOLD,
    STATE_TAG,
    TRIAL_ID_TAG,
    FoldReport,
    Outcome,
    outcome,
)
from pipeline.pareto import TrialRecord, pareto_front, plot_pareto, search_hypervolume, write_front_csv

logger = logging.getLogger(__name__)

PARENT = "parent"
#: The MLflow tag naming a trial run's Optuna trial number.
TRIAL_NUMBER_TAG = "optuna_trial_number"
_STATUS = {"finished": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


class SearchTracker(Callback):
    """A Ray Tune callback that mirrors the search and its Optuna study into MLflow.

    Args:
        queue: The MLflow writer for this search.
        settings: The search's fixed settings (logged as the parent run's params).
        folds: Folds per trial.
        run_dir: Where ``pareto.csv``/``pareto.png`` and the operating curves are written
            before upload.
        study: The search's Optuna study, read for each trial's ending and linked to the runs.
        scheduler: The pruning scheduler, whose decisions explain each pruned trial.
        search_name: The parent run's name.
    """

    def __init__(
        self,
        queue: MlflowQueue,
        settings: dict[str, Any],
        folds: int,
        run_dir: Path,
        study: StudyLink,
        scheduler: Any = None,
        search_name: str = "search",
    ):
        self.queue = queue
        self.settings = settings
        self.folds = folds
        self.run_dir = Path(run_dir)
        self.study = study
        self.scheduler = scheduler
        self.search_name = search_name
        self._pareto_tags: dict[str, str] = {}
        # Keys of the runs this driver created or retagged.
        self._registered: set[str] = set()
        # Runs whose id could not be written into their study trial yet (MLflow was down).
        self._unlinked: dict[str, int] = {}

    # -- Ray Tune hooks ---------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        self.queue.put("create_run", PARENT, name=self.search_name, tags={"kind": "search"})
        # A resumed search reopens a parent that an interruption left KILLED.
        self.queue.put("set_status", PARENT, status="RUNNING")
        self.queue.put("log_params", PARENT, params=self.settings)
        self._flush()

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        # A trial's run exists from the moment Optuna drew it, as its study trial does: an
        # interrupted search leaves pending trials RUNNING in both stores.
        fresh = [
            t
            for t in trials
            if t.status in (Trial.PENDING, Trial.RUNNING) and run_key(t) not in self._registered
        ]
        for trial in fresh:
            self._register(trial)
        if fresh:
            self._flush()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._register(trial)
        self._flush()

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        report = FoldReport.from_result(result)
        if report.error or not report.scored:
            return
        key = run_key(trial)
        if report.resumed_at_fold is not None:
            # A tag, not a fold metric: it must show even when the fold itself is a replay.
            self.queue.put("set_tags", key, tags={RESUMED_AT_FOLD: str(report.resumed_at_fold)})
        self.queue.put(
            "log_metrics",
            key,
            metrics=report.metrics(),
            step=report.fold,
            timestamp_ms=_now(),
            once_per_step=FOLD_ACCURACY,
        )
        self._flush()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._close(trial, trials, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._close(trial, trials, errored=True)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # The parent run's status is the driver's to set: only it knows whether the search
        # ended or was interrupted (see pipeline.search).
        if not self.queue.flush_until(timeout_s=60):
            logger.warning(
                "MLflow still unreachable (%s): %d writes kept in %s; `dynalay search --resume` "
                "replays them",
                self.queue.last_error,
                self.queue.pending,
                self.run_dir,
            )

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles its callbacks with the experiment; a restarted driver registers and
        # links the unfinished trials again (both idempotent).
        state = self.__dict__.copy()
        state["_unlinked"] = {}
        state["_registered"] = set()
        return state

    def _register(self, trial: Trial) -> None:
        """Create (or, for a resumed trial, retag) the trial's run and queue its link."""
        key = run_key(trial)
        if key in self._registered:
            return
        number = int(trial.config[TRIAL_NUMBER_KEY])
        self.queue.put(
            "create_run",
            key,
            name=f"trial-{trial.trial_id}",
            tags={TRIAL_ID_TAG: trial.trial_id, STATE_TAG: "running", TRIAL_NUMBER_TAG: str(number)},
            parent=PARENT,
        )
        self.queue.put("log_params", key, params=_hyperparameters(trial.config))
        self._registered.add(key)
        self._unlinked[key] = number

    # -- internals ----------------------------------------------------------------------------
    def _close(self, trial: Trial, trials: list[Trial], errored: bool) -> None:
        key = run_key(trial)
        ending = self._ending(trial, errored)
        tags = {STATE_TAG: ending.state, FOLDS_DONE: str(ending.folds_done)}
        if ending.state == "pruned":
            decision = getattr(self.scheduler, "decisions", {}).get(trial.trial_id)
            if decision is not None:
                tags[PRUNED_REASON_TAG] = decision.reason[:500]
        if ending.state == "failed":
            tags[ERROR] = (ending.error or _error_text(trial))[:500]
        self.queue.put("set_tags", key, tags=tags)
        if ending.state == "finished":
            self._log_operating_curve(key, FoldReport.from_result(trial.last_result))
        self.queue.put("terminate", key, status=_STATUS[ending.state])
        self._update_front(trials)
        self._flush()

    def _ending(self, trial: Trial, errored: bool) -> Outcome:
        """How the study says the trial ended (the searcher told it just before)."""
        try:
            ending = study_outcome(self.study.trial(int(trial.config[TRIAL_NUMBER_KEY])))
        except Exception as exc:  # noqa: BLE001 - an unreachable study must not stop the search
            logger.warning("Optuna study unreadable (%s); recording trial %s from its result", exc, trial)
            ending = None
        return ending or outcome(trial.last_result, self.folds, errored=errored)

    def _log_operating_curve(self, key: str, report: FoldReport) -> None:
        """A finished DynaLay trial's operating curve (its folds' mean) as CSV and plot."""
        if not report.operating_curve:
            return
        curve = [CurvePoint(**point) for point in report.operating_curve]
        folder = self.run_dir / "curves" / re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        folder.mkdir(parents=True, exist_ok=True)
        for path in (write_curve_csv(curve, folder / CURVE_CSV), plot_curve(curve, folder / CURVE_PNG, key)):
            self.queue.put("log_artifact", key, path=str(path))

    def _update_front(self, trials: list[Trial]) -> None:
        records = self.records(trials)
        finished = [r for r in records if r.state == "finished"]
        if not finished:
            return
        front = pareto_front(records)
        on_front = {r.trial_id for r in front}
        keys = {t.trial_id: run_key(t) for t in trials}
        for record in finished:
            flag = "true" if record.trial_id in on_front else "false"
            if self._pareto_tags.get(record.trial_id) != flag:
                self.queue.put("set_tags", keys[record.trial_id], tags={PARETO_TAG: flag})
                self._pareto_tags[record.trial_id] = flag
        volume = search_hypervolume(records)
        self.queue.put(
            "log_metrics", PARENT, metrics={"hypervolume": volume}, step=len(finished), timestamp_ms=_now()
        )
        csv_path = self.run_dir / "pareto.csv"
        write_front_csv(front, csv_path)
        plot_path = self.run_dir / "pareto.png"
        plot_pareto(records, plot_path)
        self.queue.put("log_artifact", PARENT, path=str(csv_path))
        self.queue.put("log_artifact", PARENT, path=str(plot_path))

    def records(self, trials: list[Trial]) -> list[TrialRecord]:
        """Every trial of ``trials`` that the study holds as ended, as a :class:`TrialRecord`
        whose state and objectives are the study's."""
        ended = {
            number: study_trial
            for number, study_trial in self.study.trials().items()
            if study_outcome(study_trial) is not None
        }
        records = []
        for trial in trials:
            study_trial = ended.get(trial.config.get(TRIAL_NUMBER_KEY))
            if study_trial is None:
                continue
            ending = study_outcome(study_trial)
            values = study_trial.values or [float("nan"), float("nan")]
            records.append(
                TrialRecord(
                    trial_id=trial.trial_id,
                    run_id=None,
                    state=ending.state,
                    cv_accuracy=float(values[0]),
                    cv_flops=float(values[1]),
                    params=_hyperparameters(trial.config),
                )
            )
        return records

    def _flush(self) -> None:
        if not self.queue.flush():
            logger.warning(
                "MLflow unreachable (%s); %d writes queued, retrying",
                self.queue.last_error,
                self.queue.pending,
            )
            return
        for key, number in list(self._unlinked.items()):
            if link_run(self.queue, self.study, key, number):
                del self._unlinked[key]


def run_key(trial: Trial) -> str:
    """The MLflow queue's key for a trial's run: its Optuna trial number."""
    return trial_key(int(trial.config[TRIAL_NUMBER_KEY]))


def trial_key(number: int) -> str:
    return f"trial-{number}"


def link_run(queue: MlflowQueue, study: StudyLink, key: str, number: int) -> bool:
    """Write the run's MLflow id into study trial ``number``; False while the run is unknown.

    A trial that already ended keeps what it has: Optuna freezes a finished trial (it was
    linked when it started, unless MLflow was down for the whole trial).
    """
    run_id = queue.run_id(key)
    if run_id is None:
        return False
    study.link(number, run_id)
    return True


def record_orphans(queue: MlflowQueue, study: StudyLink, reason: str) -> int:
    """Fail the study trials still RUNNING after the search ended, and give each a failed run.

    These are configurations a driver drew and then died before Ray Tune saved them, which no
    resumed search ran. Returns how many there were.
    """
    orphans = study.running()
    for number, study_trial in orphans.items():
        key = trial_key(number)
        queue.put(
            "create_run",
            key,
            name=key,
            tags={TRIAL_ID_TAG: key, STATE_TAG: "failed", ERROR: reason, TRIAL_NUMBER_TAG: str(number)},
            parent=PARENT,
        )
        queue.put("log_params", key, params=dict(study_trial.params))
        queue.put("terminate", key, status="FAILED")
        if queue.flush():
            link_run(queue, study, key, number)
        study.fail(number, reason)
    return len(orphans)


def _hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _error_text(trial: Trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        return lines[-1] if lines else "error"
    return "the trial raised an error (see the Ray Tune logs)"


def _now() -> int:
    return int(time.time() * 1000)
