"""Contractive state paths: bias-free convolutions with a guaranteed operator-norm bound.

An FPI layer iterates z ← φ(u + s(z)). If φ is 1-Lipschitz and ‖s‖ ≤ c < 1 (operator norm on
one sample's state, Euclidean), the map is a c-contraction per sample, so the iteration
converges to a unique fixed point from any start (Banach; the thesis' Theorem 1).

The bound. A convolution with zero padding is a sum over its kernel taps τ of
"shift the state by τ (zero-filling), then mix channels by the matrix W_τ". A zero-filling
shift has operator norm ≤ 1 and channel mixing by W_τ has operator norm σ_max(W_τ), so by the
triangle inequality

    ‖conv_W‖ ≤ Σ_τ σ_max(W_τ).

The state path uses W · c / Σ_τ σ_max(W_τ), whose bound is exactly c. σ_max is computed
exactly (`torch.linalg.matrix_norm(ord=2)`, a batched SVD of the k small C×C tap matrices, once
per solve), not estimated by power iteration: a power-iteration estimate approaches σ_max from
below, so it would not be a true bound.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def tap_norm_bound(weight: Tensor) -> Tensor:
    """Σ over kernel taps of σ_max of the tap's (out × in) matrix: an upper bound on the
    operator norm of the zero-padded convolution with this weight (any spatial dims)."""
    out_channels, in_channels = weight.shape[:2]
    taps = weight.reshape(out_channels, in_channels, -1).permute(2, 0, 1)
    return torch.linalg.matrix_norm(taps, ord=2).sum()


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

    No bias, so s(0) = 0 and f(0, x) = φ(u(x)) is the plain layer.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        spatial_dims: int = 2,
        contraction: float | None = 0.9,
        causal: bool = False,
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
        self.spatial_dims = spatial_dims
        self.kernel_size = kernel_size
        self.contraction = contraction
        self.causal = causal
        shape = (channels, channels) + (kernel_size,) * spatial_dims
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def effective_weight(self) -> Tensor:
        """The weight the state path applies: rescaled to the bound c when contractive."""
        if self.contraction is None:
            return self.weight
        return self.weight * (self.contraction / tap_norm_bound(self.weight))

    def norm_bound(self) -> float:
        """The guaranteed bound on ‖s‖ (Σ_τ σ_max of the effective weight)."""
        with torch.no_grad():
            return float(tap_norm_bound(self.effective_weight()))

    def apply_weight(self, z: Tensor, weight: Tensor) -> Tensor:
        """s(z) with a precomputed `effective_weight()`, so a solve normalises once, not per
        iteration."""
        pad = self.kernel_size // 2
        if self.spatial_dims == 2:
            return F.conv2d(z, weight, padding=pad)
        z = z.transpose(1, 2)  # (B, T, C) -> (B, C, T)
        if self.causal:
            out = F.conv1d(F.pad(z, (self.kernel_size - 1, 0)), weight)
        else:
            out = F.conv1d(z, weight, padding=pad)
        return out.transpose(1, 2)

    def forward(self, z: Tensor) -> Tensor:
        return self.apply_weight(z, self.effective_weight())
