"""Where iteration provably helps: path tracing (``maze``) by difficulty third.

    python -m benchmarks.algorithmic_task --quick       # small sizes, minutes on a CPU
    python -m benchmarks.algorithmic_task --full        # the protocol's sizes (a GPU)

Protocol. ``pipeline.data.maze`` draws, from the seed, grids holding two wandering paths one
cell wide; the start marks an end of one, the goal the far end of the same path (label 1) or an
end of the other (label 0). The known difficulty is the start path's length L in steps: a flood
from the start needs exactly L steps to cover it, and a plain pass traces a few cells at most.
Model 0 (``plain``), Models 1 and 3 (``fpi1``, ``fpi3``) and DynaLay are trained with the same
``TrainConfig`` and the same ``ModelConfig`` apart from ``kind``, on the ConvBackbone with the
flood state path on layer 1 (``state_path: flood``, models.contraction.ContractiveFlood: a
max-norm contraction that carries c^L, where a 3×3 L2-contractive conv carries about (c/4)^L,
and settles once the flood has crossed the path, so a solve's iterations can follow L),
contraction near 1 and ``max_iter`` above the longest path, and scored on the test split with
``models.training.predict`` (eval mode, the agent's argmax). The test samples are cut into thirds by difficulty (at its 1/3 and 2/3
quantiles); the script reports each model's accuracy per third, its FLOPs and layer-1 iterations
per third, and the Spearman correlation between a sample's difficulty and its FLOPs.

Targets (issue 9): on the hardest third DynaLay ≥ Model 0 + 15 points; Spearman(difficulty,
FLOPs per sample) ≥ 0.5.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from scipy.stats import spearmanr

from benchmarks import _common as C
from models import ModelConfig, TrainConfig, build_model, fit
from models.training import predict
from pipeline.data.maze import make_maze

NAME = "algorithmic_task"
MODELS = (("plain", "Model 0 (plain)"), ("fpi1", "Model 1 (FPI L1)"), ("fpi3", "Model 3 (FPI L1-3)"),
          ("dynalay", "DynaLay"))
THIRDS = ("easiest", "middle", "hardest")

SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "data": {"n_train": 4000, "n_test": 600, "size": 10, "max_length": 16},
        "model": {"width": 8, "state_path": "flood", "contraction": 0.99, "max_iter": 24,
                  "fwd_tol": 1e-3, "bwd_tol": 1e-3, "path_loss": "every", "baseline": "plain",
                  "beta": 0.05, "reward_cost": "flops"},
        "train": {"epochs": 15, "warmup_epochs": 4, "batch_size": 64, "lr": 3e-3},
    },
    "full": {
        "data": {"n_train": 20000, "n_test": 3000, "size": 16, "max_length": 32},
        "model": {"width": 32, "state_path": "flood", "contraction": 0.99, "max_iter": 40,
                  "fwd_tol": 1e-4, "bwd_tol": 1e-4, "path_loss": "every", "baseline": "plain",
                  "beta": 0.01, "reward_cost": "flops"},
        "train": {"epochs": 30, "warmup_epochs": 8, "batch_size": 128, "lr": 2e-3},
    },
}


def thirds_of(difficulty: torch.Tensor) -> tuple[list[torch.Tensor], list[float]]:
    """Boolean masks of the easiest, middle and hardest third, and the two cut points."""
    quantiles = torch.tensor([1 / 3, 2 / 3])
    cuts = torch.quantile(difficulty, quantiles, interpolation="nearest").tolist()
    masks = [difficulty <= cuts[0], (difficulty > cuts[0]) & (difficulty <= cuts[1]),
             difficulty > cuts[1]]
    return masks, cuts


def score(kind: str, data: Any, model_cfg: ModelConfig, train_cfg: TrainConfig,
          device: torch.device, seed: int) -> dict[str, Any]:
    """Train one model and score it per difficulty third."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_dict({**model_cfg.to_dict(), "kind": kind}), data.spec)
    started = time.perf_counter()
    history = fit(model, data.train, train_cfg, device)
    train_s = time.perf_counter() - started
    logits, stats = predict(model, data.test.x, device)
    correct = (logits.argmax(dim=1) == data.test.y).float()
    difficulty = data.difficulty_test
    masks, cuts = thirds_of(difficulty)
    flops = stats.flops.double()
    varies = bool(flops.std() > 0)  # a constant has no rank correlation
    rho = spearmanr(difficulty.numpy(), flops.numpy()).statistic if varies else float("nan")
    return {
        "kind": kind,
        "accuracy": float(correct.mean()),
        "accuracy_by_third": [float(correct[m].mean()) for m in masks],
        "label_share_by_third": [float(data.test.y[m].float().mean()) for m in masks],
        "cuts": cuts,
        "flops_per_sample": float(flops.mean()),
        "flops_by_third": [float(flops[m].mean()) for m in masks],
        "layer1_iterations_by_third": [float(stats.iterations[m, 0].double().mean()) for m in masks],
        "action_freq": stats.action_freq(),
        "mean_iterations": stats.mean_iterations(),
        "spearman_difficulty_flops": float(rho),
        "train_s": train_s,
        "final_train_accuracy": history[-1]["accuracy"],
    }


