"""Pareto selection over finished trials: the front, its hypervolume, the knee, filters, export.

The two objectives are fixed (:data:`pipeline.outcome.OBJECTIVES`): maximise ``cv_accuracy``,
minimise ``cv_flops`` (FLOPs per sample). Only finished trials with finite scores take part;
pruned and failed trials are never on the front. Everything here works on plain
:class:`TrialRecord` values, so it is independent of where the records came from (MLflow, an
Optuna study, a test).

**The hypervolume reference** is one policy, :func:`reference_point`, used by the search's
MLflow ``hypervolume`` (:func:`search_hypervolume`) and by the benchmarks: the *nadir* of the
scored trials considered, i.e. their lowest accuracy and :data:`REFERENCE_FLOPS_MARGIN` (1.1) ×
their highest FLOPs. The margin keeps the costliest front member's area above zero; the
accuracy has none, so the least accurate trial adds no area (a lone trial's hypervolume is 0),
and the value measures the trade-off the search found rather than the distance from a useless
model at accuracy 0. The reference follows the trials: compare hypervolumes under one reference
(the benchmarks pass the nadir of all their arms' trials), or the final values of searches.

Optuna 5 has the pieces (``optuna.study._multi_objective._is_pareto_front``,
``optuna._hypervolume.compute_hypervolume``) but only as private modules or through a
``Study`` (``optuna.visualization.plot_hypervolume_history``); none is public API. The 2-D
versions are a few lines of NumPy, written here to the same recipe and checked against
Optuna's in the tests.
"""

from __future__ import annotations

import csv
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from pipeline.errors import UsageError
from pipeline.outcome import OBJECTIVES
from pipeline.preflight import check_writable_path
from pipeline.space import HYPERPARAMETERS

__all__ = [
    "TrialRecord",
    "export_configs",
    "hypervolume",
    "knee",
    "pareto_front",
    "plot_pareto",
    "reference_point",
    "search_hypervolume",
    "select",
    "write_front_csv",
]

TrialState = Literal["finished", "pruned", "failed"]

# Settings that shape the search, not a run: `dynalay train --config` has no use for them.
_SEARCH_ONLY_KEYS = frozenset(
    {"name", "folds", "sampler", "pruner", "num_samples", "max_concurrent"}
)


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a search, as the Pareto tools need it.

    ``cv_accuracy`` and ``cv_flops`` carry the names of :data:`pipeline.outcome.OBJECTIVES`
    (:func:`select` reads them by those names). ``params`` holds the trial's searched
    hyperparameters. Values read back from MLflow are strings; :func:`select` and
    :func:`export_configs` turn numeric strings back into numbers.
    """

    trial_id: str
    #: The trial's MLflow run id; ``None`` where it is not known (yet).
    run_id: str | None
    state: TrialState
    cv_accuracy: float | None = None
    cv_flops: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scored(self) -> bool:
        """Finished with a finite accuracy and FLOP count: eligible for the front."""
        return (
            self.state == "finished"
            and self.cv_accuracy is not None
            and self.cv_flops is not None
            and math.isfinite(self.cv_accuracy)
            and math.isfinite(self.cv_flops)
        )


def pareto_front(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The non-dominated finished trials, sorted by FLOPs (cheapest first).

    A trial is dominated when another is at least as accurate and at most as costly, and
    strictly better in one of the two. Trials with identical scores do not dominate each other,
    so all of them stay on the front; ties in the order are broken by higher accuracy, then by
    ``trial_id``.
    """
    scored = [record for record in records if record.scored]
    if not scored:
        return []
    # Minimisation form: (flops, -accuracy).
    points = np.array([(r.cv_flops, -r.cv_accuracy) for r in scored], dtype=float)
    # The 2-D sweep of optuna.study._multi_objective._is_pareto_front_2d: on unique points
    # sorted by (flops, -accuracy), a point is on the front iff its -accuracy is a new running
    # minimum. Deduplicating first keeps identical points together on (or off) the front.
    unique, inverse = np.unique(points, axis=0, return_inverse=True)
    running_min = np.minimum.accumulate(unique[:, 1])
    on_front_unique = np.ones(len(unique), dtype=bool)
    on_front_unique[1:] = running_min[1:] < running_min[:-1]
    on_front = on_front_unique[inverse.reshape(-1)]
    front = [record for record, keep in zip(scored, on_front) if keep]
    return sorted(front, key=lambda r: (r.cv_flops, -r.cv_accuracy, r.trial_id))


