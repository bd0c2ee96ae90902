"""Pareto selection: front, hypervolume, knee, select, export, plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.errors import UsageError
from pipeline.pareto import (
    TrialRecord,
    export_configs,
    hypervolume,
    knee,
    pareto_front,
    plot_pareto,
    reference_point,
    search_hypervolume,
    select,
    write_front_csv,
)


def rec(
    trial: str, acc: float | None, flops: float | None, state: str = "finished", **params: object
) -> TrialRecord:
    return TrialRecord(trial, f"run-{trial}", state, acc, flops, params)  # type: ignore[arg-type]


RECORDS = [
    rec("a", 0.80, 1.0e5, alpha=0.5, max_iter=5),
    rec("b", 0.90, 2.0e5, alpha=0.4, max_iter=10),
    rec("c", 0.85, 3.0e5, alpha=0.3, max_iter=15),  # dominated by b
    rec("d", 0.95, 4.0e5, alpha=0.2, max_iter=20),
    rec("e", 0.99, 0.5e5, state="pruned"),  # would dominate everything; pruned never counts
    rec("f", None, None, state="failed"),
    rec("g", 0.90, 2.5e5, alpha=0.1, max_iter=10),  # same accuracy as b, costlier: dominated
]


def ids(records: list[TrialRecord]) -> list[str]:
    return [r.trial_id for r in records]


def dominates(p: TrialRecord, q: TrialRecord) -> bool:
    return (
        p.cv_accuracy >= q.cv_accuracy
        and p.cv_flops <= q.cv_flops
        and (p.cv_accuracy > q.cv_accuracy or p.cv_flops < q.cv_flops)
    )


def test_front_is_finished_non_dominated_and_sorted_by_flops() -> None:
    assert ids(pareto_front(RECORDS)) == ["a", "b", "d"]


def test_front_keeps_identical_points_and_drops_same_flops_less_accurate() -> None:
    records = [rec("x", 0.9, 1e5), rec("y", 0.9, 1e5), rec("z", 0.8, 1e5), rec("w", 0.95, 2e5)]
    assert ids(pareto_front(records)) == ["x", "y", "w"]


def test_front_matches_brute_force_on_random_records() -> None:
    rng = np.random.default_rng(0)
    # Rounded values make ties frequent.
    records = [
        rec(str(i), round(float(rng.uniform(0.5, 1.0)), 2), round(float(rng.uniform(1, 10))))
        for i in range(300)
    ]
    front = pareto_front(records)
    expected = {r.trial_id for r in records if not any(dominates(o, r) for o in records)}
    assert set(ids(front)) == expected
    assert [r.cv_flops for r in front] == sorted(r.cv_flops for r in front)


def test_empty_and_unscored_inputs() -> None:
    assert pareto_front([]) == []
    assert pareto_front([rec("n", float("nan"), 1e5), rec("p", 0.9, 1e5, "pruned")]) == []


def test_hypervolume_hand_computed() -> None:
    # Rectangles [flops, 10] x [0, acc]: (0.5, 2) -> 8 x 0.5; (0.8, 5) adds 5 x 0.3.
    assert hypervolume([(0.5, 2.0), (0.8, 5.0)], (0.0, 10.0)) == pytest.approx(4.0 + 1.5)
    # A dominated point adds nothing; order does not matter.
    assert hypervolume([(0.8, 5.0), (0.4, 6.0), (0.5, 2.0)], (0.0, 10.0)) == pytest.approx(5.5)
    # One point: a single rectangle; a reference accuracy above 0 shrinks it.
    assert hypervolume([(0.9, 1.0)], (0.0, 3.0)) == pytest.approx(1.8)
    assert hypervolume([(0.9, 1.0)], (0.5, 3.0)) == pytest.approx(0.8)
    # Points outside the reference box, or none, give 0.
    assert hypervolume([(0.9, 12.0)], (0.0, 10.0)) == 0.0
    assert hypervolume([], (0.0, 10.0)) == 0.0


def test_hypervolume_of_records_with_reference_point() -> None:
    front = pareto_front(RECORDS)
    ref = reference_point(RECORDS)
    # The nadir of the finished trials: a's accuracy, 1.1 x d's FLOPs (e is pruned, f failed).
    assert ref == (0.80, pytest.approx(4.4e5))
    hv = hypervolume([(r.cv_accuracy, r.cv_flops) for r in front], ref)
    # a: no height above the reference, b: [2e5, 4e5) x 0.10, d: [4e5, 4.4e5) x 0.15.
    assert hv == pytest.approx(2e5 * 0.10 + 0.4e5 * 0.15)
    assert search_hypervolume(RECORDS) == pytest.approx(hv)
    # Dominated and pruned points do not change it (the pruned one is not passed).
    every_finished = [(r.cv_accuracy, r.cv_flops) for r in RECORDS if r.state == "finished"]
    assert hypervolume(every_finished, ref) == pytest.approx(hv)


def test_reference_point_without_scored_trials_gives_zero_volume() -> None:
    unscored = [rec("e", 0.99, 0.5e5, state="pruned"), rec("f", None, None, state="failed")]
    assert reference_point(unscored) == (0.0, 0.0)
    assert search_hypervolume(unscored) == 0.0
    # One finished trial is its own nadir in accuracy: it encloses no area.
    assert search_hypervolume([rec("a", 0.8, 1e5)]) == 0.0


def test_hypervolume_agrees_with_optunas() -> None:
    # Optuna's implementation is private (optuna._hypervolume); it checks ours, in Optuna's
    # minimisation form (-accuracy, flops).
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 40):
        points = np.column_stack([rng.uniform(0.5, 1.0, size), rng.uniform(1e4, 1e6, size)])
        reference = (0.45, 1.2e6)
        ours = hypervolume([tuple(p) for p in points], reference)
        theirs = compute_hypervolume(
            np.column_stack([-points[:, 0], points[:, 1]]),
            np.array([-reference[0], reference[1]]),
        )
        assert ours == pytest.approx(theirs, rel=1e-12)


def test_front_csv_has_objectives_then_hyperparameters(tmp_path: Path) -> None:
    path = write_front_csv(pareto_front(RECORDS), tmp_path / "pareto.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "trial_id,cv_accuracy,cv_flops,alpha,max_iter"
    assert lines[1] == "a,0.8,100000.0,0.5,5"
    assert len(lines) == 1 + 3


def test_knee() -> None:
    # Normalised: a (0, 0), k (0.1, 0.8), m (0.5, 0.9), z (1, 1): k bulges furthest.
    records = [
        rec("a", 0.80, 0.0), rec("k", 0.88, 10.0), rec("m", 0.89, 50.0), rec("z", 0.90, 100.0)
    ]
    assert knee(records).trial_id == "k"
    assert knee(RECORDS).trial_id == "b"
    # Two points: no knee, the cheaper one; dominated/pruned records are ignored.
    assert knee([rec("a", 0.8, 1.0), rec("b", 0.9, 2.0), rec("c", 0.7, 3.0)]).trial_id == "a"
    # A front with a dent and no bulge: the cheapest.
    assert knee([rec("a", 0.8, 0.0), rec("m", 0.81, 90.0), rec("z", 0.9, 100.0)]).trial_id == "a"
    with pytest.raises(UsageError):
        knee([rec("p", 0.9, 1.0, "pruned")])


def test_select_conjunctions() -> None:
    front = pareto_front(RECORDS)
    assert ids(select(front, "cv_accuracy>=0.9")) == ["b", "d"]
    assert ids(select(front, "cv_flops<2e5, cv_accuracy>=0.8")) == ["a"]
    assert ids(select(front, "cv_flops<=2e5,cv_accuracy>0.85")) == ["b"]
    assert ids(select(RECORDS, "max_iter==10")) == ["b", "g"]
    assert ids(select(RECORDS, "alpha<0.25")) == ["d", "g"]
    assert ids(select(RECORDS, "cv_accuracy!=0.9")) == ["a", "c", "d", "e"]


def test_select_reads_mlflow_string_params_and_words() -> None:
    records = [
        rec("s", 0.9, 1e5, max_iter="10", backward="implicit"),
        rec("t", 0.9, 1e5, max_iter="20", backward="jfb"),
    ]
    assert ids(select(records, "max_iter>15")) == ["t"]
    assert ids(select(records, "backward==implicit")) == ["s"]
    assert ids(select(records, "backward!=implicit")) == ["t"]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "cannot read ''"),
        ("cv_accuracy", "cannot read 'cv_accuracy'"),
        ("cv_accuracy=>0.9", "cannot read"),
        ("cv_accuracy>=", "cannot read"),
        ("accuracy>=0.9", "unknown field 'accuracy'"),
        ("cv_accuracy>=high", "'high' in 'cv_accuracy>=high' is not a number"),
        ("cv_accuracy>=0.9,", "cannot read ''"),
        ("__import__('os')>=1", "cannot read"),
        ("cv_accuracy>=0.9 and cv_flops<1", "clauses joined by commas"),
    ],
)
def test_select_errors(expr: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        select(RECORDS, expr)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_export_single_record_round_trips(tmp_path: Path) -> None:
    fixed = {"dataset": "digits", "model": "dynalay", "folds": "9", "seed": "0", "sampler": "tpe",
             "pruner": "wilcoxon", "epochs": "2", "width": "16", "backward": "implicit",
             "warmup_epochs": "None"}
    record = rec("b", 0.9, 2e5, alpha=0.4, max_iter=np.int64(10), fwd_tol="1e-05")
    [path] = export_configs([record], tmp_path / "out" / "best.yaml", "digits", "dynalay", fixed)
    assert path == tmp_path / "out" / "best.yaml"
    config = yaml.safe_load(path.read_text())
    assert config == {
        "dataset": "digits",
        "model": "dynalay",
        "seed": 0,
        "epochs": 2,
        "width": 16,
        "backward": "implicit",
        "alpha": 0.4,
        "max_iter": 10,
        "fwd_tol": 1e-05,
    }
    assert list(config)[:2] == ["dataset", "model"]


def test_export_several_records_one_file_each(tmp_path: Path) -> None:
    front = pareto_front(RECORDS)
    paths = export_configs(front, tmp_path / "front.yaml", "digits", "dynalay", {"width": 16})
    assert [p.name for p in paths] == ["front_a.yaml", "front_b.yaml", "front_d.yaml"]
    for path, record in zip(paths, front):
        config = yaml.safe_load(path.read_text())
        assert config["alpha"] == record.params["alpha"] and config["width"] == 16
    with pytest.raises(UsageError):
        export_configs([], tmp_path / "none.yaml", "digits", "dynalay", {})


def test_export_that_cannot_write_is_one_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--export \S+: is a directory; give a file name$"):
        export_configs([RECORDS[0]], tmp_path, "digits", "dynalay")
    # Several records: one file each, and one of those names is taken by a folder.
    (tmp_path / "front_b.yaml").mkdir()
    with pytest.raises(UsageError, match=r"--export \S+/front_b.yaml: cannot write \(Is a directory\)$"):
        export_configs([RECORDS[0], RECORDS[1]], tmp_path / "front.yaml", "digits", "dynalay")


def test_plot_pareto_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = plot_pareto(RECORDS, tmp_path / "plots" / "pareto.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = plot_pareto([], tmp_path / "empty.png")
    assert empty.stat().st_size > 0
