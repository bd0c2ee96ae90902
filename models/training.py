"""Training and evaluation loops for every model of this package.

The data moves to the device once; batches are slices of a seeded permutation made on the
device (no DataLoader, nothing per sample in Python). Adam, optional batch-level augmentation,
bf16 autocast on CUDA only, and a `DivergenceError` as soon as the loss stops being finite (the
search marks such trials failed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.base import DynaLayModule, per_sample_correct
from models.config import TensorPair, TrainConfig
from models.dynalay import DynaLay
from models.stats import ForwardStats

Augment = Callable[[Tensor], Tensor]
EpochCallback = Callable[[int, dict[str, Any]], None]


class DivergenceError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class EvalResult:
    """Test-set figures of a trained model.

    Attributes:
        accuracy: fraction correct (next-token accuracy for language models).
        flops_per_sample: mean FLOPs per sample (per sequence for language models).
        time_ms_per_sample: forward wall time per sample, milliseconds.
        action_freq: fraction of samples per action 0..3.
        mean_iterations: per layer, mean FPI applications over the samples that iterated it.
        loss: mean cross-entropy (per token for language models).
        perplexity: exp(loss) for language models, else None.
        stats: every sample's `ForwardStats` (not part of `to_dict`).
    """

    accuracy: float
    flops_per_sample: float
    time_ms_per_sample: float
    action_freq: list[float]
    mean_iterations: list[float]
    loss: float
    perplexity: float | None = None
    stats: ForwardStats | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "flops_per_sample": self.flops_per_sample,
            "time_ms_per_sample": self.time_ms_per_sample,
            "action_freq": list(self.action_freq),
            "mean_iterations": list(self.mean_iterations),
            "loss": self.loss,
            "perplexity": self.perplexity,
        }


def autocast_for(device: torch.device, amp: bool) -> torch.autocast:
    """bf16 autocast on CUDA when `amp`, a disabled context elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit(
    model: DynaLayModule,
    train: TensorPair,
    cfg: TrainConfig,
    device: torch.device | str,
    *,
    progress: bool = False,
    on_epoch: EpochCallback | None = None,
    augment: Augment | None = None,
) -> list[dict[str, Any]]:
    """Trains `model` in place for `cfg.epochs`; the first `cfg.warmup_epochs` are warm-up.

    Args:
        model: any model of this package.
        train: the training split (CPU tensors; moved to `device` once).
        cfg: epochs, warm-up, Adam's lr and weight decay, batch size, seed, amp.
        device: where to train.
        progress: show a tqdm bar over the epochs.
        on_epoch: called after every epoch with (epoch index, that epoch's record).
        augment: batch-level augmentation `augment(x) -> x`, applied to training batches.

    Returns:
        One record per epoch: epoch, warmup, loss, ce, accuracy (on the training batches, as
        trained), flops_per_sample, time_s, and for DynaLay after warm-up policy, reward,
        entropy (batch-size-weighted means). With `agent_epochs` the last record also holds
        the agent-only phase's `agent_reward` and `agent_s` (see `fit_agent`).

    Raises:
        DivergenceError: the loss became NaN or infinite.
    """
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    x, y = train.x.to(device), train.y.to(device)
    n = len(train)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = torch.Generator(device=device)
    order.manual_seed(cfg.seed)

    epochs: Any = range(cfg.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc="epochs", unit="epoch")

    history: list[dict[str, Any]] = []
    try:
        for epoch in epochs:
            warmup = epoch < cfg.warmup_epochs
            model.set_warmup(warmup)
            model.train()
            started = time.perf_counter()
            sums: dict[str, float] = {}
            correct = flops = 0.0
            perm = torch.randperm(n, generator=order, device=device)
            for step, start in enumerate(range(0, n, cfg.batch_size)):
                idx = perm[start : start + cfg.batch_size]
                xb, yb = x[idx], y[idx]
                if augment is not None:
                    xb = augment(xb)
                with autocast_for(device, cfg.amp):
                    logits, stats = model(xb)
                    loss, info = model.loss(logits, stats, yb)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise DivergenceError(
                        f"training loss is {loss_value} at epoch {epoch}, step {step}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

                size = float(idx.numel())
                info["loss"] = loss_value
                for key, value in info.items():
                    sums[key] = sums.get(key, 0.0) + value * size
                correct += float(per_sample_correct(logits, yb).sum())
                flops += float(stats.flops.sum())
            _synchronize(device)
            record: dict[str, Any] = {"epoch": epoch, "warmup": warmup}
            record.update({key: value / n for key, value in sums.items()})
            record.update(
                accuracy=correct / n,
                flops_per_sample=flops / n,
                time_s=time.perf_counter() - started,
            )
            history.append(record)
            if progress:
                epochs.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}")
            if on_epoch is not None:
                on_epoch(epoch, record)
        if isinstance(model, DynaLay) and model.agent_epochs > 0:
            history[-1].update(fit_agent(model, TensorPair(x, y), cfg, device))
    finally:
        model.set_warmup(False)
    return history


