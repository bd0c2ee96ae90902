"""A seeded path-tracing task where iteration provably helps: "does the start's path end at the goal?"

Each sample is an ``n × n`` grid of cells (default 16; the border is wall) holding two thin
paths, each one cell wide, that wander through a walled background. A path never touches
itself or the other path (no two of its cells are edge neighbours unless consecutive, and the
paths keep one cell apart), so the open cells are exactly two chains. The start S marks one end
of the first path; the goal T marks the far end of the first path (label 1) or an end of the
second (label 0): a fair coin decides, so labels are balanced.

Image: ``3 × 2n × 2n`` floats in {0, 1}, each cell drawn as a 2 × 2 pixel block: channel 0 the
walls (every cell off the paths, the border included), channel 1 the start, channel 2 the goal.
The ConvBackbone's first layer works at half resolution, so its state has one position per cell.

Difficulty (``difficulty_test``): the length L of the start's path in steps (cells − 1), drawn
uniformly from ``2..max_length`` before anything else. A flood from S needs exactly L steps to
cover its path, whatever the label: to reach T when the label is 1, to find that the path ends
elsewhere when it is 0. The second path's length is drawn from the same range, independently.

Why a plain pass fails on long paths and a fixed point does not. Locally both labels look alike:
every path has two ends, one of them marked in either label, and the paths are drawn alike. What
decides the label is whether one chain joins S to T, which only tracing the chain tells; a few
3 × 3 convolutions and a global average trace a few cells at most, and beyond that can only
guess from cues such as how close S and T lie (a joined pair tends to lie closer; on small
grids that cue is strong, see benchmarks/algorithmic_task.py). A fixed-point layer
z = relu(u + s(z)) traces it: u very negative on walls and positive at S, and s a flood. With
the max-norm state path of ``models.contraction.ContractiveMaxSpread`` (the maximum over the 4
neighbours, norm c) the flood reads c^L at the path's far end (0.99^32 ≈ 0.72) and exactly 0 on
the other path; a linear L2-contractive state path passes on about c/4 per step along a one-cell
chain and cannot carry it (see the tests). Under φ(u + s(z)) the seeded start also adds its own
echo and grows towards u/(1 − c), so the solve never settles before ``max_iter``; the flood state
path (``ContractiveFlood``, max(φ(u), s(z) − relu(−u))) settles after exactly L + 1 steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.config import ModelSpec, TensorPair
from pipeline.data.dataset import Dataset

__all__ = ["CELL_PIXELS", "MazeSample", "draw_sample", "make_maze"]

CELL_PIXELS = 2
"""Each grid cell is drawn as a CELL_PIXELS × CELL_PIXELS block."""

_STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))


@dataclass(frozen=True)
class MazeSample:
    """One drawn grid.

    Attributes:
        walls: bool n×n, True off the paths (the border included).
        start, goal: (row, column) of the two marked cells.
        label: 1 when the start's path ends at the goal, else 0.
        distance: steps along the start's path from end to end: the difficulty.
        paths: the two paths' cells in order, the start's first (the start its first cell).
    """

    walls: np.ndarray
    start: tuple[int, int]
    goal: tuple[int, int]
    label: int
    distance: int
    paths: tuple[tuple[tuple[int, int], ...], ...]


def _grow_path(blocked: np.ndarray, length: int, rng: np.random.Generator,
               tries: int = 200) -> list[tuple[int, int]] | None:
    """A self-avoiding, self-non-touching walk of `length` steps over cells not `blocked`.

    Each step goes to an edge neighbour that is free and has no edge neighbour on the path but
    the cell it comes from, so the chain's only shortcuts are its own steps. The walk keeps its
    heading with probability 1/2 (longer, less curled paths fit). None after `tries` failures.
    """
    n = blocked.shape[0]
    free = np.argwhere(~blocked)
    if len(free) == 0:
        return None
    for _ in range(tries):
        head = tuple(int(v) for v in free[rng.integers(len(free))])
        path = [head]
        on_path = {head}
        heading = int(rng.integers(4))
        while len(path) <= length:
            options = []
            for k, (dr, dc) in enumerate(_STEPS):
                cell = (path[-1][0] + dr, path[-1][1] + dc)
                if not (0 <= cell[0] < n and 0 <= cell[1] < n) or blocked[cell] or cell in on_path:
                    continue
                touches = sum((cell[0] + er, cell[1] + ec) in on_path for er, ec in _STEPS)
                if touches == 1:  # only the cell it comes from
                    options.append(k)
            if not options:
                break
            k = heading if heading in options and rng.random() < 0.5 else options[rng.integers(len(options))]
            heading = k
            cell = (path[-1][0] + _STEPS[k][0], path[-1][1] + _STEPS[k][1])
            path.append(cell)
            on_path.add(cell)
        if len(path) == length + 1:
            return path
    return None


def _with_margin(blocked: np.ndarray, path: list[tuple[int, int]]) -> np.ndarray:
    """`blocked` plus the path's cells and their edge neighbours (keeps the next path apart)."""
    out = blocked.copy()
    n = out.shape[0]
    for r, c in path:
        out[r, c] = True
        for dr, dc in _STEPS:
            if 0 <= r + dr < n and 0 <= c + dc < n:
                out[r + dr, c + dc] = True
    return out