def markdown(payload: dict[str, Any]) -> str:
    results = payload["results"]
    cuts = results[0]["cuts"]
    header = ("model", "all", f"D ≤ {cuts[0]:g}", f"{cuts[0]:g} < D ≤ {cuts[1]:g}",
              f"D > {cuts[1]:g}", "FLOPs/sample", "L1 iterations by third", "actions 0/1/2/3",
              "Spearman(D, FLOPs)")
    label = dict(MODELS)
    rows = [
        (label[r["kind"]], f"{100 * r['accuracy']:.1f} %",
         *(f"{100 * a:.1f} %" for a in r["accuracy_by_third"]),
         C.fmt(r["flops_per_sample"]),
         " / ".join(f"{i:.1f}" for i in r["layer1_iterations_by_third"]),
         " / ".join(f"{f:.2f}" for f in r["action_freq"]),
         C.fmt(r["spearman_difficulty_flops"]))
        for r in results
    ]
    return "\n\n".join([
        "# Path tracing (`maze`): accuracy by difficulty third (D: the start path's length in steps)",
        C.env_line(payload["environment"]),
        f"Command: `{payload['environment']['command']}`. Sizes: `{payload['sizes']}`.",
        C.markdown_table(header, rows),
        "Train accuracy at the last epoch: " + ", ".join(
            f"{label[r['kind']]} {100 * r['final_train_accuracy']:.1f} %" for r in results) + ".",
        "Share of positive labels per third: "
        + ", ".join(f"{t} {100 * s:.0f} %" for t, s in
                    zip(THIRDS, results[0]["label_share_by_third"])) + ".",
        "## Targets",
        C.targets_table(payload["checks"]),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = C.make_parser(__doc__.splitlines()[0])
    args = C.parse(parser, argv)
    device = C.resolve_device(args.device)
    C.set_threads(device, args.threads)
    env = C.environment(device, args.mode, args.seed)
    started = time.perf_counter()
    sizes = SIZES[args.mode]
    data = make_maze(**sizes["data"], seed=args.seed)
    model_cfg = ModelConfig(**sizes["model"])
    train_cfg = TrainConfig(**sizes["train"], seed=args.seed)
    results = []
    for kind, label in MODELS:
        C.note(f"training {label} on maze ({args.mode})")
        results.append(score(kind, data, model_cfg, train_cfg, device, args.seed))
        C.note(f"  accuracy by third {[round(a, 3) for a in results[-1]['accuracy_by_third']]}")
    by_kind = {r["kind"]: r for r in results}
    hardest = {kind: r["accuracy_by_third"][2] for kind, r in by_kind.items()}
    gap = 100 * (hardest["dynalay"] - hardest["plain"])
    rho = by_kind["dynalay"]["spearman_difficulty_flops"]
    checks = [
        C.check("hardest third: DynaLay − Model 0 (points)", gap, "≥ 15", gap >= 15),
        C.check("DynaLay Spearman(difficulty, FLOPs per sample)", rho, "≥ 0.5", rho >= 0.5),
    ]
    C.finish(env, started)
    payload = {"environment": env, "sizes": sizes, "results": results, "checks": checks}
    json_path, md_path = C.write_results(args.out, NAME, payload, markdown(payload))
    C.note(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
