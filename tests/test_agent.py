"""A trained agent spends its compute where the synthetic task is hard."""

from __future__ import annotations

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
