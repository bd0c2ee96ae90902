"""FPI layers: forward convergence, the contraction bound, and the three backward modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.backbones import LSTMInjection
from models.contraction import (
    ContractiveConv,
    ContractiveFlood,
    ContractiveMaxSpread,
    circular_norm_bound,
    max_row_sum,
    tap_norm_bound,
)
from models.fpi import FPILayer, fixed_point_iteration

torch.set_num_threads(1)


def conv_layer(channels: int = 4, contraction: float | None = 0.9, **options: object) -> FPILayer:
    inject = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.GroupNorm(2, channels))
    state = ContractiveConv(channels, 3, spatial_dims=2, contraction=contraction)
    return FPILayer(inject, state, nn.ReLU(), **options)  # type: ignore[arg-type]


def max_layer(channels: int = 4, contraction: float | None = 0.9, **options: object) -> FPILayer:
    """An image layer with the max-norm state path and ReLU capped at 1, its weight mixed at
    random (not the identity it starts from), so that every channel feeds every other."""
    inject = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.GroupNorm(2, channels))
    state = ContractiveMaxSpread(channels, contraction=contraction)
    with torch.no_grad():
        state.weight.normal_()
    return FPILayer(inject, state, nn.Hardtanh(0.0, 1.0), **options)  # type: ignore[arg-type]


def flood_layer(channels: int = 4, contraction: float | None = 0.9, **options: object) -> FPILayer:
    """An image layer with the flood state path and plain ReLU (the flood needs no cap), its
    weight mixed at random."""
    inject = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.GroupNorm(2, channels))
    state = ContractiveFlood(channels, contraction=contraction)
    with torch.no_grad():
        state.weight.normal_()
    return FPILayer(inject, state, nn.ReLU(), **options)  # type: ignore[arg-type]


def lstm_layer(hidden: int = 6, contraction: float | None = 0.9, **options: object) -> FPILayer:
    state = ContractiveConv(hidden, 3, spatial_dims=1, contraction=contraction)
    return FPILayer(LSTMInjection(5, hidden), state, nn.Tanh(), **options)  # type: ignore[arg-type]


def conv_input(seed: int, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def lstm_input(seed: int, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 7, 5, generator=torch.Generator().manual_seed(seed))


def gradients(layer: FPILayer, x: torch.Tensor, probe: torch.Tensor) -> list[torch.Tensor]:
    """d(Σ probe·z*)/d(parameters and input)."""
    x = x.clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    z = layer(x).z
    (z * probe).sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    return grads + [x.grad.clone()]


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(a, b)))
    den = torch.sqrt(sum((q**2).sum() for q in b))
    return float(num / den)


EXACT = dict(tol=1e-13, max_iter=1000, bwd_tol=1e-13)


def exact_layer_and_probe(make_layer, make_input, gain: float | None = None):
    """A float64 layer solved to 1e-13, its input and a random cotangent for its output."""
    torch.manual_seed(0)
    layer = make_layer(**EXACT).double()
    if gain is not None:
        with torch.no_grad():
            layer.state.gain.fill_(gain)
    x = make_input(1).double()
    with torch.no_grad():
        probe = torch.randn_like(layer(x).z)
    return layer, x, probe


@pytest.mark.parametrize("make_layer, make_input",
                         [(conv_layer, conv_input), (max_layer, conv_input), (flood_layer, conv_input),
                          (lstm_layer, lstm_input)])
def test_implicit_gradient_matches_unrolled_iterations(make_layer, make_input) -> None:
    layer, x, probe = exact_layer_and_probe(make_layer, make_input)
    layer.backward_mode = "unroll"
    truth = gradients(layer, x, probe)
    layer.backward_mode = "implicit"
    implicit = gradients(layer, x, probe)
    layer.backward_mode = "jfb"
    jfb = gradients(layer, x, probe)

    assert relative_error(implicit, truth) < 1e-3
    assert relative_error(jfb, truth) > 1e-2  # one step is not the implicit gradient
    assert all(torch.isfinite(g).all() for g in jfb)


@pytest.mark.parametrize("make_layer, make_input",
                         [(conv_layer, conv_input), (flood_layer, conv_input), (lstm_layer, lstm_input)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contractive_forward_always_converges(make_layer, make_input, seed: int) -> None:
    torch.manual_seed(seed)
    layer = make_layer(tol=1e-5, max_iter=300)
    with torch.no_grad():
        for p in layer.parameters():  # large random weights: the state path is rescaled anyway
            p.mul_(5.0)
        fp = layer(make_input(seed, batch=8) * 3.0)
    assert bool(fp.converged.all())
    assert bool((fp.iterations < 300).all()) and bool((fp.iterations >= 1).all())
    assert bool((fp.residuals < 1e-5).all())
    # the returned state is a fixed point to the tolerance
    with torch.no_grad():
        u = layer.inject(make_input(seed, batch=8) * 3.0)
        again = layer.f(fp.z, u)
    rel = (again - fp.z).flatten(1).norm(dim=1) / again.flatten(1).norm(dim=1)
    assert bool((rel < 1e-4).all())


def operator_norm(state: ContractiveConv, weight: torch.Tensor, shape: tuple[int, ...]) -> float:
    """‖z ↦ state.apply_weight(z, weight)‖ on one sample of `shape` (batch of 1), by power
    iteration on sᵀs: an estimate from below, converged here to many digits."""
    v = torch.randn((1, *shape), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for _ in range(500):
        v = v.requires_grad_()
        out = state.apply_weight(v, weight)
        (vjp,) = torch.autograd.grad(out, v, out)  # sᵀ s v (s is linear)
        v = (vjp / vjp.norm()).detach()
    with torch.no_grad():
        return float(state.apply_weight(v, weight).norm())


# (spatial_dims, causal, one sample's state shape): image states (C, H, W), sequence states (T, C)
STATES = [(2, False, (4, 5, 5)), (2, False, (4, 3, 3)), (2, False, (4, 14, 9)),
          (1, False, (9, 4)), (1, True, (9, 4)), (1, False, (2, 4))]


@pytest.mark.parametrize("spatial_dims, causal, shape", STATES)
@pytest.mark.parametrize("bound", ["circular", "taps"])
@pytest.mark.parametrize("seed, gain", [(0, 2.0), (1, 30.0), (2, -1.0)])
def test_state_path_operator_norm_is_below_the_contraction(
    spatial_dims: int, causal: bool, shape: tuple[int, ...], bound: str, seed: int, gain: float
) -> None:
    torch.manual_seed(seed)
    channels = shape[0] if spatial_dims == 2 else shape[1]
    state = ContractiveConv(channels, 3, spatial_dims=spatial_dims, contraction=0.9, causal=causal,
                            bound=bound).double()
    with torch.no_grad():
        state.weight.mul_(7.0).add_(0.3)  # scale and a common offset: the bound rescales any weight
        state.gain.fill_(gain)
    spatial = tuple(shape[1:]) if spatial_dims == 2 else (shape[0],)
    bound = state.norm_bound(spatial)
    assert bound == pytest.approx(0.9 * float(torch.sigmoid(torch.tensor(gain)))) and bound < 0.9
    weight = state.effective_weight(spatial)
    assert 0.0 < operator_norm(state, weight, shape) <= bound * (1 + 1e-9)


@pytest.mark.parametrize("spatial_dims, causal, shape", STATES)
def test_circular_bound_lies_between_the_true_norm_and_the_tap_sum(
    spatial_dims: int, causal: bool, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    channels = shape[0] if spatial_dims == 2 else shape[1]
    state = ContractiveConv(channels, 3, spatial_dims=spatial_dims, contraction=None, causal=causal).double()
    spatial = tuple(shape[1:]) if spatial_dims == 2 else (shape[0],)
    for trial in range(3):
        with torch.no_grad():
            state.weight.normal_(generator=torch.Generator().manual_seed(trial)).add_(0.2 * trial)
        true_norm = operator_norm(state, state.weight, shape)
        with torch.no_grad():
            circular = float(circular_norm_bound(state.weight, spatial))
            taps = float(tap_norm_bound(state.weight))
        assert true_norm <= circular * (1 + 1e-9)
        assert circular <= taps * (1 + 1e-9)


def test_circular_bound_is_tight_where_the_tap_sum_is_loose() -> None:
    # a 16-channel 3×3 state path on a 14×14 state (Fashion-MNIST's L1 at width 16): the real
    # norm under the circular normalisation is close to its bound, under the tap sum far below
    # it (measured at this seed: 0.99 and 0.36 of the bound)
    ratios = {}
    for bound in ("circular", "taps"):
        torch.manual_seed(0)
        state = ContractiveConv(16, 3, spatial_dims=2, contraction=0.9, bound=bound).double()
        norm = operator_norm(state, state.effective_weight((14, 14)), (16, 14, 14))
        ratios[bound] = norm / state.norm_bound((14, 14))
    assert 0.95 < ratios["circular"] <= 1 + 1e-9
    assert ratios["taps"] < 0.5


def test_circular_bound_of_a_known_convolution() -> None:
    # one channel, kernel (1, 1, 1): on a long axis its norm approaches |1 + 1 + 1| = 3 (at ω = 0)
    weight = torch.ones(1, 1, 3, dtype=torch.float64)
    assert float(circular_norm_bound(weight, (50,))) == pytest.approx(3.0)
    # kernel (1, −1, 1) peaks at ω = π: |1 + 1 + 1| on an even grid, below 3 on an odd one
    alternating = torch.tensor([[[1.0, -1.0, 1.0]]], dtype=torch.float64)
    assert float(circular_norm_bound(alternating, (48,))) == pytest.approx(3.0)
    assert float(circular_norm_bound(alternating, (47,))) < 3.0


@pytest.mark.parametrize("channels, spatial", [(16, (14, 14)), (32, (7, 7)), (64, (3, 3)), (5, (9,))])
def test_circular_bound_value_and_gradient_equal_the_largest_norm_over_every_frequency(
    channels: int, spatial: tuple[int, ...]
) -> None:
    """The bound differentiates only the maximising frequency's ‖P(ω*)v‖; the reference takes
    the differentiable 2-norm of every frequency's matrix and their maximum."""
    torch.manual_seed(channels)
    weight = torch.randn(channels, channels, *([3] * len(spatial)), dtype=torch.float64, requires_grad=True)
    grid = [n + 2 for n in spatial]
    symbol = torch.fft.rfftn(weight, s=grid, dim=tuple(range(2, weight.dim())))
    reference = torch.linalg.matrix_norm(symbol.flatten(2).permute(2, 0, 1), ord=2).max()
    bound = circular_norm_bound(weight, spatial)
    torch.testing.assert_close(bound, reference)
    torch.testing.assert_close(torch.autograd.grad(bound, weight)[0],
                               torch.autograd.grad(reference, weight)[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels, spatial", [(16, (14, 14)), (64, (3, 3)), (5, (9,))])
def test_warm_started_bound_equals_the_cold_one_as_the_weight_moves(
    dtype: torch.dtype, channels: int, spatial: tuple[int, ...]
) -> None:
    """Over a walk of weights, small steps (the maximiser stays) and fresh draws (it moves), the
    bound searched from the cached maximiser has the cold bound's value and gradient, and the
    cache holds the true maximiser; both searches of the warm start run."""
    torch.manual_seed(channels)
    weight = torch.randn(channels, channels, *([3] * len(spatial)), dtype=dtype)
    cache: dict = {}
    grid = tuple(n + 2 for n in spatial)
    kept = moved = 0
    for step in range(12):
        previous = cache[grid].frequency.item() if cache else None
        weight = weight + 0.01 * torch.randn_like(weight) if step % 3 else torch.randn_like(weight)
        warm_weight, cold_weight = weight.clone().requires_grad_(), weight.clone().requires_grad_()
        warm = circular_norm_bound(warm_weight, spatial, cache)
        cold = circular_norm_bound(cold_weight, spatial)
        torch.testing.assert_close(warm, cold)
        torch.testing.assert_close(torch.autograd.grad(warm, warm_weight)[0],
                                   torch.autograd.grad(cold, cold_weight)[0])
        symbol = torch.fft.rfftn(weight, s=grid, dim=tuple(range(2, weight.dim())))
        largest = torch.linalg.matrix_norm(symbol.flatten(2).permute(2, 0, 1), ord=2)
        assert largest[cache[grid].frequency] >= largest.max() * (1 - 1e-6)
        if previous is not None:
            kept += cache[grid].frequency.item() == previous
            moved += cache[grid].frequency.item() != previous
    assert kept > 0 and moved > 0


def test_warm_started_bound_finds_a_maximiser_that_moved_across_the_spectrum() -> None:
    # (1, 1, 1) peaks at ω = 0, (1, −1, 1) at ω = π: the second call must leave the cached ω = 0
    cache: dict = {}
    assert float(circular_norm_bound(torch.ones(1, 1, 3, dtype=torch.float64), (48,), cache)) == pytest.approx(3.0)
    alternating = torch.tensor([[[1.0, -1.0, 1.0]]], dtype=torch.float64)
    assert float(circular_norm_bound(alternating, (48,), cache)) == pytest.approx(3.0)
    assert int(cache[(50,)].frequency) == 25


def test_training_normalisation_stays_contractive_with_the_warm_bound() -> None:
    """Adam steps on a state path (gradients on, so its bound is warm-started): after each,
    the exact norm of the weight it applies stays within c·σ(g)."""
    torch.manual_seed(0)
    state = ContractiveConv(8, 3, spatial_dims=2, contraction=0.9).double()
    optimiser = torch.optim.Adam(state.parameters(), lr=0.05)
    z = torch.randn(4, 8, 6, 6, dtype=torch.float64)
    for _ in range(10):
        weight = state.effective_weight((6, 6))
        loss = -state.apply_weight(z, weight).square().mean()  # pushes the norm up to its cap
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        applied = state.effective_weight((6, 6)).detach()
        cap = 0.9 * float(torch.sigmoid(state.gain.detach()))
        assert operator_norm(state, applied, (8, 6, 6)) <= cap * (1 + 1e-9)
    assert state._maximisers, "the training steps ran the warm-started bound"


@pytest.mark.parametrize("make_layer", [max_layer, flood_layer])
@pytest.mark.parametrize("seed, gain", [(0, 2.0), (1, 30.0), (2, -1.0)])
def test_max_spread_layer_is_a_contraction_in_the_max_norm(make_layer, seed: int, gain: float) -> None:
    """‖f(z) − f(z')‖∞ ≤ c·σ(g)·‖z − z'‖∞ for the whole layer map (additive and flood
    combination), on pairs drawn far apart and close together, with a weight scaled and
    offset (the bound rescales any weight)."""
    torch.manual_seed(seed)
    layer = make_layer(channels=6, contraction=0.9).double()
    with torch.no_grad():
        layer.state.weight.mul_(7.0).add_(0.3)
        layer.state.gain.fill_(gain)
        bound = layer.state.norm_bound((6, 6))
        assert bound == pytest.approx(0.9 * float(torch.sigmoid(torch.tensor(gain)))) and bound < 0.9
        weight = layer.state.effective_weight((6, 6))
        assert float(max_row_sum(weight)) == pytest.approx(bound)
        u = layer.inject(conv_input(seed, batch=64).double())
        z = 3 * torch.randn_like(u)
        for scale in (3.0, 1e-3):
            other = z + scale * torch.randn_like(u)
            gap = (layer.f(z, u, weight) - layer.f(other, u, weight)).flatten(1).abs().amax(dim=1)
            assert bool((gap <= bound * (z - other).flatten(1).abs().amax(dim=1) * (1 + 1e-12)).all())


def test_max_spread_is_the_neighbourhood_maximum_of_the_mix() -> None:
    state = ContractiveMaxSpread(1, contraction=None)
    with torch.no_grad():
        state.weight.fill_(2.0)
    z = torch.zeros(1, 1, 3, 4)
    z[0, 0, 1, 1] = 1.0
    z[0, 0, 0, 3] = -5.0
    expected = torch.tensor([[0.0, 2.0, 0.0, 0.0], [2.0, 2.0, 2.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    expected[0, 3] = 0.0  # its neighbours' 0 beats its own −10; the border adds nothing
    torch.testing.assert_close(state(z)[0, 0], expected)
    corner = torch.full((1, 1, 2, 2), -1.0)
    torch.testing.assert_close(state(corner), torch.full((1, 1, 2, 2), -2.0))  # no 0 padding


def test_iterations_are_per_sample_and_match_solving_alone() -> None:
    torch.manual_seed(0)
    layer = conv_layer(tol=1e-6, max_iter=100)
    x = conv_input(3, batch=6)
    x[2] = 0.0  # a constant input: its plain output is (nearly) its fixed point already
    with torch.no_grad():
        batch = layer(x)
        alone = [layer(x[i : i + 1]) for i in range(x.shape[0])]
    expected = torch.cat([fp.iterations for fp in alone])
    assert torch.equal(batch.iterations, expected)
    assert batch.iterations.dtype == torch.int64 and batch.iterations.shape == (6,)
    assert len(set(batch.iterations.tolist())) > 1  # samples stop at different times
    torch.testing.assert_close(batch.z, torch.cat([fp.z for fp in alone]), rtol=1e-5, atol=1e-6)


def test_converged_samples_stop_costing_applications() -> None:
    calls: list[int] = []

    def halve(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        calls.append(z.shape[0])
        return 0.5 * z + u

    u = torch.tensor([[1.0], [0.0]])
    z0 = torch.tensor([[0.0], [0.0]])  # fixed points 2 and 0: sample 1 starts at its own
    fp = fixed_point_iteration(halve, u, z0, tol=1e-3, max_iter=50)
    assert fp.iterations.tolist()[1] == 1
    assert fp.iterations.tolist()[0] > 5
    assert calls[0] == 2 and all(c == 1 for c in calls[1:])  # the finished sample left the batch
    assert sum(calls) == int(fp.iterations.sum())


@pytest.mark.parametrize("make_layer, make_input", [(conv_layer, conv_input), (lstm_layer, lstm_input)])
def test_non_contractive_layer_reports_hitting_max_iter(make_layer, make_input) -> None:
    torch.manual_seed(0)
    layer = make_layer(contraction=None, tol=1e-5, max_iter=15)
    with torch.no_grad():
        layer.state.weight.mul_(20.0)  # an expansive state path
        fp = layer(make_input(0, batch=4))
    assert torch.equal(fp.iterations, torch.full((4,), 15))
    assert not bool(fp.converged.any())
    assert bool((fp.residuals > 1e-5).all())


@pytest.mark.parametrize("make_layer", [conv_layer, flood_layer])
def test_plain_layer_is_f_at_zero(make_layer) -> None:
    torch.manual_seed(0)
    layer = make_layer()
    x = conv_input(0)
    with torch.no_grad():
        plain, u = layer.plain(x)
        torch.testing.assert_close(layer.f(torch.zeros_like(plain), u), plain)


# -- the Anderson solver and the phantom backward ------------------------------------------------


@pytest.mark.parametrize("make_layer, make_input", [(conv_layer, conv_input), (lstm_layer, lstm_input)])
def test_anderson_reaches_the_same_fixed_point_per_sample(make_layer, make_input) -> None:
    torch.manual_seed(0)
    layer = make_layer(tol=1e-10, max_iter=400).double()
    with torch.no_grad():
        layer.state.gain.fill_(8.0)  # contraction ≈ 0.9: slow plain iteration
        x = make_input(2, batch=6).double()
        x[1] = 0.0  # stops at a different step than its neighbours
        plain = layer(x)
        layer.solver = "anderson"
        accelerated = layer(x)
        alone = [layer(x[i : i + 1]) for i in range(x.shape[0])]
    assert bool(accelerated.converged.all()) and bool((accelerated.residuals <= 1e-10).all())
    torch.testing.assert_close(accelerated.z, plain.z, rtol=1e-8, atol=1e-9)
    # per-sample stopping: a sample's solve does not depend on its batch-mates
    assert torch.equal(accelerated.iterations, torch.cat([fp.iterations for fp in alone]))
    torch.testing.assert_close(accelerated.z, torch.cat([fp.z for fp in alone]))
    assert int(accelerated.iterations.sum()) < int(plain.iterations.sum())


def test_anderson_records_max_iter_like_the_plain_iteration() -> None:
    torch.manual_seed(0)
    layer = conv_layer(contraction=None, tol=1e-5, max_iter=7, solver="anderson")
    with torch.no_grad():
        layer.state.weight.mul_(20.0)
        fp = layer(conv_input(0, batch=3))
    assert torch.equal(fp.iterations, torch.full((3,), 7))
    assert not bool(fp.converged.any()) and bool(torch.isfinite(fp.z).all())


@pytest.mark.parametrize("make_layer, make_input", [(conv_layer, conv_input), (lstm_layer, lstm_input)])
def test_phantom_gradient_interpolates_between_jfb_and_implicit(make_layer, make_input) -> None:
    layer, x, probe = exact_layer_and_probe(make_layer, make_input, gain=8.0)
    layer.backward_mode = "implicit"
    truth = gradients(layer, x, probe)
    layer.backward_mode = "jfb"
    jfb = gradients(layer, x, probe)
    layer.backward_mode = "phantom"
    errors = []
    for steps in (1, 3, 10):
        layer.phantom_steps = steps
        phantom = gradients(layer, x, probe)
        if steps == 1:
            assert relative_error(phantom, jfb) < 1e-12  # k = 1 is Jacobian-free backprop
        errors.append(relative_error(phantom, truth))
    layer.phantom_steps = 400
    assert relative_error(gradients(layer, x, probe), truth) < 1e-6  # the full Neumann series
    assert errors[0] > errors[1] > errors[2]  # each product removes a power of J


def test_phantom_equals_unrolling_k_steps_from_the_fixed_point() -> None:
    """TorchDEQ's unrolled phantom gradient (τ = 1): autograd through k applications of f from
    z* (detached); ours computes it as k − 1 adjoint products."""
    torch.manual_seed(0)
    layer = conv_layer(**EXACT).double()
    x = conv_input(4).double().requires_grad_()
    with torch.no_grad():
        z_star = layer(x).z
        probe = torch.randn_like(z_star)
    steps = 4
    u = layer.inject(x)
    z = z_star
    for _ in range(steps):
        z = layer.f(z, u)
    layer.zero_grad(set_to_none=True)
    (z * probe).sum().backward()
    unrolled = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    layer.backward_mode, layer.phantom_steps = "phantom", steps
    assert relative_error(gradients(layer, x.detach(), probe), unrolled) < 1e-9


def test_unknown_solver_and_backward_are_refused() -> None:
    with pytest.raises(ValueError, match="solver='newton'"):
        conv_layer(solver="newton")
    with pytest.raises(ValueError, match="backward='neumann'"):
        conv_layer(backward="neumann")
    with pytest.raises(ValueError, match="phantom_steps"):
        conv_layer(phantom_steps=0)


def test_model_config_passes_solver_and_backward_to_every_fpi_layer() -> None:
    from models import ModelConfig, ModelSpec, build_model

    cfg = ModelConfig(kind="fpi3", width=4, solver="anderson", backward="phantom", phantom_steps=2)
    model = build_model(cfg, ModelSpec("image", (1, 8, 8), 10))
    layers = list(model.backbone.layers)
    assert [(l.solver, l.backward_mode, l.phantom_steps) for l in layers] == [("anderson", "phantom", 2)] * 3
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="solver"):
        ModelConfig(solver="broyden")


def test_state_path_form_is_chosen_by_the_model_config() -> None:
    from models import ModelConfig
    from models.config import ModelSpec
    from models.contraction import contractive_state
    from models.factory import build_backbone

    image = ModelSpec(task="image", input_shape=(3, 16, 16), num_classes=2)
    backbone = build_backbone(ModelConfig(width=8, state_path="max", contraction=0.99), image)
    states = [layer.state for layer in backbone.layers]
    assert isinstance(states[0], ContractiveMaxSpread)  # the flood at cell resolution only
    assert not any(isinstance(state, ContractiveMaxSpread) for state in states[1:])
    flood = build_backbone(ModelConfig(width=8, state_path="flood", contraction=0.99), image)
    assert isinstance(flood.layers[0].state, ContractiveFlood)
    assert not any(isinstance(layer.state, ContractiveMaxSpread) for layer in flood.layers[1:])
    assert all(state.norm_bound((4, 4)) < 0.99 for state in states)
    plain = build_backbone(ModelConfig(width=8), image)
    assert not any(isinstance(layer.state, ContractiveMaxSpread) for layer in plain.layers)
    with pytest.raises(ValueError, match="state_path"):
        ModelConfig(state_path="diagonal")
    with pytest.raises(ValueError, match="state path 'diagonal'"):
        contractive_state("diagonal", 4, contraction=0.9)
    text = ModelSpec(task="sequence", input_shape=(5,), num_classes=2, vocab_size=7)
    with pytest.raises(ValueError, match="state_path='max' is for image backbones"):
        build_backbone(ModelConfig(state_path="max"), text)
