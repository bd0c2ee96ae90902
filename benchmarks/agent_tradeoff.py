"""Accuracy against compute: DynaLay's agent versus Models 0-3, and the β curve (Fig. 4.3b).

    python -m benchmarks.agent_tradeoff --quick       # ≤ 3 min on a 2-core CPU
    python -m benchmarks.agent_tradeoff --full
    python -m benchmarks.agent_tradeoff --full --datasets fashion_mnist --jobs 3

On each data set (``digits``: real 8×8 images, CNN backbone; ``synthetic``: the generated
sequence task with known per-sample difficulty, LSTM backbone) every model is trained with the
same ``TrainConfig`` and the same ``ModelConfig`` apart from ``kind`` and is scored on the test
split with ``models.training.evaluate`` (eval mode: the agent takes its argmax action):
accuracy, FLOPs per sample, time per sample, action frequencies, FPI iterations.

Then DynaLay is retrained for each β of a sweep (the compute penalty in the reward
R = α·correct − β·C(a)·k(a)); its (FLOPs, accuracy) points are the accuracy-compute curve of the
thesis' Figure 4.3b. For the DynaLay run at the default β the script also scores the same
trained network with every sample forced onto one action (0..3), which shows what each path of
the shared network achieves and so what the agent has to choose from; on the synthetic task it
breaks the agent's actions down by the known difficulty.

Several training seeds in full mode; cells are medians with [min–max] over seeds.

``fashion_mnist`` (``--datasets fashion_mnist``; real 28×28 images read by
``load_dataset("fashion_mnist")``, CNN backbone) measures whether the FPI paths matter and
whether the agent routes, on trained DynaLays (protocol in ``FASHION``; full mode: the first
10,000 official training images, the official 10,000 test images, width 16, training seeds
seed..seed+2, run in parallel processes with ``--jobs 3``, the targets judged on their median).
Per seed, every test sample's outcome under each action is computed once (``models.routing.path_table``),
then scored for every sample forced onto action 0..3, for the agent's argmax, for the agent with
a bias b on its plain logit swept over a range (the operating curve, ``route_bias``), and for the
confidence router (the least-confident plain predictions sent to FPI action 3, or to the FPI
action the agent uses most) at the agent's FLOPs. Model 0 trained alone is the reference.
Results of data sets not run are kept from the existing JSON (with their own environment).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from benchmarks import _common as C
from models import ModelConfig, TensorPair, TrainConfig, build_model, evaluate, fit
from models import routing

NAME = "agent_tradeoff"
BASELINES = (("plain", "Model 0 (plain)"), ("fpi1", "Model 1 (FPI L1)"),
             ("fpi2", "Model 2 (FPI L1-2)"), ("fpi3", "Model 3 (FPI L1-3)"))
DEFAULT_BETA = ModelConfig().beta

# Per data set: the ModelConfig overrides and the TrainConfig every model shares.
DATASETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "digits": {
            "model": {"width": 16},
            "train": {"epochs": 6, "warmup_epochs": 3, "batch_size": 64, "lr": 3e-3},
        },
        "synthetic": {
            "model": {"embed_dim": 32, "hidden": 64, "max_iter": 15},
            "train": {"epochs": 4, "warmup_epochs": 2, "batch_size": 64, "lr": 3e-3},
        },
    },
    "full": {
        "digits": {
            "model": {"width": 16},
            "train": {"epochs": 20, "warmup_epochs": 8, "batch_size": 64, "lr": 2e-3},
        },
        "synthetic": {
            "model": {"embed_dim": 32, "hidden": 64},
            "train": {"epochs": 8, "warmup_epochs": 3, "batch_size": 64, "lr": 3e-3},
        },
    },
}
# Fashion-MNIST: the trained DynaLay's paths, its agent, the confidence router, the operating
# curve. `train_size`: the first images of the official training file; `test_size` None: the
# whole official test file.
FASHION_MODEL: dict[str, Any] = {
    "width": 16, "fwd_tol": 1e-4, "max_iter": 30, "contraction": 0.9, "contraction_bound": "circular",
    "path_loss": "every", "policy_gradient": "expected", "reward_cost": "flops",
    "reward_hit": "probability", "agent_confidence": True, "agent_activations": False, "agent_epochs": 10,
    "alpha": 0.5, "beta": 0.01, "gamma": 0.2,
}
FASHION: dict[str, dict[str, Any]] = {
    "quick": {"train_size": 2000, "test_size": 2000, "seeds": 1, "model": FASHION_MODEL,
              "train": {"epochs": 2, "warmup_epochs": 1, "batch_size": 64, "lr": 2e-3}},
    "full": {"train_size": 10000, "test_size": None, "seeds": 3, "model": FASHION_MODEL,
             "train": {"epochs": 4, "warmup_epochs": 1, "batch_size": 64, "lr": 2e-3}},
}
FASHION_TARGETS = {"fpi_gain_points": 1.0, "fpi_fraction": (0.05, 0.6), "points_below_action3": 0.3,
                   "flops_vs_action3": 0.6}

MODES = {
    "quick": {"seeds": 1, "betas": [0.0, 0.01, 0.3]},
    "full": {"seeds": 3, "betas": [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]},
}


def train_and_score(kind: str, data: Any, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    device: torch.device, forced: bool = False,
                    difficulty: bool = False) -> dict[str, Any]:
    torch.manual_seed(train_cfg.seed)
    model = build_model(dataclasses.replace(model_cfg, kind=kind), data.spec)
    started = time.perf_counter()
    fit(model, data.train, train_cfg, device)
    train_s = time.perf_counter() - started
    result = evaluate(model, data.test, device)
    record = {**result.to_dict(), "train_s": train_s}
    if forced:
        record["forced_actions"] = forced_actions(model, data, device)
    if difficulty and data.difficulty_test is not None and result.stats is not None:
        record["by_difficulty"] = by_difficulty(result.stats, data, model, device)
    return record


def forced_actions(model: Any, data: Any, device: torch.device) -> list[dict[str, float]]:
    """The trained DynaLay scored with every sample forced onto action a, for a = 0..3.

    Instrumentation only: the instance's ``choose`` is replaced for the duration."""
    rows = []
    original = model.choose
    try:
        for action in range(4):
            model.choose = lambda logits, a=action: torch.full(
                logits.shape[:1], a, dtype=torch.int64, device=logits.device)
            result = evaluate(model, data.test, device)
            rows.append({"action": action, "accuracy": result.accuracy,
                         "flops_per_sample": result.flops_per_sample,
                         "mean_iterations": result.mean_iterations})
    finally:
        model.choose = original
    return rows


