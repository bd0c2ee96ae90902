"""Search efficiency on the demo space: hypervolume against fold-trainings for four strategies.

    python -m benchmarks.search_efficiency --quick    # ≤ 3 min on a 2-core CPU (a smoke test)
    python -m benchmarks.search_efficiency --full [--repeats 3] [--num-samples 8] [--baseline-seeds 1]
    python -m benchmarks.search_efficiency --full --report benchmarks/results/search_efficiency.json

Four arms on the space ``make demo`` searches (``search_spaces/digits.yaml``: DynaLay on
digits, width, FPI routing and learning rate searched, 9 folds of 2 epochs), each built with
:func:`pipeline.search.build_tuner` (the wiring ``dynalay search`` uses: ``cv_trial``, 2
concurrent trials of 1 CPU, one local Ray instance) and the same seed and trial budget:

(a) pruned: the product's search, TPE over the Optuna study with the Pareto-aware Wilcoxon
    pruner (``FoldPruningScheduler("wilcoxon")``);
(b) unpruned: the same with ``pruner="none"``;
(c) ASHA on accuracy: Ray Tune's ``ASHAScheduler`` on ``cv_accuracy`` alone (mode max, one
    rung per fold: grace 1, reduction factor 3) with a single-objective TPE ``OptunaSearch``;
(d) random search: the study searcher with Optuna's ``RandomSampler``, no pruning.

No arm mirrors to MLflow: every arm is recorded by the same Ray Tune callback as its trials
end, with the pipeline's own rule for how a trial ended (:func:`pipeline.outcome.outcome`).
Compute is counted in fold-trainings (the folds each trial completed, summed over the trials
ended so far). The hypervolume (:func:`pipeline.pareto.hypervolume`, accuracy up, FLOPs down)
uses ONE reference point for the arms of a seed: :func:`pipeline.pareto.reference_point`
(the nadir) of all their finished trials. Arms (c) and (d) are context, not the target: by
default they run on the first seed only (``--baseline-seeds``). Only finished trials (all folds) enter a front, as in
the pipeline.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C

NAME = "search_efficiency"
SPACE_FILE = C.ROOT / "search_spaces" / "digits.yaml"
ARMS = (
    ("a", "(a) pruned: TPE + Pareto Wilcoxon pruner"),
    ("b", "(b) unpruned: TPE"),
    ("c", "(c) ASHA on accuracy (single-objective TPE)"),
    ("d", "(d) random search, no pruning"),
)
LABEL = dict(ARMS)
#: (b) first: its final hypervolume is the threshold the others are measured against.
ORDER = ("b", "a", "c", "d")
MAX_CONCURRENT = 2
TARGET_FRACTION = 0.40
MODES = {
    # A smoke test of the wiring: few, short trials (too few folds for the Wilcoxon pruner).
    "quick": {"repeats": 1, "num_samples": 4, "space": {"folds": 3, "epochs": 1, "warmup_epochs": 0},
              "baseline_seeds": 1},
    # The demo space as `make demo` runs it, with a smaller trial budget (8, not 12) and the
    # baselines (c, d) on the first seed only: sized for ~40 min on a loaded 2-core CPU, where
    # one 9-fold trial takes ~80 s of a CPU.
    "full": {"repeats": 3, "num_samples": 8, "space": {}, "baseline_seeds": 1},
}
#: The arms that decide the target; the others are context (``--baseline-seeds``).
TARGET_ARMS = ("b", "a")


@dataclasses.dataclass
class Ended:
    """One trial as it ended: in order of ending within its arm."""

    trial_id: str
    state: str
    folds_done: int
    cv_accuracy: float | None
    cv_flops: float | None
    elapsed_s: float  # since the arm started


def recorder(folds: int) -> Any:
    """A Ray Tune callback that notes every trial as it ends (``.ended``)."""
    from ray import tune

    from pipeline.outcome import FoldReport, outcome

    class Recorder(tune.Callback):
        def __init__(self) -> None:
            self.ended: list[Ended] = []
            self.started = time.perf_counter()

        def _note(self, trial: Any, errored: bool) -> None:
            ending = outcome(trial.last_result, folds, errored=errored)
            report = FoldReport.from_result(trial.last_result)
            finished = ending.state == "finished"
            self.ended.append(Ended(
                trial.trial_id, ending.state, ending.folds_done,
                report.cv_accuracy if finished else None,
                report.cv_flops if finished else None,
                time.perf_counter() - self.started,
            ))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._note(trial, errored=False)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._note(trial, errored=True)

    return Recorder()


def run_arm(arm: str, space: Any, run_dir: Path, num_samples: int, seed: int) -> tuple[list[Ended], float]:
    """One arm's search, built with :func:`pipeline.search.build_tuner`; its trials as they ended
    and its wall time."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from pipeline.outcome import CV_ACCURACY
    from pipeline.samplers import make_sampler
    from pipeline.search import SearchOptions, build_tuner, study_searcher

    options = SearchOptions(
        space=space, experiment=f"bench-{arm}", run_dir=run_dir, num_samples=num_samples,
        folds=space.folds, max_concurrent=MAX_CONCURRENT, cpus_per_trial=1.0,
        pruner="wilcoxon" if arm == "a" else "none", sampler="tpe", seed=seed, verbose=0,
    )
    searcher: Any = None
    scheduler: Any = None
    if arm == "c":
        searcher = OptunaSearch(space=space.to_optuna(), metric=CV_ACCURACY, mode="max",
                                sampler=make_sampler("tpe", seed))
        scheduler = ASHAScheduler(metric=CV_ACCURACY, mode="max", max_t=space.folds,
                                  grace_period=1, reduction_factor=3)
    elif arm == "d":
        searcher = study_searcher(options, optuna.samplers.RandomSampler(seed=seed))
    record = recorder(space.folds)
    tuner = build_tuner(options, searcher=searcher, scheduler=scheduler, callbacks=[record])
    started = time.perf_counter()
    tuner.fit()
    return record.ended, time.perf_counter() - started


