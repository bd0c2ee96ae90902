"""DynaLay: plain pass → agent → FPI recomputation of the samples that ask for it.

Per batch:
1. The plain pass runs for every sample (stem, L1..L3 plainly, head) and keeps each layer's
   injection u_i and output a_i.
2. AgentNet reads the detached pooled a_1..a_3 (with `agent_confidence`, also the logs of the
   plain prediction's largest softmax probabilities; with `agent_activations` False, only
   those) and picks an action per sample: sampled while training (uniformly during warm-up),
   the argmax at evaluation (with `route_bias` added to the plain action's logit). With
   `agent_epochs`, a last phase trains the agent alone on the frozen network
   (`agent_targets`, models.training.fit_agent).
3. The samples with action k ≥ 1 are recomputed: layer i ≤ k is iterated to its fixed point,
   layers after k run plainly on the new input, then the head; their logits replace the plain
   ones (index_select the subgroup, run, index_copy back). Samples that chose plain cost one
   pass. The subgroup shrinks layer by layer: all of it iterates L1, those with k ≥ 2 iterate
   L2, those with k = 3 iterate L3, the rest of it runs L2/L3 plainly.

Every path at once (`paths`, and training with `path_loss: every` or `policy_gradient:
expected`, whose CE or agent reward needs every action's outcome): the three FPI actions share
their solves (action 2 extends action 1's L1 fixed point, action 3 action 2's L2 one), so one
chain L1 solve → L2 solve → L3 solve, with a plain branch to the head after each solve, gives
every action's logits for about the price of action 3 alone.

Warm starts: every FPI solve starts from the plain pass' output of that layer. Layer 1's input
is unchanged, so its plain injection u_1 is reused and the solve costs only state-path
applications; layers 2 and 3 see a new input and recompute their injection first.

FLOPs per sample = plain pass + agent, plus for k ≥ 1: injections of L2 and L3, the head, and
Σ_i iterations_i × (one state-path application of layer i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Categorical

from models.agent import AgentNet, Reinforce, route
from models.backbones import Backbone
from models.base import (
    DynaLayModule,
    LayerCosts,
    per_sample_correct,
    per_sample_true_probability,
    task_cross_entropy,
)
from models.config import ModelConfig, ModelSpec
from models.stats import NUM_ACTIONS, NUM_LAYERS, ForwardStats


@dataclass
class _PlainPass:
    """The plain pass' by-products that the agent and the recomputation reuse."""

    logits: Tensor
    injections: list[Tensor]
    outputs: list[Tensor]
    costs: LayerCosts
    agent_cost: float
    features: Tensor
    policy_logits: Tensor


@dataclass
class Paths:
    """Every action's outcome for a batch (`DynaLay.paths`).

    Attributes:
        logits: (B, 4, K) or (B, 4, T, V): the logits of actions 0..3 (plain first).
        flops: float64 (B, 4): the FLOPs each action costs each sample.
        iterations: int64 (B, 3): FPI applications per layer of the full chain (action k runs
            those of layers 1..k).
        residuals: float32 (B, 3): final residual per layer of the full chain.
        features: (B, D): what the agent reads (detached).
        policy_logits: (B, 4): the agent's logits.
    """

    logits: Tensor
    flops: Tensor
    iterations: Tensor
    residuals: Tensor
    features: Tensor
    policy_logits: Tensor


# The agent's confidence features: this many of the plain pass' largest softmax probabilities.
_CONFIDENCE_FEATURES = 4

# _RUNS[a, i]: action a iterates layer i (actions 1..3 iterate layers 1..a).
_RUNS = torch.tril(torch.ones(NUM_ACTIONS, NUM_LAYERS, dtype=torch.bool), diagonal=-1)