#: The factor on the highest FLOPs in the hypervolume reference (see :func:`reference_point`).
REFERENCE_FLOPS_MARGIN = 1.1


def reference_point(
    records: Iterable[TrialRecord], margin: float = REFERENCE_FLOPS_MARGIN
) -> tuple[float, float]:
    """The hypervolume reference ``(accuracy, flops)``: the nadir of the scored records.

    That is the lowest accuracy and ``margin`` × the highest FLOPs among the records that are
    :attr:`TrialRecord.scored` (finished, finite); the others are not considered. With no
    scored record, ``(0.0, 0.0)``, under which every hypervolume is 0.
    """
    scored = [r for r in records if r.scored]
    if not scored:
        return (0.0, 0.0)
    return (
        min(r.cv_accuracy for r in scored),  # type: ignore[type-var]
        margin * max(r.cv_flops for r in scored),  # type: ignore[type-var]
    )


def search_hypervolume(records: Iterable[TrialRecord]) -> float:
    """The hypervolume of the records' front against their :func:`reference_point`."""
    records = list(records)
    front = pareto_front(records)
    return hypervolume([(r.cv_accuracy, r.cv_flops) for r in front], reference_point(records))  # type: ignore[misc]


def hypervolume(
    points: Iterable[tuple[float, float]], reference: tuple[float, float]
) -> float:
    """The area dominated by ``(accuracy, flops)`` points and bounded by ``reference``.

    Accuracy is maximised and FLOPs minimised, so the area is that of the union of the
    rectangles ``[flops, ref_flops] × [ref_accuracy, accuracy]``. Points not strictly better than
    the reference in both objectives, and non-finite points, add nothing.

    Args:
        points: ``(accuracy, flops)`` pairs, e.g. ``[(r.cv_accuracy, r.cv_flops) for r in front]``.
        reference: ``(accuracy, flops)``, see :func:`reference_point`.
    """
    ref_accuracy, ref_flops = reference
    array = np.array([p for p in points], dtype=float).reshape(-1, 2)
    inside = (array[:, 0] > ref_accuracy) & (array[:, 1] < ref_flops)
    keep = np.all(np.isfinite(array), axis=1) & inside
    array = array[keep]
    if len(array) == 0:
        return 0.0
    # Sweep from cheap to costly: between one point's FLOPs and the next (the reference after
    # the last), the best accuracy reached so far is the height of the dominated region.
    array = array[np.lexsort((-array[:, 0], array[:, 1]))]
    best_accuracy = np.maximum.accumulate(array[:, 0])
    widths = np.diff(np.append(array[:, 1], ref_flops))
    return float(widths @ (best_accuracy - ref_accuracy))


def knee(records: Iterable[TrialRecord]) -> TrialRecord:
    """The knee of the front: the trial that bulges furthest toward "accurate and cheap".

    With accuracy and FLOPs each rescaled to [0, 1] over the front, the extremes (cheapest,
    most accurate) lie at (0, 0) and (1, 1); the knee is the point furthest from the line
    joining them on the side of the ideal corner (cheap, accurate). Only that side counts: a
    point in a dent of the front is far from the line too, but it is the worst trade-off, not
    the best. With one or two points, or none on the ideal side, the cheapest is returned.
    The front is computed first, so any records may be passed.

    Raises:
        UsageError: no finished trial has scores.
    """
    front = pareto_front(records)
    if not front:
        raise UsageError("no finished trial with accuracy and FLOPs to choose a knee from")
    return front[knee_index([r.cv_accuracy for r in front], [r.cv_flops for r in front])]


