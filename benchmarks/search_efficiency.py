"""Search efficiency on digits: hypervolume against fold-trainings for four search strategies.

    python -m benchmarks.search_efficiency --quick    # ≤ 3 min on a 2-core CPU
    python -m benchmarks.search_efficiency --full [--repeats 3]

Four arms with the same space (``benchmarks/spaces/search_{quick,full}.yaml``), seed, trial
budget, fold count, 2 concurrent trials of 1 CPU each, on one local Ray instance:

(a) ``pipeline.search.run_search`` with the Pareto-aware Wilcoxon pruner (TPE, two objectives);
(b) the same with ``pruner="none"``;
(c) Ray Tune's ``ASHAScheduler`` on ``cv_accuracy`` alone (mode max, one rung per fold:
    grace 1, reduction factor 3) with a single-objective TPE ``OptunaSearch``, same trainable
    (``pipeline.trial.cv_trial``);
(d) random search: ``CrossValidatedOptunaSearch`` with Optuna's ``RandomSampler``, no pruning.

(a) and (b) are read back from MLflow with ``pipeline.search_records.load_search`` (ordered by
the trial runs' end times); (c) and (d) are recorded by a Ray Tune callback as trials end.
Compute is counted scheduler-side in fold-trainings (the folds each trial completed, summed
over trials). The hypervolume (``pipeline.pareto.hypervolume``, accuracy up, FLOPs down) uses
ONE reference point for every arm: accuracy 0 and 1.1 × the highest cv_flops of any finished
trial of any arm. Only finished trials (all folds) count toward the front, as in the pipeline.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C

NAME = "search_efficiency"
SPACES = Path(__file__).resolve().parent / "spaces"
ARMS = (
    ("a", "(a) ours: TPE + Pareto Wilcoxon pruning"),
    ("b", "(b) ours without pruning"),
    ("c", "(c) ASHA on accuracy (single-objective TPE)"),
    ("d", "(d) random search, no pruning"),
)
LABEL = dict(ARMS)
MODES = {
    "quick": {"space": SPACES / "search_quick.yaml", "repeats": 1, "max_concurrent": 2},
    "full": {"space": SPACES / "search_full.yaml", "repeats": 3, "max_concurrent": 2},
}


@dataclasses.dataclass
class Ended:
    """One trial as it ended: in order of ending within its arm."""

    trial_id: str
    state: str
    folds_done: int
    cv_accuracy: float | None
    cv_flops: float | None
    elapsed_s: float  # since the arm started


# -- arms (a) and (b): the pipeline itself ---------------------------------------------------


def run_pipeline(space: Any, pruner: str, run_dir: Path, num_samples: int, seed: int,
                 max_concurrent: int) -> tuple[list[Ended], float]:
    from mlflow.tracking import MlflowClient

    from pipeline.search import SearchOptions, run_search
    from pipeline.search_records import load_search

    options = SearchOptions(
        space=space, experiment=f"bench-{pruner}", run_dir=run_dir, num_samples=num_samples,
        folds=space.folds, max_concurrent=max_concurrent, cpus_per_trial=1.0, pruner=pruner,
        sampler="tpe", seed=seed, verbose=0,
    )
    started_wall = time.time()
    started = time.perf_counter()
    run_search(options)
    wall = time.perf_counter() - started
    search = load_search(options.resolved_tracking_uri, options.experiment)
    client = MlflowClient(options.resolved_tracking_uri)
    ended = []
    for record in search.trials:
        run = client.get_run(record.run_id)
        if record.state == "finished":
            folds_done = space.folds
        elif record.state == "pruned" and "pruned_at_fold" in run.data.tags:
            folds_done = int(run.data.tags["pruned_at_fold"])
        else:  # failed (or no tag): the folds it logged
            folds_done = len(client.get_metric_history(record.run_id, "fold_accuracy"))
        end = (run.info.end_time or 0) / 1000.0
        ended.append(Ended(record.trial_id, record.state, folds_done, record.cv_accuracy,
                           record.cv_flops, end - started_wall))
    ended.sort(key=lambda e: e.elapsed_s)
    return ended, wall


# -- arms (c) and (d): Tuners built here, wired like run_search -------------------------------


def _recorder(folds: int) -> Any:
    from ray import tune

    from pipeline.outcome import outcome

    class Recorder(tune.Callback):
        """Notes every trial as it ends, with its state by the pipeline's own rule."""

        def __init__(self) -> None:
            self.ended: list[Ended] = []
            self.started = time.perf_counter()

        def _note(self, trial: Any, errored: bool) -> None:
            result = trial.last_result or {}
            ending = outcome(result, folds, errored=errored)
            finite = ending.state == "finished"
            self.ended.append(Ended(
                trial.trial_id, ending.state, ending.folds_done,
                float(result["cv_accuracy"]) if finite and "cv_accuracy" in result else None,
                float(result["cv_flops"]) if finite and "cv_flops" in result else None,
                time.perf_counter() - self.started,
            ))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._note(trial, errored=False)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._note(trial, errored=True)

    return Recorder()


