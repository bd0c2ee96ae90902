"""Fixed-point iterative (FPI) layers: the forward solvers and the backward modes.

A layer with injection u = inject(x), state path s and 1-Lipschitz activation φ defines

    f(z, x) = φ(u + s(z)),        f(0, x) = φ(u)   (the plain layer, since s(0) = 0).

(the state path's `combine`; models.contraction.ContractiveFlood joins u and s(z) by a maximum
instead, with the same f(0, x)).

Forward: iterate per sample until ‖f(z) − z‖ ≤ tol·‖f(z)‖ or `max_iter` applications of f.
u and the contraction-normalised state weight are computed once per solve (neither depends
on z) and reused by every iteration and by the backward. Converged samples leave the active
set, so they stop costing compute; each sample's applications and final residual are recorded.
Two solvers share that bookkeeping:
    fixed_point  z ← f(z) (Banach: converges for the contractive state path).
    anderson     Anderson acceleration (type II, memory m = 5): the next iterate mixes the
                 last m images f(z_i) with weights α (Σα = 1) minimising ‖Σ α_i (f(z_i) − z_i)‖,
                 TorchDEQ's bordered least-squares formulation (torchdeq.solver.anderson), run
                 per sample with the active set compacted (TorchDEQ's stops for the whole
                 batch). One application of f per iteration, as fixed_point; the mixing
                 arithmetic (about 2(m+1)·d multiply-adds per sample and iteration, d the
                 state's size) is not in the FLOP counts, which count applications of f.

Backward (after a no-grad solve, except `unroll`):
    implicit  one differentiable application z_out = f(z*, x) carries ∂f/∂θ and ∂f/∂x; a hook
              on z_out replaces its incoming gradient v by the solution of g = v + g·J,
              J = ∂f/∂z at z*, found by fixed-point iteration with vector-Jacobian products
              (the standard DEQ hook). That is the implicit-function-theorem gradient.
    phantom   the same hook with the adjoint iteration stopped after k − 1 products,
              g = v·Σ_{i<k} J^i: the truncated Neumann series of (I − J)⁻¹. At a fixed point
              this is TorchDEQ's unrolled phantom gradient with k steps and damping τ = 1
              (autograd through k applications of f from z*), but costs k − 1 input-only
              vector-Jacobian products instead of k differentiable applications.
    jfb       the same single application without the hook (Jacobian-free backprop: J ≈ 0;
              the phantom gradient with k = 1).
    unroll    autograd through every fixed-point iteration, whatever the solver (memory grows
              with the iterations; the ground truth the others are tested against).
The warm start z0 is always detached: the fixed point does not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from models.contraction import ContractiveConv

FixedPointMap = Callable[[Tensor, Tensor], Tensor]

BACKWARD_MODES: tuple[str, ...] = ("implicit", "phantom", "jfb", "unroll")
ANDERSON_MEMORY = 5
ANDERSON_REGULARISATION = 1e-4  # relative to the mean squared residual in the memory

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


class _ActiveSet:
    """Per-sample stopping shared by the solvers: which samples still iterate, and what the
    finished ones returned.

    A finished sample's statistics and output are written once, when it finishes; outputs are
    collected in chunks and put in batch order by one gather at the end (autograd follows it).
    """

    def __init__(self, z0: Tensor, *, tol: float, max_iter: int) -> None:
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        batch, device = z0.shape[0], z0.device
        self.tol, self.max_iter = tol, max_iter
        self.rows = torch.arange(batch, device=device)  # batch rows of the active samples
        self.iterations = torch.zeros(batch, dtype=torch.int64, device=device)
        self.residuals = torch.full((batch,), float("nan"), dtype=torch.float32, device=device)
        self.converged = torch.zeros(batch, dtype=torch.bool, device=device)
        self._finished_rows: list[Tensor] = []
        self._outputs: list[Tensor] = []

    def retire(self, step: int, z: Tensor, fz: Tensor) -> Tensor | None:
        """Records the samples that stop after this `step`-th application (fz = f(z) on the
        active rows). Returns None when every sample goes on, otherwise the positions (within
        the active rows) of those that go on: empty when none does."""
        with torch.no_grad():
            diff = _per_sample_norm(fz - z)
            scale = _per_sample_norm(fz)
            done = diff <= self.tol * scale
            stopping = torch.ones_like(done) if step == self.max_iter else done
            finished = stopping.nonzero().squeeze(1)
        if finished.numel() == 0:
            return None
        everyone = finished.numel() == fz.shape[0]
        rows = self.rows if everyone else self.rows[finished]
        self.iterations[rows] = step
        self.residuals[rows] = (diff / scale.clamp_min(_TINY)).float()[finished]
        self.converged[rows] = done[finished]
        self._finished_rows.append(rows)
        self._outputs.append(fz if everyone else fz[finished])
        if everyone:
            return finished[:0]
        keep = (~stopping).nonzero().squeeze(1)
        self.rows = self.rows[keep]
        return keep

    def result(self) -> FixedPoint:
        """The solve's outcome, in batch order (call once every sample has stopped)."""
        if len(self._outputs) == 1:  # everyone stopped together: already in batch order
            z = self._outputs[0]
        else:
            order = torch.argsort(torch.cat(self._finished_rows))
            z = torch.cat(self._outputs)[order]
        return FixedPoint(z=z, iterations=self.iterations, residuals=self.residuals,
                          converged=self.converged)