def knee_index(accuracy: Sequence[float], flops: Sequence[float]) -> int:
    """Index of the knee among ``(accuracy, flops)`` points sorted by FLOPs (a front).

    With both rescaled to [0, 1], the knee is the point furthest above the line joining the
    cheapest and the most expensive point (toward "cheap and accurate"); with fewer than three
    points, a flat range, or nothing above the line, the cheapest (index 0).
    """
    acc, cost = np.asarray(accuracy, dtype=float), np.asarray(flops, dtype=float)
    if len(acc) < 3 or np.ptp(cost) == 0 or np.ptp(acc) == 0:
        return 0
    bulge = (acc - acc.min()) / np.ptp(acc) - (cost - cost.min()) / np.ptp(cost)
    best = int(np.argmax(bulge))  # the first (cheapest) on ties
    return best if bulge[best] > 0 else 0


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_CLAUSE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*([^\s=<>!]\S*)\s*$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def select(records: Iterable[TrialRecord], expr: str) -> list[TrialRecord]:
    """The records satisfying every clause of ``expr``, in their given order.

    ``expr`` is a comma-separated conjunction of ``field op value`` clauses, e.g.
    ``cv_accuracy>=0.97`` or ``cv_flops<2e5,cv_accuracy>=0.9``. Fields: ``cv_accuracy``,
    ``cv_flops``, or a hyperparameter name. Operators: ``>= <= > < == !=``. Values: numbers;
    ``==`` and ``!=`` also take a bare word for categorical hyperparameters
    (``backward==implicit``). Nothing is evaluated as code. A record lacking the field, or
    whose value cannot be compared, does not match.

    Pass :func:`pareto_front`'s result to choose among Pareto-optimal trials only.

    Not MLflow's ``filter_string`` (``MlflowClient.search_runs``): MLflow stores params as
    strings and compares them only with ``=``, ``!=``, ``LIKE`` and ``ILIKE``, so the numeric
    hyperparameter clauses this takes (``alpha<0.25``, ``max_iter>15`` on MLflow's string
    params) cannot be said there, and selection also runs on records that never were MLflow
    runs (a study, a benchmark).

    Raises:
        UsageError: the expression is empty or a clause is malformed or names an unknown field.
    """
    records = list(records)
    known = {*OBJECTIVES, *HYPERPARAMETERS}
    for record in records:
        known.update(record.params)
    clauses = [_parse_clause(text, expr, known) for text in expr.split(",")]
    return [r for r in records if all(_matches(r, clause) for clause in clauses)]


_Clause = tuple[str, Callable[[Any, Any], bool], Any]


def _parse_clause(text: str, expr: str, known: set[str]) -> _Clause:
    match = _CLAUSE.match(text)
    if not match:
        raise UsageError(
            f"--select {expr!r}: cannot read {text.strip()!r}; "
            "expected FIELD OP VALUE with OP one of >= <= > < == !=, clauses joined by commas "
            "(e.g. cv_flops<2e5,cv_accuracy>=0.9)"
        )
    name, op, raw = match.groups()
    if name not in known:
        raise UsageError(
            f"--select {expr!r}: unknown field {name!r} (known: {', '.join(sorted(known))})"
        )
    if _NUMBER.match(raw):
        value: Any = float(raw)
    elif op in ("==", "!=") and _WORD.match(raw):
        value = raw
    else:
        raise UsageError(
            f"--select {expr!r}: {raw!r} in {text.strip()!r} is not a number"
            + ("" if op in ("==", "!=") else " (words only go with == and !=)")
        )
    return name, _COMPARISONS[op], value


def _matches(record: TrialRecord, clause: _Clause) -> bool:
    name, compare, wanted = clause
    if name in OBJECTIVES:
        actual = getattr(record, name)
    elif name in record.params:
        actual = _plain(record.params[name])
    else:
        return False
    if actual is None:
        return False
    if isinstance(wanted, float):
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return False
        return bool(compare(float(actual), wanted))
    return bool(compare(str(actual), wanted))


