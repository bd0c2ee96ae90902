"""A seeded grid-connectivity task where iteration provably helps: "are the two marks connected?"

Each sample is an ``n × n`` grid of cells (default 16) cut into regions by a few thin walls
that run from border to border, wandering as they go. Two cells are marked, the start S and the
goal T. The label is 1 when T can be reached from S by steps between edge-adjacent open cells,
else 0. Labels are balanced (each sample draws its label first, then a goal that fits it).

Image: ``3 × 2n × 2n`` floats in {0, 1}, each cell drawn as a 2 × 2 pixel block: channel 0 the
walls (the grid's border is wall), channel 1 the start, channel 2 the goal. The ConvBackbone's
first layer works at half resolution, so its state has exactly one position per cell.

Why iteration helps, and why a plain pass cannot. A plain pass is a few 3 × 3 convolutions
followed by a global average and a linear head: its logit is a sum of terms each computed from
one window of about 12 × 12 cells. Whether S and T share a region depends on the whole wall
between them; once they are farther apart than one window, no term sees both, and a plain
pass can only guess from statistics that do not depend on the label. A fixed-point layer
z = relu(u + s(z)) can flood-fill: u very negative on walls and positive at S, s a positive
(contractive) spread to the neighbours, and at the fixed point every cell of S's region is
positive while every other cell is exactly 0 (the unique fixed point is 0 on a region without a
source). Each application advances the flood by one cell, so it needs at least as many
iterations as T is steps away from S. The signal it leaves at T shrinks geometrically with the
distance (a contraction cannot keep it up): with a hand-set flood of norm 0.99 its median at
connected goals is about 1e-2 for D ≤ 8, 3e-5 for D in 9..14 and 1e-6 for D in 15..20. Walls
therefore have no narrow doors here (each would cost another factor): regions are open areas.

Difficulty (``difficulty_test``): the Manhattan distance D from S to T in cells, 2..20 (at the
default 16 × 16; 2..1.25·n in general). No path between them is shorter, so a flood from S
needs at least D iterations to reach T, and
beyond about 12 cells no window of the plain pass holds both. D is drawn before the grid and
the label independently, and each grid and start are kept only when, D cells away, they offer
both a connected and a separated goal, so neither D nor the grid says anything about the label.
Walls are 4-connected, so 4- and 8-neighbour floods agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from models.config import ModelSpec, TensorPair
from pipeline.data.dataset import Dataset

__all__ = ["MazeSample", "draw_sample", "make_maze"]

CELL_PIXELS = 2
"""Each grid cell is drawn as a CELL_PIXELS × CELL_PIXELS block."""

_FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class MazeSample:
    """One drawn grid.

    Attributes:
        walls: bool n×n, True on wall cells (the border included).
        start, goal: (row, column) of the two marked cells.
        label: 1 when the goal can be reached from the start, else 0.
        distance: Manhattan distance from start to goal, in cells: the difficulty.
    """

    walls: np.ndarray
    start: tuple[int, int]
    goal: tuple[int, int]
    label: int
    distance: int


def _wall_curve(walls: np.ndarray, rng: np.random.Generator, horizontal: bool) -> None:
    """Draw one 4-connected wall from one border to the opposite one, wandering sideways.

    The wall advances one cell along its axis per column (or row) and, before each advance,
    drifts sideways by a smoothed random amount, filling the cells it crosses so that the curve
    stays edge-connected (an 8-neighbour step could not then pass it diagonally).
    """
    n = walls.shape[0]
    grid = walls if horizontal else walls.T  # a view: drawing a vertical wall draws into walls
    row = int(rng.integers(n // 4, n - n // 4))
    drift = 0.0
    for column in range(n):
        drift = 0.7 * drift + rng.normal(0.0, 0.8)
        target = int(np.clip(round(row + drift), 2, n - 3))
        low, high = sorted((row, target))
        grid[low : high + 1, column] = True
        row = target


def draw_sample(rng: np.random.Generator, n: int = 16, walls_per_grid: tuple[int, int] = (2, 3),
                min_region: int | None = None, max_distance: int | None = None) -> MazeSample:
    """Draw one sample (see the module docstring).

    The label comes from a fair coin and the start-goal distance D (Manhattan, in cells) from
    a uniform draw in 2..max_distance, both before the grid. Walls and a start are drawn until
    the start has, D cells away, both a goal it is connected to and one it is not; the coin
    picks between them. So the grid, the start and D are independent of the label: only where
    the goal lies decides it. Start and goal lie in regions of at least ``min_region`` cells
    (a goal in a small pocket would betray a negative locally). Defaults scale with ``n``:
    ``min_region`` n²/12 cells (21 at n = 16), ``max_distance`` 1.25·n (20 at n = 16).

    Raises:
        RuntimeError: 10,000 grids in a row offered no such start (settings that cannot work).
    """
    min_region = n * n // 12 if min_region is None else min_region
    max_distance = round(1.25 * n) if max_distance is None else max_distance
    label = int(rng.integers(0, 2))
    distance = int(rng.integers(2, max_distance + 1))
    for _ in range(10_000):
        walls = np.zeros((n, n), dtype=bool)
        walls[[0, -1], :] = walls[:, [0, -1]] = True
        for _ in range(int(rng.integers(walls_per_grid[0], walls_per_grid[1] + 1))):
            _wall_curve(walls, rng, horizontal=bool(rng.integers(0, 2)))
        regions, count = ndimage.label(~walls, structure=_FOUR_NEIGHBOURS)
        sizes = np.bincount(regions.ravel(), minlength=count + 1)
        sizes[0] = 0
        cells = np.argwhere(sizes[regions] >= min_region)
        if len(cells) == 0:
            continue
        starts = cells[rng.permutation(len(cells))[:8]]  # a few tries per grid
        for start in starts:
            apart = np.abs(cells - start).sum(axis=1) == distance
            same = regions[cells[:, 0], cells[:, 1]] == regions[tuple(start)]
            connected, separated = cells[apart & same], cells[apart & ~same]
            # Only a start with goals of both kinds at this distance: then the grid and the
            # start are independent of the label, and only where the goal lies decides it.
            if len(connected) == 0 or len(separated) == 0:
                continue
            goals = connected if label == 1 else separated
            goal = goals[rng.integers(len(goals))]
            return MazeSample(walls, (int(start[0]), int(start[1])), (int(goal[0]), int(goal[1])),
                              label, distance)
    raise RuntimeError(
        f"no {n}×{n} grid offered goals of both labels {distance} cells from a start in a region "
        f"of ≥ {min_region} cells"
    )


def _render(samples: list[MazeSample], n: int) -> torch.Tensor:
    """The samples as ``N × 3 × 2n × 2n`` float images (walls, start, goal)."""
    cells = np.zeros((len(samples), 3, n, n), dtype=np.float32)
    for i, sample in enumerate(samples):
        cells[i, 0] = sample.walls
        cells[i, 1][sample.start] = 1.0
        cells[i, 2][sample.goal] = 1.0
    pixels = cells.repeat(CELL_PIXELS, axis=2).repeat(CELL_PIXELS, axis=3)
    return torch.from_numpy(np.ascontiguousarray(pixels))


def _split(n_samples: int, n: int, rng: np.random.Generator) -> tuple[TensorPair, torch.Tensor]:
    samples = [draw_sample(rng, n) for _ in range(n_samples)]
    labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
    difficulty = torch.tensor([s.distance for s in samples], dtype=torch.float32)
    return TensorPair(_render(samples, n), labels), difficulty


def make_maze(n_train: int = 4000, n_test: int = 1000, size: int = 16, seed: int = 0) -> Dataset:
    """Generate the task (see the module docstring); the same seed gives the same data.

    Args:
        n_train, n_test: samples per split.
        size: cells per side (12..16; smaller grids rarely offer both labels far apart); the
            images are ``2·size`` pixels wide.
        seed: seeds everything drawn.
    """
    if not 12 <= size <= 16:
        raise ValueError(f"size must lie in 12..16 (images of 24..32 pixels), got {size}")
    rng = np.random.default_rng(seed)
    train, _ = _split(n_train, size, rng)
    test, difficulty = _split(n_test, size, rng)
    return Dataset(
        name="maze",
        spec=ModelSpec(task="image", input_shape=(3, CELL_PIXELS * size, CELL_PIXELS * size),
                       num_classes=2),
        train=train,
        test=test,
        difficulty_test=difficulty,
    )
