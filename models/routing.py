"""How a trained DynaLay trades accuracy for compute: operating curves and a confidence router.

Every action's outcome is computed once per test sample (`path_table`, one `DynaLay.paths`
chain per batch); any routing of the samples onto actions is then scored by gathering, with no
further forward passes. That is exact, not an approximation: a sample's logits, iterations and
FLOPs under an action do not depend on which other samples share its batch or its action
(per-sample stopping, GroupNorm), so gathering them equals running the model routed that way.

- `operating_curve`: the agent's argmax routing with a bias b added to its plain action's
  logit (the `route_bias` of `ModelConfig`), over a range of b: accuracy against FLOPs per
  sample without retraining.
- `confidence_routing` / `confidence_curve`: the simple alternative the agent must beat, on the
  same trained network: send the samples whose plain prediction is least confident (lowest
  maximum softmax probability) to one FPI action, as many as a FLOP budget allows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from models.agent import route
from models.base import per_sample_correct
from models.config import TensorPair
from models.dynalay import DynaLay
from models.stats import NUM_ACTIONS
from models.training import autocast_for


@dataclass(frozen=True)
class PathTable:
    """Every action's outcome on every sample of a split (CPU tensors).

    Attributes:
        correct: float (N, 4): 1/0 (fraction of tokens for language models) right under
            actions 0..3.
        flops: float64 (N, 4): FLOPs of each action for each sample.
        policy_logits: float (N, 4): the agent's logits.
        confidence: float (N,): the plain pass' maximum softmax probability (mean over tokens
            for language models).
    """

    correct: Tensor
    flops: Tensor
    policy_logits: Tensor
    confidence: Tensor

    def __len__(self) -> int:
        return int(self.correct.shape[0])

    def score(self, actions: Tensor) -> tuple[float, float, float]:
        """(accuracy, mean FLOPs per sample, fraction sent to FPI) of routing sample i to
        `actions[i]`."""
        rows = torch.arange(len(self))
        return (
            float(self.correct[rows, actions].double().mean()),
            float(self.flops[rows, actions].mean()),
            float((actions > 0).double().mean()),
        )


@dataclass(frozen=True)
class OperatingPoint:
    """One routing of a split, scored.

    Attributes:
        bias: the bias on the plain action's logit (agent routing), or None (other routers).
        accuracy: fraction correct.
        flops_per_sample: mean FLOPs per sample.
        fpi_fraction: fraction of samples routed to an FPI action (1..3).
        action_freq: fraction of samples per action 0..3.
    """

    bias: float | None
    accuracy: float
    flops_per_sample: float
    fpi_fraction: float
    action_freq: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def path_table(
    model: DynaLay, data: TensorPair, device: torch.device | str, batch_size: int = 256, *, amp: bool = True
) -> PathTable:
    """Runs every action of the trained `model` on every sample of `data` (eval mode, no
    gradients, batches on `device`)."""
    device = torch.device(device)
    model.to(device).eval()
    parts: dict[str, list[Tensor]] = {"correct": [], "flops": [], "policy_logits": [], "confidence": []}
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            xb = data.x[start : start + batch_size].to(device)
            yb = data.y[start : start + batch_size].to(device)
            with autocast_for(device, amp):
                paths = model.paths(xb)
            logits = paths.logits.float()
            parts["correct"].append(
                torch.stack([per_sample_correct(logits[:, a], yb) for a in range(NUM_ACTIONS)], dim=1).cpu()
            )
            parts["flops"].append(paths.flops.cpu())
            parts["policy_logits"].append(paths.policy_logits.float().cpu())
            top = logits[:, 0].softmax(dim=-1).amax(dim=-1)
            parts["confidence"].append((top.flatten(1).mean(dim=1) if top.dim() > 1 else top).cpu())
    return PathTable(**{name: torch.cat(values) for name, values in parts.items()})


def _point(table: PathTable, actions: Tensor, bias: float | None) -> OperatingPoint:
    accuracy, flops, fpi = table.score(actions)
    freq = torch.bincount(actions, minlength=NUM_ACTIONS).double() / max(len(table), 1)
    return OperatingPoint(bias, accuracy, flops, fpi, freq.tolist())


def default_biases(table: PathTable, points: int = 21) -> list[float]:
    """Biases spanning every routing the agent can produce: 0, and the quantiles of the
    per-sample switch point (the bias at which a sample leaves FPI for plain), stepped just past
    them, from 'every sample to FPI' to 'every sample plain'."""
    logits = table.policy_logits
    switch = logits[:, 1:].amax(dim=1) - logits[:, 0]  # plain wins once bias ≥ switch
    quantiles = torch.quantile(switch.double(), torch.linspace(0, 1, points, dtype=torch.float64))
    span = float(quantiles[-1] - quantiles[0]) or 1.0
    biases = {0.0, float(quantiles[0]) - 0.01 * span - 1e-6}
    biases.update(float(q) + 1e-6 * max(1.0, abs(float(q))) for q in quantiles)
    return sorted(biases)


def curve_from_table(table: PathTable, biases: list[float] | None = None) -> list[OperatingPoint]:
    """The agent's operating curve from a precomputed `PathTable` (see `operating_curve`)."""
    biases = default_biases(table) if biases is None else biases
    return [_point(table, route(table.policy_logits, float(b)), float(b)) for b in sorted(biases)]