def fixed_point_iteration(
    f: FixedPointMap, u: Tensor, z0: Tensor, *, tol: float, max_iter: int
) -> FixedPoint:
    """Iterates z ← f(z, u) from z0 with per-sample stopping.

    Only the still-active samples are fed to f (the active subset is compacted whenever a
    sample stops), so f must treat samples independently. Works with or without autograd.

    Args:
        f: the map, called on the active rows of z and u.
        u: (B, ...) the injection (or any per-sample context f needs).
        z0: (B, ...) the start.
        tol: stop a sample once ‖f(z) − z‖ ≤ tol·‖f(z)‖.
        max_iter: most applications per sample.
    """
    active = _ActiveSet(z0, tol=tol, max_iter=max_iter)
    z, u_active = z0, u
    for step in range(1, max_iter + 1):
        fz = f(z, u_active)
        keep = active.retire(step, z, fz)
        if keep is None:
            z = fz
        elif keep.numel() == 0:
            break
        else:
            z, u_active = fz[keep], u_active[keep]
    return active.result()


def anderson_iteration(
    f: FixedPointMap, u: Tensor, z0: Tensor, *, tol: float, max_iter: int,
    memory: int = ANDERSON_MEMORY, regularisation: float = ANDERSON_REGULARISATION,
) -> FixedPoint:
    """Anderson-accelerated iteration of f from z0 with per-sample stopping (no autograd).

    The stopping test and the returned state are those of `fixed_point_iteration`: a sample
    stops once ‖f(z) − z‖ ≤ tol·‖f(z)‖ at its current iterate z and returns that f(z). From the
    second iterate on, z is the mix Σ α_i f(z_i) of the last `memory` images whose residuals
    G_i = f(z_i) − z_i have the least ‖Σ α_i G_i‖² + λ‖α‖² with Σ α_i = 1 (λ = `regularisation`
    times the mean ‖G_i‖², so that it is scale-free), solved per sample from the bordered
    (n+1)×(n+1) system as TorchDEQ does.
    """
    active = _ActiveSet(z0, tol=tol, max_iter=max_iter)
    shape = z0.shape[1:]
    with torch.no_grad():
        z, u_active = z0, u
        history_z = history_f = None
        for step in range(1, max_iter + 1):
            fz = f(z, u_active)
            keep = active.retire(step, z, fz)
            if keep is not None and keep.numel() == 0:
                break
            if history_z is None:
                history_z = z.new_empty((z.shape[0], memory, fz[0].numel()))
                history_f = torch.empty_like(history_z)
            slot = (step - 1) % memory
            history_z[:, slot] = z.flatten(1)
            history_f[:, slot] = fz.flatten(1)
            if keep is not None:
                history_z, history_f, u_active = history_z[keep], history_f[keep], u_active[keep]
                fz = fz[keep]
            filled = min(step, memory)
            if filled == 1:
                z = fz
                continue
            images = history_f[:, :filled]
            residuals = images - history_z[:, :filled]
            gram = torch.bmm(residuals, residuals.transpose(1, 2)).double()
            ridge = regularisation * gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(_TINY)
            system = gram.new_zeros((gram.shape[0], filled + 1, filled + 1))
            system[:, 0, 1:] = 1.0
            system[:, 1:, 0] = 1.0
            system[:, 1:, 1:] = gram + ridge[:, None, None] * torch.eye(filled, dtype=gram.dtype, device=gram.device)
            rhs = gram.new_zeros((gram.shape[0], filled + 1, 1))
            rhs[:, 0] = 1.0
            alpha = torch.linalg.solve(system, rhs)[:, 1:].transpose(1, 2).to(images.dtype)
            z = torch.bmm(alpha, images).view(-1, *shape)
    return active.result()


SOLVE = {"fixed_point": fixed_point_iteration, "anderson": anderson_iteration}
SOLVERS: tuple[str, ...] = tuple(SOLVE)


