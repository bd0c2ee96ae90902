"""Contractive state paths: bias-free convolutions with a guaranteed operator-norm bound.

An FPI layer iterates z ← φ(u + s(z)). If φ is 1-Lipschitz and ‖s‖ ≤ c < 1 (operator norm on
one sample's state, Euclidean), the map is a c-contraction per sample, so the iteration
converges to a unique fixed point from any start (Banach; the thesis' Theorem 1). The state
path applies W · c·σ(g) / bound(W), where bound(W) is a guaranteed upper bound on ‖conv_W‖
and σ(g) in (0, 1) a learnt strength (the normalised W is scale-free, so without g the state
path could never become weaker than c), so ‖s‖ ≤ c·σ(g) < c by construction. Two bounds are
available:

``circular`` (the default; tight). A zero-padded convolution of an n-long axis (kernel k, any
padding that fits in k − 1) equals, on the input's support, the circular convolution on a grid
of n + k − 1 points of the input embedded with zeros: no wrapped-around tap reaches a real
sample. Embedding is an isometry and restricting the output cannot raise a norm, so
‖conv_W‖ ≤ ‖circ_W‖. A circular convolution is diagonalised by the DFT (Sedghi, Gupta & Long,
"The singular values of convolutional layers", ICLR 2019): its singular values are those of the
C_out × C_in matrices P(ω) = Σ_τ W_τ e^{iωτ} at the grid's frequencies, so

    ‖conv_W‖ ≤ max_ω σ_max(P(ω)),

computed exactly (FFT of the kernel zero-padded to the grid, one-sided along the last axis
because P(−ω) = conj P(ω) for a real kernel, then the batched Hermitian eigenvalues of
P(ω)ᴴP(ω)). The bound depends on the state's size, so it is computed for the size being
solved, once per solve.

``taps`` (loose; the earlier bound, kept to measure against). The convolution is a sum over
taps τ of "shift (zero-filling, norm ≤ 1), then mix channels by W_τ", so
‖conv_W‖ ≤ Σ_τ σ_max(W_τ). On trained 3×3 kernels it overstates the norm about three-fold,
so a nominal c = 0.9 contracts like c ≈ 0.3 and the state path barely moves the state.

Both are exact matrix norms, never power-iteration estimates: an estimate approaches the norm
from below and would not be a true bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORM_BOUNDS: tuple[str, ...] = ("circular", "taps")


def tap_norm_bound(weight: Tensor) -> Tensor:
    """Σ over kernel taps of σ_max of the tap's (out × in) matrix: an upper bound on the
    operator norm of the zero-padded convolution with this weight (any spatial dims)."""
    out_channels, in_channels = weight.shape[:2]
    taps = weight.reshape(out_channels, in_channels, -1).permute(2, 0, 1)
    return torch.linalg.matrix_norm(taps, ord=2).sum()


@dataclass
class SpectralMaximiser:
    """Where a bound peaked: the one-sided grid's flat frequency index (what
    `circular_norm_bound` warm-starts from)."""

    frequency: Tensor


def circular_norm_bound(
    weight: Tensor,
    spatial_shape: Sequence[int],
    maximisers: dict[tuple[int, ...], SpectralMaximiser] | None = None,
) -> Tensor:
    """The operator norm of the circular convolution that embeds the zero-padded convolution
    of a state with spatial size `spatial_shape`: an upper bound on the latter's norm, and
    tight up to boundary effects.

    Args:
        weight: (C_out, C_in, k, ...) kernel with one spatial dim per entry of `spatial_shape`.
        spatial_shape: the state's spatial size, (H, W) or (T,).
        maximisers: a cache, per grid, of the frequency where the previous call peaked (read
            and updated). The value is the same with or without it; with it, when the weight
            has changed little since (as between training steps), it costs about a third.

    The value is √(λ·(1 + n·ε)), λ the largest eigenvalue of G(ω) = P(ω)ᴴP(ω) over every
    frequency ω (σ_max² of the most amplifying one), n the channels and ε the dtype's
    resolution: the margin covers the eigenvalue routines' rounding, so the value is an upper
    bound, not just close to one. Its gradient is that of the maximising frequency's σ_max,
    u·vᴴ by the chain rule through P(ω): only the maximum matters, so no frequency needs a
    differentiable SVD; ‖P(ω*) v‖ = σ_max carries the gradient, v the top eigenvector of G(ω*).

    Without a cache, the eigenvalues of every G(ω) (no gradients) give λ. With one, the
    eigenvalues of G at the cached frequency give a candidate λ*, and a Cholesky
    factorisation of λ*·(1 + n·ε)·I − G(ω) at every other frequency succeeds exactly where
    every eigenvalue lies below that level (up to the factorisation's rounding, of the same
    order as the eigenvalue routines'); only the frequencies where it fails, if any, need
    their eigenvalues. A batched Cholesky costs about a quarter of the batched eigenvalues.
    """
    spatial_dims = weight.dim() - 2
    if len(spatial_shape) != spatial_dims:
        raise ValueError(f"a {spatial_dims}-D kernel needs {spatial_dims} spatial sizes, got {tuple(spatial_shape)}")
    grid = tuple(int(n) + k - 1 for n, k in zip(spatial_shape, weight.shape[2:]))
    with torch.no_grad():
        symbol = torch.fft.rfftn(weight, s=grid, dim=tuple(range(2, weight.dim())))
        per_frequency = symbol.flatten(2).permute(2, 0, 1)  # (frequencies, C_out, C_in)
        gram = per_frequency.mH @ per_frequency
        margin = 1 + gram.shape[-1] * torch.finfo(weight.dtype).eps
        cached = None if maximisers is None else maximisers.get(grid)
        if cached is None or cached.frequency.device != gram.device:
            largest = torch.linalg.eigvalsh(gram)[:, -1].argmax()  # a tensor: no host sync on a GPU
        else:
            largest = _largest_from(gram, cached.frequency, margin)
        if maximisers is not None:
            maximisers[grid] = SpectralMaximiser(largest)
        eigenvalues, eigenvectors = torch.linalg.eigh(gram[largest])
        value = (eigenvalues[-1].clamp(min=0) * margin).sqrt()
        singular_vector = eigenvectors[:, -1]
    frequency = torch.unravel_index(largest, symbol.shape[2:])
    matrix = _symbol_at(weight, frequency, grid)
    norm = torch.linalg.vector_norm(matrix @ singular_vector.to(matrix.dtype))
    # a unit v gives ‖P v‖ ≤ σ_max ≤ value: the value, with the gradient of ‖P v‖
    return norm + (torch.maximum(value.to(norm.dtype), norm) - norm).detach()


def _largest_from(gram: Tensor, candidate: Tensor, margin: float) -> Tensor:
    """The frequency whose G has the largest eigenvalue, searched from `candidate`: every
    other frequency where level·I − G has a Cholesky factor (level: the candidate's largest
    eigenvalue times `margin`) lies below it; those where it has none are compared exactly."""
    candidate_value = torch.linalg.eigvalsh(gram[candidate])[-1]
    identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    above = torch.linalg.cholesky_ex(candidate_value * margin * identity - gram).info != 0
    above[candidate] = False
    if not bool(above.any()):
        return candidate
    challengers = above.nonzero().squeeze(1)
    challenger_values = torch.linalg.eigvalsh(gram[challengers])[:, -1]
    best = challenger_values.argmax()
    return challengers[best] if bool(challenger_values[best] > candidate_value) else candidate


def _symbol_at(weight: Tensor, frequency: Sequence[Tensor], grid: Sequence[int]) -> Tensor:
    """P(ω) = Σ_τ W_τ e^{−2πi Σ_d ω_d τ_d / N_d} at one grid frequency, differentiable in W: the
    entry `rfftn(W, s=grid)[..., ω]` without transforming every frequency."""
    complex_weight = weight.to(torch.complex128 if weight.dtype == torch.float64 else torch.complex64)
    phase = None
    for d, (index, size) in enumerate(zip(frequency, grid)):
        taps = torch.arange(weight.shape[2 + d], device=weight.device, dtype=weight.dtype)
        factor = torch.exp(-2j * math.pi * index.to(weight.dtype) * taps / size).to(complex_weight.dtype)
        phase = factor if phase is None else phase[..., None] * factor
    assert phase is not None
    return (complex_weight * phase).flatten(2).sum(dim=2)


class ContractiveConv(nn.Module):
    """Bias-free, shape-preserving convolution of an FPI state, with ‖s‖ ≤ `contraction`.

    Args:
        channels: channels of the state (in = out).
        kernel_size: odd kernel size.
        spatial_dims: 2 for image states (B, C, H, W); 1 for sequence states, laid out
            (B, T, C) like an LSTM layer's output (the time axis is convolved).
        contraction: the operator-norm bound c in (0, 1); None leaves the weight
            unconstrained (then nothing guarantees convergence).
        causal: sequence states only: pad on the left so that step t sees only steps ≤ t
            (language modelling must not see the future).
        bound: `circular` (tight, per state size) or `taps` (loose, size-free); see the
            module docstring.

    No bias, so s(0) = 0 and f(0, x) = φ(u(x)) is the plain layer.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        spatial_dims: int = 2,
        contraction: float | None = 0.9,
        causal: bool = False,
        bound: str = "circular",
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if causal and spatial_dims != 1:
            raise ValueError("causal padding is for sequence states only")
        if contraction is not None and not 0 < contraction < 1:
            raise ValueError(f"contraction must lie in (0, 1) or be None, got {contraction}")
        if bound not in NORM_BOUNDS:
            raise ValueError(f"bound={bound!r} is not one of {list(NORM_BOUNDS)}")
        self.spatial_dims = spatial_dims
        self.kernel_size = kernel_size
        self.contraction = contraction
        self.causal = causal
        self.bound = bound
        shape = (channels, channels) + (kernel_size,) * spatial_dims
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        # The normalised weight is scale-free, so its strength needs a parameter of its own:
        # ‖s‖ = c·sigmoid(gain) ≤ c, learnable from full strength down to off (starts at 0.88 c).
        self.gain = nn.Parameter(torch.tensor(2.0)) if contraction is not None else None
        # where the normalisation's bound last peaked, per state size: a warm start, not state
        self._maximisers: dict[tuple[int, ...], SpectralMaximiser] = {}

    def spatial_shape(self, state: Tensor) -> tuple[int, ...]:
        """The spatial size of a batched state: (H, W) of (B, C, H, W), (T,) of (B, T, C)."""
        return tuple(state.shape[2:]) if self.spatial_dims == 2 else (int(state.shape[1]),)

    def weight_norm_bound(self, weight: Tensor, spatial_shape: Sequence[int], warm: bool = False) -> Tensor:
        """This module's bound on ‖conv_weight‖ for states of size `spatial_shape`; `warm`:
        searched from where this module's last warm bound peaked (`circular_norm_bound`: the
        same value, cheaper when the weight moved little)."""
        if self.bound == "taps":
            return tap_norm_bound(weight)
        return circular_norm_bound(weight, spatial_shape, self._maximisers if warm else None)

    def strength(self) -> Tensor | None:
        """The learnt fraction sigmoid(gain) in (0, 1) of c that the state path uses (None when
        unconstrained)."""
        return None if self.gain is None else torch.sigmoid(self.gain)

    def effective_weight(self, spatial_shape: Sequence[int]) -> Tensor:
        """The weight the state path applies to states of size `spatial_shape`: rescaled so
        that its bound is c·sigmoid(gain) < c when contractive. Differentiable; compute it once
        per solve."""
        if self.contraction is None or self.gain is None:
            return self.weight
        # warm only where it is differentiated (training, where the weight moves a little each
        # step): a no-grad use (evaluation, analysis) stays exact, so it never depends on history
        warm = torch.is_grad_enabled() and self.weight.requires_grad
        bound = self.weight_norm_bound(self.weight, spatial_shape, warm=warm)
        scale = self.contraction * torch.sigmoid(self.gain) / bound
        return self.weight * scale.to(self.weight.dtype)

    def norm_bound(self, spatial_shape: Sequence[int]) -> float:
        """The guaranteed bound on ‖s‖ for states of size `spatial_shape`: c·sigmoid(gain)
        (< c) when contractive."""
        with torch.no_grad():
            return float(self.weight_norm_bound(self.effective_weight(spatial_shape), spatial_shape))

    def apply_weight(self, z: Tensor, weight: Tensor) -> Tensor:
        """s(z) with a precomputed `effective_weight(...)`, so a solve normalises once, not
        per iteration."""
        pad = self.kernel_size // 2
        if self.spatial_dims == 2:
            return F.conv2d(z, weight, padding=pad)
        z = z.transpose(1, 2)  # (B, T, C) -> (B, C, T)
        if self.causal:
            out = F.conv1d(F.pad(z, (self.kernel_size - 1, 0)), weight)
        else:
            out = F.conv1d(z, weight, padding=pad)
        return out.transpose(1, 2)

    def combine(self, u: Tensor, spread: Tensor, activation: nn.Module) -> Tensor:
        """One application of the layer from its injection u and the state path's output
        s(z): φ(u + s(z)). 1-Lipschitz in s(z), so the layer is as contractive as s."""
        return activation(u + spread)

    def forward(self, z: Tensor) -> Tensor:
        return self.apply_weight(z, self.effective_weight(self.spatial_shape(z)))


STATE_PATHS: tuple[str, ...] = ("conv", "max", "flood")
"""State path forms: ``conv`` (ContractiveConv, an L2 contraction), ``max``
(ContractiveMaxSpread, an L∞ contraction) or ``flood`` (ContractiveFlood: the same spread,
combined with the injection by a maximum, so a flood settles in as many steps as it travels)."""


def max_row_sum(weight: Tensor) -> Tensor:
    """max over output channels of Σ over input channels of |W|: the exact operator norm of the
    1×1 channel mix `weight` (C_out, C_in, 1, 1) in the max norm."""
    return weight.flatten(1).abs().sum(dim=1).max()


class ContractiveMaxSpread(ContractiveConv):
    """State path s(z)[p] = max over p and its 4 edge neighbours q of (W z)[q], W a 1×1 channel
    mix with ‖s‖ ≤ `contraction` in the max norm: the form a flood fill takes.

    Why. A flood must carry "reached" along a path without losing it. A linear state path of
    L2 norm c that spreads to 4 neighbours passes on about c/4 per step where a path is one cell
    wide, so a signal D cells away shrinks like (c/4)^D and drowns. The maximum passes a value
    on whole: a flood seeded with 1 at the start reads c^D at distance D (0.99^30 ≈ 0.74).

    Contraction in the max norm ‖z‖∞ = max over positions and channels of |z| (one sample).
    The 1×1 mix has ‖W z − W z'‖∞ ≤ ‖W‖∞ ‖z − z'‖∞ with ‖W‖∞ the largest absolute row sum
    (`max_row_sum`, exact); a maximum over positions is 1-Lipschitz in the max norm
    (|max a − max b| ≤ max |a − b|); and φ (ReLU, tanh) acts elementwise and is 1-Lipschitz. So
    W rescaled to ‖W‖∞ = c·σ(g) makes f(z) = φ(u + s(z)) a c-contraction in the max norm: a
    unique fixed point, reached from any start (Banach holds in any norm). Its Jacobian J has
    ‖J‖∞ ≤ c, so its spectral radius is ≤ c and the adjoint iteration g ← v + g·J of the
    implicit backward converges too (‖Jᵀ‖₁ = ‖J‖∞ ≤ c). Positions beyond the border take
    no part in the maximum (−∞ padding), so they add nothing. Image states (B, C, H, W) only.

    Args:
        channels: channels of the state.
        contraction: the bound c in (0, 1) (None: unconstrained mix, nothing guaranteed).
    """

    def __init__(self, channels: int, contraction: float | None = 0.9) -> None:
        super().__init__(channels, kernel_size=1, spatial_dims=2, contraction=contraction)
        # Start as a flood of every channel on its own (W = I) at about 0.98 c: a random mix
        # starts with nothing to carry, and a weak one fades over a long path (0.87^30 ≈ 0.02).
        with torch.no_grad():
            self.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
            if self.gain is not None:
                self.gain.fill_(4.0)

    def weight_norm_bound(self, weight: Tensor, spatial_shape: Sequence[int], warm: bool = False) -> Tensor:
        """‖W‖∞ of the 1×1 mix (exact and size-free; `spatial_shape` and `warm` are ignored)."""
        return max_row_sum(weight)

    def apply_weight(self, z: Tensor, weight: Tensor) -> Tensor:
        mixed = F.conv2d(z, weight)
        height, width = mixed.shape[-2:]
        padded = F.pad(mixed, (1, 1, 1, 1), value=float("-inf"))
        return torch.stack([
            mixed,
            padded[..., :height, 1 : width + 1],  # the neighbour above
            padded[..., 2:, 1 : width + 1],  # below
            padded[..., 1 : height + 1, :width],  # left
            padded[..., 1 : height + 1, 2:],  # right
        ]).amax(dim=0)


class ContractiveFlood(ContractiveMaxSpread):
    """The max spread, combined with the injection by a maximum instead of a sum:

        f(z) = max(φ(u), s(z) − relu(−u))

    u's positive part seeds (a source holds φ(u) and takes nothing added), its negative part
    blocks (a wall with u ≪ 0 passes nothing on), and where u ≈ 0 the state carries the
    neighbourhood's value on at c.

    Why. Under φ(u + s(z)) a source adds its neighbours' echo to itself (its own value comes
    back at c² two steps later), so it grows towards u/(1 − c) at the rate c: with c near 1
    every solve runs to `max_iter` whatever the path's length. With the maximum a seeded cell
    is never raised by an echo weaker than itself, so a flood over a path of L steps is exactly
    settled after L + 1 applications, and the iterations a sample takes follow its difficulty.

    Contraction. z ↦ s(z) − relu(−u) is ‖s‖-Lipschitz in the max norm and max(a, ·) with a
    fixed is 1-Lipschitz, so f is a c·σ(g)-contraction in the max norm, like the additive form.
    f(0) = max(φ(u), −relu(−u)) = φ(u) for φ = ReLU or tanh (φ(u) ≥ min(u, 0)): the plain
    layer is unchanged.
    """

    def combine(self, u: Tensor, spread: Tensor, activation: nn.Module) -> Tensor:
        return torch.maximum(activation(u), spread - F.relu(-u))


def contractive_state(form: str, channels: int, *, contraction: float | None,
                      bound: str = "circular") -> ContractiveConv:
    """The state path of an image layer with `channels` channels: `conv` (a 3×3
    ContractiveConv with `bound`), `max` (ContractiveMaxSpread) or `flood`
    (ContractiveFlood)."""
    if form == "conv":
        return ContractiveConv(channels, 3, spatial_dims=2, contraction=contraction, bound=bound)
    if form == "max":
        return ContractiveMaxSpread(channels, contraction=contraction)
    if form == "flood":
        return ContractiveFlood(channels, contraction=contraction)
    raise ValueError(f"state path {form!r} is not one of {list(STATE_PATHS)}")
