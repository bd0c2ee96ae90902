"""Batch-level image augmentation in torch: random horizontal flip and reflect-padded crop.

The augmentation runs on a whole ``B×C×H×W`` batch on whatever device it lives on, with one
indexing operation for the batch and no per-sample Python loop, so batches never leave the
accelerator. It suits natural images (CIFAR); it is wrong for digits, where a mirrored 2 or 5 is
no longer the same digit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BatchAugment", "flip_and_translate"]


def flip_and_translate(
    x: torch.Tensor, flip: torch.Tensor, shift: torch.Tensor, pad: int
) -> torch.Tensor:
    """Mirror and shift every image of a batch by its own amounts.

    Sample ``i`` of the result is the ``H×W`` window at offset ``(pad + shift[i, 0],
    pad + shift[i, 1])`` of the image reflect-padded by ``pad`` pixels on each side, mirrored
    left-right where ``flip[i]`` is true. This is the classic pad-and-random-crop with the
    padding filled by reflection rather than zeros.

    Args:
        x: images, ``B×C×H×W``, any floating dtype and device.
        flip: ``B`` booleans, on ``x``'s device.
        shift: ``B×2`` integers ``(dy, dx)`` in ``[-pad, pad]``, on ``x``'s device.
        pad: reflection padding in pixels, smaller than ``H`` and ``W``.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a B×C×H×W batch, got shape {tuple(x.shape)}")
    batch, _, height, width = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    # Mirroring the window's columns mirrors the crop: same as flipping, then translating.
    cols = torch.where(flip[:, None], (width - 1) - cols, cols)
    row_index = (pad + shift[:, 0])[:, None] + rows  # B×H
    col_index = (pad + shift[:, 1])[:, None] + cols  # B×W
    sample = torch.arange(batch, device=x.device)[:, None, None]
    # Advanced indices around a slice put the indexed dimensions first: B×H×W×C.
    window = padded[sample, :, row_index[:, :, None], col_index[:, None, :]]
    return window.permute(0, 3, 1, 2).contiguous()


class BatchAugment:
    """Random horizontal flip (probability 1/2) and random translation by up to ``pad`` pixels.

    Call it as ``augment(x) -> x`` on a training batch. Draws come from a
    :class:`torch.Generator` on the batch's device seeded with ``seed``, so two instances with
    the same seed applied to the same batches give the same results.

    Args:
        pad: largest shift in pixels (the reflection padding); 2 to 4 suits 32×32 images.
        flip: whether to mirror half of the images left-right.
        seed: seeds the generator.
    """

    def __init__(self, pad: int = 4, flip: bool = True, seed: int = 0) -> None:
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.pad = pad
        self.flip = flip
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        generator = self._generator(x.device)
        batch = x.shape[0]
        if self.flip:
            flip = torch.rand(batch, generator=generator, device=x.device) < 0.5
        else:
            flip = torch.zeros(batch, dtype=torch.bool, device=x.device)
        shift = torch.randint(
            -self.pad, self.pad + 1, (batch, 2), generator=generator, device=x.device
        )
        return flip_and_translate(x, flip, shift, self.pad)

    def __repr__(self) -> str:
        return f"BatchAugment(pad={self.pad}, flip={self.flip}, seed={self.seed})"

    def _generator(self, device: torch.device) -> torch.Generator:
        # A generator draws only on its own device; keep one per device, created on first use.
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]