def adjoint_fixed_point(
    vjp: Callable[[Tensor], Tensor], v: Tensor, *, tol: float | None, max_iter: int
) -> Tensor:
    """Solves g = v + vjp(g) by fixed-point iteration (vjp(g) = g·J).

    Stops when every sample's ‖g_next − g‖ ≤ tol·‖g_next‖ or after `max_iter` products
    (`tol=None`: exactly `max_iter` products, the truncated Neumann series v·Σ_{i≤max_iter} J^i);
    the batch stops together because one vector-Jacobian product serves the whole batch.
    Converges when J is a contraction, which the contractive state path guarantees.
    """
    g = v
    for _ in range(max_iter):
        g_next = vjp(g) + v
        done = tol is not None and bool(
            (_per_sample_norm(g_next - g) <= tol * _per_sample_norm(g_next)).all()
        )
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
        solver: `fixed_point` or `anderson` (the forward solve; see the module docstring).
        backward: `implicit`, `phantom`, `jfb` or `unroll`.
        bwd_tol, bwd_max_iter: the adjoint iteration's tolerance and cap (`implicit`).
        phantom_steps: k of the `phantom` backward (k − 1 vector-Jacobian products).
    """

    def __init__(
        self,
        inject: nn.Module,
        state: ContractiveConv,
        activation: nn.Module,
        *,
        tol: float = 1e-5,
        max_iter: int = 30,
        solver: str = "fixed_point",
        backward: str = "implicit",
        bwd_tol: float = 1e-5,
        bwd_max_iter: int | None = None,
        phantom_steps: int = 3,
    ) -> None:
        super().__init__()
        if backward not in BACKWARD_MODES:
            raise ValueError(f"backward={backward!r} is not one of {list(BACKWARD_MODES)}")
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r} is not one of {list(SOLVERS)}")
        if phantom_steps < 1:
            raise ValueError(f"phantom_steps must be >= 1, got {phantom_steps}")
        self.inject = inject
        self.state = state
        self.activation = activation
        self.tol = tol
        self.max_iter = max_iter
        self.solver = solver
        self.backward_mode = backward
        self.bwd_tol = bwd_tol
        self.bwd_max_iter = max_iter if bwd_max_iter is None else bwd_max_iter
        self.phantom_steps = phantom_steps

    def plain(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The ordinary layer: returns (φ(u), u) with u = inject(x)."""
        u = self.inject(x)
        return self.activation(u), u

    def f(self, z: Tensor, u: Tensor, weight: Tensor | None = None) -> Tensor:
        """One application φ(u + s(z)) (or the state path's own `combine` of u and s(z));
        `weight` is a precomputed state weight."""
        if weight is None:
            weight = self.state.effective_weight(self.state.spatial_shape(z))
        return self.state.combine(u, self.state.apply_weight(z, weight), self.activation)

    def forward(self, x: Tensor) -> FixedPoint:
        """Iterates the layer on input x from its plain output."""
        return self.solve(self.inject(x))

    def solve(self, u: Tensor, z0: Tensor | None = None) -> FixedPoint:
        """Finds z* = φ(u + s(z*)) from z0 (default: the plain output φ(u)).

        Runs in float32 even under autocast: a relative tolerance of 1e-5 is below bf16's
        resolution. The state weight is normalised once here and reused by every iteration
        and the backward. Gradients follow `backward_mode` when autograd is recording.
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
                fp = SOLVE[self.solver](
                    lambda z, ua: self.f(z, ua, w_fixed), u.detach(), start,
                    tol=self.tol, max_iter=self.max_iter,
                )
            if not grad_needed:
                return fp

            z_star = fp.z
            z_out = self.f(z_star, u, weight)  # carries ∂f/∂θ and ∂f/∂u
            if self.backward_mode == "implicit":
                self._attach_adjoint(z_out, z_star, u.detach(), w_fixed, self.bwd_tol, self.bwd_max_iter)
            elif self.backward_mode == "phantom" and self.phantom_steps > 1:
                self._attach_adjoint(z_out, z_star, u.detach(), w_fixed, None, self.phantom_steps - 1)
            return replace(fp, z=z_out)

    def _attach_adjoint(
        self, z_out: Tensor, z_star: Tensor, u: Tensor, weight: Tensor, tol: float | None,
        max_iter: int,
    ) -> None:
        """Makes z_out's incoming gradient v become g = v + g·J(z*) (implicit differentiation;
        `tol=None`: exactly `max_iter` products, the phantom gradient).

        The graph of f at z* (for the vector-Jacobian products) is built lazily in the hook,
        so a forward that is never differentiated pays nothing for it.
        """
        z_star = z_star.detach()

        def hook(v: Tensor) -> Tensor:
            with torch.enable_grad(), torch.autocast(device_type=v.device.type, enabled=False):
                z_leaf = z_star.requires_grad_()
                f_leaf = self.f(z_leaf, u, weight)

            def vjp(g: Tensor) -> Tensor:
                return torch.autograd.grad(f_leaf, z_leaf, g, retain_graph=True)[0]

            return adjoint_fixed_point(vjp, v, tol=tol, max_iter=max_iter)

        z_out.register_hook(hook)
