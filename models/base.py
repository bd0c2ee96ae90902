"""The interface every model in this package implements, and its shared bookkeeping.

A model is an `nn.Module` whose `forward(x)` returns `(logits, ForwardStats)` and whose
`loss(logits, stats, y)` returns `(loss, {name: float})`. Classification logits are (B, K);
language-model logits are (B, T, V) with y (B, T), and one "sample" is one sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones import Backbone
from models.compute import FlopTable
from models.config import ModelSpec
from models.stats import NUM_LAYERS, ForwardStats


def task_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy; over every token for language-model logits (B, T, V)."""
    if logits.dim() == 3:
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    return F.cross_entropy(logits.float(), y)


def per_sample_correct(logits: Tensor, y: Tensor) -> Tensor:
    """float (B,): 1/0 per classified sample; per sequence, the fraction of tokens right."""
    hits = (logits.detach().argmax(dim=-1) == y).float()
    return hits.flatten(1).mean(dim=1) if hits.dim() > 1 else hits


def per_sample_true_probability(logits: Tensor, y: Tensor) -> Tensor:
    """float (B,): the softmax probability of the true class; per sequence, its mean over
    tokens. A graded version of `per_sample_correct` (no gradient)."""
    probability = logits.detach().float().softmax(dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return probability.flatten(1).mean(dim=1) if probability.dim() > 1 else probability


@dataclass(frozen=True)
class LayerCosts:
    """Per-sample FLOPs of each application the backbone can run."""

    stem: float
    inject: tuple[float, float, float]
    state: tuple[float, float, float]
    head: float

    @property
    def plain(self) -> float:
        """The plain pass: stem, the three injections (φ costs nothing), head."""
        return self.stem + sum(self.inject) + self.head

    def state_vector(self, device: torch.device) -> Tensor:
        return torch.tensor(self.state, dtype=torch.float64, device=device)


class _StateApplication(nn.Module):
    """One application s(z) of a state path with its stored weight: what every FPI iteration
    costs. The weight's normalisation (an eigendecomposition per frequency) runs once per solve
    for the whole batch, so it is no part of a sample's per-iteration FLOPs."""

    def __init__(self, state: nn.Module) -> None:
        super().__init__()
        self.state = state

    def forward(self, z: Tensor) -> Tensor:
        return self.state.apply_weight(z, self.state.weight)


class DynaLayModule(nn.Module):
    """Base of DynaLay and its baselines: a backbone, a task and a FLOP table."""

    def __init__(self, backbone: Backbone, spec: ModelSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.spec = spec
        self.flop_table = FlopTable()
        # a tuple, not a ModuleList: the wrappers share the layers' state paths and must not
        # register their parameters a second time
        self._state_applications = tuple(_StateApplication(layer.state) for layer in backbone.layers)

    def forward(self, x: Tensor) -> tuple[Tensor, ForwardStats]:  # pragma: no cover
        raise NotImplementedError

    def loss(self, logits: Tensor, stats: ForwardStats, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The task's cross-entropy (DynaLay adds its policy term)."""
        ce = task_cross_entropy(logits, y)
        return ce, {"ce": float(ce.detach())}

    def set_warmup(self, active: bool) -> None:
        """Enters or leaves the warm-up phase; only DynaLay has one."""

    def layer_costs(self, x: Tensor, layer_inputs: list[Tensor], layer_outputs: list[Tensor]) -> LayerCosts:
        """Measures (once per shape, then cached) the per-sample FLOPs of each application."""
        bb, table = self.backbone, self.flop_table
        layers = list(bb.layers)
        return LayerCosts(
            stem=table.per_sample("stem", bb.stem, x),
            inject=tuple(  # type: ignore[arg-type]
                table.per_sample(f"inject{i}", layer.inject, h)
                for i, (layer, h) in enumerate(zip(layers, layer_inputs))
            ),
            state=tuple(  # type: ignore[arg-type]
                table.per_sample(f"state{i}", application, a)
                for i, (application, a) in enumerate(zip(self._state_applications, layer_outputs))
            ),
            head=table.per_sample("head", bb.head, layer_outputs[-1]),
        )

    @staticmethod
    def empty_stats(batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Zero iterations (B, 3) and NaN residuals (B, 3): every layer plain."""
        iterations = torch.zeros(batch, NUM_LAYERS, dtype=torch.int64, device=device)
        residuals = torch.full((batch, NUM_LAYERS), float("nan"), device=device)
        return iterations, residuals
