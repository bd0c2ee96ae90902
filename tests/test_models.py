"""Models: shapes on every task, compute accounting, grouping, the agent's isolation, training."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import (
    DivergenceError,
    ModelConfig,
    ModelSpec,
    TensorPair,
    TrainConfig,
    build_model,
    evaluate,
    fit,
)
from models.baselines import DEQ, Plain, StaticFPI
from models.base import per_sample_correct
from models.dynalay import DynaLay

torch.set_num_threads(1)

KINDS = ("plain", "fpi1", "fpi2", "fpi3", "dynalay", "deq")
SPECS = {
    "image1x8x8": ModelSpec("image", (1, 8, 8), 10),
    "image3x32x32": ModelSpec("image", (3, 32, 32), 10),
    "sequence": ModelSpec("sequence", (12,), 3, vocab_size=20),
    "language_model": ModelSpec("language_model", (12,), 20, vocab_size=20),
}
SMALL = dict(width=4, hidden=8, embed_dim=8, agent_hidden=8, max_iter=20, fwd_tol=1e-4)


def batch_for(spec: ModelSpec, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if spec.task == "image":
        return torch.randn(n, *spec.input_shape, generator=g), torch.randint(0, spec.num_classes, (n,), generator=g)
    x = torch.randint(0, spec.vocab_size or 2, (n, *spec.input_shape), generator=g)
    if spec.task == "language_model":
        return x, torch.randint(0, spec.num_classes, (n, *spec.input_shape), generator=g)
    return x, torch.randint(0, spec.num_classes, (n,), generator=g)


def make(kind: str, spec: ModelSpec, seed: int = 0, **overrides: object):
    torch.manual_seed(seed)
    return build_model(ModelConfig(kind=kind, **{**SMALL, **overrides}), spec)


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_model_runs_forward_and_backward_on_every_task(kind: str, spec_name: str) -> None:
    spec = SPECS[spec_name]
    model = make(kind, spec)
    x, y = batch_for(spec, 5)
    model.train()
    logits, stats = model(x)
    expected = (5, spec.num_classes) if spec.task != "language_model" else (5, 12, spec.num_classes)
    assert logits.shape == expected
    loss, info = model.loss(logits, stats, y)
    assert math.isfinite(float(loss.detach())) and "ce" in info
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert stats.flops.shape == (5,) and stats.flops.dtype == torch.float64
    assert stats.iterations.shape == (5, 3) and stats.residuals.shape == (5, 3)


def test_flops_are_ordered_plain_fpi1_fpi2_fpi3() -> None:
    spec = SPECS["image1x8x8"]
    x, _ = batch_for(spec, 16)
    flops = {}
    for kind in ("plain", "fpi1", "fpi2", "fpi3"):
        model = make(kind, spec).eval()
        with torch.no_grad():
            flops[kind] = model(x)[1].flops
    assert bool((flops["plain"] < flops["fpi1"]).all())
    assert bool((flops["fpi1"] < flops["fpi2"]).all())
    assert bool((flops["fpi2"] < flops["fpi3"]).all())


def counted(fn, *args) -> float:
    """FLOPs of one real call on CPU, counted directly (independent of models.compute)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return float(counter.get_total_flops())


def cnn_costs(model) -> dict[str, object]:
    """Per-sample costs of each application, measured on a batch of one real input."""
    bb = model.backbone
    x = torch.randn(1, 1, 8, 8)
    h = bb.stem(x)
    costs: dict[str, object] = {"stem": counted(bb.stem, x), "inject": [], "state": []}
    for layer in bb.layers:
        costs["inject"].append(counted(layer.inject, h))  # type: ignore[union-attr]
        h, _ = layer.plain(h)
        # one iteration applies the weight normalised once per solve: its conv alone
        costs["state"].append(counted(layer.state.apply_weight, h, layer.state.weight))  # type: ignore[union-attr]
    costs["head"] = counted(bb.head, h)
    pooled = torch.cat([bb.pool(torch.zeros(1, c, 1, 1)) for c in bb.layer_dims], dim=1)
    costs["agent"] = counted(model.agent, pooled) if hasattr(model, "agent") else 0.0
    return costs