def by_difficulty(stats: Any, data: Any, model: Any, device: torch.device) -> list[dict[str, Any]]:
    """Actions and accuracy by the known difficulty of the test samples (synthetic task).

    Groups: difficulty 0 (no earlier class token contradicts the label), then the samples with
    difficulty > 0 split at their median into "low" and "high"."""
    from models.training import predict

    logits, _ = predict(model, data.test.x, device)
    correct = (logits.argmax(dim=-1) == data.test.y).double().numpy()
    difficulty = data.difficulty_test.double().numpy()
    actions = stats.actions.numpy()
    flops = stats.flops.double().numpy()
    positive = difficulty[difficulty > 0]
    cut = float(np.median(positive)) if positive.size else 0.0
    groups = [
        ("0", difficulty == 0),
        (f"(0, {cut:.3g}]", (difficulty > 0) & (difficulty <= cut)),
        (f"> {cut:.3g}", difficulty > cut),
    ]
    rows = []
    for label, mask in groups:
        if not mask.any():
            continue
        rows.append({
            "group": label,
            "samples": int(mask.sum()),
            "accuracy": float(correct[mask].mean()),
            "mean_action": float(actions[mask].mean()),
            "action_freq": [float((actions[mask] == a).mean()) for a in range(4)],
            "flops_per_sample": float(flops[mask].mean()),
        })
    return rows


