"""A trained agent spends its compute where the synthetic task is hard."""

from __future__ import annotations

import math

import pytest
import torch

from models import ModelConfig, TrainConfig, build_model, evaluate, fit
from pipeline.data.synthetic import make_synthetic

torch.set_num_threads(1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation (average ranks for ties)."""

    def ranks(v: torch.Tensor) -> torch.Tensor:
        v = v.double()
        order = v.argsort()
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in v.unique():  # ties share their mean rank
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def test_synthetic_task_is_seeded_and_labels_the_last_class_token() -> None:
    a, b = make_synthetic(n_train=50, n_test=20, seed=3), make_synthetic(n_train=50, n_test=20, seed=3)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    first_class_id = a.spec.vocab_size - a.spec.num_classes
    x = a.test.x
    is_class = x >= first_class_id
    last = x.shape[1] - 1 - is_class.flip(1).long().argmax(dim=1)
    assert torch.equal(x[torch.arange(len(x)), last] - first_class_id, a.test.y)
    torch.testing.assert_close(a.difficulty_test, last.float() / (x.shape[1] - 1))
    assert bool((x > 0).all()) and int(x.max()) < a.spec.vocab_size


def test_trained_agent_spends_more_compute_on_hard_samples() -> None:
    # The agent learns from the exact expected reward with every FLOP priced alike and the
    # true class' probability as the hit (with the default REINFORCE objective and the tight
    # state-path bound, the hardest quartile got only 0.05 more depth than the easiest).
    # Measured with these settings (seeds 0..4): Spearman(difficulty, FLOPs) = 0.33, 0.39, 0.35,
    # 0.38, 0.32; mean depth hardest − easiest quartile = 0.42, 0.41, 0.35, 0.82, 0.31; accuracy ≥ 0.976.
    data = make_synthetic(n_train=1500, n_test=500, seq_len=32, seed=0)
    torch.manual_seed(0)
    cfg = ModelConfig(kind="dynalay", hidden=16, embed_dim=16, beta=0.01, fwd_tol=1e-3,
                      policy_gradient="expected", reward_cost="flops", reward_hit="probability")
    model = build_model(cfg, data.spec)
    fit(model, data.train, TrainConfig(epochs=16, warmup_epochs=6, lr=3e-3, seed=0), "cpu")
    result = evaluate(model, data.test, "cpu")
    assert result.accuracy > 0.9
    assert result.stats is not None and data.difficulty_test is not None
    difficulty, flops = data.difficulty_test, result.stats.flops
    assert spearman(difficulty, flops) > 0.2

    depth = result.stats.actions.double()
    quartile = torch.bucketize(difficulty, torch.quantile(difficulty, torch.tensor([0.25, 0.5, 0.75])))
    easiest, hardest = float(depth[quartile == 0].mean()), float(depth[quartile == 3].mean())
    assert hardest > easiest + 0.1


def small_dynalay_with_a_mixed_policy(seed: int = 0):
    """A 1×8×8 DynaLay whose untrained agent has random, decisive logits (mixed actions), and a
    split to score it on."""
    from models import ModelSpec, TensorPair

    spec = ModelSpec("image", (1, 8, 8), 10)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(width=4, agent_hidden=8, max_iter=20, fwd_tol=1e-4), spec).eval()
    torch.nn.init.normal_(model.agent.net[-1].weight, std=3.0)
    g = torch.Generator().manual_seed(seed)
    data = TensorPair(torch.randn(90, 1, 8, 8, generator=g), torch.randint(0, 10, (90,), generator=g))
    return model, data


def test_operating_curve_equals_evaluating_with_each_route_bias() -> None:
    import dataclasses

    from models.routing import operating_curve

    model, data = small_dynalay_with_a_mixed_policy()
    curve = operating_curve(model, data, "cpu", batch_size=32)
    fractions = [p.fpi_fraction for p in curve]
    assert fractions[0] == 1.0 and fractions[-1] == 0.0  # from every sample on FPI to none
    assert fractions == sorted(fractions, reverse=True)
    assert 0.0 in [p.bias for p in curve]
    mixed = [p for p in curve if 0.2 < p.fpi_fraction < 0.8]
    assert mixed
    for point in [curve[0], mixed[len(mixed) // 2], curve[-1]]:
        model.route_bias = point.bias
        result = evaluate(model, data, "cpu", batch_size=40)
        assert result.accuracy == point.accuracy
        assert result.flops_per_sample == pytest.approx(point.flops_per_sample, rel=1e-12)
        assert result.action_freq == point.action_freq
        assert dataclasses.asdict(point) == point.to_dict()


def test_confidence_router_sends_the_least_confident_samples_within_the_budget() -> None:
    from models.routing import confidence_curve, confidence_routing, forced_points, path_table

    model, data = small_dynalay_with_a_mixed_policy(1)
    table = path_table(model, data, "cpu")
    plain, fpi3 = forced_points(table)[0], forced_points(table)[3]
    assert confidence_routing(table, plain.flops_per_sample).fpi_fraction == 0.0
    assert confidence_routing(table, fpi3.flops_per_sample * 1.01).fpi_fraction == 1.0
    budget = 0.5 * (plain.flops_per_sample + fpi3.flops_per_sample)
    point = confidence_routing(table, budget, action=3)
    assert point.flops_per_sample <= budget and 0.3 < point.fpi_fraction < 0.7
    routed = round(point.fpi_fraction * len(table))
    order = table.confidence.argsort()
    # exactly the least-confident `routed` samples are on action 3
    actions = torch.zeros(len(table), dtype=torch.int64)
    actions[order[:routed]] = 3
    assert table.score(actions) == (point.accuracy, point.flops_per_sample, point.fpi_fraction)
    curve = confidence_curve(table, action=1, points=5)
    assert [p.fpi_fraction for p in curve] == pytest.approx([0.0, 0.244, 0.5, 0.756, 1.0], abs=0.01)


def test_agent_normalises_activations_but_keeps_the_confidence_level() -> None:
    from models.agent import AgentNet

    torch.manual_seed(0)
    agent = AgentNet(10, hidden=8, confidence_dim=4)
    torch.nn.init.normal_(agent.net[-1].weight)
    features = torch.randn(5, 10)
    shifted_activations = features + torch.tensor([1.0] * 6 + [0.0] * 4)
    shifted_confidence = features + torch.tensor([0.0] * 6 + [1.0] * 4)
    # a per-sample shift of the activations is what their LayerNorm removes; the confidence
    # features' level is the information, so it must reach the MLP
    torch.testing.assert_close(agent(shifted_activations), agent(features))
    assert not torch.allclose(agent(shifted_confidence), agent(features))


def test_confidence_only_agent_reads_the_plain_log_probabilities() -> None:
    from models import ModelSpec

    with pytest.raises(ValueError, match="agent_activations"):
        ModelConfig(agent_activations=False)
    with pytest.raises(ValueError, match="agent_epochs"):
        ModelConfig(agent_epochs=-1)
    spec = ModelSpec("image", (1, 8, 8), 10)
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=4, agent_hidden=8, agent_confidence=True, agent_activations=False), spec)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    features, hits, cost = model.eval().agent_targets(x, y)
    plain_logits = model.paths(x).logits[:, 0]
    expected = plain_logits.log_softmax(dim=-1).topk(4, dim=-1).values
    torch.testing.assert_close(features, expected)
    assert hits.shape == (6, 4) and cost.shape == (6, 4) and bool((cost[:, 3] > cost[:, 0]).all())


def test_agent_only_phase_trains_the_agent_on_the_frozen_network() -> None:
    from models import ModelSpec, TensorPair

    spec = ModelSpec("image", (1, 8, 8), 10)
    g = torch.Generator().manual_seed(0)
    train = TensorPair(torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 10, (96,), generator=g))
    cfg = ModelConfig(width=4, agent_hidden=8, fwd_tol=1e-3, agent_confidence=True, policy_gradient="expected",
                      reward_cost="flops", reward_hit="probability", beta=0.01)
    train_cfg = TrainConfig(epochs=1, warmup_epochs=1, batch_size=32, lr=1e-2, seed=0)
    models, histories = {}, {}
    for epochs in (0, 5):
        torch.manual_seed(0)
        models[epochs] = build_model(ModelConfig(**{**cfg.to_dict(), "agent_epochs": epochs}), spec)
        histories[epochs] = fit(models[epochs], train, train_cfg, "cpu")
    assert "agent_reward" not in histories[0][-1]
    assert math.isfinite(histories[5][-1]["agent_reward"]) and histories[5][-1]["agent_s"] > 0
    before, after = models[0], models[5]
    # the phase leaves the network as the epochs left it and changes only the agent
    for (name, p), q in zip(before.backbone.named_parameters(), after.backbone.parameters()):
        assert torch.equal(p, q), name
    assert not all(torch.equal(p, q) for p, q in zip(before.agent.parameters(), after.agent.parameters()))

    def expected_reward(model) -> float:  # the objective the phase maximises, on its own data
        features, hits, cost = model.eval().agent_targets(train.x, train.y)
        with torch.no_grad():
            _, info = model.reinforce.expected(hits, cost, model.agent(features))
        return info["reward"]

    assert expected_reward(after) > expected_reward(before)