@pytest.mark.parametrize("kind", KINDS)
def test_flops_are_the_sum_of_what_each_sample_ran(kind: str) -> None:
    spec = SPECS["image1x8x8"]
    model = make(kind, spec).eval()
    if isinstance(model, DynaLay):  # a spread of actions: a random, non-zero policy head
        torch.nn.init.normal_(model.agent.net[-1].weight, std=5.0)
    x, _ = batch_for(spec, 32)
    with torch.no_grad():
        _, stats = model(x)
    c = cnn_costs(model)
    inject, state = torch.tensor(c["inject"]), torch.tensor(c["state"], dtype=torch.float64)
    plain = c["stem"] + float(inject.sum()) + c["head"]
    applied = stats.iterations.double() @ state
    if isinstance(model, DynaLay):
        assert len(set(stats.actions.tolist())) >= 3
        recomputed = (stats.actions > 0).double() * float(inject[1] + inject[2] + c["head"])
        expected = plain + c["agent"] + recomputed + applied
    else:
        expected = plain + applied
    torch.testing.assert_close(stats.flops, expected.double(), rtol=1e-12, atol=0.0)
    assert bool((stats.iterations >= 0).all())


def test_lstm_flops_match_the_matmul_count() -> None:
    spec = SPECS["sequence"]
    model = make("fpi2", spec).eval()
    x, _ = batch_for(spec, 6)
    with torch.no_grad():
        _, stats = model(x)
    T, E, H, C = 12, 8, 8, 3
    lstm = lambda d_in: 2 * T * 4 * H * (d_in + H) + 2 * T * H * H  # gates + projection
    state = 2 * T * H * H * 3  # kernel-3 temporal conv
    plain = lstm(E) + 2 * lstm(H) + 2 * H * C
    expected = plain + stats.iterations.double() @ torch.tensor([state] * 3, dtype=torch.float64)
    torch.testing.assert_close(stats.flops, expected)


def test_dynalay_stats_shapes_and_consistency() -> None:
    spec = SPECS["image1x8x8"]
    model = make("dynalay", spec).eval()
    torch.nn.init.normal_(model.agent.net[-1].weight, std=5.0)
    x, _ = batch_for(spec, 40)
    with torch.no_grad():
        _, stats = model(x)
    assert stats.actions.dtype == torch.int64 and stats.actions.shape == (40,)
    assert stats.iterations.dtype == torch.int64 and stats.iterations.shape == (40, 3)
    assert stats.residuals.shape == (40, 3) and stats.cost is not None and stats.cost.shape == (40,)
    layer = torch.arange(3)
    iterated = stats.actions[:, None] > layer[None, :]  # action k iterates layers 1..k
    assert torch.equal(stats.iterations > 0, iterated)
    assert bool(torch.isnan(stats.residuals[~iterated]).all())
    assert bool((stats.residuals[iterated] < 1e-4).all())  # converged to fwd_tol
    plain_cost = stats.cost[stats.actions == 0]  # the plain pass plus the agent
    assert bool((plain_cost >= 1.0).all()) and float(plain_cost.max()) < float(stats.cost[stats.actions > 0].min())
    summary = stats.summary()
    assert len(summary["action_freq"]) == 4 and math.isclose(sum(summary["action_freq"]), 1.0)
    assert len(summary["mean_iterations"]) == 3


