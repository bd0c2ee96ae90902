"""`dynalay train` on an idle machine and beside a busy neighbour, before and after the thread policy.

    python -m benchmarks.loaded_train --quick     # 2 epochs, 1 repetition, runs stopped at 60 s: ~3 min on 2 cores
    python -m benchmarks.loaded_train --full      # 10 epochs, 3 repetitions

Each run is ``dynalay train --model dynalay --dataset digits --epochs N --no-progress --json F``
in a fresh process (without ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``), under two conditions:

* ``idle``: nothing started by this script beside it;
* ``loaded``: a neighbour process spinning one core for the length of the run (unpinned, as a
  user's other program would be), started 0.5 s before the train.

and three thread settings:

* ``before``: ``--threads`` = every CPU the process may use, torch's own default (the old
  behaviour);
* ``after``: the default, ``pipeline.threads``' choice, re-checked every epoch;
* ``after + passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (libgomp's idle threads sleep
  instead of spinning; only an environment variable can set it, before torch loads).

The figure is the training time the command reports (``train_seconds``: the epochs, without
start-up and evaluation) and its ratio loaded/idle per setting; the target is ``after`` within
1.5x. Runs past ``--timeout`` are stopped and reported as at least the timeout. Each run also
records what other processes (not this script's train or neighbour) used of the CPUs while it
ran, since on a shared machine "idle" is only as idle as the others let it be. Repetitions are
interleaved, the order rotating each repetition.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks import _common as C
from pipeline import threads as T

NAME = "loaded_train"
TARGET_RATIO = 1.5

MODES = {
    "quick": {"epochs": 2, "reps": 1, "timeout": 60.0},
    "full": {"epochs": 10, "reps": 3, "timeout": 600.0},
}
SETTINGS = ("before", "after", "after + passive")
CONDITIONS = ("idle", "loaded")

_SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end: pass\n"


@contextmanager
def busy_neighbour(active: bool, seconds: float) -> Iterator[None]:
    """A process spinning one core for at most ``seconds`` (nothing when not ``active``)."""
    if not active:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", _SPIN, str(seconds)])
    try:
        time.sleep(0.5)  # spinning before the train starts
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train_once(setting: str, condition: str, epochs: int, usable: int, timeout: float,
               device: str | None, seed: int) -> dict[str, Any]:
    """One ``dynalay train`` run; its times, accuracy, thread counts and others' CPU use."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    command = [sys.executable, "-m", "pipeline.cli", "train", "--model", "dynalay", "--dataset",
               "digits", "--epochs", str(epochs), "--seed", str(seed), "--no-progress"]
    if device:
        command += ["--device", device]
    if setting == "before":
        command += ["--threads", str(usable)]
    if setting == "after + passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cpus = T.affinity_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        record: dict[str, Any] = {"setting": setting, "condition": condition}
        before, children = T.snapshot(cpus), _children_cpu()
        with busy_neighbour(condition == "loaded", timeout + 5.0):
            started = time.perf_counter()
            try:
                done = subprocess.run([*command, "--json", str(report_path)], env=env,
                                      cwd=C.ROOT, capture_output=True, text=True, timeout=timeout)
                record["timed_out"] = False
            except subprocess.TimeoutExpired:
                done = None
                record["timed_out"] = True
            record["wall_s"] = time.perf_counter() - started
        # Reaped now (the neighbour too): the children's CPU time is theirs, not "others".
        after, children = T.snapshot(cpus), _children_cpu() - children
        if before and after:
            busy = (after.busy - before.busy) - children - (after.own - before.own)
            record["others_cpus"] = max(0.0, busy / (after.wall - before.wall))
        if done is not None and done.returncode != 0:
            raise SystemExit(f"dynalay train failed ({setting}, {condition}):\n{done.stderr[-2000:]}")
        if done is not None:
            report = json.loads(report_path.read_text())
            record.update(train_s=report["train_seconds"], accuracy=report["accuracy"],
                          threads_per_epoch=report["threads_per_epoch"])
        else:
            record.update(train_s=None, train_s_at_least=timeout, accuracy=None,
                          threads_per_epoch=None)
    return record


def _train_times(runs: list[dict[str, Any]]) -> list[float]:
    """Train seconds, a timed-out run counting as its timeout (so medians are lower bounds)."""
    return [r["train_s"] if r["train_s"] is not None else r["train_s_at_least"] for r in runs]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for setting in SETTINGS:
        row: dict[str, Any] = {}
        for condition in CONDITIONS:
            mine = [r for r in runs if r["setting"] == setting and r["condition"] == condition]
            row[condition] = {
                "train_s": C.spread(_train_times(mine)),
                "timed_out": sum(r["timed_out"] for r in mine),
                "accuracy": C.spread(r["accuracy"] for r in mine if r["accuracy"] is not None),
                "others_cpus": C.spread(r.get("others_cpus") for r in mine),
                "threads_per_epoch": [r["threads_per_epoch"] for r in mine],
            }
        idle, loaded = row["idle"]["train_s"]["median"], row["loaded"]["train_s"]["median"]
        # A timed-out idle run leaves the ratio unknown (both times are lower bounds).
        known = idle > 0 and not row["idle"]["timed_out"]
        row["loaded_over_idle"] = loaded / idle if known else float("nan")
        row["ratio_is_lower_bound"] = row["loaded"]["timed_out"] > 0
        summary[setting] = row
    return summary