def run_dataset(name: str, sizes: dict[str, Any], settings: dict[str, Any], device: torch.device,
                seed: int) -> dict[str, Any]:
    from pipeline.data import load_dataset

    data = load_dataset(name, seed=seed)
    model_cfg = ModelConfig(**sizes["model"])
    runs: dict[str, list[dict[str, Any]]] = {}
    sweep: dict[float, list[dict[str, Any]]] = {}
    for s in range(settings["seeds"]):
        train_cfg = TrainConfig(**sizes["train"], seed=seed + s)
        for kind, label in BASELINES:
            record = train_and_score(kind, data, model_cfg, train_cfg, device)
            runs.setdefault(kind, []).append(record)
            C.note(f"[{name} seed {seed + s}] {label}: acc {record['accuracy']:.4f}, "
                   f"{record['flops_per_sample']:.4g} FLOPs/sample ({record['train_s']:.1f} s)")
        for beta in settings["betas"]:
            record = train_and_score(
                "dynalay", data, dataclasses.replace(model_cfg, beta=beta), train_cfg, device,
                forced=beta == DEFAULT_BETA, difficulty=True,
            )
            sweep.setdefault(beta, []).append(record)
            if beta == DEFAULT_BETA:
                runs.setdefault("dynalay", []).append(record)
            C.note(f"[{name} seed {seed + s}] DynaLay β={beta:g}: acc {record['accuracy']:.4f}, "
                   f"{record['flops_per_sample']:.4g} FLOPs/sample, actions "
                   f"{[round(a, 2) for a in record['action_freq']]} ({record['train_s']:.1f} s)")
    return {
        "spec": dataclasses.asdict(data.spec),
        "train_size": len(data.train),
        "test_size": len(data.test),
        "model_config": model_cfg.to_dict(),
        "train_config": {**sizes["train"], "seeds": [seed + s for s in range(settings["seeds"])]},
        "runs": runs,
        "beta_sweep": {str(beta): records for beta, records in sweep.items()},
    }


def run_fashion_mnist(sizes: dict[str, Any], device: torch.device, seed: int, jobs: int = 1) -> dict[str, Any]:
    """The Fashion-MNIST protocol `sizes`, once per training seed seed, seed + 1, ...: Model 0 and
    one DynaLay trained; the DynaLay's forced actions, agent, confidence router and operating
    curve on the test split. With `jobs` > 1 the seeds run in that many worker processes, each
    with this process' torch thread count (a seed's figures do not depend on where it runs)."""
    from pipeline.data import load_dataset

    data = load_dataset("fashion_mnist")
    train = TensorPair(data.train.x[: sizes["train_size"]], data.train.y[: sizes["train_size"]])
    n_test = sizes["test_size"] or len(data.test)
    test = TensorPair(data.test.x[:n_test], data.test.y[:n_test])
    model_cfg = ModelConfig(**sizes["model"])
    seeds = [seed + s for s in range(sizes["seeds"])]
    tasks = [(data.spec, train, test, model_cfg, TrainConfig(**sizes["train"], seed=s), device) for s in seeds]
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, len(seeds)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads,
                                 initargs=(torch.get_num_threads(),)) as pool:
            runs = list(pool.map(fashion_run, *zip(*tasks)))
    else:
        runs = [fashion_run(*task) for task in tasks]
    return {
        "spec": dataclasses.asdict(data.spec),
        "train_size": len(train),
        "test_size": len(test),
        "model_config": model_cfg.to_dict(),
        "train_config": {**sizes["train"], "seeds": seeds},
        "runs": runs,
    }


