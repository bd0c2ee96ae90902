"""DynaLay: plain pass → agent → FPI recomputation of the samples that ask for it.

Per batch:
1. The plain pass runs for every sample (stem, L1..L3 plainly, head) and keeps each layer's
   injection u_i and output a_i.
2. AgentNet reads the detached pooled a_1..a_3 and picks an action per sample: sampled while
   training (uniformly during warm-up), the argmax at evaluation.
3. The samples with action k ≥ 1 are recomputed: layer i ≤ k is iterated to its fixed point,
   layers after k run plainly on the new input, then the head; their logits replace the plain
   ones (index_select the subgroup, run, index_copy back). Samples that chose plain cost one
   pass. The subgroup shrinks layer by layer: all of it iterates L1, those with k ≥ 2 iterate
   L2, those with k = 3 iterate L3, the rest of it runs L2/L3 plainly.

Warm starts: every FPI solve starts from the plain pass' output of that layer. Layer 1's input
is unchanged, so its plain injection u_1 is reused and the solve costs only state-path
applications; layers 2 and 3 see a new input and recompute their injection first.

FLOPs per sample = plain pass + agent, plus for k ≥ 1: injections of L2 and L3, the head, and
Σ_i iterations_i × (one state-path application of layer i).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Categorical

from models.agent import AgentNet, Reinforce
from models.backbones import Backbone
from models.base import DynaLayModule, per_sample_correct, task_cross_entropy
from models.config import ModelConfig, ModelSpec
from models.stats import NUM_ACTIONS, ForwardStats


class DynaLay(DynaLayModule):
    """The agent-driven model (thesis ch. 3).

    Args:
        backbone: the three-layer network (its FPILayers carry tolerance, max_iter, backward).
        spec: the data description.
        cfg: reward (α, β, γ), entropy bonus, baseline and agent width are read from it.
    """

    def __init__(self, backbone: Backbone, spec: ModelSpec, cfg: ModelConfig) -> None:
        super().__init__(backbone, spec)
        self.agent = AgentNet(sum(backbone.layer_dims), hidden=cfg.agent_hidden)
        self.reinforce = Reinforce(
            cfg.alpha, cfg.beta, cfg.gamma, entropy=cfg.entropy, baseline=cfg.baseline
        )
        self.warmup = False

    def set_warmup(self, active: bool) -> None:
        """During warm-up actions are drawn uniformly (every FPI path trains) and the agent is
        not trained."""
        self.warmup = active

    def choose(self, policy_logits: Tensor) -> Tensor:
        """Actions (B,): uniform during warm-up, sampled while training, argmax otherwise."""
        if self.training and self.warmup:
            return torch.randint(0, NUM_ACTIONS, policy_logits.shape[:1], device=policy_logits.device)
        if self.training:
            return Categorical(logits=policy_logits).sample()
        return policy_logits.argmax(dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, ForwardStats]:
        bb = self.backbone
        layers = list(bb.layers)

        # 1. plain pass
        h = bb.stem(x)
        inputs, injections, outputs = [], [], []
        for layer in layers:
            inputs.append(h)
            h, u = layer.plain(h)
            injections.append(u)
            outputs.append(h)
        logits = bb.head(h)
        plain_predictions = logits.detach().argmax(dim=-1)
        costs = self.layer_costs(x, inputs, outputs)

        # 2. agent on detached summaries: its gradient cannot reach the main model
        features = torch.cat([bb.pool(a).detach() for a in outputs], dim=1)
        policy_logits = self.agent(features).float()
        agent_cost = self.flop_table.per_sample("agent", self.agent, features)
        actions = self.choose(policy_logits.detach())
        policy = Categorical(logits=policy_logits)

        # 3. FPI recomputation of the samples that asked for it
        batch = x.shape[0]
        iterations, residuals = self.empty_stats(batch, x.device)
        group = (actions > 0).nonzero().squeeze(1)
        if group.numel() > 0:
            recomputed_logits = self._recompute(group, actions, injections, outputs, iterations, residuals)
            logits = logits.index_copy(0, group, recomputed_logits.to(logits.dtype))

        recomputed = (actions > 0).double()
        flops = (
            costs.plain
            + agent_cost
            + recomputed * (costs.inject[1] + costs.inject[2] + costs.head)
            + iterations.double() @ costs.state_vector(x.device)
        )
        stats = ForwardStats(
            flops=flops,
            actions=actions,
            iterations=iterations,
            residuals=residuals,
            cost=flops / costs.plain,
            log_prob=policy.log_prob(actions),
            entropy=policy.entropy(),
            plain_predictions=plain_predictions,
        )
        return logits, stats

    def _recompute(
        self,
        group: Tensor,
        actions: Tensor,
        injections: list[Tensor],
        outputs: list[Tensor],
        iterations: Tensor,
        residuals: Tensor,
    ) -> Tensor:
        """Logits of the samples in `group` (all with action ≥ 1); fills their statistics."""
        layers = list(self.backbone.layers)
        fp = layers[0].solve(injections[0][group], z0=outputs[0][group])
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
        """CE, plus (after warm-up, while training) γ·policy-gradient term − entropy bonus."""
        ce = task_cross_entropy(logits, y)
        info = {"ce": float(ce.detach())}
        if not self.training or self.warmup or stats.log_prob is None:
            return ce, info
        plain_correct = None
        if stats.plain_predictions is not None:
            plain_correct = (stats.plain_predictions == y).float()
            if plain_correct.dim() > 1:
                plain_correct = plain_correct.flatten(1).mean(dim=1)
        term, policy_info = self.reinforce(per_sample_correct(logits, y), stats, plain_correct)
        info.update(policy_info)
        return ce + term, info