def render(summary: dict[str, Any], env: dict[str, Any], settings: dict[str, Any],
           targets: list[dict[str, Any]]) -> str:
    rows = []
    for setting in SETTINGS:
        for condition in CONDITIONS:
            cell = summary[setting][condition]
            time_cell = C.fmt_spread(cell["train_s"], kind="range")
            if cell["timed_out"]:
                time_cell = f"≥ {time_cell} ({cell['timed_out']} timed out)"
            threads = "; ".join(" ".join(map(str, t)) if t else "–" for t in cell["threads_per_epoch"])
            rows.append((setting, condition, time_cell, C.fmt(cell["accuracy"]["median"]),
                         threads, C.fmt_spread(cell["others_cpus"], kind="range", digits=2)))
    def seconds(cell: dict[str, Any]) -> str:
        return ("≥ " if cell["timed_out"] else "") + C.fmt(cell["train_s"]["median"])

    def ratio(row: dict[str, Any]) -> str:
        if row["idle"]["timed_out"]:
            return "unknown (idle run timed out)"
        return ("≥ " if row["ratio_is_lower_bound"] else "") + C.fmt(row["loaded_over_idle"])

    ratios = [(setting, seconds(summary[setting]["idle"]), seconds(summary[setting]["loaded"]),
               ratio(summary[setting])) for setting in SETTINGS]
    return "\n\n".join([
        "# `dynalay train` beside a busy neighbour",
        C.env_line(env),
        f"`dynalay train --model dynalay --dataset digits --epochs {settings['epochs']}`, "
        f"{settings['reps']} repetition(s) per cell, each run stopped after "
        f"{settings['timeout']:.0f} s. `before`: `--threads {env['usable_cpus']}` (every usable "
        "CPU, torch's default); `after`: the thread policy (`pipeline.threads`); "
        "`+ passive`: with `OMP_WAIT_POLICY=PASSIVE`. `loaded`: one process spinning a core.",
        "## Train time (seconds, median [min–max])",
        C.markdown_table(("setting", "condition", "train s", "test accuracy",
                          "threads per epoch (per run)", "others' CPUs during the run"), rows),
        "## Loaded over idle",
        C.markdown_table(("setting", "idle s", "loaded s", "loaded / idle"), ratios),
        "## Targets",
        C.targets_table(targets),
        "\"Others' CPUs\" is what processes other than this benchmark's train and neighbour used "
        "of the CPUs during each run (`/proc/stat` busy time less the children's CPU time): on a "
        "shared machine the `idle` rows are only as idle as that column says.",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = C.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the mode's)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per cell (default: the mode's)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before a run is stopped (default: the mode's)")
    args = C.parse(parser, argv)
    started = time.perf_counter()
    settings = dict(MODES[args.mode])
    for key in ("epochs", "reps", "timeout"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    device = C.resolve_device(args.device)
    env = C.environment(device, args.mode, args.seed)
    usable = env["usable_cpus"]

    cells = [(setting, condition) for setting in SETTINGS for condition in CONDITIONS]
    runs = []
    for rep in range(settings["reps"]):
        for setting, condition in C.rotated(cells, rep):
            record = train_once(setting, condition, settings["epochs"], usable, settings["timeout"],
                                args.device, args.seed)
            record["rep"] = rep
            runs.append(record)
            shown = (f"{record['train_s']:.1f} s" if record["train_s"] is not None
                     else f"timed out after {settings['timeout']:.0f} s")
            C.note(f"[rep {rep}] {setting:16s} {condition:6s} {shown}, threads "
                   f"{record['threads_per_epoch']}, others {record.get('others_cpus', float('nan')):.2f} CPUs")

    summary = summarize(runs)
    seen = {usable} | {n for r in runs for n in (r["threads_per_epoch"] or [])}
    env["torch_threads"] = "–".join(map(str, sorted({min(seen), max(seen)})))
    after = summary["after"]["loaded_over_idle"]
    targets = [C.check("`after`: loaded / idle train time", after, f"≤ {TARGET_RATIO}",
                       after <= TARGET_RATIO and not summary["after"]["ratio_is_lower_bound"])]
    C.finish(env, started)
    payload = {"env": env, "settings": settings, "runs": runs, "summary": summary, "targets": targets}
    json_path, md_path = C.write_results(args.out, NAME, payload, render(summary, env, settings, targets))
    C.note(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