def fashion_run(spec: Any, train: TensorPair, test: TensorPair, model_cfg: ModelConfig,
                train_cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """One training seed of the Fashion-MNIST protocol."""
    seed = train_cfg.seed
    torch.manual_seed(seed)
    plain = build_model(dataclasses.replace(model_cfg, kind="plain"), spec)
    started = time.perf_counter()
    fit(plain, train, train_cfg, device)
    plain_record = {**evaluate(plain, test, device).to_dict(), "train_s": time.perf_counter() - started}
    C.note(f"[fashion_mnist seed {seed}] Model 0: acc {plain_record['accuracy']:.4f} "
           f"({plain_record['train_s']:.0f} s)")

    torch.manual_seed(seed)
    model = build_model(model_cfg, spec)
    started = time.perf_counter()
    history = fit(model, train, train_cfg, device)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    table = routing.path_table(model, test, device)
    table_s = time.perf_counter() - started
    forced = routing.forced_points(table)
    agent = routing.curve_from_table(table, [0.0])[0]
    fpi_action = 1 + int(np.argmax(agent.action_freq[1:])) if agent.fpi_fraction > 0 else 3
    confidence = {str(a): routing.confidence_routing(table, agent.flops_per_sample, a).to_dict()
                  for a in sorted({3, fpi_action})}
    strengths = [float(layer.state.strength().detach()) for layer in model.backbone.layers]
    conf_acc = {a: round(c["accuracy"], 4) for a, c in confidence.items()}
    C.note(f"[fashion_mnist seed {seed}] DynaLay: forced {[round(p.accuracy, 4) for p in forced]}, agent "
           f"{agent.accuracy:.4f} at {agent.flops_per_sample:.4g} FLOPs, FPI {agent.fpi_fraction:.3f}; "
           f"confidence router {{action: accuracy}} {conf_acc} ({train_s:.0f} s training)")
    return {
        "seed": seed,
        "plain": plain_record,
        "dynalay": {
            "train_s": train_s,
            "path_table_s": table_s,
            "history": history,
            "state_strength": strengths,
            "forced": [p.to_dict() for p in forced],
            "agent": agent.to_dict(),
            "confidence_at_agent_flops": confidence,
            "operating_curve": [p.to_dict() for p in routing.curve_from_table(table)],
            "confidence_curves": {str(a): [p.to_dict() for p in routing.confidence_curve(table, a)]
                                  for a in sorted({1, 3, fpi_action})},
        },
    }


def fashion_runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every seed's run; a result file written before several seeds held one run inline."""
    if "runs" in result:
        return result["runs"]
    return [{"seed": result["train_config"]["seeds"][0], "plain": result["plain"], "dynalay": result["dynalay"]}]


def fashion_measures(run: dict[str, Any]) -> dict[str, float]:
    """One seed's figures that the targets judge."""
    d = run["dynalay"]
    forced, agent = d["forced"], d["agent"]
    best_conf = max(d["confidence_at_agent_flops"].values(), key=lambda c: c["accuracy"])
    return {
        "gain": 100 * (forced[3]["accuracy"] - forced[0]["accuracy"]),
        "fpi_fraction": agent["fpi_fraction"],
        "below": 100 * (forced[3]["accuracy"] - agent["accuracy"]),
        "ratio": agent["flops_per_sample"] / forced[3]["flops_per_sample"],
        "router": 100 * best_conf["accuracy"],
        "margin": 100 * (agent["accuracy"] - best_conf["accuracy"]),
    }


def fashion_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's Fashion-MNIST targets, each on the median over the training seeds (the
    label lists every seed's value)."""
    measures = [fashion_measures(run) for run in fashion_runs(result)]
    t = FASHION_TARGETS
    low, high = t["fpi_fraction"]

    def check(label: str, key: str, asked: str, met: Any) -> dict[str, Any]:
        values = [m[key] for m in measures]
        median = float(np.median(values))
        per_seed = " / ".join(C.fmt(v, 3) for v in values)
        return C.check(f"`fashion_mnist`: {label} (median of seeds {result['train_config']['seeds']}: "
                       f"{per_seed})", median, asked, met(median))

    return [
        check("forced action 3 − forced action 0, points", "gain", f"≥ {t['fpi_gain_points']:g}",
              lambda v: v >= t["fpi_gain_points"]),
        check("fraction the agent's argmax routes to FPI", "fpi_fraction", f"{low:g}–{high:g}",
              lambda v: low <= v <= high),
        check("forced action 3 − agent, points", "below", f"≤ {t['points_below_action3']:g}",
              lambda v: v <= t["points_below_action3"]),
        check("agent FLOPs / forced action 3 FLOPs", "ratio", f"≤ {t['flops_vs_action3']:g}",
              lambda v: v <= t["flops_vs_action3"]),
        check("agent − best confidence router at equal FLOPs, points", "margin", "≥ 0", lambda v: v >= 0),
    ]


def fashion_markdown(result: dict[str, Any]) -> list[str]:
    tc, mc = result["train_config"], result["model_config"]
    shown = {k: mc[k] for k in FASHION_MODEL if k in mc}
    mflops = lambda p: C.fmt(p["flops_per_sample"] / 1e6, 3)  # noqa: E731
    pct = lambda p: C.fmt(100 * p["accuracy"], 4)  # noqa: E731
    lines = [
        f"## `fashion_mnist` (first {result['train_size']} official training images / "
        f"{result['test_size']} official test images)", "",
        C.env_line(result["environment"]), "",
        f"ModelConfig {shown}; TrainConfig epochs {tc['epochs']} (warm-up {tc['warmup_epochs']}), "
        f"batch {tc['batch_size']}, lr {tc['lr']:g}, seeds {tc['seeds']}; one training run per seed.", "",
    ]
    rows = []
    for run in fashion_runs(result):
        d, m = run["dynalay"], fashion_measures(run)
        forced = d["forced"]
        rows.append((run["seed"], pct(run["plain"]), pct(forced[0]), pct(forced[3]), C.fmt(m["gain"], 3),
                     pct(d["agent"]), C.fmt(m["fpi_fraction"], 3), C.fmt(m["ratio"], 3), C.fmt(m["below"], 3),
                     C.fmt(m["router"], 4), C.fmt(m["margin"], 3), f"{d['train_s']:.0f}"))
    lines += ["Per training seed (accuracy % on the test split; the agent at bias 0; the confidence "
              "router at the agent's FLOPs, the better of → action 3 and → the agent's most used FPI "
              "action):", "",
              C.markdown_table(("seed", "Model 0", "forced a0", "forced a3", "a3 − a0", "agent",
                                "agent on FPI", "agent FLOPs / a3", "a3 − agent", "router", "agent − router",
                                "DynaLay train s"), rows), ""]
    run = fashion_runs(result)[0]
    d = run["dynalay"]
    a3 = d["forced"][3]["flops_per_sample"]
    lines += [f"Seed {run['seed']} in detail: every action on every test sample in {d['path_table_s']:.0f} s; "
              f"learnt state-path strengths σ(g) per layer "
              f"{' / '.join(C.fmt(v, 3) for v in d['state_strength'])} "
              f"(‖s‖ ≤ {mc['contraction']:g}·σ(g)).", ""]
    rows = [("Model 0 (trained alone)", pct(run["plain"]), mflops(run["plain"]), "–", "–")]
    for p in d["forced"]:
        a = int(np.argmax(p["action_freq"]))
        rows.append((f"DynaLay, every sample forced onto action {a}", pct(p), mflops(p),
                     C.fmt(p["flops_per_sample"] / a3, 3), C.fmt(p["fpi_fraction"], 3)))
    ag = d["agent"]
    rows.append(("DynaLay, agent's argmax (bias 0)", pct(ag), mflops(ag), C.fmt(ag["flops_per_sample"] / a3, 3),
                 C.fmt(ag["fpi_fraction"], 3) + " (actions " + " / ".join(C.fmt(v, 2) for v in ag["action_freq"]) + ")"))
    for a, c in d["confidence_at_agent_flops"].items():
        rows.append((f"Confidence router → action {a}, at the agent's FLOPs", pct(c), mflops(c),
                     C.fmt(c["flops_per_sample"] / a3, 3), C.fmt(c["fpi_fraction"], 3)))
    lines += [C.markdown_table(("routing", "accuracy %", "MFLOPs/sample", "FLOPs vs action 3",
                                "fraction on FPI"), rows), ""]
    rows = [(C.fmt(p["bias"], 3), pct(p), mflops(p), C.fmt(p["fpi_fraction"], 3)) for p in d["operating_curve"]]
    lines += [f"Operating curve of seed {run['seed']}: the agent's argmax with a bias b on its plain logit "
              f"(`route_bias`), the same trained model (`{NAME}.png`):", "",
              C.markdown_table(("bias b", "accuracy %", "MFLOPs/sample", "fraction on FPI"), rows), ""]
    return lines


def plot_fashion(axes: Any, result: dict[str, Any]) -> None:
    run = fashion_runs(result)[0]
    d = run["dynalay"]
    curve = d["operating_curve"]
    mf = lambda points: [p["flops_per_sample"] / 1e6 for p in points]  # noqa: E731
    acc = lambda points: [100 * p["accuracy"] for p in points]  # noqa: E731
    axes.plot(mf(curve), acc(curve), "-o", ms=3, color="black", label="agent, bias sweep")
    for a, points in d["confidence_curves"].items():
        axes.plot(mf(points), acc(points), "--", lw=1, label=f"confidence router → action {a}")
    forced = d["forced"]
    axes.scatter(mf(forced), acc(forced), marker="s", zorder=3, label="forced actions 0..3")
    for i, p in enumerate(forced):
        axes.annotate(str(i), (p["flops_per_sample"] / 1e6, 100 * p["accuracy"]), fontsize=7,
                      xytext=(4, -8), textcoords="offset points")
    axes.scatter(mf([d["agent"]]), acc([d["agent"]]), marker="*", s=140, color="red", zorder=4,
                 label="agent's argmax")
    axes.scatter(mf([run["plain"]]), acc([run["plain"]]), marker="x", zorder=3,
                 label="Model 0 (alone)")
    axes.set_xlabel("MFLOPs per sample (test)")
    axes.set_ylabel("test accuracy %")
    axes.set_title(f"fashion_mnist: one trained DynaLay (seed {run['seed']})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")


def _agg(records: list[dict[str, Any]], key: str) -> dict[str, float]:
    return C.spread([r[key] for r in records])


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    runs = result["runs"]
    acc = {kind: _agg(records, "accuracy") for kind, records in runs.items()}
    flops = {kind: _agg(records, "flops_per_sample") for kind, records in runs.items()}
    # Paired per seed: DynaLay against Model 3.
    ratio = C.spread([d["flops_per_sample"] / m["flops_per_sample"]
                      for d, m in zip(runs["dynalay"], runs["fpi3"])])
    gap = C.spread([100 * (m["accuracy"] - d["accuracy"])
                    for d, m in zip(runs["dynalay"], runs["fpi3"])])
    sweep_rows = []
    for beta, records in result["beta_sweep"].items():
        r = C.spread([100 * (m["accuracy"] - d["accuracy"]) for d, m in zip(records, runs["fpi3"])])
        q = C.spread([d["flops_per_sample"] / m["flops_per_sample"] for d, m in zip(records, runs["fpi3"])])
        sweep_rows.append({"beta": float(beta), "accuracy": _agg(records, "accuracy"),
                           "flops_per_sample": _agg(records, "flops_per_sample"),
                           "flops_vs_model3": q, "points_below_model3": r,
                           "action_freq": np.mean([d["action_freq"] for d in records], axis=0).tolist(),
                           "meets_target": q["median"] <= 0.6 and r["median"] <= 1.0})
    return {"accuracy": acc, "flops": flops, "dynalay_flops_over_model3": ratio,
            "model3_minus_dynalay_points": gap, "sweep": sweep_rows}


def plot(payload: dict[str, Any], path: Any) -> None:
    from matplotlib.figure import Figure

    datasets = list(payload["datasets"])
    figure = Figure(figsize=(5.5 * len(datasets), 4.2), layout="constrained")
    for i, name in enumerate(datasets):
        axes = figure.add_subplot(1, len(datasets), i + 1)
        if name == "fashion_mnist":
            plot_fashion(axes, payload["datasets"][name])
            continue
        summary = payload["summaries"][name]
        for kind, label in BASELINES:
            f, a = summary["flops"][kind]["median"], summary["accuracy"][kind]["median"]
            axes.scatter([f], [a], s=40, zorder=3, label=label)
        rows = sorted(summary["sweep"], key=lambda r: r["beta"])  # the curve traces β
        axes.plot([r["flops_per_sample"]["median"] for r in rows],
                  [r["accuracy"]["median"] for r in rows], "-o", color="black", label="DynaLay (β sweep, in β order)")
        for r in rows:
            axes.annotate(f"β={r['beta']:g}", (r["flops_per_sample"]["median"], r["accuracy"]["median"]),
                          fontsize=7, xytext=(4, 4), textcoords="offset points")
        axes.set_xlabel("FLOPs per sample (test)")
        axes.set_ylabel("test accuracy")
        axes.set_title(name)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    figure.savefig(path, dpi=120)


def markdown(payload: dict[str, Any]) -> str:
    lines = ["# Agent trade-off", ""]
    for name, result in payload["datasets"].items():
        if name == "fashion_mnist":
            lines += fashion_markdown(result)
            continue
        summary = payload["summaries"][name]
        tc = result["train_config"]
        mc = {k: v for k, v in result["model_config"].items() if k in payload["shown_model_keys"][name]}
        lines += [
            f"## `{name}` ({result['train_size']} train / {result['test_size']} test samples)",
            "",
            C.env_line(result.get("environment", payload["environment"])),
            "",
            f"ModelConfig {mc}; TrainConfig epochs {tc['epochs']} (warm-up {tc['warmup_epochs']}), "
            f"batch {tc['batch_size']}, lr {tc['lr']:g}, seeds {tc['seeds']}. "
            "Cells: median [min–max] over seeds; accuracy on the test split.",
            "",
        ]
        rows = []
        kinds = [*BASELINES, ("dynalay", f"DynaLay (β={DEFAULT_BETA:g})")]
        base = summary["flops"]["fpi3"]["median"]
        for kind, label in kinds:
            records = result["runs"][kind]
            rows.append((
                label,
                C.fmt_spread(summary["accuracy"][kind], 100, kind="minmax"),
                C.fmt(summary["flops"][kind]["median"] / 1e6, 3),
                C.fmt(summary["flops"][kind]["median"] / base, 3),
                C.fmt(float(np.median([r["time_ms_per_sample"] for r in records])), 3),
                " / ".join(C.fmt(v, 2) for v in np.mean([r["action_freq"] for r in records], axis=0)),
                " / ".join(C.fmt(v, 3) for v in np.mean([r["mean_iterations"] for r in records], axis=0)),
            ))
        lines += [C.markdown_table(("model", "accuracy %", "MFLOPs/sample", "FLOPs vs Model 3",
                                    "ms/sample", "actions 0/1/2/3", "FPI iters L1/L2/L3"), rows), ""]
        lines += [f"DynaLay β sweep (Figure 4.3b): `{NAME}.png`", ""]
        rows = []
        for r in sorted(summary["sweep"], key=lambda r: r["beta"]):
            rows.append((
                f"{r['beta']:g}",
                C.fmt_spread(r["accuracy"], 100, kind="minmax"),
                C.fmt(r["flops_per_sample"]["median"] / 1e6, 3),
                C.fmt(r["flops_vs_model3"]["median"], 3),
                C.fmt(r["points_below_model3"]["median"], 3),
                " / ".join(C.fmt(v, 2) for v in r["action_freq"]),
                "yes" if r["meets_target"] else "no",
            ))
        lines += [C.markdown_table(("β", "accuracy %", "MFLOPs/sample", "FLOPs vs Model 3",
                                    "points below Model 3", "actions 0/1/2/3",
                                    "≤ 60 % FLOPs at ≤ 1 point"), rows), ""]
        forced = result["runs"]["dynalay"][0].get("forced_actions")
        if forced:
            plain = forced[0]["flops_per_sample"]
            rows = [(f["action"], C.fmt(100 * f["accuracy"], 4), C.fmt(f["flops_per_sample"] / 1e6, 3),
                     C.fmt(f["action"] * f["flops_per_sample"] / plain, 3),
                     " / ".join(C.fmt(v, 3) for v in f["mean_iterations"])) for f in forced]
            lines += [f"The trained DynaLay (β={DEFAULT_BETA:g}, first seed) with every sample forced "
                      "onto one action:", "",
                      C.markdown_table(("action", "accuracy %", "MFLOPs/sample", "C(a)·k(a)",
                                        "FPI iters L1/L2/L3"), rows), ""]
            alpha = result["model_config"]["alpha"]
            c1 = forced[1]["flops_per_sample"] / plain
            lines += [
                f"Reward scale: C(a)·k(a) is at least {c1:.2f} for every FPI action (C counted "
                "against the plain pass plus the agent, close to the model's own C), so any FPI "
                f"action loses more reward than the largest accuracy reward α = {alpha:g} can "
                f"give once β > α / {c1:.2f} ≈ {alpha / c1:.3g}: above that, action 0 maximises "
                "every sample's reward whatever the agent knows about it.", ""]
        first = {beta: records[0] for beta, records in result["beta_sweep"].items()}
        rows = []
        for beta, record in sorted(first.items(), key=lambda kv: float(kv[0])):
            mixed = max(record["action_freq"]) < 0.99
            if not record.get("by_difficulty") or not (mixed or float(beta) == DEFAULT_BETA):
                continue
            for d in record["by_difficulty"]:
                rows.append((f"{float(beta):g}", d["group"], d["samples"], C.fmt(100 * d["accuracy"], 4),
                             C.fmt(d["mean_action"], 3), " / ".join(C.fmt(v, 2) for v in d["action_freq"]),
                             C.fmt(d["flops_per_sample"] / 1e6, 3)))
        if rows:
            lines += ["DynaLay's actions by the known difficulty of the test samples (first seed; the "
                      f"default β={DEFAULT_BETA:g} and every β whose policy mixes actions):", "",
                      C.markdown_table(("β", "difficulty", "samples", "accuracy %", "mean action",
                                        "actions 0/1/2/3", "MFLOPs/sample"), rows), ""]
    lines += ["## Target", "", C.targets_table(payload["targets"]), ""]
    if payload.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in payload["notes"]]
    return "\n".join(lines)


