"""AgentNet, its policy-gradient objective, and its evaluation-time routing.

The agent reads the globally pooled activations of the plain pass of L1..L3 (detached by the
caller, so its gradient never reaches the main model) and outputs a softmax over four actions:
0 = plain pass, k ∈ {1, 2, 3} = FPI on layers 1..k. At evaluation it takes the argmax, with an
optional bias on the plain action's logit (`route`).

Reward per sample (thesis eq. 3.2): R = α·correct − β·C(a)·k(a), where C(a) is the sample's
FLOPs over the plain pass' FLOPs and k(a) = a is the number of FPI layers (`cost="depth"`); or
R = α·correct − β·(C(a) − 1) (`cost="flops"`), which prices every FLOP alike, so that the agent
maximises accuracy at a FLOP budget rather than favouring shallow actions. The agent is trained
by REINFORCE with a baseline b; the term added to the cross-entropy is

    γ · [mean(−(R − b)·log π(a | x)) − entropy · mean(H(π(· | x)))],

whose gradient is γ times the policy gradient of −E[R] (the thesis' "CE − γ·R"), plus a small
entropy bonus that keeps every action explored. The bonus sits inside γ, so `entropy` is in
reward units: an action worse by Δ in expected reward keeps a probability of about
exp(−Δ / entropy) relative to the best one (soft-max policy), whatever γ is. The advantage is
not standardised, so α, β and γ keep the thesis' meaning.

When every action's outcome is known (DynaLay computes them with `policy_gradient:
expected`), `Reinforce.expected` replaces the sampled estimate by the exact gradient of
E_π[R] = Σ_a π(a | x)·R(x, a).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.stats import NUM_ACTIONS, ForwardStats


def route(policy_logits: Tensor, bias: float = 0.0) -> Tensor:
    """The agent's evaluation-time actions (B,): the argmax of its logits with `bias` added to
    action 0's (plain) logit. A positive bias keeps more samples plain, a negative one sends
    more to FPI; bias 0 is the plain argmax."""
    if bias == 0.0:
        return policy_logits.argmax(dim=1)
    shift = torch.zeros(policy_logits.shape[1], dtype=policy_logits.dtype, device=policy_logits.device)
    shift[0] = bias
    return (policy_logits + shift).argmax(dim=1)


class AgentNet(nn.Module):
    """Features (B, A + K) → action logits (B, 4): the first A are pooled plain-pass
    activations, the last K confidence features (log-probabilities of the plain prediction).

    The activations pass a LayerNorm first, because the three layers' pooled activations live on
    different scales; the confidence features do not, since a per-sample normalisation would
    erase their absolute level, which is what says how sure the plain pass is. The output layer
    starts at zero, so the initial policy is uniform.
    """

    def __init__(
        self, in_dim: int, hidden: int = 64, num_actions: int = NUM_ACTIONS, confidence_dim: int = 0
    ) -> None:
        super().__init__()
        self.activation_dim = in_dim - confidence_dim
        self.norm = nn.LayerNorm(self.activation_dim) if self.activation_dim > 0 else nn.Identity()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_actions),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        activations = self.norm(features[:, : self.activation_dim])
        return self.net(torch.cat([activations, features[:, self.activation_dim :]], dim=1))


class Reinforce(nn.Module):
    """The policy-gradient term and its baseline.

    Args:
        alpha, beta: reward weights, R = α·correct − β·C(a)·k(a) (or − β·(C(a) − 1), `cost`).
        gamma: weight of the policy term in the total loss.
        entropy: weight of the entropy bonus, in reward units.
        baseline: `ema` (exponential moving average of past batch-mean rewards, momentum
            `momentum`; the first batch uses its own mean), `batch` (the current batch mean) or
            `plain` (self-critical: per sample, the reward the plain action would have earned,
            α·correct_plain; known for every sample because the plain pass always runs, and
            action-independent, so the gradient stays unbiased).
        cost: the compute term, `depth` (C(a)·k(a), the thesis) or `flops` (C(a) − 1); see
            `ModelConfig.reward_cost`.
    """

    def __init__(
        self,
        alpha: float,
        beta: float,
        gamma: float,
        entropy: float = 0.05,
        baseline: str = "ema",
        momentum: float = 0.9,
        cost: str = "depth",
    ) -> None:
        super().__init__()
        if baseline not in ("ema", "batch", "plain"):
            raise ValueError(f"baseline={baseline!r} is not ema, batch or plain")
        if cost not in ("depth", "flops"):
            raise ValueError(f"cost={cost!r} is not depth or flops")
        self.cost = cost
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.entropy = entropy
        self.baseline = baseline
        self.momentum = momentum
        self.register_buffer("ema", torch.zeros((), dtype=torch.float64))
        self.register_buffer("ema_ready", torch.zeros((), dtype=torch.bool))

    def reward(self, correct: Tensor, cost: Tensor, actions: Tensor) -> Tensor:
        """float64, the shape of `correct`: α·correct − β·C(a)·k(a) with k(a) = a (`depth`),
        or α·correct − β·(C(a) − 1) (`flops`)."""
        if self.cost == "flops":
            return self.alpha * correct.double() - self.beta * (cost.double() - 1.0)
        return self.alpha * correct.double() - self.beta * cost.double() * actions.double()

    def expected(
        self, correct: Tensor, cost: Tensor, policy_logits: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """The exact-gradient term, when every action's outcome is known.

        γ · [mean(−Σ_a π(a|x)·(R(x, a) − R(x, 0))) − entropy · mean(H(π(· | x)))]: its gradient
        is γ times the exact gradient of −E_π[R] (what REINFORCE estimates by sampling), plus
        the entropy bonus. Subtracting the plain reward R(x, 0) changes no gradient (Σ_a π = 1);
        it makes the logged `policy` the expected gain over routing every sample plain.

        Args:
            correct: (B, 4) 1/0 (or the fraction of tokens) right with each action.
            cost: (B, 4) C(a) of each action for each sample.
            policy_logits: (B, 4) the agent's logits (differentiable).
        """
        actions = torch.arange(correct.shape[1], device=correct.device).expand_as(correct)
        reward = self.reward(correct, cost, actions)
        advantage = (reward - reward[:, :1]).to(policy_logits.dtype)
        log_pi = torch.log_softmax(policy_logits, dim=1)
        pi = log_pi.exp()
        policy = -(pi * advantage).sum(dim=1).mean()
        entropy = -(pi * log_pi).sum(dim=1).mean()
        term = self.gamma * (policy - self.entropy * entropy)
        return term, {
            "policy": float(policy.detach()),
            "reward": float((pi.detach().double() * reward).sum(dim=1).mean()),
            "entropy": float(entropy.detach()),
        }

    def forward(
        self, correct: Tensor, stats: ForwardStats, plain_correct: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Returns (the term to add to the CE, figures to log). Updates the EMA baseline.

        Args:
            correct: (B,) 1/0 (or the fraction of tokens) right with the action taken.
            stats: the forward's statistics (actions, cost, log_prob, entropy).
            plain_correct: (B,) the same for the plain pass; needed by the `plain` baseline.
        """
        if stats.log_prob is None or stats.entropy is None or stats.cost is None:
            raise ValueError("the policy term needs stats with log_prob, entropy and cost")
        reward = self.reward(correct, stats.cost, stats.actions)
        batch_mean = reward.mean()
        if self.baseline == "plain":
            if plain_correct is None:
                raise ValueError("the plain baseline needs the plain pass' correctness")
            base = self.alpha * plain_correct.double()
        elif self.baseline == "batch":
            base = batch_mean
        else:
            base = torch.where(self.ema_ready, self.ema, batch_mean)
            with torch.no_grad():
                self.ema.copy_(self.momentum * base + (1 - self.momentum) * batch_mean)
                self.ema_ready.fill_(True)
        advantage = (reward - base).detach().to(stats.log_prob.dtype)
        policy = -(advantage * stats.log_prob).mean()
        entropy = stats.entropy.mean()
        term = self.gamma * (policy - self.entropy * entropy)
        return term, {
            "policy": float(policy.detach()),
            "reward": float(batch_mean),
            "entropy": float(entropy.detach()),
        }
