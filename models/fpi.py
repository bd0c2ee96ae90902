"""Fixed-point iterative (FPI) layers: the forward solve and the three backward modes.

A layer with injection u = inject(x), state path s and 1-Lipschitz activation φ defines

    f(z, x) = φ(u + s(z)),        f(0, x) = φ(u)   (the plain layer, since s(0) = 0).

Forward: z ← f(z, x) per sample until ‖f(z) − z‖ ≤ tol·‖f(z)‖ or `max_iter` applications.
u is computed once per solve (it does not depend on z). Converged samples leave the active
set, so they stop costing compute; each sample's applications and final residual are recorded.

Backward (after a no-grad solve, except `unroll`):
    implicit  one differentiable application z_out = f(z*, x) carries ∂f/∂θ and ∂f/∂x; a hook
              on z_out replaces its incoming gradient v by the solution of g = v + g·J,
              J = ∂f/∂z at z*, found by fixed-point iteration with vector-Jacobian products
              (the standard DEQ hook). That is the implicit-function-theorem gradient.
    jfb       the same single application without the hook (Jacobian-free backprop: J ≈ 0).
    unroll    autograd through every iteration (memory grows with the iterations; the ground
              truth the others are tested against).
The warm start z0 is always detached: the fixed point does not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from models.contraction import ContractiveConv

FixedPointMap = Callable[[Tensor, Tensor], Tensor]

_TINY = 1e-30


@dataclass
class FixedPoint:
    """The result of one FPI solve over a batch.

    Attributes:
        z: (B, ...) the fixed-point estimate (the last application's output).
        iterations: int64 (B,): applications of f this sample ran.
        residuals: float32 (B,): its last ‖f(z) − z‖ / ‖f(z)‖.
        converged: bool (B,): whether it reached the tolerance (False means it hit max_iter).
    """

    z: Tensor
    iterations: Tensor
    residuals: Tensor
    converged: Tensor


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1)


def fixed_point_iteration(
    f: FixedPointMap, u: Tensor, z0: Tensor, *, tol: float, max_iter: int
) -> FixedPoint:
    """Iterates z ← f(z, u) from z0 with per-sample stopping.

    Only the still-active samples are fed to f (the active subset is compacted after every
    application), so f must treat samples independently. Works with or without autograd; the
    output is assembled with `index_copy`, which autograd differentiates.

    Args:
        f: the map, called on the active rows of z and u.
        u: (B, ...) the injection (or any per-sample context f needs).
        z0: (B, ...) the start.
        tol: stop a sample once ‖f(z) − z‖ ≤ tol·‖f(z)‖.
        max_iter: most applications per sample.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    batch = z0.shape[0]
    device = z0.device
    iterations = torch.zeros(batch, dtype=torch.int64, device=device)
    residuals = torch.full((batch,), float("nan"), dtype=torch.float32, device=device)
    converged = torch.zeros(batch, dtype=torch.bool, device=device)
    out = torch.zeros_like(z0)
    active = torch.arange(batch, device=device)
    z, u_active = z0, u
    for step in range(1, max_iter + 1):
        fz = f(z, u_active)
        diff = _per_sample_norm(fz - z).detach()
        scale = _per_sample_norm(fz).detach()
        done = diff <= tol * scale
        iterations[active] = step
        residuals[active] = (diff / scale.clamp_min(_TINY)).float()
        converged[active] = done
        if step == max_iter:
            done = torch.ones_like(done)
        finished = done.nonzero().squeeze(1)
        if finished.numel() == fz.shape[0]:  # everyone left: no gather needed
            out = out.index_copy(0, active, fz)
            break
        if finished.numel() > 0:
            out = out.index_copy(0, active[finished], fz[finished])
        keep = (~done).nonzero().squeeze(1)
        active, z, u_active = active[keep], fz[keep], u_active[keep]
    return FixedPoint(z=out, iterations=iterations, residuals=residuals, converged=converged)


def adjoint_fixed_point(
    vjp: Callable[[Tensor], Tensor], v: Tensor, *, tol: float, max_iter: int
) -> Tensor:
    """Solves g = v + vjp(g) by fixed-point iteration (vjp(g) = g·J).

    Stops when every sample's ‖g_next − g‖ ≤ tol·‖g_next‖ or after `max_iter` products; the
    batch stops together because one vector-Jacobian product serves the whole batch.
    Converges when J is a contraction, which the contractive state path guarantees.
    """
    g = v
    for _ in range(max_iter):
        g_next = vjp(g) + v
        done = bool((_per_sample_norm(g_next - g) <= tol * _per_sample_norm(g_next)).all())
        g = g_next
        if done:
            break
    return g


class FPILayer(nn.Module):
    """One layer of a backbone, usable plainly or iterated to its fixed point.

    Args:
        inject: x ↦ u, the layer's plain pre-activation (e.g. conv → maxpool → GroupNorm).
        state: the state path s (bias-free; contractive when its bound is < 1).
        activation: φ, 1-Lipschitz (ReLU, tanh).
        tol: forward tolerance on ‖f(z) − z‖ / ‖f(z)‖.
        max_iter: most forward applications per solve.
        backward: `implicit`, `jfb` or `unroll`.
        bwd_tol, bwd_max_iter: the adjoint iteration's tolerance and cap (`implicit`).
    """

    def __init__(
        self,
        inject: nn.Module,
        state: ContractiveConv,
        activation: nn.Module,
        *,
        tol: float = 1e-5,
        max_iter: int = 30,
        backward: str = "implicit",
        bwd_tol: float = 1e-5,
        bwd_max_iter: int | None = None,
    ) -> None:
        super().__init__()
        if backward not in ("implicit", "jfb", "unroll"):
            raise ValueError(f"backward={backward!r} is not implicit, jfb or unroll")
        self.inject = inject
        self.state = state
        self.activation = activation
        self.tol = tol
        self.max_iter = max_iter
        self.backward_mode = backward
        self.bwd_tol = bwd_tol
        self.bwd_max_iter = max_iter if bwd_max_iter is None else bwd_max_iter

    def plain(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The ordinary layer: returns (φ(u), u) with u = inject(x)."""
        u = self.inject(x)
        return self.activation(u), u

    def f(self, z: Tensor, u: Tensor, weight: Tensor | None = None) -> Tensor:
        """One application φ(u + s(z)); `weight` is a precomputed state weight."""
        if weight is None:
            weight = self.state.effective_weight(self.state.spatial_shape(z))
        return self.activation(u + self.state.apply_weight(z, weight))

    def forward(self, x: Tensor) -> FixedPoint:
        """Iterates the layer on input x from its plain output."""
        return self.solve(self.inject(x))

    def solve(self, u: Tensor, z0: Tensor | None = None) -> FixedPoint:
        """Finds z* = φ(u + s(z*)) from z0 (default: the plain output φ(u)).

        Runs in float32 even under autocast: a relative tolerance of 1e-5 is below bf16's
        resolution. Gradients follow `backward_mode` when autograd is recording.
        """
        with torch.autocast(device_type=u.device.type, enabled=False):
            if u.dtype in (torch.float16, torch.bfloat16):
                u = u.float()
            start = self.activation(u) if z0 is None else z0.to(u.dtype)
            start = start.detach()
            weight = self.state.effective_weight(self.state.spatial_shape(u))
            grad_needed = torch.is_grad_enabled() and (u.requires_grad or weight.requires_grad)

            if grad_needed and self.backward_mode == "unroll":
                return fixed_point_iteration(
                    lambda z, ua: self.f(z, ua, weight), u, start,
                    tol=self.tol, max_iter=self.max_iter,
                )

            with torch.no_grad():
                w_fixed = weight.detach()
                fp = fixed_point_iteration(
                    lambda z, ua: self.f(z, ua, w_fixed), u.detach(), start,
                    tol=self.tol, max_iter=self.max_iter,
                )
            if not grad_needed:
                return fp

            z_star = fp.z
            z_out = self.f(z_star, u, weight)  # carries ∂f/∂θ and ∂f/∂u
            if self.backward_mode == "implicit":
                self._attach_adjoint(z_out, z_star, u.detach(), w_fixed)
            return replace(fp, z=z_out)

    def _attach_adjoint(self, z_out: Tensor, z_star: Tensor, u: Tensor, weight: Tensor) -> None:
        """Makes z_out's incoming gradient v become g = v + g·J(z*) (implicit differentiation).

        The graph of f at z* (for the vector-Jacobian products) is built lazily in the hook,
        so a forward that is never differentiated pays nothing for it.
        """
        tol, max_iter = self.bwd_tol, self.bwd_max_iter
        z_star = z_star.detach()

        def hook(v: Tensor) -> Tensor:
            with torch.enable_grad(), torch.autocast(device_type=v.device.type, enabled=False):
                z_leaf = z_star.requires_grad_()
                f_leaf = self.f(z_leaf, u, weight)

            def vjp(g: Tensor) -> Tensor:
                return torch.autograd.grad(f_leaf, z_leaf, g, retain_graph=True)[0]

            return adjoint_fixed_point(vjp, v, tol=tol, max_iter=max_iter)

        z_out.register_hook(hook)