@pytest.mark.parametrize("spec_name", ["image1x8x8", "language_model"])
@pytest.mark.parametrize("agent_confidence", [False, True])
def test_agent_gradient_never_reaches_the_main_model(spec_name: str, agent_confidence: bool) -> None:
    spec = SPECS[spec_name]
    model = make("dynalay", spec, agent_confidence=agent_confidence).train()
    x, y = batch_for(spec, 16)
    logits, stats = model(x)
    term, _ = model.reinforce(per_sample_correct(logits, y), stats)
    term.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.agent.parameters())


def test_warmup_samples_every_action_and_does_not_train_the_agent() -> None:
    spec = SPECS["image1x8x8"]
    model = make("dynalay", spec).train()
    model.set_warmup(True)
    x, y = batch_for(spec, 64)
    logits, stats = model(x)
    assert set(stats.actions.tolist()) == {0, 1, 2, 3}
    loss, info = model.loss(logits, stats, y)
    loss.backward()
    assert "policy" not in info
    assert all(p.grad is None for p in model.agent.parameters())


@pytest.mark.parametrize("spec_name", ["image1x8x8", "sequence", "language_model"])
def test_grouped_recomputation_equals_running_each_sample_alone(spec_name: str) -> None:
    spec = SPECS[spec_name]
    model = make("dynalay", spec, fwd_tol=1e-10, max_iter=200).double().eval()
    x, _ = batch_for(spec, 8)
    if spec.task == "image":
        x = x.double()
    actions = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    with torch.no_grad():
        model.choose = lambda policy_logits: actions  # type: ignore[method-assign]
        logits, stats = model(x)
        alone_logits, alone_its = [], []
        for i in range(8):
            model.choose = lambda policy_logits, i=i: actions[i : i + 1]  # type: ignore[method-assign]
            lg, st = model(x[i : i + 1])
            alone_logits.append(lg)
            alone_its.append(st.iterations)
    torch.testing.assert_close(logits, torch.cat(alone_logits), rtol=1e-9, atol=1e-10)
    assert torch.equal(stats.iterations, torch.cat(alone_its))
    assert torch.equal(stats.actions, actions)


def test_configs_round_trip_and_reject_unknown_keys() -> None:
    cfg = ModelConfig(kind="fpi2", beta=0.1)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({"epochs": 2}).epochs == 2
    with pytest.raises(ValueError, match="bta"):
        ModelConfig.from_dict({"bta": 0.1})
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig.from_dict({"warmup": 1})
    with pytest.raises(ValueError):
        ModelConfig(kind="resnet")
    with pytest.raises(ValueError):
        ModelConfig(contraction=1.5)


def test_factory_builds_each_kind() -> None:
    spec = SPECS["image1x8x8"]
    assert isinstance(make("plain", spec), Plain)
    assert isinstance(make("fpi3", spec), StaticFPI) and make("fpi3", spec).k == 3
    assert isinstance(make("deq", spec), DEQ)
    assert isinstance(make("dynalay", spec), DynaLay)


def test_fit_and_evaluate_report_everything() -> None:
    spec = SPECS["image1x8x8"]
    x, y = batch_for(spec, 96)
    model = make("dynalay", spec)
    seen: list[int] = []
    history = fit(
        model, TensorPair(x, y), TrainConfig(epochs=2, warmup_epochs=1, batch_size=32), "cpu",
        on_epoch=lambda epoch, record: seen.append(epoch), augment=lambda b: b + 0.0,
    )
    assert seen == [0, 1] and history[0]["warmup"] and not history[1]["warmup"]
    assert "policy" in history[1] and "policy" not in history[0]
    result = evaluate(model, TensorPair(x, y), "cpu", batch_size=40)
    d = result.to_dict()
    assert set(d) == {"accuracy", "flops_per_sample", "time_ms_per_sample", "action_freq",
                      "mean_iterations", "loss", "perplexity"}
    assert 0.0 <= d["accuracy"] <= 1.0 and d["flops_per_sample"] > 0 and d["perplexity"] is None
    assert result.stats is not None and len(result.stats) == 96

    lm = SPECS["language_model"]
    x, y = batch_for(lm, 20)
    model = make("fpi1", lm)
    fit(model, TensorPair(x, y), TrainConfig(epochs=1, warmup_epochs=0, batch_size=10), "cpu")
    result = evaluate(model, TensorPair(x, y), "cpu")
    assert result.perplexity == pytest.approx(math.exp(result.loss))


