"""A trained agent spends its compute where the synthetic task is hard."""

from __future__ import annotations

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
    # Measured with these settings (seeds 0..4): Spearman(difficulty, FLOPs) = 0.34, 0.46,
    # 0.40, 0.40, 0.50; the hardest quartile always had the highest mean FPI depth.
    data = make_synthetic(n_train=1500, n_test=500, seq_len=32, seed=0)
    torch.manual_seed(0)
    cfg = ModelConfig(kind="dynalay", hidden=16, embed_dim=16, beta=0.005, fwd_tol=1e-3)
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