class DynaLay(DynaLayModule):
    """The agent-driven model (thesis ch. 3).

    Args:
        backbone: the three-layer network (its FPILayers carry tolerance, max_iter, backward).
        spec: the data description.
        cfg: the reward (α, β, γ, `reward_cost`, `reward_hit`), entropy bonus, baseline, the
            agent (`agent_hidden`, `agent_confidence`), the training objective (`path_loss`,
            `policy_gradient`) and the evaluation `route_bias` are read from it.
    """

    def __init__(self, backbone: Backbone, spec: ModelSpec, cfg: ModelConfig) -> None:
        super().__init__(backbone, spec)
        self.agent_confidence = cfg.agent_confidence
        self.agent_activations = cfg.agent_activations
        self.agent_epochs = cfg.agent_epochs
        extra = min(_CONFIDENCE_FEATURES, spec.num_classes) if cfg.agent_confidence else 0
        pooled = sum(backbone.layer_dims) if cfg.agent_activations else 0
        self.agent = AgentNet(pooled + extra, hidden=cfg.agent_hidden, confidence_dim=extra)
        self.reinforce = Reinforce(
            cfg.alpha, cfg.beta, cfg.gamma, entropy=cfg.entropy, baseline=cfg.baseline,
            cost=cfg.reward_cost,
        )
        self.path_loss = cfg.path_loss
        self.policy_gradient = cfg.policy_gradient
        self.route_bias = cfg.route_bias
        self.hit = per_sample_true_probability if cfg.reward_hit == "probability" else per_sample_correct
        self.warmup = False

    def set_warmup(self, active: bool) -> None:
        """During warm-up actions are drawn uniformly (every FPI path trains) and the agent is
        not trained."""
        self.warmup = active

    def choose(self, policy_logits: Tensor) -> Tensor:
        """Actions (B,): uniform during warm-up, sampled while training, otherwise the argmax
        with `route_bias` on the plain action (models.agent.route)."""
        if self.training and self.warmup:
            return torch.randint(0, NUM_ACTIONS, policy_logits.shape[:1], device=policy_logits.device)
        if self.training:
            return Categorical(logits=policy_logits).sample()
        return route(policy_logits, self.route_bias)

    def _plain_pass(self, x: Tensor) -> _PlainPass:
        bb = self.backbone
        h = bb.stem(x)
        inputs, injections, outputs = [], [], []
        for layer in bb.layers:
            inputs.append(h)
            h, u = layer.plain(h)
            injections.append(u)
            outputs.append(h)
        logits = bb.head(h)
        # the agent reads detached summaries: its gradient cannot reach the main model
        summaries = [bb.pool(a).detach() for a in outputs] if self.agent_activations else []
        if self.agent_confidence:
            log_probabilities = logits.detach().float().log_softmax(dim=-1)
            top = log_probabilities.topk(min(_CONFIDENCE_FEATURES, log_probabilities.shape[-1]), dim=-1).values
            top = top.clamp(min=-30.0)  # a vanishing class probability adds nothing but range
            summaries.append(top.mean(dim=1) if top.dim() == 3 else top)  # tokens: mean over time
        features = torch.cat(summaries, dim=1)
        return _PlainPass(
            logits=logits,
            injections=injections,
            outputs=outputs,
            costs=self.layer_costs(x, inputs, outputs),
            agent_cost=self.flop_table.per_sample("agent", self.agent, features),
            features=features,
            policy_logits=self.agent(features).float(),
        )

    def _action_flops(self, plain: _PlainPass, actions: Tensor, iterations: Tensor) -> Tensor:
        """float64, the shape of `actions`: FLOPs of `actions` given each layer's iterations
        (`iterations` (..., 3), zero on the layers an action does not iterate)."""
        costs = plain.costs
        recomputed = (actions > 0).double()
        state = costs.state_vector(actions.device)
        return (
            costs.plain
            + plain.agent_cost
            + recomputed * (costs.inject[1] + costs.inject[2] + costs.head)
            + iterations.double() @ state
        )

    def forward(self, x: Tensor) -> tuple[Tensor, ForwardStats]:
        plain = self._plain_pass(x)
        policy_logits = plain.policy_logits
        actions = self.choose(policy_logits.detach())
        policy = Categorical(logits=policy_logits)
        plain_predictions = plain.logits.detach().argmax(dim=-1)
        batch = x.shape[0]

        path_logits = path_cost = None
        if self.training and (self.path_loss == "every" or self.policy_gradient == "expected"):
            paths = self._every_path(plain)
            path_logits, path_cost = paths.logits, paths.flops / plain.costs.plain
            rows = torch.arange(batch, device=x.device)
            logits = path_logits[rows, actions]
            runs = _RUNS.to(x.device)[actions]
            iterations = torch.where(runs, paths.iterations, 0)
            residuals = torch.where(runs, paths.residuals, torch.nan)
            flops = paths.flops[rows, actions]
        else:
            logits = plain.logits
            iterations, residuals = self.empty_stats(batch, x.device)
            group = (actions > 0).nonzero().squeeze(1)
            if group.numel() > 0:
                recomputed = self._recompute(group, actions, plain, iterations, residuals)
                logits = logits.index_copy(0, group, recomputed.to(logits.dtype))
            flops = self._action_flops(plain, actions, iterations)

        stats = ForwardStats(
            flops=flops,
            actions=actions,
            iterations=iterations,
            residuals=residuals,
            cost=flops / plain.costs.plain,
            log_prob=policy.log_prob(actions),
            entropy=policy.entropy(),
            plain_predictions=plain_predictions,
            policy_logits=policy_logits,
            path_logits=path_logits,
            path_cost=path_cost,
        )
        return logits, stats

    def paths(self, x: Tensor) -> Paths:
        """Every action's logits and FLOPs for the batch `x`, and the agent's logits (in the
        module's current mode; call under `torch.no_grad()` to analyse a trained model).

        Each action's logits and FLOPs equal what `forward` gives a sample routed to it: a
        solve is per sample and warm-started the same way, whichever samples share it."""
        return self._every_path(self._plain_pass(x))

    def agent_targets(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What the agent learns from on a frozen network, without gradients: its features
        (B, D), each action's hit (B, 4; `reward_hit`) and each action's C(a) (B, 4, float64)."""
        with torch.no_grad():
            plain = self._plain_pass(x)
            paths = self._every_path(plain)
            return plain.features, self._path_hits(paths.logits, y), paths.flops / plain.costs.plain

    def _path_hits(self, path_logits: Tensor, y: Tensor) -> Tensor:
        """(B, 4): each action's hit (`reward_hit`) from every path's logits (B, 4, ...)."""
        return torch.stack([self.hit(path_logits[:, a], y) for a in range(NUM_ACTIONS)], dim=1)

    def _every_path(self, plain: _PlainPass) -> Paths:
        """The chain L1 solve → L2 solve → L3 solve with a plain branch to the head after each."""
        layers = list(self.backbone.layers)
        head = self.backbone.head
        batch = plain.logits.shape[0]
        device = plain.logits.device
        iterations, residuals = self.empty_stats(batch, device)
        logits = [plain.logits]
        u = plain.injections[0]
        for i, layer in enumerate(layers):
            fp = layer.solve(u, z0=plain.outputs[i])
            iterations[:, i] = fp.iterations
            residuals[:, i] = fp.residuals
            branch = fp.z
            if i + 1 < len(layers):  # the next layer's injection serves the branch and its solve
                branch, u = layers[i + 1].plain(fp.z)
                for later in layers[i + 2 :]:
                    branch = later.plain(branch)[0]
            logits.append(head(branch).to(plain.logits.dtype))
        actions = torch.arange(NUM_ACTIONS, device=device).expand(batch, NUM_ACTIONS)
        runs = _RUNS.to(device)
        per_action_iterations = torch.where(runs[None], iterations[:, None, :], 0)  # (B, 4, 3)
        return Paths(
            logits=torch.stack(logits, dim=1),
            flops=self._action_flops(plain, actions, per_action_iterations),
            iterations=iterations,
            residuals=residuals,
            features=plain.features,
            policy_logits=plain.policy_logits,
        )

    def _recompute(
        self,
        group: Tensor,
        actions: Tensor,
        plain: _PlainPass,
        iterations: Tensor,
        residuals: Tensor,
    ) -> Tensor:
        """Logits of the samples in `group` (all with action ≥ 1); fills their statistics."""
        layers = list(self.backbone.layers)
        outputs = plain.outputs
        fp = layers[0].solve(plain.injections[0][group], z0=outputs[0][group])
        iterations[group, 0] = fp.iterations
        residuals[group, 0] = fp.residuals
        h = fp.z
        group_actions = actions[group]
        for i in (1, 2):
            h_plain, u = layers[i].plain(h)
            iterate = (group_actions > i).nonzero().squeeze(1)  # action k iterates layers < k
            if iterate.numel() > 0:
                rows = group[iterate]
                fp = layers[i].solve(u[iterate], z0=outputs[i][rows])
                iterations[rows, i] = fp.iterations
                residuals[rows, i] = fp.residuals
                h = h_plain.index_copy(0, iterate, fp.z.to(h_plain.dtype))
            else:
                h = h_plain
        return self.backbone.head(h)

    def loss(self, logits: Tensor, stats: ForwardStats, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """CE (`path_loss: every` and training: the mean over every path's logits; else over
        `logits`, those of each sample's action), plus (after warm-up, while training)
        γ·policy term − entropy bonus."""
        if self.path_loss == "every" and stats.path_logits is not None:
            ce = torch.stack(
                [task_cross_entropy(stats.path_logits[:, a], y) for a in range(NUM_ACTIONS)]
            ).mean()
        else:
            ce = task_cross_entropy(logits, y)
        info = {"ce": float(ce.detach())}
        if not self.training or self.warmup or stats.log_prob is None:
            return ce, info
        if self.policy_gradient == "expected":
            if stats.path_logits is None or stats.path_cost is None or stats.policy_logits is None:
                raise ValueError("the expected policy gradient needs every path's logits and FLOPs")
            term, policy_info = self.reinforce.expected(
                self._path_hits(stats.path_logits, y), stats.path_cost, stats.policy_logits)
        else:
            # the self-critical baseline scores the plain prediction 1/0 whatever `reward_hit`
            # is: any action-independent baseline leaves the gradient unbiased
            plain_correct = None
            if stats.plain_predictions is not None:
                plain_correct = (stats.plain_predictions == y).float()
                if plain_correct.dim() > 1:
                    plain_correct = plain_correct.flatten(1).mean(dim=1)
            term, policy_info = self.reinforce(self.hit(logits, y), stats, plain_correct)
        info.update(policy_info)
        return ce + term, info