# -- analysis ---------------------------------------------------------------------------------


def records(ended: list[Ended]) -> list[Any]:
    from pipeline.pareto import TrialRecord

    return [TrialRecord(e.trial_id, None, e.state, e.cv_accuracy, e.cv_flops) for e in ended]  # type: ignore[arg-type]


def curve(ended: list[Ended], reference: tuple[float, float]) -> list[dict[str, Any]]:
    """Hypervolume of the finished trials so far after each trial ends, against fold-trainings."""
    from pipeline.pareto import hypervolume, pareto_front

    points, spent = [], 0
    so_far = records(ended)
    for i, e in enumerate(ended):
        spent += e.folds_done
        front = pareto_front(so_far[: i + 1])
        hv = hypervolume([(r.cv_accuracy, r.cv_flops) for r in front], reference)
        points.append({"trial_id": e.trial_id, "state": e.state, "folds_done": e.folds_done,
                       "fold_trainings": spent, "elapsed_s": e.elapsed_s, "hypervolume": hv,
                       "cv_accuracy": e.cv_accuracy, "cv_flops": e.cv_flops})
    return points


def first_reaching(points: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    for p in points:
        if p["hypervolume"] >= threshold:
            return {"fold_trainings": p["fold_trainings"], "elapsed_s": p["elapsed_s"]}
    return None


WILCOXON_FIRST_FOLD = 4
"""The earliest fold after which the Wilcoxon pruner can stop a trial (4 paired folds)."""


def pruning_floor(curve_b: list[dict[str, Any]], reference: tuple[float, float], threshold: float,
                  stop_after: int) -> int | None:
    """The fewest fold-trainings with which any pruner, running (b)'s trials in (b)'s order,
    reaches `threshold`: it runs the trials it needs to the end and stops each other trial that
    ends before the last of them after `stop_after` folds (the earliest its rule allows). Exact
    (every subset of (b)'s finished trials); None when no subset reaches `threshold`."""
    from pipeline.pareto import hypervolume

    finished = [p for p in curve_b if p["state"] == "finished"]
    if not finished or len(finished) > 16:  # 2^n subsets: a few dozen ms at 8 trials
        return None
    folds = max(p["folds_done"] for p in finished)
    points = [(p["cv_accuracy"], p["cv_flops"]) for p in finished]
    best = None
    for size in range(1, len(points) + 1):
        for chosen in itertools.combinations(range(len(points)), size):
            if hypervolume([points[i] for i in chosen], reference) >= threshold:
                cost = folds * size + stop_after * (chosen[-1] + 1 - size)
                best = cost if best is None else min(best, cost)
    return best


def floors(analysis: dict[str, Any]) -> dict[str, float | None]:
    """:func:`pruning_floor` as a fraction of (b)'s fold-trainings, for each earliest stopping
    fold from the Wilcoxon rule's down to the first."""
    curve_b = analysis["curves"].get("b", [])
    budget_b = curve_b[-1]["fold_trainings"] if curve_b else 0
    result: dict[str, float | None] = {}
    for stop_after in range(WILCOXON_FIRST_FOLD, 0, -1):
        floor = pruning_floor(curve_b, tuple(analysis["reference"]),
                              analysis["threshold_95pct_of_b"], stop_after)
        result[str(stop_after)] = floor / budget_b if floor is not None and budget_b else None
    return result


def analyse(repeat: dict[str, Any]) -> dict[str, Any]:
    """Curves and summary of one seed's arms against their common nadir reference point."""
    from pipeline.pareto import pareto_front, reference_point

    arms: dict[str, list[Ended]] = repeat["ended"]
    reference = reference_point([r for ended in arms.values() for r in records(ended)])
    curves = {arm: curve(ended, reference) for arm, ended in arms.items()}
    final = {arm: (pts[-1]["hypervolume"] if pts else 0.0) for arm, pts in curves.items()}
    budget_b = curves["b"][-1]["fold_trainings"] if curves.get("b") else 0
    threshold = 0.95 * final.get("b", 0.0)
    summary = {}
    for arm, pts in curves.items():
        states = [p["state"] for p in pts]
        reach = first_reaching(pts, threshold) if threshold > 0 else None
        summary[arm] = {
            "trials": len(pts),
            "finished": states.count("finished"),
            "pruned": states.count("pruned"),
            "failed": states.count("failed"),
            "front_size": len(pareto_front(records(arms[arm]))),
            "fold_trainings": pts[-1]["fold_trainings"] if pts else 0,
            "wall_s": repeat["wall_s"][arm],
            "final_hypervolume": final[arm],
            "hypervolume_vs_b": final[arm] / final["b"] if final.get("b") else None,
            "reaches_95pct_of_b": reach,
            "reach_fraction_of_b_budget": (reach["fold_trainings"] / budget_b) if reach and budget_b else None,
        }
    analysis = {"reference": reference, "threshold_95pct_of_b": threshold, "curves": curves,
                "summary": summary, "load_average_after": C.load_average()}
    analysis["pruning_floor"] = floors(analysis)
    return analysis


def target(analyses: list[dict[str, Any]]) -> dict[str, Any] | None:
    """(a)'s fold-trainings to 95 % of (b)'s final hypervolume over (b)'s, median over seeds."""
    if not analyses or not all("a" in a["summary"] for a in analyses):
        return None
    fractions = [a["summary"]["a"]["reach_fraction_of_b_budget"] for a in analyses]
    median = float(np.median([float("inf") if f is None else f for f in fractions]))  # never = ∞
    return C.check(
        f"(a)'s fold-trainings to reach 95 % of (b)'s final hypervolume (nadir reference), as a "
        f"fraction of (b)'s fold-trainings; median over {len(fractions)} seed(s), never = ∞",
        median, f"≤ {TARGET_FRACTION:g}", median <= TARGET_FRACTION)


def plot(analyses: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(analyses), 4.2), layout="constrained")
    for i, analysis in enumerate(analyses):
        axes = figure.add_subplot(1, len(analyses), i + 1)
        for arm, label in ARMS:
            pts = analysis["curves"].get(arm, [])
            axes.step([0] + [p["fold_trainings"] for p in pts], [0] + [p["hypervolume"] for p in pts],
                      where="post", label=label)
        axes.axhline(analysis["threshold_95pct_of_b"], color="0.5", linestyle=":", label="95 % of (b)")
        axes.set_xlabel("fold-trainings spent")
        axes.set_ylabel("hypervolume (nadir of the seed's arms)")
        axes.set_title(f"seed {analysis['seed']}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    figure.savefig(path, dpi=120)


def markdown(payload: dict[str, Any]) -> str:
    space = payload["space"]
    lines = [
        "# Search efficiency",
        "",
        C.env_line(payload["environment"]),
        "",
        f"Space `{payload['space_file']}` ({payload['space_overrides'] or 'as `make demo` runs it'}): "
        f"{space['dataset']}, {space['model']}, {space['folds']} folds, {space['epochs']} epoch(s) "
        f"per fold, {payload['num_samples']} trials per arm, {payload['max_concurrent']} concurrent "
        f"trials × 1 CPU, seeds {payload['seeds']} (arms (c) and (d) on the first "
        f"{payload['baseline_seeds']} only). Compute = fold-trainings (the folds each trial "
        "completed, summed over the trials ended so far). Hypervolume against one reference point "
        "per seed, `pipeline.pareto.reference_point` (the nadir: worst accuracy, 1.1 × the highest "
        "cv_flops) of the finished trials of all the seed's arms.",
        "",
    ]
    for analysis in payload["analyses"]:
        lines += [f"## Seed {analysis['seed']}", "",
                  f"Reference point (accuracy, FLOPs): ({analysis['reference'][0]:.4g}, "
                  f"{analysis['reference'][1]:.4g}); 95 % of (b)'s final hypervolume = "
                  f"{analysis['threshold_95pct_of_b']:.4g}.", ""]
        rows = []
        for arm, label in ARMS:
            s = analysis["summary"].get(arm)
            if s is None:
                continue
            reach = s["reaches_95pct_of_b"]
            rows.append((
                label,
                f"{s['finished']} / {s['pruned']} / {s['failed']}",
                s["front_size"],
                s["fold_trainings"],
                C.fmt(s["wall_s"], 3),
                C.fmt(s["final_hypervolume"], 4),
                C.fmt(s["hypervolume_vs_b"], 3),
                f"{reach['fold_trainings']} ({C.fmt(s['reach_fraction_of_b_budget'], 3)} of (b)'s)"
                if reach else "never",
            ))
        lines += [C.markdown_table(
            ("arm", "finished / pruned / failed", "front", "fold-trainings", "wall s", "final HV",
             "HV / (b)'s", "fold-trainings to 95 % of (b)'s HV"), rows), ""]
        floor = analysis["pruning_floor"]
        lines += ["Floor for any pruner on (b)'s trials in (b)'s order, as a fraction of (b)'s "
                  "fold-trainings, by the earliest fold after which it may stop a trial: "
                  + ", ".join(f"fold {k}: {C.fmt(v, 3)}" for k, v in floor.items())
                  + f" (fold {WILCOXON_FIRST_FOLD}: the Wilcoxon rule).", ""]
    if len(payload["analyses"]) > 1:
        rows = []
        for arm, label in ARMS:
            if not all(arm in a["summary"] for a in payload["analyses"]):
                continue
            fr = [a["summary"][arm]["reach_fraction_of_b_budget"] for a in payload["analyses"]]
            hv = [a["summary"][arm]["hypervolume_vs_b"] for a in payload["analyses"]]
            ft = [a["summary"][arm]["fold_trainings"] for a in payload["analyses"]]
            reached = sum(f is not None for f in fr)
            rows.append((label, C.fmt_spread(C.spread(ft), kind="minmax"),
                         C.fmt_spread(C.spread(hv), kind="minmax"), f"{reached}/{len(fr)}",
                         C.fmt_spread(C.spread([f for f in fr if f is not None]), kind="minmax")))
        lines += ["## Over the seeds (median [min–max])", "",
                  C.markdown_table(("arm", "fold-trainings", "HV / (b)'s", "reached 95 %",
                                    "fraction of (b)'s fold-trainings to reach it (seeds that did)"),
                                   rows), ""]
    if len(payload["analyses"]) > 1:
        by_fold = {k: [a["pruning_floor"][k] for a in payload["analyses"]]
                   for k in payload["analyses"][0]["pruning_floor"]}
        lines += ["The floor over the seeds (median [min–max]) by the earliest stopping fold: "
                  + ", ".join(f"fold {k}: "
                              f"{C.fmt_spread(C.spread([f for f in v if f is not None]), kind='minmax')}"
                              for k, v in by_fold.items())
                  + ". A target below a fold's floor is out of reach, at this trial budget, of any "
                  "pruner that waits that long for its evidence.", ""]
    lines += [f"Curves: `{NAME}.png`.", "", "## Target", "",
              C.targets_table(payload["targets"]) if payload["targets"] else "Not measured (arm (a) not run).",
              ""]
    if payload.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in payload["notes"]]
    return "\n".join(lines)