def carry_over(path: Any, fresh: dict[str, Any]) -> dict[str, Any]:
    """The sections of an earlier result file for the data sets not run now (each with the
    environment it was measured in), so that running one data set keeps the others' figures."""
    import json

    kept: dict[str, Any] = {"datasets": {}, "summaries": {}, "targets": [], "notes": []}
    if not path.exists():
        return kept
    earlier = json.loads(path.read_text())
    for name, result in earlier.get("datasets", {}).items():
        if name in fresh:
            continue
        kept["datasets"][name] = {"environment": earlier["environment"], **result}
        if name in earlier.get("summaries", {}):
            kept["summaries"][name] = earlier["summaries"][name]
        kept["targets"] += [t for t in earlier.get("targets", []) if f"`{name}`" in t["target"]]
        kept["notes"].append(f"`{name}`: carried over from the run started "
                             f"{kept['datasets'][name]['environment'].get('started', '?')}.")
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = C.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "synthetic"],
                        choices=["digits", "synthetic", "fashion_mnist"])
    parser.add_argument("--jobs", type=int, default=1,
                        help="fashion_mnist: run the training seeds in this many processes")
    args = C.parse(parser, argv)
    started = time.perf_counter()
    device = C.resolve_device(args.device)
    C.set_threads(device, args.threads)
    settings = MODES[args.mode]
    env = C.environment(device, args.mode, args.seed)
    if device.type != "cuda":
        C.note("note: no CUDA device: training and timing on the CPU")

    results, summaries, targets, notes = {}, {}, [], []
    for name in args.datasets:
        if name == "fashion_mnist":
            results[name] = {**run_fashion_mnist(FASHION[args.mode], device, args.seed, args.jobs), "environment": env}
            targets += fashion_targets(results[name])
            continue
        try:
            results[name] = run_dataset(name, DATASETS[args.mode][name], settings, device, args.seed)
        except ImportError as exc:  # the synthetic generator may not exist yet
            msg = f"{name}: skipped, the data set cannot be loaded ({exc})"
            C.note(msg)
            notes.append(msg)
            continue
        results[name]["environment"] = env
        summaries[name] = summarize(results[name])
        s = summaries[name]
        ratio, gap = s["dynalay_flops_over_model3"]["median"], s["model3_minus_dynalay_points"]["median"]
        targets.append(C.check(f"`{name}`: DynaLay FLOPs / Model 3 FLOPs (β={DEFAULT_BETA:g})",
                               ratio, "≤ 0.6", ratio <= 0.6))
        targets.append(C.check(f"`{name}`: Model 3 accuracy − DynaLay accuracy, points",
                               gap, "≤ 1", gap <= 1.0))
        meeting = [r for r in s["sweep"] if r["meets_target"]]
        best = min(meeting, key=lambda r: r["flops_vs_model3"]["median"]) if meeting else None
        targets.append(C.check(
            f"`{name}`: β sweep, lowest FLOPs / Model 3 among the β meeting both "
            + (f"(β={best['beta']:g}, {best['points_below_model3']['median']:.2g} points below)"
               if best else "(none does)"),
            best["flops_vs_model3"]["median"] if best else float("nan"), "≤ 0.6 at ≤ 1 point",
            best is not None))
    C.finish(env, started)
    carried = carry_over(args.out / f"{NAME}.json", results)
    results = {**carried["datasets"], **results}
    summaries = {**carried["summaries"], **summaries}
    targets = carried["targets"] + targets
    notes = carried["notes"] + notes
    payload = {
        "environment": env,
        "settings": settings,
        "datasets": results,
        "summaries": summaries,
        "targets": targets,
        "shown_model_keys": {"fashion_mnist": list(FASHION_MODEL),
                             "digits": ["width", "max_iter", "fwd_tol", "backward"],
                             "synthetic": ["embed_dim", "hidden", "max_iter", "fwd_tol", "backward"]},
        "notes": notes + [
            "FLOPs per sample are the models' own counts (FlopCounterMode per layer application × "
            "the iterations each sample ran), on the test split in eval mode.",
            "\"FLOPs vs Model 3\" and \"points below Model 3\" are paired per seed.",
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if results:
        plot(payload, args.out / f"{NAME}.png")
    json_path, md_path = C.write_results(args.out, NAME, payload, markdown(payload))
    C.note(markdown(payload))
    C.note(f"wrote {json_path} and {md_path} in {env['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