def operating_curve(
    model: DynaLay,
    data: TensorPair,
    device: torch.device | str,
    biases: list[float] | None = None,
    batch_size: int = 256,
) -> list[OperatingPoint]:
    """The accuracy-compute operating curve of a trained DynaLay, swept without retraining.

    For each bias b the agent routes every sample of `data` to the argmax of its logits with b
    added to the plain action's logit (what `ModelConfig(route_bias=b)` does at evaluation):
    b > 0 keeps more samples plain, b < 0 sends more to FPI. Each point is scored exactly, from
    one pass of every action over `data` (see the module docstring).

    Args:
        model: the trained DynaLay.
        data: the split to score (e.g. the test split).
        device: where to run the model.
        biases: the biases to evaluate; default: `default_biases`, about 21 points from every
            sample on FPI to every sample plain, and 0 (the model's own argmax).
        batch_size: samples per forward pass.

    Returns:
        One `OperatingPoint` per bias (bias, accuracy, flops_per_sample, fpi_fraction,
        action_freq), in increasing bias, i.e. broadly decreasing FLOPs.
    """
    return curve_from_table(path_table(model, data, device, batch_size), biases)


def confidence_routing(table: PathTable, flops_budget: float, action: int = NUM_ACTIONS - 1) -> OperatingPoint:
    """The confidence router at a FLOP budget: the least-confident plain predictions go to
    `action`, in order of increasing confidence, as many as keep the mean FLOPs per sample
    within `flops_budget` (at least none, at most all)."""
    if not 1 <= action < NUM_ACTIONS:
        raise ValueError(f"the confidence router sends samples to an FPI action 1..3, got {action}")
    order = table.confidence.argsort()
    extra = (table.flops[order, action] - table.flops[order, 0]).cumsum(0)
    total = float(table.flops[:, 0].sum())
    affordable = int((total + extra <= flops_budget * len(table) * (1 + 1e-12)).sum())
    actions = torch.zeros(len(table), dtype=torch.int64)
    actions[order[:affordable]] = action
    return _point(table, actions, None)


def confidence_curve(table: PathTable, action: int = NUM_ACTIONS - 1, points: int = 21) -> list[OperatingPoint]:
    """The confidence router from every sample plain to every sample on `action`, sending the
    least-confident 0, 1/(points−1), ..., all of the samples."""
    order = table.confidence.argsort()
    curve = []
    for k in torch.linspace(0, len(table), points).round().long().tolist():
        actions = torch.zeros(len(table), dtype=torch.int64)
        actions[order[:k]] = action
        curve.append(_point(table, actions, None))
    return curve


def forced_points(table: PathTable) -> list[OperatingPoint]:
    """Every sample forced onto action 0, 1, 2, 3 in turn."""
    return [_point(table, torch.full((len(table),), a, dtype=torch.int64), None) for a in range(NUM_ACTIONS)]
