"""The search driver: Ray Tune runs the trials, Optuna proposes them, MLflow records them.

Wiring, in one place (:func:`build_tuner`, the seam the benchmarks build their arms with;
:func:`run_search` adds the MLflow tracker, the search record and the stores' checks):

* :class:`~pipeline.optuna_bridge.CrossValidatedOptunaSearch` (two objectives: maximise
  ``cv_accuracy``, minimise ``cv_flops``) over an Optuna study in RDB storage, so the study
  survives the driver and opens in optuna-dashboard;
* :class:`~pipeline.scheduler.FoldPruningScheduler`, which prunes between folds;
* :class:`~pipeline.tracking.SearchTracker`, which mirrors the study and the trials into MLflow;
* Ray Tune's ``FailureConfig``, which restarts a trial whose worker died; the trial resumes
  at its first unfinished fold from its checkpoint.

A search lives in ``<run-dir>/<experiment>/``: ``search.json`` (what the search is and where
its stores are), Ray Tune's experiment state and the checkpoints; by default the Optuna study
and the MLflow store are SQLite files in ``<run-dir>``. Store URIs are made absolute against
the caller's working directory before anything runs, so that they mean what the caller meant
while ``tuner.fit()`` runs from the search's directory (a Ray job's own working directory may be
deleted under it); the caller's directory is restored afterwards.

Ending a search:

* it ran its budget: orphaned study trials (drawn by a driver that died before Ray Tune saved
  them, and never run) are failed in both stores, the parent run is FINISHED, and a search
  whose every trial failed raises :class:`SearchStopped` (exit 1);
* SIGINT or SIGTERM: Ray Tune stops and saves its experiment, running and pending trials stay
  RUNNING in the study (they are resumed, not failed), the parent run is KILLED, and
  :class:`SearchStopped` carries exit code 128 + the signal number.

``resume=True`` restores the Ray Tune experiment with the stores, space and settings recorded
in ``search.json``: finished trials stay finished, unfinished ones resume from their last fold
checkpoint, and a larger ``num_samples`` extends the budget.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pipeline.environment import scoped_environment
from pipeline.errors import UsageError
from pipeline.outcome import CV_ACCURACY, CV_FLOPS, DIRECTIONS, ERROR, FOLD, OBJECTIVES
from pipeline.space import SearchSpace

if TYPE_CHECKING:
    import optuna
    from ray.tune import Callback, Tuner
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

logger = logging.getLogger(__name__)

SEARCH_FILE = "search.json"
ORPHAN_REASON = "orphaned: a driver that died drew this configuration and no resumed search ran it"


class SearchStopped(Exception):
    """The search ended without running its budget to a usable result.

    Attributes:
        exit_code: What ``dynalay search`` exits with (128 + signal number when interrupted,
            1 when every trial failed).
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class SearchOptions:
    """Everything ``dynalay search`` takes, after the space's defaults are applied.

    ``num_samples`` may be None only with ``resume``: the search keeps its recorded budget.
    """

    space: SearchSpace
    experiment: str
    run_dir: Path
    num_samples: int | None
    folds: int
    max_concurrent: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    pruner: str = "wilcoxon"
    sampler: str = "tpe"
    tracking_uri: str | None = None
    storage: str | None = None
    address: str | None = None
    data_dir: str | None = None
    resume: bool = False
    seed: int = 0
    max_failures: int = 2
    verbose: int = 1

    @property
    def experiment_dir(self) -> Path:
        return self.run_dir / self.experiment

    @property
    def resolved_tracking_uri(self) -> str:
        return absolute_uri(self.tracking_uri) if self.tracking_uri else default_tracking_uri(self.run_dir)

    @property
    def resolved_storage(self) -> str:
        if self.storage:
            return absolute_uri(self.storage)
        return f"sqlite:///{(self.run_dir / 'optuna.db').resolve()}"