def draw_sample(rng: np.random.Generator, n: int = 16, max_length: int | None = None) -> MazeSample:
    """Draw one sample (see the module docstring).

    The label comes from a fair coin and the start's path length L from a uniform draw in
    2..max_length (default 2·n), both first; the second path's length is drawn alike. Paths are
    redrawn until both fit.

    Raises:
        RuntimeError: 1,000 attempts in a row found no room for the two paths.
    """
    max_length = 2 * n if max_length is None else max_length
    label = int(rng.integers(0, 2))
    length = int(rng.integers(2, max_length + 1))
    other_length = int(rng.integers(2, max_length + 1))
    border = np.zeros((n, n), dtype=bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    for _ in range(1_000):
        first = _grow_path(border, length, rng, tries=20)
        if first is None:
            continue
        second = _grow_path(_with_margin(border, first), other_length, rng, tries=20)
        if second is None:
            continue
        if rng.integers(0, 2):  # either end of the second path may carry the goal
            second = second[::-1]
        walls = np.ones((n, n), dtype=bool)
        for r, c in first + second:
            walls[r, c] = False
        goal = first[-1] if label == 1 else second[-1]
        return MazeSample(walls, first[0], goal, label, length, (tuple(first), tuple(second)))
    raise RuntimeError(f"no room for paths of {length} and {other_length} steps in a {n}×{n} grid")


def _render(samples: list[MazeSample], n: int) -> torch.Tensor:
    """The samples as ``N × 3 × 2n × 2n`` float images (walls, start, goal)."""
    cells = np.zeros((len(samples), 3, n, n), dtype=np.float32)
    for i, sample in enumerate(samples):
        cells[i, 0] = sample.walls
        cells[i, 1][sample.start] = 1.0
        cells[i, 2][sample.goal] = 1.0
    pixels = cells.repeat(CELL_PIXELS, axis=2).repeat(CELL_PIXELS, axis=3)
    return torch.from_numpy(np.ascontiguousarray(pixels))


def _split(n_samples: int, n: int, max_length: int | None,
           rng: np.random.Generator) -> tuple[TensorPair, torch.Tensor]:
    samples = [draw_sample(rng, n, max_length) for _ in range(n_samples)]
    labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
    difficulty = torch.tensor([s.distance for s in samples], dtype=torch.float32)
    return TensorPair(_render(samples, n), labels), difficulty


def make_maze(n_train: int = 4000, n_test: int = 1000, size: int = 16, seed: int = 0,
              max_length: int | None = None) -> Dataset:
    """Generate the task (see the module docstring); the same seed gives the same data.

    Args:
        n_train, n_test: samples per split.
        size: cells per side, 8..16 (the images are ``2·size`` pixels wide).
        seed: seeds everything drawn.
        max_length: the longest start path, in steps (2..2·size; default 2·size).
    """
    if not 8 <= size <= 16:
        raise ValueError(f"size must lie in 8..16 (images of 16..32 pixels), got {size}")
    if max_length is not None and not 2 <= max_length <= 2 * size:
        raise ValueError(f"max_length must lie in 2..{2 * size}, got {max_length}")
    rng = np.random.default_rng(seed)
    train, _ = _split(n_train, size, max_length, rng)
    test, difficulty = _split(n_test, size, max_length, rng)
    return Dataset(
        name="maze",
        spec=ModelSpec(task="image", input_shape=(3, CELL_PIXELS * size, CELL_PIXELS * size),
                       num_classes=2),
        train=train,
        test=test,
        difficulty_test=difficulty,
    )