def _plain(value: Any) -> Any:
    """A YAML-friendly Python value: NumPy scalars unwrapped, MLflow's strings made numbers."""
    if isinstance(value, np.generic):
        return value.item()
    if not isinstance(value, str):
        return value
    if value in ("True", "true"):
        return True
    if value in ("False", "false"):
        return False
    if value == "None":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def export_configs(
    records: Sequence[TrialRecord],
    path: str | Path,
    dataset: str,
    model: str,
    fixed: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write each record as a run config for ``dynalay train --config FILE``.

    Each file is one flat mapping: ``dataset``, ``model``, then the ``fixed`` settings, then the
    trial's hyperparameters (a trial's own value wins over a fixed one of the same name). Keys
    that configure only the search (folds, sampler, pruner, num_samples, max_concurrent, name)
    and ``None`` values are left out, so the train defaults apply.

    One record is written to ``path`` itself. Several are written one file per record, to
    ``path`` with ``_<trial_id>`` before the suffix (``best.yaml`` → ``best_ab12_00003.yaml``):
    each file is then directly usable with ``--config``, which a YAML list would not be.

    Args:
        records: the trials to export, e.g. :func:`select`'s result or ``[knee(records)]``.
        path: the output file (its folder is created).
        dataset, model: the search's data set and model name.
        fixed: the search's fixed settings, e.g. :meth:`SearchSpace.fixed_settings` or the
            search run's MLflow params (strings are turned back into numbers).

    Returns:
        The paths written, in the order of ``records``.

    Raises:
        UsageError: ``records`` is empty, or a file cannot be written (``path`` is a directory,
            its folder cannot be created, no permission).
    """
    if not records:
        raise UsageError(f"{path}: no trials to export")
    path = Path(path)
    check_writable_path(path, "--export", directory=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--export {path}: cannot create {path.parent} ({error.strerror})") from None
    written: list[Path] = []
    for record in records:
        target = path if len(records) == 1 else _numbered(path, record.trial_id)
        config: dict[str, Any] = {"dataset": dataset, "model": model}
        for source in (fixed or {}, record.params):
            for key, value in source.items():
                plain = _plain(value)
                if key in _SEARCH_ONLY_KEYS or key in ("dataset", "model") or plain is None:
                    continue
                config[key] = plain
        try:
            target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        except OSError as error:
            raise UsageError(f"--export {target}: cannot write ({error.strerror})") from None
        written.append(target)
    return written


def write_front_csv(front: Sequence[TrialRecord], path: str | Path) -> Path:
    """``pareto.csv``: one row per front member, objectives first, then hyperparameters."""
    names = sorted({k for r in front for k in r.params})
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial_id", *OBJECTIVES, *names])
        for r in front:
            writer.writerow([r.trial_id, r.cv_accuracy, r.cv_flops, *(r.params.get(n, "") for n in names)])
    return path


def _numbered(path: Path, trial_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", trial_id)
    return path.with_name(f"{path.stem}_{safe}{path.suffix or '.yaml'}")


def plot_pareto(records: Iterable[TrialRecord], path: str | Path) -> Path:
    """Draw finished trials (grey) and the front (highlighted, as a staircase) to a PNG.

    x is FLOPs per sample (log scale when the range spans more than a factor of 10), y is CV
    accuracy; front points are labelled with their trial ids. Uses Matplotlib's object API
    (no pyplot), so it is safe off the main thread and needs no display.
    """
    from matplotlib.figure import Figure  # heavy import; only plotting needs it

    records = list(records)
    scored = [r for r in records if r.scored]
    front = pareto_front(scored)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    if scored:
        axes.scatter(
            [r.cv_flops for r in scored],
            [r.cv_accuracy for r in scored],
            color="0.65",
            s=18,
            label=f"finished ({len(scored)})",
        )
        axes.step(
            [r.cv_flops for r in front],
            [r.cv_accuracy for r in front],
            where="post",
            color="tab:red",
            linewidth=1,
        )
        axes.scatter(
            [r.cv_flops for r in front],
            [r.cv_accuracy for r in front],
            color="tab:red",
            s=30,
            zorder=3,
            label=f"Pareto front ({len(front)})",
        )
        for r in front:
            axes.annotate(r.trial_id, (r.cv_flops, r.cv_accuracy), fontsize=7,
                          xytext=(4, -8), textcoords="offset points")
        flops = [r.cv_flops for r in scored]
        if min(flops) > 0 and max(flops) / min(flops) > 10:
            axes.set_xscale("log")
        axes.legend(loc="lower right")
    else:
        axes.text(0.5, 0.5, "no finished trials", ha="center", va="center",
                  transform=axes.transAxes)
    axes.set_xlabel("FLOPs per sample")
    axes.set_ylabel("CV accuracy")
    axes.set_title(f"Accuracy vs compute ({len(records)} trials)")
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
    return path