def default_tracking_uri(run_dir: Path) -> str:
    """MLflow's store when none is given: SQLite in the run directory."""
    return f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}"


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative local path made absolute against the working directory.

    ``sqlite:///runs.db`` (a relative SQLite file), a plain path (an MLflow file store) and
    ``file:`` URIs are resolved; anything else (``sqlite:////abs.db``, ``http://``,
    ``postgresql://``, ...) is returned unchanged.
    """
    if uri.startswith("sqlite:///"):
        path, query = _split_query(uri[len("sqlite:///"):])
        if path and path != ":memory:" and not Path(path).is_absolute():
            return f"sqlite:///{Path(path).resolve()}{query}"
        return uri
    parts = urlsplit(uri)
    if parts.scheme == "file" and not parts.netloc:
        return Path(parts.path).resolve().as_uri()
    if parts.scheme == "" and uri:
        return str(Path(uri).resolve())
    return uri


def _split_query(text: str) -> tuple[str, str]:
    path, mark, query = text.partition("?")
    return path, mark + query


def run_search(options: SearchOptions) -> SearchOptions:
    """Run (or resume) a search to the end of its budget.

    Returns:
        The options the search ran with: on resume, the space, settings and stores recorded
        in ``search.json``.

    Raises:
        UsageError: bad input found before Ray starts (unopenable store, no such search, a
            budget below the trials already drawn); nothing is written.
        SearchStopped: interrupted (state saved, resumable), or every trial failed.
    """
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from pipeline.optuna_bridge import StudyLink
    from pipeline.scheduler import FoldPruningScheduler
    from pipeline.tracking import SearchTracker

    experiment_dir = options.experiment_dir.resolve()
    requested_budget = options.num_samples
    if options.resume:
        state = _recorded_search(options, experiment_dir)
        options = _recorded_options(options, state)
    else:
        _refuse_existing(options, experiment_dir)
        if options.num_samples is None:
            options = dataclasses.replace(options, num_samples=options.space.num_samples)
        state = _new_search_record(options)
    # tuner.fit() runs from the search's directory (below), so every path is fixed first.
    options = dataclasses.replace(
        options,
        run_dir=options.run_dir.resolve(),
        tracking_uri=state["tracking_uri"],
        storage=state["storage"],
    )
    # The default stores live in the run directory.
    options.run_dir.mkdir(parents=True, exist_ok=True)
    _check_stores(options)
    study = StudyLink(options.resolved_storage, options.experiment)
    if options.resume and requested_budget is not None:
        _extend_budget(requested_budget, options, study, experiment_dir, state)
    init_ray(options.address)

    if options.resume:
        # Errored trials stay failed: the study was told so, and MLflow mirrors the study.
        tuner = tune.Tuner.restore(
            str(experiment_dir),
            trainable=search_trainable(options),
            resume_unfinished=True,
            resume_errored=False,
        )
    else:
        scheduler = FoldPruningScheduler(options.pruner, options.folds)
        searcher = study_searcher(options)
        tracker = SearchTracker(
            queue=_mlflow_queue(options, state["search_id"], experiment_dir),
            settings={**options.space.fixed_settings(), **_search_params(options)},
            folds=options.folds,
            run_dir=experiment_dir,
            study=study,
            scheduler=scheduler,
            search_name=state["search_id"],
        )
        # Tune's JSON results stay: the ResultGrid that fit() returns reads them (without them
        # it warns that it found no metrics for any trial); the other loggers are off.
        tuner = build_tuner(options, searcher=searcher, scheduler=scheduler,
                            callbacks=[tracker, JsonLoggerCallback()])
        # Only now is there a search to resume; before, a failure leaves the name free.
        _write_search_record(experiment_dir, state)
    with (
        _Interruption() as interruption,
        _working_directory(experiment_dir),
        scoped_environment(_TUNE_ENVIRONMENT, keep_set=True),
    ):
        try:
            tuner.fit()
        except BaseException:
            if not options.resume and not has_tune_state(experiment_dir):
                (experiment_dir / SEARCH_FILE).unlink(missing_ok=True)
            raise
    _finish(options, state["search_id"], experiment_dir, study, interruption.signal)
    return options


def search_trainable(options: SearchOptions) -> Any:
    """The search's Ray Tune trainable: :func:`pipeline.trial.cv_trial` with the trial settings
    ``options`` define (data set, model, folds, seed, the space's fixed part, threads) and
    ``cpus_per_trial``/``gpus_per_trial`` as its resources."""
    from ray import tune

    from pipeline.trial import TrialSettings, cv_trial

    settings = TrialSettings(
        dataset=options.space.dataset,
        model=options.space.model,
        folds=options.folds,
        seed=options.seed,
        data_dir=options.data_dir,
        fixed=options.space.shared_run_config(),
        threads=max(1, int(options.cpus_per_trial)),
    )
    return tune.with_resources(
        tune.with_parameters(cv_trial, settings=settings),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )


def study_searcher(options: SearchOptions, sampler: optuna.samplers.BaseSampler | None = None) -> Any:
    """The search's own searcher: :class:`~pipeline.optuna_bridge.CrossValidatedOptunaSearch`
    over ``options.space`` with the two objectives, in the Optuna study ``options.experiment``
    at ``options.resolved_storage``, which it creates; the study records ``num_samples`` as the
    budget a resume starts from.

    Args:
        options: The search; its storage must be openable (its directory must exist).
        sampler: Default: ``options.sampler`` seeded with ``options.seed``
            (:func:`pipeline.samplers.make_sampler`).
    """
    from pipeline.optuna_bridge import CrossValidatedOptunaSearch, StudyLink
    from pipeline.samplers import make_sampler

    searcher = CrossValidatedOptunaSearch(
        folds=options.folds,
        space=options.space.to_optuna(),
        metric=list(OBJECTIVES),
        mode=list(DIRECTIONS),
        sampler=sampler if sampler is not None else make_sampler(options.sampler, options.seed),
        study_name=options.experiment,
        storage=_optuna_storage(options.resolved_storage),
    )
    if options.num_samples is not None:
        StudyLink(options.resolved_storage, options.experiment).set_budget(options.num_samples)
    return searcher


def build_tuner(
    options: SearchOptions,
    *,
    searcher: Searcher | None = None,
    scheduler: TrialScheduler | None = None,
    callbacks: Sequence[Callback] = (),
) -> Tuner:
    """The Ray Tune ``Tuner`` of a new search, wired as ``dynalay search`` wires it.

    The trainable is :func:`search_trainable`; at most ``options.max_concurrent`` trials run at
    once; ``num_samples`` trials are drawn; Ray Tune keeps its experiment (the checkpoints
    and the state :func:`run_search` resumes from) in ``<run_dir>/<experiment>``, and restarts a
    trial whose worker died up to ``max_failures`` times. :func:`run_search` adds the MLflow
    tracker as a callback, the search record and the stores' checks, and fits the tuner from
    the experiment's directory with its signal handling; a benchmark or a notebook calls
    ``fit()`` on what this returns, from where it is.

    Args:
        options: The search (``num_samples`` must be set).
        searcher: A Ray Tune searcher; default :func:`study_searcher` (TPE or
            ``options.sampler`` over the Optuna study). An Optuna study searcher is wrapped
            so that a resumed search reads its budget from the study.
        scheduler: Default: :class:`~pipeline.scheduler.FoldPruningScheduler` with
            ``options.pruner``, which prunes between folds.
        callbacks: Ray Tune callbacks, e.g. :class:`~pipeline.tracking.SearchTracker`.
    """
    from ray import tune

    from pipeline.optuna_bridge import CrossValidatedOptunaSearch, StudyBudget
    from pipeline.scheduler import FoldPruningScheduler

    if options.num_samples is None:
        raise ValueError("build_tuner: options.num_samples is None (a new search needs a budget)")
    if searcher is None:
        searcher = study_searcher(options)
    if scheduler is None:
        scheduler = FoldPruningScheduler(options.pruner, options.folds)
    study_backed = isinstance(searcher, CrossValidatedOptunaSearch)
    if options.max_concurrent:
        searcher = tune.search.ConcurrencyLimiter(searcher, max_concurrent=options.max_concurrent)
    return tune.Tuner(
        search_trainable(options),
        tune_config=tune.TuneConfig(
            search_alg=StudyBudget(searcher) if study_backed else searcher,
            scheduler=scheduler,
            num_samples=options.num_samples,
        ),
        run_config=tune.RunConfig(
            name=options.experiment,
            storage_path=str(options.run_dir.resolve()),
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            callbacks=list(callbacks),
            progress_reporter=_reporter(),
            verbose=options.verbose,
        ),
    )


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Start or join Ray for a search, unless this process already has.

    Args:
        address: A cluster to join (inside a Ray job, ``RAY_ADDRESS``); None starts a local
            instance without its dashboard.
        num_cpus: The local instance's CPUs (default: Ray's, all of them).

    Raises:
        UsageError: nothing answers at ``address``.
    """
    import ray

    from pipeline.preflight import check_ray_address

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # ray.init retries an address nothing answers at forever; refuse it within seconds.
    check_ray_address(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
    except (ConnectionError, RuntimeError) as exc:
        raise UsageError(f"--address: cannot reach Ray at {address}: {str(exc).splitlines()[0]}") from None



def _finish(
    options: SearchOptions, search_id: str, experiment_dir: Path, study: Any, stopped_by: int | None
) -> None:
    """Close the search in both stores after ``tuner.fit()`` returned."""
    from pipeline.tracking import PARENT, record_orphans

    queue = _mlflow_queue(options, search_id, experiment_dir)
    if stopped_by is not None:
        queue.put("set_status", PARENT, status="KILLED")
        queue.flush()
        name = signal.Signals(stopped_by).name
        raise SearchStopped(
            f"search {options.experiment!r} interrupted ({name}); its state is saved: run the same "
            "command with --resume to continue it",
            128 + stopped_by,
        )
    orphans = record_orphans(queue, study, ORPHAN_REASON)
    if orphans:
        logger.warning("%d orphaned trial(s) failed: %s", orphans, ORPHAN_REASON)
    queue.put("terminate", PARENT, status="FINISHED")
    if not queue.flush_until(timeout_s=60):
        logger.warning(
            "MLflow unreachable (%s): the search's end is kept in %s", queue.last_error, experiment_dir
        )
    if queue.refused:
        logger.warning("%d MLflow write(s) refused; see %s", queue.refused, queue.refused_log)
    trials = list(study.trials().values())
    if trials and all(study_trial.state.name == "FAIL" for study_trial in trials):
        first = min(trials, key=lambda t: t.number).user_attrs.get(ERROR, "see the Ray Tune logs")
        raise SearchStopped(
            f"every trial of search {options.experiment!r} failed ({len(trials)}); the first: "
            f"{' '.join(str(first).split())[:300]}",
            1,
        )


class _Interruption:
    """SIGINT and SIGTERM around ``tuner.fit()``, remembered so the driver can report them.

    The first signal asks Ray Tune to stop as its own Ctrl-C handler would (through the SIGUSR1
    handler Ray Tune installs for that): it saves the experiment and returns. A second signal,
    or one before Ray Tune's loop runs, raises ``KeyboardInterrupt`` at once. Ray Tune's own
    SIGINT handler is off meanwhile (see :data:`_TUNE_ENVIRONMENT`).
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None

    def __enter__(self) -> _Interruption:
        self._before_fit = signal.getsignal(signal.SIGUSR1)
        self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if self.signal is not None or not callable(tune_stop) or tune_stop is self._before_fit:
            raise KeyboardInterrupt
        self.signal = number
        logger.warning(
            "%s: stopping the search and saving its state (again to stop at once)",
            signal.Signals(number).name,
        )
        tune_stop(signal.SIGUSR1, frame)
        # Ray Tune's handler reinstalls the SIGINT handler it found; keep ours for SIGTERM too.
        for each in self._SIGNALS:
            signal.signal(each, self._handle)


#: Ray Tune's settings while :func:`run_search` fits (Ray Tune reads them in ``fit()``).
_TUNE_ENVIRONMENT = {
    # Ray Tune would take SIGINT for itself and not say it had; _Interruption handles it.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # The progress table of _reporter() (Ray Tune's newer output ignores it).
    "RAY_AIR_NEW_OUTPUT": "0",
    # Save the experiment state often: a driver killed between saves would otherwise restore
    # trials that had already ended as still running.
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    # MLflow is the record of every trial; Tune's own CSV and TensorBoard files would repeat it
    # (and TensorBoard warns about the operating curve, a list, on every search). run_search
    # passes the JSON logger explicitly.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Run the block from ``path``, then return to the caller's directory if it still exists.

    Ray Tune needs a working directory that still exists when the search ends; a Ray job's is
    its working_dir package, which the cluster may delete once the job's workers on a dead
    node are gone (seen as FileNotFoundError from os.getcwd() at the end of tuner.fit()).
    """
    try:
        caller = os.getcwd()
    except FileNotFoundError:
        caller = None
    os.chdir(path)
    try:
        yield
    finally:
        if caller is not None and Path(caller).is_dir():
            os.chdir(caller)


def has_tune_state(experiment_dir: Path) -> bool:
    """Whether Ray Tune saved an experiment there that ``Tuner.restore`` can resume."""
    from ray import tune

    # tuner.pkl is written when the Tuner is built, the experiment state once fit() runs.
    return tune.Tuner.can_restore(str(experiment_dir)) and any(experiment_dir.glob("experiment_state-*.json"))


def _refuse_existing(options: SearchOptions, experiment_dir: Path) -> None:
    if (experiment_dir / SEARCH_FILE).exists():
        raise UsageError(
            f"search {options.experiment!r} already exists in {options.run_dir}: "
            "pass --resume to continue it or --experiment NAME for a new one"
        )


def _recorded_search(options: SearchOptions, experiment_dir: Path) -> dict[str, Any]:
    """``search.json`` of the search to resume, which must have Ray Tune state to resume."""
    path = experiment_dir / SEARCH_FILE
    if not path.exists():
        raise UsageError(f"--resume: no search {options.experiment!r} in {options.run_dir}")
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume: cannot read {path}: {exc}") from None
    if not has_tune_state(experiment_dir):
        raise UsageError(
            f"--resume: search {options.experiment!r} in {options.run_dir} never started (no Ray Tune "
            f"state in {experiment_dir}); remove {path} and start it again"
        )
    return state


def _recorded_options(options: SearchOptions, state: dict[str, Any]) -> SearchOptions:
    """The options of a resumed search: what defines it comes from ``search.json``.

    Resources, concurrency, the Ray address and a larger budget may change; a store given
    on the command line must be the recorded one.
    """
    for flag, given, recorded in (
        ("--tracking-uri", options.tracking_uri, state["tracking_uri"]),
        ("--storage", options.storage, state["storage"]),
    ):
        if given is not None and absolute_uri(given) != recorded:
            raise UsageError(
                f"{flag} {given}: search {options.experiment!r} records to {recorded} "
                f"(see {options.experiment_dir / SEARCH_FILE}); omit {flag} to use it"
            )
    recorded = state["options"]
    return dataclasses.replace(
        options,
        space=SearchSpace.model_validate(state["space"]),
        tracking_uri=state["tracking_uri"],
        storage=state["storage"],
        folds=recorded["folds"],
        seed=recorded["seed"],
        sampler=recorded["sampler"],
        pruner=recorded["pruner"],
        data_dir=recorded.get("data_dir", options.data_dir),
        num_samples=options.num_samples or recorded["num_samples"],
    )


def _extend_budget(
    budget: int, options: SearchOptions, study: Any, experiment_dir: Path, state: dict[str, Any]
) -> None:
    """Record the budget a resume asked for in the study (where Ray Tune's restore reads it)."""
    drawn = len(study.trials())
    if budget < drawn:
        raise UsageError(
            f"--num-samples {budget}: search {options.experiment!r} has already drawn "
            f"{drawn} trials; pass at least {drawn}"
        )
    study.set_budget(budget)
    if state["options"]["num_samples"] != budget:
        state["options"]["num_samples"] = budget
        _write_search_record(experiment_dir, state)


def _new_search_record(options: SearchOptions) -> dict[str, Any]:
    return {
        "search_id": options.experiment,
        "space": options.space.model_dump(mode="json"),
        "options": _search_params(options),
        "tracking_uri": options.resolved_tracking_uri,
        "storage": options.resolved_storage,
    }


def _write_search_record(experiment_dir: Path, state: dict[str, Any]) -> None:
    experiment_dir.mkdir(parents=True, exist_ok=True)
    path = experiment_dir / SEARCH_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _check_stores(options: SearchOptions) -> None:
    """Open both stores before Ray starts, so a bad URI costs one line instead of a search.

    Raises:
        UsageError: naming the flag and the URI.
    """
    from mlflow.tracking import MlflowClient

    from pipeline.mlflow_queue import fail_fast_http

    fail_fast_http()
    storage = _optuna_storage(options.resolved_storage)
    if options.resume:
        try:
            storage.get_study_id_from_name(options.experiment)
        except KeyError:
            raise UsageError(
                f"--storage: no Optuna study {options.experiment!r} in {options.resolved_storage}"
            ) from None
    uri = options.resolved_tracking_uri
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure to open the URI is a usage error
        raise UsageError(f"--tracking-uri: cannot open {uri}: {_first_line(exc)}") from None


def _mlflow_queue(options: SearchOptions, search_id: str, experiment_dir: Path) -> Any:
    from pipeline.mlflow_queue import MlflowQueue

    return MlflowQueue(
        options.resolved_tracking_uri,
        options.experiment,
        search_id,
        experiment_dir,
        artifact_location=_artifact_location(options),
    )


def _search_params(options: SearchOptions) -> dict[str, Any]:
    return {
        "folds": options.folds,
        "seed": options.seed,
        "sampler": options.sampler,
        "pruner": options.pruner,
        "num_samples": options.num_samples,
        "cpus_per_trial": options.cpus_per_trial,
        "gpus_per_trial": options.gpus_per_trial,
        "data_dir": options.data_dir,
    }


def _artifact_location(options: SearchOptions) -> str | None:
    # A SQLite store keeps its artifacts beside it, not in whatever directory the driver is in.
    uri = options.resolved_tracking_uri
    if uri.startswith("sqlite:///"):
        database = Path(_split_query(uri[len("sqlite:///"):])[0])
        return (database.parent / "mlartifacts").as_uri()
    return None


def _optuna_storage(url: str) -> Any:
    from pipeline.optuna_bridge import open_storage

    try:
        return open_storage(url)
    except Exception as exc:  # noqa: BLE001 - any failure to open the URL is a usage error
        raise UsageError(f"--storage: cannot open {url}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _reporter() -> Any:
    from ray import tune

    return tune.CLIReporter(
        metric_columns={
            FOLD: "fold",
            CV_ACCURACY: "acc",
            CV_FLOPS: "flops",
        },
        parameter_columns=["alpha", "beta", "gamma", "max_iter", "lr"],
        max_report_frequency=15,
        max_progress_rows=30,
    )
