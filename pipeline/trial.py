"""One search trial: k-fold cross-validated training of a DynaLay model under one configuration.

Every trial of a search uses the same seeded folds, so fold scores are paired across trials
(the Wilcoxon pruner relies on that). Each fold trains from scratch on the other folds and is
scored on its own held-out part. After each fold the trial reports a
:class:`pipeline.outcome.FoldReport` (the fold's accuracy and FLOPs per sample, the fold
histories and the running means), and checkpoints the fold results: a trial that Ray Tune
restarts after a worker died resumes at its first unfinished fold.

A diverging trial (NaN/inf loss or metrics) does not raise — raising would make Ray Tune retry
it — but reports ``error`` and stops; the search records it as failed.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from models.config import TensorPair
from models.dynalay import DynaLay
from models.factory import build_model
from models.routing import curve_from_table, path_table
from models.training import DivergenceError, evaluate, fit
from pipeline.data import load_dataset, training_augmentation
from pipeline.data.dataset import Dataset
from pipeline.operating_curve import BIASES, CurvePoint, mean_curve
from pipeline.outcome import FoldReport
from pipeline.run_config import split_run_config
from pipeline.threads import apply_threads

FOLD_RESULTS_FILE = "folds.json"

# Fault injection for the failure path's end-to-end tests: with this variable set to a
# directory, the first trial of the search to finish fold 1 claims a marker file there and
# then diverges (NaN loss); every other trial runs normally.
INJECT_NAN_ENV = "DYNALAY_INJECT_NAN_DIR"
# Fault injection for the node-loss test: with this variable set to a directory, the first
# trial of the search to checkpoint fold PAUSE_AFTER_FOLD claims the marker file "paused"
# there (it holds the trial's id) and then waits for a file "release" (at most
# PAUSE_LIMIT_S). Meanwhile the driver holds that checkpoint and the trial has folds to go,
# so a test can kill the trial's node at a known point. The retry finds the marker claimed.
PAUSE_AFTER_CHECKPOINT_ENV = "DYNALAY_PAUSE_AFTER_CHECKPOINT_DIR"
PAUSED_MARKER = "paused"
RELEASE_MARKER = "release"
PAUSE_AFTER_FOLD = 1
PAUSE_LIMIT_S = 600.0


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search shares (the space's fixed part)."""

    dataset: str
    model: str
    folds: int = 9
    seed: int = 0
    data_dir: str | None = None
    #: Run-config keys every trial shares (epochs, batch size, width, ...).
    fixed: dict[str, Any] = field(default_factory=dict)
    threads: int = 1


@dataclass
class FoldResult:
    fold: int
    accuracy: float
    flops: float
    time_ms: float
    train_seconds: float
    action_freq: list[float]
    mean_iterations: list[float]
    #: DynaLay only: the held-out operating curve at :data:`pipeline.operating_curve.BIASES`.
    curve: list[dict[str, float]] | None = None


def fold_indices(dataset: Dataset, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The search's folds: stratified for class labels, plain k-fold for sequence targets."""
    y = dataset.train.y.numpy()
    index = np.arange(len(y))
    if y.ndim == 1:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(index, y))
    return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(index))


@functools.lru_cache(maxsize=2)
def _cached_dataset(name: str, data_dir: str | None, seed: int) -> Dataset:
    # Ray reuses worker processes between trials; the data is read once per process.
    return load_dataset(name, data_dir=data_dir, seed=seed)


def run_fold(
    dataset: Dataset,
    train_index: np.ndarray,
    test_index: np.ndarray,
    run_config: dict[str, Any],
    device: torch.device,
    fold: int,
) -> FoldResult:
    """Train a fresh model on ``train_index`` and score it on ``test_index``."""
    model_cfg, train_cfg = split_run_config(run_config)
    x, y = dataset.train.x, dataset.train.y
    train = TensorPair(x[train_index], y[train_index])
    held_out = TensorPair(x[test_index], y[test_index])
    # A fold's initial weights must not depend on the folds this process ran before it: a
    # trial resumed from a fold checkpoint replays its next fold in a fresh process.
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg, dataset.spec)
    started = time.perf_counter()
    fit(model, train, train_cfg, device, augment=training_augmentation(dataset.name, train_cfg.seed))
    train_seconds = time.perf_counter() - started
    if fold == 1 and _claim_injected_fault(INJECT_NAN_ENV, "nan-injected"):
        raise DivergenceError(f"loss is nan at fold {fold} (injected by {INJECT_NAN_ENV})")
    result = evaluate(model, held_out, device)
    if not all(math.isfinite(v) for v in (result.accuracy, result.flops_per_sample)):
        raise DivergenceError(f"non-finite evaluation at fold {fold}")
    return FoldResult(
        fold=fold,
        accuracy=float(result.accuracy),
        flops=float(result.flops_per_sample),
        time_ms=float(result.time_ms_per_sample),
        train_seconds=train_seconds,
        action_freq=[float(v) for v in result.action_freq],
        mean_iterations=[float(v) for v in result.mean_iterations],
        curve=fold_curve(model, held_out, device),
    )


