"""The search driver: Ray Tune runs the trials, Optuna proposes them, MLflow records them.

Wiring, in one place:

* :class:`~pipeline.optuna_bridge.CrossValidatedOptunaSearch` (two objectives: maximise
  ``cv_accuracy``, minimise ``cv_flops``) over an Optuna study in RDB storage, so the study
  survives the driver and opens in optuna-dashboard;
* :class:`~pipeline.scheduler.FoldPruningScheduler`, which prunes between folds;
* :class:`~pipeline.tracking.SearchTracker`, which mirrors everything into MLflow;
* Ray Tune's ``FailureConfig``, which restarts a trial whose worker died; the trial resumes
  at its first unfinished fold from its checkpoint.

A search lives in ``<run-dir>/<experiment>/`` (Ray Tune's experiment state and the
checkpoints); by default the Optuna study and the MLflow store are SQLite files in
``<run-dir>``. ``resume=True`` restores the Ray Tune experiment: finished trials stay
finished, unfinished ones resume from their last fold checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError
from pipeline.outcome import DIRECTIONS, OBJECTIVES
from pipeline.space import SearchSpace

logger = logging.getLogger(__name__)

SEARCH_FILE = "search.json"


@dataclass(frozen=True)
class SearchOptions:
    """Everything ``dynalay search`` takes, after the space's defaults are applied."""

    space: SearchSpace
    experiment: str
    run_dir: Path
    num_samples: int
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
        return self.tracking_uri or default_tracking_uri(self.run_dir)

    @property
    def resolved_storage(self) -> str:
        return self.storage or f"sqlite:///{(self.run_dir / 'optuna.db').resolve()}"


def default_tracking_uri(run_dir: Path) -> str:
    """MLflow's store when none is given: SQLite in the run directory."""
    return f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}"