NOTES = [
    "Every arm uses the same seed, and TPE (a, b, c) draws its first 10 trials with Optuna's "
    "RandomSampler seeded alike: with a budget of at most 10 trials, TPE does not model "
    "anything yet and every arm evaluates the same configurations in the same order "
    "(concurrency can change the order in which they end). The arms then differ only in what "
    "they stop, and (b) is random search as (d) is.",
    "The Wilcoxon pruner needs 4 paired folds and a finished, no-costlier trial that is "
    "significantly more accurate: it stops a trial after its 4th fold at the earliest, saving "
    "at most 5 of 9 folds per pruned trial.",
    "ASHA's trials stopped early are not finished, so (as in the pipeline) they never enter the "
    "front: ASHA trades hypervolume for compute by design.",
    "Compute is booked when a trial ends; the folds of trials still running are not on the "
    "curve yet.",
    "Pruning inside a fold (between epochs) was not tried: the trial reports once per fold, and "
    "with 2 epochs per fold there is little to stop; not measured in this session.",
]


def main(argv: list[str] | None = None) -> None:
    parser = C.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help="seeds seed, seed+1, ... (default: 1 quick, 3 full)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="trial budget per arm (default: 4 quick, the space's for full)")
    parser.add_argument("--arms", nargs="+", default=list(ORDER), choices=[a for a, _ in ARMS])
    parser.add_argument("--baseline-seeds", type=int, default=None,
                        help="run arms c and d on the first N seeds only (default: 1)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    parser.add_argument("--report", type=Path, default=None, metavar="JSON",
                        help="run nothing: rewrite the tables of a saved search_efficiency.json "
                             "(with the current analysis) into --out")
    args = C.parse(parser, argv)
    if args.report is not None:
        payload = json.loads(args.report.read_text())
        for analysis in payload["analyses"]:
            analysis["pruning_floor"] = floors(analysis)
        C.publish(args.out, NAME, payload, markdown(payload))
        return
    if "b" not in args.arms:
        parser.error("--arms must include b: the hypervolume threshold is (b)'s")
    mode = MODES[args.mode]
    repeats = args.repeats or mode["repeats"]
    started, env, _ = C.start_search_benchmark(args, ray_cpus=MAX_CONCURRENT)

    from pipeline.space import load_space

    space = load_space(str(SPACE_FILE)).model_copy(update=mode["space"])
    num_samples = args.num_samples or mode["num_samples"] or space.num_samples
    baseline_seeds = mode["baseline_seeds"] if args.baseline_seeds is None else args.baseline_seeds
    root = Path(tempfile.mkdtemp(prefix="dynalay-bench-search-"))
    analyses: list[dict[str, Any]] = []
    payload: dict[str, Any] = {
        "environment": env,
        "space_file": str(SPACE_FILE.relative_to(C.ROOT)),
        "space_overrides": mode["space"],
        "space": space.model_dump(mode="json"),
        "num_samples": num_samples,
        "max_concurrent": MAX_CONCURRENT,
        "baseline_seeds": baseline_seeds,
        "notes": NOTES,
    }
    try:
        for r in range(repeats):
            seed = args.seed + r
            repeat: dict[str, Any] = {"ended": {}, "wall_s": {}}
            arms = [arm for arm in ORDER if arm in args.arms and (arm in TARGET_ARMS or r < baseline_seeds)]
            for arm in arms:
                run_dir = root / f"seed{seed}" / arm
                run_dir.mkdir(parents=True)
                C.note(f"[seed {seed}] {LABEL[arm]} ...")
                ended, wall = run_arm(arm, space, run_dir, num_samples, seed)
                repeat["ended"][arm], repeat["wall_s"][arm] = ended, wall
                states = [e.state for e in ended]
                C.note(f"[seed {seed}]   {len(ended)} trials ({states.count('finished')} finished, "
                       f"{states.count('pruned')} pruned, {states.count('failed')} failed), "
                       f"{sum(e.folds_done for e in ended)} fold-trainings, {wall:.1f} s, "
                       f"load {C.load_average()}")
            analysis = analyse(repeat)
            analysis["seed"] = seed
            analyses.append(analysis)
            # Written after every seed, so that a run stopped early keeps the seeds it finished.
            check = target(analyses)
            C.finish(env, started)
            payload.update(seeds=[a["seed"] for a in analyses], analyses=analyses,
                           targets=[check] if check else [])
            args.out.mkdir(parents=True, exist_ok=True)
            plot(analyses, args.out / f"{NAME}.png")
            C.write_results(args.out, NAME, payload, markdown(payload))
            C.note(f"[seed {seed}] results so far written to {args.out}; target: {check}")
    finally:
        if args.keep:
            C.note(f"run directories kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    C.publish(args.out, NAME, payload, markdown(payload))


if __name__ == "__main__":
    main()