def run_tuner(arm: str, space: Any, run_dir: Path, num_samples: int, seed: int,
              max_concurrent: int) -> tuple[list[Ended], float]:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from pipeline.optuna_bridge import CrossValidatedOptunaSearch
    from pipeline.outcome import DIRECTIONS, OBJECTIVES
    from pipeline.scheduler import FoldPruningScheduler
    from pipeline.trial import TrialSettings, cv_trial

    settings = TrialSettings(dataset=space.dataset, model=space.model, folds=space.folds, seed=seed,
                             fixed=space.shared_run_config(), threads=1)
    trainable = tune.with_resources(tune.with_parameters(cv_trial, settings=settings), {"cpu": 1})
    if arm == "c":
        searcher: Any = OptunaSearch(
            space=space.to_optuna(), metric="cv_accuracy", mode="max",
            sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True),
        )
        scheduler: Any = ASHAScheduler(metric="cv_accuracy", mode="max", max_t=space.folds,
                                       grace_period=1, reduction_factor=3)
    else:
        searcher = CrossValidatedOptunaSearch(
            folds=space.folds, space=space.to_optuna(), metric=list(OBJECTIVES),
            mode=list(DIRECTIONS), sampler=optuna.samplers.RandomSampler(seed=seed),
        )
        scheduler = FoldPruningScheduler("none", space.folds)
    searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    recorder = _recorder(space.folds)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples),
        run_config=tune.RunConfig(name=f"bench-{arm}", storage_path=str(run_dir.resolve()),
                                  callbacks=[recorder], verbose=0),
    )
    started = time.perf_counter()
    tuner.fit()
    return recorder.ended, time.perf_counter() - started


# -- analysis ---------------------------------------------------------------------------------


def curve(ended: list[Ended], reference: tuple[float, float]) -> list[dict[str, Any]]:
    """Hypervolume of the finished trials so far after each trial ends, against fold-trainings."""
    from pipeline.pareto import TrialRecord, hypervolume, pareto_front

    points, records, spent = [], [], 0
    for e in ended:
        spent += e.folds_done
        records.append(TrialRecord(e.trial_id, None, e.state, e.cv_accuracy, e.cv_flops))  # type: ignore[arg-type]
        front = pareto_front(records)
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


def references(arms: dict[str, list[Ended]]) -> dict[str, tuple[float, float]]:
    """The two common reference points (accuracy, FLOPs) of a repeat.

    ``nadir``: the worst finished accuracy and 1.1 × the highest finished FLOPs over all arms;
    the primary one. ``zero``: accuracy 0 (the pipeline's own convention, see
    ``pipeline.pareto.reference_point``) and the same FLOPs bound. With accuracy 0 as reference
    most of the area lies below the worst trial's accuracy, so almost any finished trial already
    has most of the final hypervolume and a 95 % threshold hardly discriminates."""
    done = [e for ended in arms.values() for e in ended
            if e.state == "finished" and e.cv_flops is not None and e.cv_accuracy is not None
            and np.isfinite(e.cv_flops) and np.isfinite(e.cv_accuracy)]
    if not done:
        return {"nadir": (0.0, 1.0), "zero": (0.0, 1.0)}
    top = 1.1 * max(e.cv_flops for e in done)  # type: ignore[type-var]
    return {"nadir": (min(e.cv_accuracy for e in done), top), "zero": (0.0, top)}  # type: ignore[type-var]


def analyse(repeat: dict[str, Any]) -> dict[str, Any]:
    """Both references' analyses of one repeat; the ``nadir`` one at the top level."""
    refs = references(repeat["ended"])
    result = analyse_against(repeat, refs["nadir"])
    result["zero_reference"] = analyse_against(repeat, refs["zero"])
    return result


def analyse_against(repeat: dict[str, Any], reference: tuple[float, float]) -> dict[str, Any]:
    """Curves and summary of one repeat (four arms), against one common reference point."""
    arms: dict[str, list[Ended]] = repeat["ended"]
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
            "fold_trainings": pts[-1]["fold_trainings"] if pts else 0,
            "wall_s": repeat["wall_s"][arm],
            "final_hypervolume": final[arm],
            "hypervolume_vs_b": final[arm] / final["b"] if final.get("b") else None,
            "reaches_95pct_of_b": reach,
            "reach_fraction_of_b_budget": (reach["fold_trainings"] / budget_b) if reach and budget_b else None,
        }
    return {"reference": reference, "threshold_95pct_of_b": threshold, "curves": curves,
            "summary": summary}