def fold_curve(model: Any, held_out: TensorPair, device: torch.device) -> list[dict[str, float]] | None:
    """A trained fold model's operating curve on its held-out part, at the search's fixed
    biases; None for the baselines, which have no agent to bias."""
    if not isinstance(model, DynaLay):
        return None
    points = curve_from_table(path_table(model, held_out, device), list(BIASES))
    return [
        CurvePoint(p.bias, p.accuracy, p.flops_per_sample, p.fpi_fraction).to_dict() for p in points
    ]


def fold_report(done: list[FoldResult]) -> FoldReport:
    """What the trial reports after its last finished fold: the fold histories and the means
    over the folds done so far."""
    last = done[-1]
    return FoldReport(
        fold=last.fold,
        folds_done=len(done),
        fold_accuracies=tuple(f.accuracy for f in done),
        fold_flops=tuple(f.flops for f in done),
        fold_train_seconds=last.train_seconds,
        cv_time_ms=float(np.mean([f.time_ms for f in done])),
        mean_iterations=tuple(float(v) for v in np.mean([f.mean_iterations for f in done], axis=0)),
        action_freq=tuple(float(v) for v in np.mean([f.action_freq for f in done], axis=0)),
        operating_curve=mean_fold_curve(done),
    )


def mean_fold_curve(done: list[FoldResult]) -> tuple[dict[str, float], ...] | None:
    """The trial's operating curve so far (the mean over its folds); None for models without
    one."""
    if not done or any(f.curve is None for f in done):
        return None
    curves = [[CurvePoint(**point) for point in f.curve] for f in done]  # type: ignore[union-attr]
    return tuple(point.to_dict() for point in mean_curve(curves))


def cv_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """The Ray Tune function trainable: run the folds not yet done, reporting after each."""
    from ray import tune

    apply_threads(ceiling=max(1, settings.threads))  # cpus_per_trial, less what others use
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = _cached_dataset(settings.dataset, settings.data_dir, settings.seed)
    folds = fold_indices(dataset, settings.folds, settings.seed)
    run_config = {"model": settings.model, "seed": settings.seed, **settings.fixed, **config}
    done = _restore(tune.get_checkpoint())
    if len(done) == settings.folds:
        # Restored after its last fold (the driver died before recording the end): report
        # the final result again instead of training anything.
        tune.report(fold_report(done).to_result())
        return
    # Set on the first report after a restart, so the record shows where the retry resumed.
    resumed_at_fold = len(done) if done else None
    for fold in range(len(done), settings.folds):
        train_index, test_index = folds[fold]
        try:
            done.append(run_fold(dataset, train_index, test_index, run_config, device, fold))
        except DivergenceError as exc:
            report = fold_report(done) if done else FoldReport()
            tune.report(replace(report, fold=fold, error=str(exc)).to_result())
            return
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            Path(checkpoint_dir, FOLD_RESULTS_FILE).write_text(
                json.dumps([asdict(f) for f in done])
            )
            tune.report(
                replace(fold_report(done), resumed_at_fold=resumed_at_fold).to_result(),
                checkpoint=tune.Checkpoint.from_directory(checkpoint_dir),
            )
        resumed_at_fold = None
        if fold == PAUSE_AFTER_FOLD:
            # tune.report returned: the driver has this fold's result and its checkpoint.
            _pause_if_injected(tune.get_context().get_trial_id())


def _restore(checkpoint: Any) -> list[FoldResult]:
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as directory:
        path = Path(directory, FOLD_RESULTS_FILE)
        return [FoldResult(**f) for f in json.loads(path.read_text())] if path.exists() else []


def _claim_injected_fault(env_var: str, marker: str, content: str = "") -> bool:
    """Whether this trial is the first to create ``marker`` in the directory ``env_var`` names."""
    directory = os.environ.get(env_var)
    if not directory:
        return False
    try:
        claimed = os.open(Path(directory, marker), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(claimed, "w") as marker_file:
        marker_file.write(content)
    return True


def _pause_if_injected(trial_id: str) -> None:
    if not _claim_injected_fault(PAUSE_AFTER_CHECKPOINT_ENV, PAUSED_MARKER, trial_id):
        return
    release = Path(os.environ[PAUSE_AFTER_CHECKPOINT_ENV], RELEASE_MARKER)
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
