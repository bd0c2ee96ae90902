"""Argparse value types for the ``dynalay`` command line: numbers within a range.

Each flag's type is one :func:`bounded` call, so the message of a refused value reads the same
everywhere ("--folds: must be an integer >= 2, got 1") and argparse turns it into the CLI's
one-line usage error.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from pipeline.space import MAX_SEED


def bounded(
    kind: type[int] | type[float],
    low: float | None = None,
    high: float | None = None,
    *,
    exclusive_low: bool = False,
    what: str | None = None,
) -> Callable[[str], int | float]:
    """An argparse ``type=`` that parses ``kind`` and requires ``low <= value <= high``.

    Args:
        kind: ``int`` or ``float`` (a float must also be finite).
        low, high: the inclusive bounds; None for none.
        exclusive_low: ``value > low`` instead of ``>=``.
        what: how the message names the value (default "an integer" / "a number").
    """
    noun = what or ("an integer" if kind is int else "a number")
    def show(bound: float) -> str:
        return str(int(bound)) if kind is int else f"{bound:g}"

    parts = []
    if low is not None:
        parts.append(f"{'>' if exclusive_low else '>='} {show(low)}")
    if high is not None:
        parts.append(f"<= {show(high)}")
    rule = f"must be {noun} {' and '.join(parts)}".rstrip()

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{rule}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        too_low = low is not None and (value <= low if exclusive_low else value < low)
        if too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__}_value"  # argparse names the type in some messages
    return parse


positive_int = bounded(int, 1)
fold_count = bounded(int, 2, what="a fold count (an integer)")
positive_float = bounded(float, 0, exclusive_low=True)
non_negative_float = bounded(float, 0)
seed_value = bounded(int, 0, MAX_SEED)
tcp_port = bounded(int, 1, 65535, what="a TCP port")
