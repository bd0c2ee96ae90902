"""A trained DynaLay's accuracy–compute operating curve, as a search records and uses it.

A bias b added to the agent's plain-action logit at evaluation (``ModelConfig.route_bias``)
moves samples between the plain pass and FPI without retraining (``models.routing``). Each
fold of a trial (``pipeline.trial``) scores its held-out part at the same fixed biases
(:data:`BIASES`), so the
trial's curve is the point-by-point mean over its folds, exactly as ``cv_accuracy`` and
``cv_flops`` are means over folds; the point at bias 0 is the trial's own objective pair.

``dynalay pareto --operating-point RULE`` chooses one point of a trial's curve
(:func:`choose_point`) and the exported run config carries its ``route_bias``, so ``dynalay
train --config`` evaluates at that point.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.environment import scoped_environment
from pipeline.errors import UsageError
from pipeline.pareto import knee_index

_STEPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)
#: The biases every fold is scored at: the extremes route every sample to FPI (−1e3) and every
#: sample plain (+1e3); in between, a log-spaced grid around the model's own argmax (0), dense
#: near 0 because a briefly trained agent's logits differ by hundredths.
BIASES: tuple[float, ...] = (-1e3, *(-s for s in reversed(_STEPS)), 0.0, *_STEPS, 1e3)

CURVE_CSV = "operating_curve.csv"
CURVE_PNG = "operating_curve.png"


@dataclass(frozen=True)
class CurvePoint:
    """One operating point: the bias and, averaged over folds, what the agent's routing scored."""

    bias: float
    accuracy: float
    flops: float
    fpi_fraction: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def mean_curve(curves: Sequence[Sequence[CurvePoint]]) -> list[CurvePoint]:
    """The point-by-point mean of fold curves scored at the same biases."""
    if not curves:
        return []
    biases = [p.bias for p in curves[0]]
    if any([p.bias for p in c] != biases for c in curves):
        raise ValueError("fold curves were scored at different biases")
    values = np.array([[(p.accuracy, p.flops, p.fpi_fraction) for p in c] for c in curves])
    means = values.mean(axis=0)
    return [CurvePoint(b, *map(float, m)) for b, m in zip(biases, means)]


def efficient_points(curve: Sequence[CurvePoint]) -> list[CurvePoint]:
    """The curve's non-dominated points (no other point is as accurate for fewer FLOPs),
    cheapest first."""
    ordered = sorted(curve, key=lambda p: (p.flops, -p.accuracy))
    front: list[CurvePoint] = []
    for point in ordered:
        if not front or point.accuracy > front[-1].accuracy:
            front.append(point)
    return front


_FLOPS_RULE = re.compile(r"^flops\s*<=\s*(\S+)$")
_BIAS_RULE = re.compile(r"^bias\s*=\s*(\S+)$")
OPERATING_RULES = "knee | max-accuracy | flops<=X | bias=B"


def choose_point(curve: Sequence[CurvePoint], rule: str) -> CurvePoint:
    """The point of ``curve`` that ``rule`` names.

    Rules: ``knee`` (:func:`knee_index` over the curve's efficient points), ``max-accuracy``
    (the most accurate, cheapest on ties), ``flops<=X`` (the most accurate within X FLOPs per
    sample), ``bias=B`` (the point scored at bias B, one of :data:`BIASES`).

    Raises:
        UsageError: a malformed rule, or no point satisfies it.
    """
    if not curve:
        raise UsageError("--operating-point: the trial recorded no operating curve (not a DynaLay?)")
    front = efficient_points(curve)
    rule = rule.strip()
    if rule == "knee":
        return front[knee_index([p.accuracy for p in front], [p.flops for p in front])]
    if rule == "max-accuracy":
        return front[-1]
    if match := _FLOPS_RULE.match(rule):
        budget = _number(match.group(1), rule)
        within = [p for p in front if p.flops <= budget]
        if not within:
            cheapest = front[0].flops
            raise UsageError(f"--operating-point {rule}: no point within {budget:g} FLOPs (cheapest {cheapest:.4g})")
        return within[-1]
    if match := _BIAS_RULE.match(rule):
        bias = _number(match.group(1), rule)
        for point in curve:
            if math.isclose(point.bias, bias):
                return point
        raise UsageError(f"--operating-point {rule}: biases recorded are {', '.join(f'{b:g}' for b in BIASES)}")
    raise UsageError(f"--operating-point {rule!r}: expected {OPERATING_RULES}")


def _number(text: str, rule: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--operating-point {rule}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"--operating-point {rule}: {text!r} is not a finite number")
    return value


def write_curve_csv(curve: Sequence[CurvePoint], path: str | Path) -> Path:
    """The curve as CSV: bias, accuracy, flops, fpi_fraction (increasing bias)."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["bias", "accuracy", "flops", "fpi_fraction"])
        writer.writeheader()
        writer.writerows(p.to_dict() for p in curve)
    return path


def read_curve_csv(path: str | Path) -> list[CurvePoint]:
    """Reads what :func:`write_curve_csv` wrote."""
    with Path(path).open(newline="") as handle:
        return [CurvePoint(*(float(row[k]) for k in ("bias", "accuracy", "flops", "fpi_fraction")))
                for row in csv.DictReader(handle)]


def load_trial_curve(tracking_uri: str, run_id: str) -> list[CurvePoint]:
    """The curve a finished trial's MLflow run holds as the artifact :data:`CURVE_CSV`.

    Raises:
        UsageError: the run has no such artifact (a baseline model, or a search recorded
            before operating curves were).
    """
    import tempfile

    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if CURVE_CSV not in {artifact.path for artifact in client.list_artifacts(run_id)}:
        raise UsageError(f"--operating-point: run {run_id} has no {CURVE_CSV} (not a DynaLay trial?)")
    # A progress bar per 1-kB file would bury the command's one-line answers on stderr.
    quiet = {MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name: "false"}
    with tempfile.TemporaryDirectory() as directory, scoped_environment(quiet):
        return read_curve_csv(client.download_artifacts(run_id, CURVE_CSV, directory))


def plot_curve(curve: Sequence[CurvePoint], path: str | Path, title: str = "") -> Path:
    """Accuracy against FLOPs per sample along the bias sweep; the bias-0 point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    ordered = sorted(curve, key=lambda p: p.bias)
    fig, axes = plt.subplots(figsize=(5, 3.5))
    axes.plot([p.flops for p in ordered], [100 * p.accuracy for p in ordered], "-o", ms=3)
    for point in ordered:
        if point.bias == 0.0:
            axes.scatter([point.flops], [100 * point.accuracy], s=60, zorder=3, label="bias 0 (as trained)")
    axes.set_xlabel("FLOPs per sample")
    axes.set_ylabel("accuracy %")
    axes.set_title(title or "operating curve (bias on the plain action)")
    axes.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
