"""`build_model(cfg, spec)`: the one place that maps a configuration to a model."""

from __future__ import annotations

from models.backbones import Backbone, ConvBackbone, LSTMBackbone
from models.base import DynaLayModule
from models.baselines import DEQ, Plain, StaticFPI
from models.config import ModelConfig, ModelSpec
from models.dynalay import DynaLay


def build_backbone(cfg: ModelConfig, spec: ModelSpec) -> Backbone:
    """The CNN for images, the LSTM network for sequences and language modelling."""
    fpi_options = dict(
        tol=cfg.fwd_tol,
        max_iter=cfg.max_iter,
        solver=cfg.solver,
        backward=cfg.backward,
        phantom_steps=cfg.phantom_steps,
        bwd_tol=cfg.bwd_tol,
    )
    if spec.task == "image":
        channels, height, width = spec.input_shape
        if not (8 <= min(height, width) and max(height, width) <= 32):
            raise ValueError(f"image size {height}x{width} is outside 8x8..32x32")
        return ConvBackbone(
            channels, spec.num_classes, cfg.width, contraction=cfg.contraction,
            contraction_bound=cfg.contraction_bound, state_path=cfg.state_path, **fpi_options,
        )
    if cfg.state_path != "conv":
        raise ValueError(f"state_path={cfg.state_path!r} is for image backbones; sequences take 'conv'")
    assert spec.vocab_size is not None  # ModelSpec enforces it for sequence tasks
    return LSTMBackbone(
        spec.vocab_size,
        spec.num_classes,
        cfg.embed_dim,
        cfg.hidden,
        language_model=spec.task == "language_model",
        contraction=cfg.contraction,
        contraction_bound=cfg.contraction_bound,
        **fpi_options,
    )


def build_model(cfg: ModelConfig, spec: ModelSpec) -> DynaLayModule:
    """The model `cfg.kind` on the backbone for `spec` (seed torch beforehand for
    reproducible weights)."""
    backbone = build_backbone(cfg, spec)
    if cfg.kind == "dynalay":
        return DynaLay(backbone, spec, cfg)
    if cfg.kind == "plain":
        return Plain(backbone, spec)
    if cfg.kind == "deq":
        return DEQ(backbone, spec, cfg)
    return StaticFPI(backbone, spec, k=int(cfg.kind[-1]))
