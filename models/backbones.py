"""The three-layer backbones: a stem, FPI-capable layers L1..L3, a head.

`ConvBackbone` (images) takes the three conv groups of airbench (a fast CIFAR-10 network) as
its layers: conv 3×3 → maxpool 2 → GroupNorm → ReLU, widths w, 2w, 4w, with a contractive 3×3
conv as each layer's state path. `LSTMBackbone` (sequence classification and language
modelling) has an embedding stem and three layers tanh(Linear(LSTM(x))), each with a temporal
Conv1d (kernel 3) state path, so that FPI iterations move information along time.

Normalisation is GroupNorm, never BatchNorm: a sample's output must not depend on which other
samples share its batch (DynaLay regroups samples by action).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from models.contraction import ContractiveConv, contractive_state
from models.fpi import FPILayer


def _groups(channels: int, preferred: int = 8) -> int:
    return math.gcd(channels, preferred)


class Backbone(nn.Module):
    """Stem, three `FPILayer`s and a head; the models decide which layers to iterate.

    Subclasses set `stem`, `layers` (3 FPILayers), `head` and `layer_dims` (channels of each
    layer's output), and define `pool` (one layer output → a (B, C) summary for the agent).
    """

    stem: nn.Module
    layers: nn.ModuleList
    head: nn.Module
    layer_dims: tuple[int, int, int]

    def pool(self, a: Tensor) -> Tensor:
        raise NotImplementedError


class ConvBackbone(Backbone):
    """CNN for (C, H, W) images with C in {1, 3} and 8 ≤ H, W ≤ 32.

    Shapes for width w and an H×W input: stem (w, H, W) → L1 (w, H/2, W/2) → L2 (2w, H/4, W/4)
    → L3 (4w, H/8, W/8) → global average pool → linear head. `state_path` picks each layer's
    state path form (models.contraction.contractive_state): `conv`, a contractive 3×3 conv on
    every layer, or `max`, on L1 a flood-like maximum over the 4 neighbours of a contractive 1×1
    channel mix and on L2, L3 the conv (a flood on their coarser grids, where one position
    holds several of L1's, merges what L1 keeps apart: on the 10-cell maze, quick protocol,
    Model 3 with the max path on all three layers stayed at chance, 50.5 %). φ is
    ReLU either way. (Capped at 1, ReLU would let a flood's source saturate at once, so a solve
    over a path of L steps would end after exactly L + 1 applications, as the maze tests show
    for a hand-set flood; but a cap stalls training, as saturated units pass no gradient, and
    on the maze capped models learnt far more slowly. Uncapped, the source keeps growing around
    its 2-cycles, so solves at c near 1 run to `max_iter`.)
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 32,
        *,
        contraction: float | None = 0.9,
        contraction_bound: str = "circular",
        state_path: str = "conv",
        **fpi_options: object,
    ) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(width), width),
            nn.ReLU(),
        )
        layers = []
        c_in = width
        for c_out in widths:
            inject = nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                nn.GroupNorm(_groups(c_out), c_out),
            )
            # A flood belongs at cell resolution: at L2 and L3 one position holds several cells.
            form = state_path if c_out == width else "conv"
            state = contractive_state(form, c_out, contraction=contraction, bound=contraction_bound)
            layers.append(FPILayer(inject, state, nn.ReLU(), **fpi_options))  # type: ignore[arg-type]
            c_in = c_out
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))
        self.layer_dims = widths

    def pool(self, a: Tensor) -> Tensor:
        return a.mean(dim=(2, 3))


class LSTMInjection(nn.Module):
    """u = Linear(LSTM(x)) over a (B, T, D) sequence; φ(u) = tanh(u) is the plain LSTM layer."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.lstm(x)[0])


class MeanOverTime(nn.Module):
    """(B, T, C) → (B, C)."""

    def forward(self, h: Tensor) -> Tensor:
        return h.mean(dim=1)


class LSTMBackbone(Backbone):
    """Embedding stem, three LSTM layers, linear head, over int64 (B, T) token ids.

    `language_model=True` gives per-token logits (B, T, num_classes) and makes the state path
    causal (a step sees only itself and earlier steps); otherwise the head classifies the mean
    over time of the last layer and the temporal state path looks both ways.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int = 64,
        hidden: int = 128,
        *,
        language_model: bool = False,
        contraction: float | None = 0.9,
        contraction_bound: str = "circular",
        **fpi_options: object,
    ) -> None:
        super().__init__()
        self.language_model = language_model
        self.stem = nn.Embedding(vocab_size, embed_dim)
        layers = []
        in_dim = embed_dim
        for _ in range(3):
            state = ContractiveConv(
                hidden, 3, spatial_dims=1, contraction=contraction, causal=language_model,
                bound=contraction_bound,
            )
            layers.append(
                FPILayer(LSTMInjection(in_dim, hidden), state, nn.Tanh(), **fpi_options)  # type: ignore[arg-type]
            )
            in_dim = hidden
        self.layers = nn.ModuleList(layers)
        readout = nn.Linear(hidden, num_classes)
        self.head = readout if language_model else nn.Sequential(MeanOverTime(), readout)
        self.layer_dims = (hidden, hidden, hidden)

    def pool(self, a: Tensor) -> Tensor:
        return a.mean(dim=1)