def test_fit_raises_divergence_error_on_a_non_finite_loss() -> None:
    spec = SPECS["image1x8x8"]
    x, y = batch_for(spec, 16)
    x[3] = float("nan")
    with pytest.raises(DivergenceError, match="epoch 0"):
        fit(make("plain", spec), TensorPair(x, y), TrainConfig(epochs=1, batch_size=16), "cpu")
    assert issubclass(DivergenceError, FloatingPointError)


def test_models_package_imports_no_service_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys, models, models.training, models.factory;"
        "bad = [m for m in ('ray', 'mlflow', 'optuna', 'pydantic') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("spec_name", ["image1x8x8", "sequence", "language_model"])
def test_every_path_equals_routing_each_sample_to_each_action(spec_name: str) -> None:
    spec = SPECS[spec_name]
    model = make("dynalay", spec, fwd_tol=1e-10, max_iter=200).double().eval()
    x, _ = batch_for(spec, 6)
    if spec.task == "image":
        x = x.double()
    with torch.no_grad():
        paths = model.paths(x)
        for action in range(4):
            model.choose = lambda policy_logits, a=action: torch.full_like(policy_logits[:, 0], a, dtype=torch.int64)  # type: ignore[method-assign]
            logits, stats = model(x)
            torch.testing.assert_close(paths.logits[:, action], logits, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(paths.flops[:, action], stats.flops)
    assert torch.equal(paths.iterations > 0, torch.ones_like(paths.iterations, dtype=torch.bool))
    assert bool((paths.flops[:, 0] < paths.flops[:, 1]).all() and (paths.flops[:, 1] < paths.flops[:, 3]).all())


def test_every_path_loss_trains_every_path_whatever_the_agent_routes() -> None:
    spec = SPECS["image1x8x8"]
    model = make("dynalay", spec, path_loss="every").train()
    torch.nn.init.constant_(model.agent.net[-1].bias, 0.0)
    model.agent.net[-1].bias.data[0] = 50.0  # the agent sends every sample plain
    x, y = batch_for(spec, 16)
    logits, stats = model(x)
    assert bool((stats.actions == 0).all())
    assert stats.path_logits is not None and stats.path_logits.shape == (16, 4, 10)
    torch.testing.assert_close(logits, stats.path_logits[:, 0])
    loss, info = model.loss(logits, stats, y)
    from models.base import task_cross_entropy

    expected_ce = sum(task_cross_entropy(stats.path_logits[:, a], y) for a in range(4)) / 4
    assert info["ce"] == pytest.approx(float(expected_ce.detach()), rel=1e-6)
    loss.backward()
    for layer in model.backbone.layers:  # every state path learns although no sample took FPI
        assert layer.state.weight.grad is not None and float(layer.state.weight.grad.abs().sum()) > 0


def test_expected_policy_gradient_is_the_exact_gradient_of_the_expected_reward() -> None:
    from models.agent import Reinforce

    g = torch.Generator().manual_seed(0)
    correct = torch.randint(0, 2, (5, 4), generator=g).float()
    cost = 1.0 + torch.rand(5, 4, generator=g, dtype=torch.float64) * torch.arange(4)
    logits = torch.randn(5, 4, generator=g, requires_grad=True)
    term, _ = Reinforce(alpha=0.5, beta=0.1, gamma=0.2, entropy=0.0).expected(correct, cost, logits)
    term.backward()
    reward = (0.5 * correct.double() - 0.1 * cost * torch.arange(4)).float()
    pi = logits.detach().softmax(dim=1)
    # d E_π[R] / d logit_j = π_j (R_j − E_π[R]); the term is −γ/B times E_π[R] summed over samples
    exact = pi * (reward - (pi * reward).sum(dim=1, keepdim=True))
    torch.testing.assert_close(logits.grad, -0.2 * exact / 5)


def test_reward_prices_depth_or_flops() -> None:
    from models.agent import Reinforce

    correct = torch.tensor([1.0, 1.0, 0.0])
    cost = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    actions = torch.tensor([0, 1, 3])
    depth = Reinforce(alpha=0.5, beta=0.1, gamma=0.2).reward(correct, cost, actions)
    flops = Reinforce(alpha=0.5, beta=0.1, gamma=0.2, cost="flops").reward(correct, cost, actions)
    torch.testing.assert_close(depth, torch.tensor([0.5, 0.5 - 0.2, -1.2], dtype=torch.float64))
    torch.testing.assert_close(flops, torch.tensor([0.5, 0.5 - 0.1, -0.3], dtype=torch.float64))
    with pytest.raises(ValueError, match="reward_cost"):
        ModelConfig(reward_cost="time")


def test_route_bias_moves_samples_between_plain_and_fpi() -> None:
    from models.agent import route

    logits = torch.tensor([[0.0, 1.0, 0.0, 0.5], [2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    assert route(logits).tolist() == [1, 0, 3]
    assert route(logits, 1.5).tolist() == [0, 0, 3]  # 0 + 1.5 beats 1.0; not 3.0
    assert route(logits, 10.0).tolist() == [0, 0, 0]
    assert route(logits, -10.0).tolist() == [1, 1, 3]  # the best FPI action, never plain
    spec = SPECS["image1x8x8"]
    model = make("dynalay", spec, route_bias=1e6).eval()
    with torch.no_grad():
        _, stats = model(batch_for(spec, 8)[0])
    assert bool((stats.actions == 0).all())


def test_new_model_options_are_validated() -> None:
    with pytest.raises(ValueError, match="policy_gradient"):
        ModelConfig(policy_gradient="exact")
    with pytest.raises(ValueError, match="contraction_bound"):
        ModelConfig(contraction_bound="spectral")
    with pytest.raises(ValueError, match="route_bias"):
        ModelConfig(route_bias=float("nan"))
    cfg = ModelConfig(path_loss="every", policy_gradient="expected", route_bias=-0.5, contraction_bound="taps",
                      reward_cost="flops", agent_confidence=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("spec_name", ["image1x8x8", "language_model"])
def test_expected_gradient_training_runs_every_path_and_trains_the_agent(spec_name: str) -> None:
    spec = SPECS[spec_name]
    x, y = batch_for(spec, 48)
    model = make("dynalay", spec, policy_gradient="expected", reward_cost="flops",
                 reward_hit="probability", agent_confidence=True, beta=0.01)
    before = [p.detach().clone() for p in model.agent.parameters()]
    history = fit(model, TensorPair(x, y), TrainConfig(epochs=2, warmup_epochs=1, batch_size=16), "cpu")
    assert "policy" in history[1] and math.isfinite(history[1]["policy"])
    assert all(not torch.equal(a, b) for a, b in zip(before, model.agent.parameters()))  # the agent learnt
    model.train()
    _, stats = model(x[:8])
    assert stats.path_logits is not None and stats.path_cost is not None
    assert stats.path_cost.shape == (8, 4) and bool((stats.path_cost[:, 0] < stats.path_cost[:, 3]).all())
    # the routed CE (path_loss "routed") is on each sample's own action's logits
    loss, info = model.loss(stats.path_logits[torch.arange(8), stats.actions], stats, y[:8])
    from models.base import task_cross_entropy

    assert info["ce"] == pytest.approx(float(task_cross_entropy(
        stats.path_logits[torch.arange(8), stats.actions], y[:8]).detach()), rel=1e-6)