def make_sampler(name: str, seed: int) -> Any:
    """The Optuna sampler for ``tpe`` | ``nsga2`` | ``gp``, seeded."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=4)
    raise UsageError(f"--sampler: unknown sampler {name!r} (tpe, nsga2, gp)")


def run_search(options: SearchOptions) -> None:
    """Run (or resume) a search to completion."""
    import ray
    from ray import tune

    from pipeline.mlflow_queue import MlflowQueue
    from pipeline.optuna_bridge import CrossValidatedOptunaSearch
    from pipeline.scheduler import FoldPruningScheduler
    from pipeline.tracking import SearchTracker
    from pipeline.trial import TrialSettings, cv_trial

    experiment_dir = options.experiment_dir.resolve()
    state = _search_state(options, experiment_dir)
    settings = TrialSettings(
        dataset=options.space.dataset,
        model=options.space.model,
        folds=options.folds,
        seed=options.seed,
        data_dir=options.data_dir,
        fixed=_shared_run_config(options.space),
        threads=max(1, int(options.cpus_per_trial)),
    )
    trainable = tune.with_resources(
        tune.with_parameters(cv_trial, settings=settings),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )
    _init_ray(options.address)

    if options.resume:
        tuner = tune.Tuner.restore(
            str(experiment_dir), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        scheduler = FoldPruningScheduler(options.pruner, options.folds)
        searcher = CrossValidatedOptunaSearch(
            folds=options.folds,
            space=options.space.to_optuna(),
            metric=list(OBJECTIVES),
            mode=list(DIRECTIONS),
            sampler=make_sampler(options.sampler, options.seed),
            study_name=options.experiment,
            storage=_optuna_storage(options.resolved_storage),
        )
        if options.max_concurrent:
            searcher = tune.search.ConcurrencyLimiter(searcher, max_concurrent=options.max_concurrent)
        tracker = SearchTracker(
            queue=MlflowQueue(
                options.resolved_tracking_uri,
                options.experiment,
                state["search_id"],
                experiment_dir,
                artifact_location=_artifact_location(options),
            ),
            settings={**options.space.fixed_settings(), **_search_params(options)},
            folds=options.folds,
            run_dir=experiment_dir,
            scheduler=scheduler,
            search_name=state["search_id"],
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=options.num_samples
            ),
            run_config=tune.RunConfig(
                name=options.experiment,
                storage_path=str(options.run_dir.resolve()),
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                callbacks=[tracker],
                progress_reporter=_reporter(),
                verbose=options.verbose,
            ),
        )
    # Ray Tune resolves paths against the working directory when the search ends; a Ray job's
    # working directory is a package that the cluster may garbage-collect once the job's
    # workers on a dead node release it, so the driver works from the search's own directory.
    os.chdir(experiment_dir)
    tuner.fit()
    _fail_orphans(options.resolved_storage, options.experiment)


def _fail_orphans(storage: str, study_name: str) -> None:
    """Mark FAIL the Optuna trials a dead driver had asked for but Ray Tune never ran.

    A driver killed between asking Optuna for a configuration and saving Ray Tune's
    experiment state leaves a RUNNING trial that no restored searcher knows; once the search
    has ended nothing can finish it.
    """
    from optuna.trial import TrialState

    rdb = _optuna_storage(storage)
    study_id = rdb.get_study_id_from_name(study_name)
    for trial in rdb.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        rdb.set_trial_user_attr(trial._trial_id, "error", "orphaned: the driver died before it ran")
        rdb.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def _search_state(options: SearchOptions, experiment_dir: Path) -> dict[str, Any]:
    """Create or check ``search.json``; refuse to overwrite a search without ``--resume``."""
    path = experiment_dir / SEARCH_FILE
    if options.resume:
        if not path.exists():
            raise UsageError(f"--resume: no search {options.experiment!r} in {options.run_dir}")
        return json.loads(path.read_text())
    if path.exists():
        raise UsageError(
            f"search {options.experiment!r} already exists in {options.run_dir}: "
            "pass --resume to continue it or --experiment NAME for a new one"
        )
    experiment_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "search_id": options.experiment,
        "space": options.space.model_dump(mode="json"),
        "options": _search_params(options),
        "tracking_uri": options.resolved_tracking_uri,
        "storage": options.resolved_storage,
    }
    path.write_text(json.dumps(state, indent=2))
    return state


def _shared_run_config(space: SearchSpace) -> dict[str, Any]:
    shared = {k: getattr(space, k) for k in ("epochs", "warmup_epochs", "batch_size")}
    return {**{k: v for k, v in shared.items() if v is not None}, **space.fixed}


def _search_params(options: SearchOptions) -> dict[str, Any]:
    return {
        "folds": options.folds,
        "seed": options.seed,
        "sampler": options.sampler,
        "pruner": options.pruner,
        "num_samples": options.num_samples,
        "cpus_per_trial": options.cpus_per_trial,
        "gpus_per_trial": options.gpus_per_trial,
    }


def _artifact_location(options: SearchOptions) -> str | None:
    # A local SQLite store keeps its artifacts beside it instead of in the working directory.
    if options.tracking_uri is None:
        return (options.run_dir / "mlartifacts").resolve().as_uri()
    return None


def _optuna_storage(url: str) -> Any:
    import optuna

    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as exc:  # noqa: BLE001 - any failure to open the URL is a usage error
        raise UsageError(f"--storage: cannot open {url}: {str(exc).splitlines()[0]}") from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    # SQLite under several writers (the driver and optuna-dashboard) needs patience, not errors.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Save the experiment state often: a driver killed between saves would otherwise restore
    # trials that had already ended as still running.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Inside a Ray job the cluster's address comes in RAY_ADDRESS.
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as exc:
        raise UsageError(f"--address: cannot reach Ray at {address}: {str(exc).splitlines()[0]}") from None


def _reporter() -> Any:
    from ray import tune

    return tune.CLIReporter(
        metric_columns={
            "fold": "fold",
            "cv_accuracy": "acc",
            "cv_flops": "flops",
        },
        parameter_columns=["alpha", "beta", "gamma", "max_iter", "lr"],
        max_report_frequency=15,
        max_progress_rows=30,
    )
