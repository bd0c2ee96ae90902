"""Operating curves: choosing a point, averaging fold curves, the CSV a trial run holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import UsageError
from pipeline.operating_curve import (
    BIASES,
    CurvePoint,
    choose_point,
    efficient_points,
    mean_curve,
    plot_curve,
    read_curve_csv,
    write_curve_csv,
)

# Bias rising: FLOPs fall; one dent (bias 0.5 costs more than bias 1 for less accuracy).
CURVE = [
    CurvePoint(-1e3, 0.90, 4.0e5, 1.0),
    CurvePoint(-1.0, 0.90, 3.0e5, 0.7),
    CurvePoint(0.0, 0.89, 2.0e5, 0.35),
    CurvePoint(0.5, 0.80, 1.6e5, 0.1),
    CurvePoint(1.0, 0.85, 1.5e5, 0.05),
    CurvePoint(1e3, 0.84, 1.0e5, 0.0),
]


def test_efficient_points_drop_dominated_ones() -> None:
    assert [p.bias for p in efficient_points(CURVE)] == [1e3, 1.0, 0.0, -1.0]


@pytest.mark.parametrize(
    ("rule", "bias"),
    [("knee", 0.0), ("max-accuracy", -1.0), ("flops<=2.5e5", 0.0), ("flops<=1.2e5", 1e3), ("bias=0.5", 0.5)],
)
def test_choose_point(rule: str, bias: float) -> None:
    assert choose_point(CURVE, rule).bias == bias


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("flops<=5e4", "no point within 50000 FLOPs"),
        ("bias=0.3", "biases recorded are"),
        ("bias=abc", "'abc' is not a number"),
        ("flops<=inf", "not a finite number"),
        ("cheapest", "expected knee | max-accuracy"),
    ],
)
def test_bad_rules_are_one_line_usage_errors(rule: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as error:
        choose_point(CURVE, rule)
    assert "\n" not in str(error.value)


def test_mean_curve_averages_point_by_point_and_refuses_other_biases() -> None:
    other = [CurvePoint(p.bias, p.accuracy - 0.1, p.flops + 1.0e5, p.fpi_fraction) for p in CURVE]
    mean = mean_curve([CURVE, other])
    assert [p.bias for p in mean] == [p.bias for p in CURVE]
    assert mean[0].accuracy == pytest.approx(0.85) and mean[0].flops == pytest.approx(4.5e5)
    with pytest.raises(ValueError, match="different biases"):
        mean_curve([CURVE, CURVE[:-1] + [CurvePoint(7.0, 0.8, 1.0, 0.0)]])


def test_csv_round_trip_and_plot(tmp_path: Path) -> None:
    assert read_curve_csv(write_curve_csv(CURVE, tmp_path / "c.csv")) == CURVE
    assert plot_curve(CURVE, tmp_path / "c.png").stat().st_size > 1000


def test_bias_grid_spans_every_routing_and_holds_zero() -> None:
    assert BIASES == tuple(sorted(BIASES)) and 0.0 in BIASES
    assert BIASES[0] <= -1e3 and BIASES[-1] >= 1e3
