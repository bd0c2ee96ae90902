"""The per-sample statistics every model's forward returns beside its logits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

NUM_LAYERS = 3
NUM_ACTIONS = NUM_LAYERS + 1


@dataclass
class ForwardStats:
    """What each sample of a batch cost and did.

    Attributes:
        flops: float64 (B,): FLOPs this sample ran, summed over the layer applications it ran.
        actions: int64 (B,): 0 = plain pass, k = FPI on layers 1..k.
        iterations: int64 (B, 3): applications of the FPI map f per layer, 0 where it ran plain.
        residuals: float32 (B, 3): final ‖f(z) − z‖ / ‖f(z)‖ per layer, NaN where it ran plain.
        cost: float64 (B,) or None: C(a), this sample's FLOPs over the plain pass' FLOPs
            (DynaLay only).
        log_prob: (B,) or None: log π(a | x) of the action taken, differentiable w.r.t. the
            agent (DynaLay only).
        entropy: (B,) or None: entropy of the agent's policy (DynaLay only).
        plain_predictions: int64 (B,) or (B, T) or None: the plain pass' argmax predictions
            (DynaLay only; the self-critical baseline scores them).
        policy_logits: float (B, 4) or None: the agent's logits over the actions (DynaLay only).
        path_logits: (B, 4, K) or (B, 4, T, V) or None: the logits of every action's path,
            plain first (DynaLay training with `path_loss: every` only).
        path_cost: float64 (B, 4) or None: C(a) of every action for this sample, its FLOPs over
            the plain pass' (wherever `path_logits` is set).
    """

    flops: Tensor
    actions: Tensor
    iterations: Tensor
    residuals: Tensor
    cost: Tensor | None = None
    log_prob: Tensor | None = None
    entropy: Tensor | None = None
    plain_predictions: Tensor | None = None
    policy_logits: Tensor | None = None
    path_logits: Tensor | None = None
    path_cost: Tensor | None = None

    def __len__(self) -> int:
        return int(self.flops.shape[0])

    def detached(self, device: torch.device | str | None = None) -> ForwardStats:
        """A copy without autograd history (optionally moved), for accumulation."""

        def move(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            t = t.detach()
            return t if device is None else t.to(device)

        return ForwardStats(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    @staticmethod
    def merge(parts: Sequence[ForwardStats]) -> ForwardStats:
        """Concatenates batches' statistics (detached); an optional field is kept only if
        every part has it."""
        if not parts:
            raise ValueError("merge needs at least one ForwardStats")

        def cat(name: str) -> Tensor | None:
            values = [getattr(p, name) for p in parts]
            if any(v is None for v in values):
                return None
            return torch.cat([v.detach() for v in values])

        return ForwardStats(**{f.name: cat(f.name) for f in fields(ForwardStats)})

    def action_freq(self) -> list[float]:
        """Fraction of samples per action 0..3."""
        counts = torch.bincount(self.actions.detach().cpu(), minlength=NUM_ACTIONS)
        return (counts.double() / max(len(self), 1)).tolist()

    def mean_iterations(self) -> list[float]:
        """Per layer, the mean FPI applications over the samples that ran FPI on it (0.0 where
        none did)."""
        its = self.iterations.detach().cpu().double()
        ran = (its > 0).sum(dim=0)
        return (its.sum(dim=0) / ran.clamp_min(1)).tolist()

    def summary(self) -> dict[str, float | list[float]]:
        """Batch-level figures: mean FLOPs per sample, action frequencies, mean iterations."""
        return {
            "flops_per_sample": float(self.flops.detach().double().mean()),
            "action_freq": self.action_freq(),
            "mean_iterations": self.mean_iterations(),
        }
