"""The per-sample statistics every model's forward returns beside its logits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    """

    flops: Tensor
    actions: Tensor
    iterations: Tensor
    residuals: Tensor
    cost: Tensor | None = None
    log_prob: Tensor | None = None
    entropy: Tensor | None = None
    plain_predictions: Tensor | None = None

    def __len__(self) -> int:
        return int(self.flops.shape[0])

    def detached(self, device: torch.device | str | None = None) -> ForwardStats:
        """A copy without autograd history (optionally moved), for accumulation."""

        def move(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            t = t.detach()
            return t if device is None else t.to(device)

        return ForwardStats(
            flops=move(self.flops),  # type: ignore[arg-type]
            actions=move(self.actions),  # type: ignore[arg-type]
            iterations=move(self.iterations),  # type: ignore[arg-type]
            residuals=move(self.residuals),  # type: ignore[arg-type]
            cost=move(self.cost),
            log_prob=move(self.log_prob),
            entropy=move(self.entropy),
            plain_predictions=move(self.plain_predictions),
        )

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

        return ForwardStats(
            flops=cat("flops"),  # type: ignore[arg-type]
            actions=cat("actions"),  # type: ignore[arg-type]
            iterations=cat("iterations"),  # type: ignore[arg-type]
            residuals=cat("residuals"),  # type: ignore[arg-type]
            cost=cat("cost"),
            log_prob=cat("log_prob"),
            entropy=cat("entropy"),
            plain_predictions=cat("plain_predictions"),
        )

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
