"""DynaLay and its baselines in PyTorch: build a model, train it, read its compute.

This package imports neither Ray, MLflow, Optuna nor pydantic.
"""

from models.config import ModelConfig, ModelSpec, TensorPair, TrainConfig
from models.factory import build_model
from models.stats import ForwardStats
from models.training import DivergenceError, EvalResult, evaluate, fit, predict

__all__ = [
    "DivergenceError",
    "EvalResult",
    "ForwardStats",
    "ModelConfig",
    "ModelSpec",
    "TensorPair",
    "TrainConfig",
    "build_model",
    "evaluate",
    "fit",
    "predict",
]