def plot(analyses: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5 * len(analyses), 4.2), layout="constrained")
    for i, analysis in enumerate(analyses):
        axes = figure.add_subplot(1, len(analyses), i + 1)
        for arm, label in ARMS:
            pts = analysis["curves"].get(arm, [])
            axes.step([0] + [p["fold_trainings"] for p in pts], [0] + [p["hypervolume"] for p in pts],
                      where="post", label=label)
        axes.axhline(analysis["threshold_95pct_of_b"], color="0.5", linestyle=":", label="95 % of (b)")
        axes.set_xlabel("fold-trainings spent")
        axes.set_ylabel("hypervolume (common reference)")
        axes.set_title(f"repeat {i + 1} (seed {analysis['seed']})")
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
        f"Space `{payload['space_file']}`: digits, DynaLay width {space['fixed'].get('width')}, "
        f"{space['folds']} folds, {space['epochs']} epoch(s) per fold, {payload['num_samples']} "
        f"trials per arm, {payload['max_concurrent']} concurrent trials × 1 CPU, seeds "
        f"{payload['seeds']}. Compute = fold-trainings (sum of folds completed over trials). "
        "Hypervolume against one reference point shared by the four arms of a repeat: the "
        "nadir of all finished trials of all four arms (worst accuracy, 1.1 × the highest "
        "cv_flops); the pipeline's own convention (accuracy 0) is shown below it.",
        "",
    ]
    for analysis in payload["analyses"]:
        lines += [f"## Seed {analysis['seed']}", "",
                  f"Reference point (accuracy, FLOPs): ({analysis['reference'][0]:g}, "
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
                s["fold_trainings"],
                C.fmt(s["wall_s"], 3),
                C.fmt(s["final_hypervolume"], 4),
                C.fmt(s["hypervolume_vs_b"], 3),
                f"{reach['fold_trainings']} ({C.fmt(s['reach_fraction_of_b_budget'], 3)} of (b)'s)"
                if reach else "never",
                C.fmt(reach["elapsed_s"], 3) if reach else "–",
            ))
        lines += [C.markdown_table(
            ("arm", "finished / pruned / failed", "fold-trainings", "wall s", "final HV",
             "HV / (b)'s", "fold-trainings to 95 % of (b)'s HV", "wall s to 95 %"), rows), ""]
    if len(payload["analyses"]) > 1:
        rows = []
        for arm, label in ARMS:
            fr = [a["summary"][arm]["reach_fraction_of_b_budget"] for a in payload["analyses"]]
            hv = [a["summary"][arm]["hypervolume_vs_b"] for a in payload["analyses"]]
            ft = [a["summary"][arm]["fold_trainings"] for a in payload["analyses"]]
            reached = sum(f is not None for f in fr)
            rows.append((label, C.fmt_spread(C.spread(ft), kind="minmax"),
                         C.fmt_spread(C.spread(hv), kind="minmax"),
                         f"{reached}/{len(fr)}",
                         C.fmt_spread(C.spread([f for f in fr if f is not None]), kind="minmax")))
        lines += ["## Over the repeats (median [min–max])", "",
                  C.markdown_table(("arm", "fold-trainings", "HV / (b)'s", "reached 95 %",
                                    "fraction of (b)'s fold-trainings to reach it"), rows), ""]
    rows = []
    for analysis in payload["analyses"]:
        zero = analysis["zero_reference"]
        for arm, label in ARMS:
            s = zero["summary"].get(arm)
            if s is None:
                continue
            reach = s["reaches_95pct_of_b"]
            rows.append((analysis["seed"], label, C.fmt(s["hypervolume_vs_b"], 3),
                         f"{reach['fold_trainings']} ({C.fmt(s['reach_fraction_of_b_budget'], 3)})"
                         if reach else "never"))
    lines += ["With the pipeline's reference convention instead (accuracy 0, same FLOPs bound):", "",
              C.markdown_table(("seed", "arm", "HV / (b)'s", "fold-trainings to 95 % of (b)'s HV "
                                "(fraction of (b)'s)"), rows), ""]
    lines += [f"Curves (nadir reference): `{NAME}.png`.", "", "## Target", "",
              C.targets_table(payload["targets"]), ""]
    if payload.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in payload["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = C.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="seeds seed, seed+1, ... (default: 1 quick, 3 full)")
    parser.add_argument("--num-samples", type=int, default=None, help="trial budget per arm (default: the space's)")
    parser.add_argument("--arms", nargs="+", default=[a for a, _ in ARMS], choices=[a for a, _ in ARMS])
    parser.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    args = C.parse(parser, argv)
    if "b" not in args.arms:
        parser.error("--arms must include b: the hypervolume threshold is (b)'s")
    started = time.perf_counter()
    device = C.resolve_device(args.device)
    settings = dict(MODES[args.mode])
    repeats = args.repeats or settings["repeats"]
    env = C.environment(device, args.mode, args.seed)
    env["torch_threads"] = 1  # per trial (TrialSettings.threads)

    import ray

    from pipeline.space import load_space

    space = load_space(str(settings["space"]))
    num_samples = args.num_samples or space.num_samples
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if not ray.is_initialized():
        ray.init(num_cpus=settings["max_concurrent"], include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    if device.type == "cuda":
        C.note("note: trials run on the CPU here (cpus_per_trial=1, no GPUs requested)")
    root = Path(tempfile.mkdtemp(prefix="dynalay-bench-search-"))
    analyses = []
    try:
        for r in range(repeats):
            seed = args.seed + r
            repeat: dict[str, Any] = {"ended": {}, "wall_s": {}}
            for arm in args.arms:
                run_dir = root / f"seed{seed}" / arm
                run_dir.mkdir(parents=True)
                C.note(f"[seed {seed}] {LABEL[arm]} ...")
                if arm in ("a", "b"):
                    ended, wall = run_pipeline(space, "wilcoxon" if arm == "a" else "none", run_dir,
                                               num_samples, seed, settings["max_concurrent"])
                else:
                    ended, wall = run_tuner(arm, space, run_dir, num_samples, seed,
                                            settings["max_concurrent"])
                repeat["ended"][arm], repeat["wall_s"][arm] = ended, wall
                states = [e.state for e in ended]
                C.note(f"[seed {seed}]   {len(ended)} trials ({states.count('finished')} finished, "
                       f"{states.count('pruned')} pruned, {states.count('failed')} failed), "
                       f"{sum(e.folds_done for e in ended)} fold-trainings, {wall:.1f} s")
            analysis = analyse(repeat)
            analysis["seed"] = seed
            analyses.append(analysis)
    finally:
        if args.keep:
            C.note(f"run directories kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    targets = []
    if any("a" in a["summary"] for a in analyses):
        for key, label in (("nadir", "nadir reference"), ("zero", "accuracy-0 reference")):
            fractions = []
            for a in analyses:
                summary = a["summary"] if key == "nadir" else a["zero_reference"]["summary"]
                f = summary["a"]["reach_fraction_of_b_budget"]
                fractions.append(float("inf") if f is None else f)  # never reached: worse than any
            median_fraction = float(np.median(fractions))
            targets.append(C.check(
                f"(a)'s fold-trainings to reach 95 % of (b)'s final HV ({label}), as a fraction of "
                f"(b)'s fold-trainings (median over {len(fractions)} seed(s); never = ∞)",
                median_fraction, "≤ 0.5", median_fraction <= 0.5))
    C.finish(env, started)
    payload = {
        "environment": env,
        "space_file": str(Path(settings["space"]).relative_to(C.ROOT)),
        "space": space.model_dump(mode="json"),
        "num_samples": num_samples,
        "max_concurrent": settings["max_concurrent"],
        "seeds": [a["seed"] for a in analyses],
        "analyses": analyses,
        "targets": targets,
        "notes": [
            "Every arm uses the same seed; TPE (a, b, c) starts with 10 random trials drawn from "
            "the seeded RNG, so with a budget of ≤ 10 trials the arms largely evaluate the same "
            "configurations and differ only in what they stop (concurrency can change the order).",
            "The Wilcoxon pruner (p < 0.1) needs 4 paired folds and a finished, no-costlier trial "
            "that is significantly more accurate: it can stop a trial after fold 4 at the earliest, "
            "saving at most 5 of 9 folds per pruned trial.",
            "ASHA's trials stopped early are not finished, so (as in the pipeline) they never "
            "enter the front: ASHA trades hypervolume for compute by design.",
            "Wall times include Ray Tune's per-trial start-up; (a) and (b) also write MLflow and "
            "the Optuna RDB study, (c) and (d) do not.",
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    plot(analyses, args.out / f"{NAME}.png")
    json_path, md_path = C.write_results(args.out, NAME, payload, markdown(payload))
    C.note(markdown(payload))
    C.note(f"wrote {json_path} and {md_path} in {env['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