def fit_agent(model: DynaLay, train: TensorPair, cfg: TrainConfig, device: torch.device | str) -> dict[str, float]:
    """Trains `model`'s agent alone for `model.agent_epochs` passes over `train`, the network
    frozen: every action's hit and cost on every sample is computed once (eval mode, no
    gradients), then the agent follows the exact gradient of the expected reward
    (`Reinforce.expected`, entropy bonus included) in shuffled batches of `cfg.batch_size`,
    Adam at `cfg.lr`.

    Returns:
        agent_reward: the policy's mean expected reward over the last pass; agent_s: seconds.
    """
    device = torch.device(device)
    started = time.perf_counter()
    model.to(device).eval()
    x, y = train.x.to(device), train.y.to(device)
    parts = []
    for start in range(0, len(train), 256):
        with autocast_for(device, cfg.amp):
            parts.append(model.agent_targets(x[start : start + 256], y[start : start + 256]))
    features, hits, cost = (torch.cat(column) for column in zip(*parts))
    features = features.float()  # bf16 under CUDA autocast; the agent trains in float32
    optimizer = torch.optim.Adam(model.agent.parameters(), lr=cfg.lr)
    order = torch.Generator(device=device)
    order.manual_seed(cfg.seed)
    reward = 0.0
    for _ in range(model.agent_epochs):
        reward = 0.0
        perm = torch.randperm(len(train), generator=order, device=device)
        for start in range(0, len(train), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            term, info = model.reinforce.expected(hits[idx], cost[idx], model.agent(features[idx]).float())
            optimizer.zero_grad(set_to_none=True)
            term.backward()
            optimizer.step()
            reward += info["reward"] * idx.numel()
    _synchronize(device)
    return {"agent_reward": reward / len(train), "agent_s": time.perf_counter() - started}


def _forward_batches(
    model: DynaLayModule, x: Tensor, device: torch.device, batch_size: int, amp: bool
) -> Iterator[tuple[slice, Tensor, ForwardStats, float]]:
    """Eval-mode, no-grad forward in batches: yields (rows, logits, stats, forward seconds)."""
    model.to(device)
    model.eval()
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            xb = x[rows].to(device)
            _synchronize(device)
            began = time.perf_counter()
            with autocast_for(device, amp):
                logits, stats = model(xb)
            _synchronize(device)
            yield rows, logits, stats, time.perf_counter() - began


def predict(
    model: DynaLayModule,
    x: Tensor,
    device: torch.device | str,
    batch_size: int = 256,
    *,
    amp: bool = True,
) -> tuple[Tensor, ForwardStats]:
    """Eval-mode logits (float32, CPU) and per-sample stats (CPU) for every row of `x`."""
    logits_parts, stats_parts = [], []
    for _, logits, stats, _ in _forward_batches(model, x, torch.device(device), batch_size, amp):
        logits_parts.append(logits.float().cpu())
        stats_parts.append(stats.detached("cpu"))
    return torch.cat(logits_parts), ForwardStats.merge(stats_parts)


def evaluate(
    model: DynaLayModule,
    test: TensorPair,
    device: torch.device | str,
    batch_size: int = 256,
    *,
    amp: bool = True,
) -> EvalResult:
    """Accuracy, loss, compute and action statistics of `model` on `test` (eval mode:
    argmax actions, no gradients). Metrics accumulate on the device batch by batch, so
    language-model logits are never held for the whole split."""
    device = torch.device(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros((), dtype=torch.float64, device=device)
    targets = 0
    elapsed = 0.0
    stats_parts = []
    for rows, logits, stats, seconds in _forward_batches(model, test.x, device, batch_size, amp):
        yb = test.y[rows].to(device)
        flat_logits = logits.float().flatten(0, -2)
        loss_sum += F.cross_entropy(flat_logits, yb.flatten(), reduction="sum").double()
        hits += (flat_logits.argmax(dim=-1) == yb.flatten()).sum().double()
        targets += yb.numel()
        elapsed += seconds
        stats_parts.append(stats.detached("cpu"))
    stats = ForwardStats.merge(stats_parts)
    loss = float(loss_sum) / max(targets, 1)
    language_model = test.y.dim() == 2
    return EvalResult(
        accuracy=float(hits) / max(targets, 1),
        flops_per_sample=float(stats.flops.double().mean()),
        time_ms_per_sample=1000.0 * elapsed / max(len(test), 1),
        action_freq=stats.action_freq(),
        mean_iterations=stats.mean_iterations(),
        loss=loss,
        perplexity=_perplexity(loss) if language_model else None,
        stats=stats,
    )
