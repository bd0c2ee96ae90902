"""The baselines on DynaLay's backbone (thesis Table 4.1 and Figure 4.4).

`Plain` is Model 0 (three plain layers), `StaticFPI(k)` Models 1-3 (every sample iterates
layers 1..k to their fixed points, from the plain output), `DEQ` solves all three layers'
FPI maps with TorchDEQ (Anderson or Broyden forward, implicit-function-theorem backward): the
field's reference implementation, not this package's solver.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchdeq import get_deq

from models.backbones import Backbone
from models.base import DynaLayModule
from models.config import ModelConfig, ModelSpec
from models.stats import ForwardStats


class _LayerwiseBaseline(DynaLayModule):
    """A baseline that runs every sample through the same path: one forward pass for all three.

    Subclasses say how layer ``i`` maps its input (:meth:`_apply_layer`, filling that layer's
    column of the iteration and residual statistics when it iterates) and which action every
    sample is reported with (:attr:`action`); the stem, head, FLOP accounting and statistics
    are this class's.
    """

    #: The action reported for every sample (0: plain, k: layers 1..k iterated).
    action: int = 0

    def _apply_layer(self, index: int, h: Tensor, iterations: Tensor, residuals: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, ForwardStats]:
        bb = self.backbone
        batch = x.shape[0]
        iterations, residuals = self.empty_stats(batch, x.device)
        h = bb.stem(x)
        inputs, outputs = [], []
        for i in range(len(bb.layers)):
            inputs.append(h)
            h = self._apply_layer(i, h, iterations, residuals)
            outputs.append(h)
        logits = bb.head(h)
        costs = self.layer_costs(x, inputs, outputs)
        # A plain layer has 0 iterations, so it adds no state-path FLOPs.
        flops = costs.plain + iterations.double() @ costs.state_vector(x.device)
        actions = torch.full((batch,), self.action, dtype=torch.int64, device=x.device)
        return logits, ForwardStats(flops, actions, iterations, residuals)


class Plain(_LayerwiseBaseline):
    """Model 0: stem → L1 → L2 → L3 → head, no fixed points."""

    def _apply_layer(self, index: int, h: Tensor, iterations: Tensor, residuals: Tensor) -> Tensor:
        return self.backbone.layers[index].plain(h)[0]


class StaticFPI(_LayerwiseBaseline):
    """Models 1-3: FPI on layers 1..k for every sample, the rest plain."""

    def __init__(self, backbone: Backbone, spec: ModelSpec, k: int) -> None:
        super().__init__(backbone, spec)
        if k not in (1, 2, 3):
            raise ValueError(f"StaticFPI needs k in 1..3, got {k}")
        self.k = k
        self.action = k

    def _apply_layer(self, index: int, h: Tensor, iterations: Tensor, residuals: Tensor) -> Tensor:
        layer = self.backbone.layers[index]
        if index >= self.k:
            return layer.plain(h)[0]
        fp = layer.solve(layer.inject(h))
        iterations[:, index] = fp.iterations
        residuals[:, index] = fp.residuals
        return fp.z


class DEQ(_LayerwiseBaseline):
    """Each layer's map z ↦ φ(u + s(z)) solved by TorchDEQ, with IFT gradients.

    TorchDEQ's solvers stop when the whole batch is below the tolerance, and every call of f
    evaluates every sample, so a sample's iterations are the solver's calls of f for its batch
    (the solver's own mixing arithmetic is not counted). Recorded residuals are TorchDEQ's
    `rel_lowest`. The action is reported as 3 (all layers solved).
    """

    action = 3

    def __init__(self, backbone: Backbone, spec: ModelSpec, cfg: ModelConfig) -> None:
        super().__init__(backbone, spec)
        self.deq = get_deq(
            core="indexing",
            ift=True,
            f_solver=cfg.deq_solver,
            f_max_iter=cfg.max_iter,
            f_tol=cfg.fwd_tol,
            f_stop_mode="rel",
            b_solver="fixed_point_iter",
            b_max_iter=cfg.max_iter,
            b_tol=cfg.bwd_tol,
            b_stop_mode="rel",
        )

    def _solve(self, layer_index: int, u: Tensor) -> tuple[Tensor, int, Tensor]:
        """Returns (z*, calls of f by the solver, relative residual per sample)."""
        layer = self.backbone.layers[layer_index]
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.float()
            weight = layer.state.effective_weight(layer.state.spatial_shape(u))
            calls = 0

            def f(z: Tensor) -> Tensor:
                nonlocal calls
                calls += 1
                return layer.f(z, u, weight)

            z_list, info = self.deq(f, torch.zeros_like(u))
        # DEQIndexing in training mode adds exactly one differentiable call of f for the IFT.
        solver_calls = calls - 1 if self.deq.training else calls
        return z_list[-1], solver_calls, info["rel_lowest"].detach().float().reshape(-1)

    def _apply_layer(self, index: int, h: Tensor, iterations: Tensor, residuals: Tensor) -> Tensor:
        z, calls, rel = self._solve(index, self.backbone.layers[index].inject(h))
        iterations[:, index] = calls
        residuals[:, index] = rel.to(h.device)
        return z
