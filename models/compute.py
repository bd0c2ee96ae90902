"""FLOPs per sample, measured with `torch.utils.flop_counter.FlopCounterMode`.

A model's compute is a sum of layer applications (stem, each layer's injection, each FPI
application of a state path, head, agent). Each application's FLOPs are measured once per
per-sample input shape, on the meta device with a batch of one, and cached; a sample's FLOPs
are then these costs times the applications it actually ran.

Why the meta device: it runs the same ATen decomposition everywhere, so the count does not
depend on the backend. On CPU the oneDNN LSTM kernel and on CUDA the cuDNN one are single
opaque ops that FlopCounterMode does not count (it would report 0 FLOPs for an LSTM), while on
meta `aten::lstm` decomposes into the matrix products FlopCounterMode knows. Only the ops with a
FLOP formula (matmuls, convolutions, attention) are counted; normalisation, pooling and
activations count as zero, the usual convention.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def _meta_sample(t: Tensor) -> Tensor:
    return torch.empty((1, *t.shape[1:]), dtype=t.dtype, device="meta")


def module_flops(module: nn.Module, *inputs: Tensor) -> int:
    """FLOPs of one call `module(*inputs)` on a batch of one, counted on the meta device.

    Only the first sample's shape of each input matters; the parameters are replaced by meta
    tensors of the same shapes, so nothing is computed and the module is not modified.
    """
    meta_params = {
        name: torch.empty_like(t, device="meta")
        for name, t in itertools.chain(module.named_parameters(), module.named_buffers())
    }
    meta_inputs = tuple(_meta_sample(t) for t in inputs)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        torch.func.functional_call(module, meta_params, meta_inputs)
    return int(counter.get_total_flops())


class FlopTable:
    """Per-sample FLOPs of named module applications, measured once per input shape."""

    def __init__(self) -> None:
        self._cache: dict[tuple[object, ...], float] = {}

    def per_sample(self, name: str, module: nn.Module, *inputs: Tensor) -> float:
        """FLOPs one sample spends in `module(*inputs)` (cached by name and sample shapes)."""
        key = (name, *(tuple(t.shape[1:]) for t in inputs))
        cost = self._cache.get(key)
        if cost is None:
            cost = float(module_flops(module, *inputs))
            self._cache[key] = cost
        return cost
