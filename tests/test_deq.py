"""The DEQ baseline: TorchDEQ's solvers on the backbone's FPI maps, trained with IFT gradients."""

from __future__ import annotations

import pytest
import torch

from models import ModelConfig, ModelSpec, TensorPair, TrainConfig, build_model, evaluate, fit

torch.set_num_threads(1)


def prototype_images(n: int, seed: int) -> TensorPair:
    """Ten noisy 1×8×8 class prototypes: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorPair(prototypes[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=g), y)


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_deq_trains_and_its_loss_falls(solver: str) -> None:
    spec = ModelSpec("image", (1, 8, 8), 10)
    torch.manual_seed(0)
    cfg = ModelConfig(kind="deq", width=8, deq_solver=solver, max_iter=20, fwd_tol=1e-4, bwd_tol=1e-4)
    model = build_model(cfg, spec)
    assert type(model.deq).__module__.startswith("torchdeq")
    history = fit(model, prototype_images(384, 0), TrainConfig(epochs=6, batch_size=32, lr=3e-3), "cpu")
    first, last = history[0]["loss"], history[-1]["loss"]
    assert last < 0.3 * first  # measured: 2.17 -> 0.04 (anderson)

    result = evaluate(model, prototype_images(200, 1), "cpu")
    assert result.accuracy > 0.8
    assert result.action_freq == [0.0, 0.0, 0.0, 1.0]
    assert all(0 < it <= 20 for it in result.mean_iterations)
