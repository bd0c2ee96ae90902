"""Shared pieces of the benchmark scripts: arguments, timing, statistics, environment, output.

Every benchmark is run as ``python -m benchmarks.<name> --quick|--full [--device D] [--out DIR]
[--seed S]`` from the repository root and writes ``<out>/<name>.json`` (everything measured,
with the environment) and ``<out>/<name>.md`` (the tables the README shows).

The machines this runs on are shared and noisy, so the scripts measure the things they compare
side by side in one run, interleave the repetitions, and report medians with their spread and
ratios; absolute times are only meaningful on a dedicated GPU.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"


# -- arguments ----------------------------------------------------------------------------------


def make_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; a script adds its own before parsing."""
    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small sizes, at most ~3 minutes on a 2-core CPU (the default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the sizes the README's tables come from where it says so")
    parser.set_defaults(mode="quick")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda[:N] (default: cuda when available, else cpu)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for <name>.json and <name>.md (default "
                             f"{DEFAULT_OUT.relative_to(ROOT)} for --full, "
                             f"{(DEFAULT_OUT / 'quick').relative_to(ROOT)} for --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="torch intra-op threads, N or 'auto' (the CPUs this process may use "
                             "that others leave free: pipeline.threads). Default on CPU 1: a "
                             "search trial's default (cpus_per_trial 1), and one thread is far "
                             "less noisy on a shared machine; on CUDA 'auto'")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parses, then fills in the mode's default output folder: the README's tables come from
    ``--full`` runs in ``benchmarks/results``; ``--quick`` runs write to its ``quick/``."""
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = DEFAULT_OUT if args.mode == "full" else DEFAULT_OUT / "quick"
    return args


def resolve_device(name: str | None) -> Any:
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    return device


def thread_count(text: str) -> int | str:
    """An argparse type: ``auto`` or a thread count >= 1."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 1, got {text}")
    return value


def set_threads(device: Any, threads: int | str | None) -> int:
    """Sets torch's intra-op threads for ``--threads`` (see :func:`make_parser`); returns them."""
    import torch

    from pipeline.threads import apply_threads

    if threads is None:
        threads = 1 if getattr(device, "type", device) == "cpu" else "auto"
    if threads == "auto":
        apply_threads()
    else:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


# -- timing -------------------------------------------------------------------------------------


def synchronize(device: Any) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """``perf_counter`` readings that wait for the device first (CUDA kernels are async)."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()


def rotated(items: Sequence[Any], rep: int) -> list[Any]:
    """``items`` started at position ``rep`` (mod len): interleaved repetitions change which
    item runs first, so no item always pays for (or profits from) the one before it."""
    k = rep % len(items)
    return list(items[k:]) + list(items[:k])


# -- statistics ---------------------------------------------------------------------------------


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median, quartiles, min, max and count of finite ``values`` (NaN when there are none)."""
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if array.size == 0:
        nan = float("nan")
        return {"median": nan, "q1": nan, "q3": nan, "min": nan, "max": nan, "n": 0}
    q1, median, q3 = np.percentile(array, [25, 50, 75])
    return {
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a Markdown cell: ``digits`` significant figures, ``–`` for missing/NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if magnitude < 10 ** digits else f"{value:.0f}"


def fmt_spread(s: dict[str, float], scale: float = 1.0, digits: int = 3, kind: str = "iqr") -> str:
    """``median [q1–q3]`` (or ``[min–max]``) scaled by ``scale``."""
    if not s or s.get("n", 0) == 0:
        return "–"
    lo, hi = (s["q1"], s["q3"]) if kind == "iqr" else (s["min"], s["max"])
    return f"{fmt(s['median'] * scale, digits)} [{fmt(lo * scale, digits)}–{fmt(hi * scale, digits)}]"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


# -- memory -------------------------------------------------------------------------------------

_LIBC: Any = None


def _trim_malloc() -> None:
    """Hand glibc's free pages back to the kernel, so that re-used heap memory shows up in RSS
    again (otherwise a second model could reuse the first one's freed pages unseen)."""
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_memory(device: Any) -> Any:
    """Measures the peak extra memory of the block, in bytes, into ``box["bytes"]``.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the block (the
    caching allocator's view: tensors, not the driver's context).
    CPU: the process' peak resident set (``VmHWM`` in ``/proc/self/status``, reset through
    ``/proc/self/clear_refs`` after ``malloc_trim``) minus its resident set before the block.
    That counts every allocation the block touches (tensors, allocator slack, Python objects),
    in pages. Where ``clear_refs`` is unavailable it falls back to ``ru_maxrss`` deltas, which
    only see growth beyond the process' earlier peak.
    """
    import torch

    box: dict[str, Any] = {}
    gc.collect()
    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        box["method"] = "torch.cuda.max_memory_allocated"
        yield box
        torch.cuda.synchronize(device)
        box["bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
        return
    _trim_malloc()
    if _reset_peak_rss() and _proc_status_kb("VmRSS") is not None:
        base_kb = _proc_status_kb("VmRSS") or 0
        box["method"] = "VmHWM-VmRSS (/proc, peak reset via clear_refs, malloc_trim before)"
        yield box
        box["bytes"] = int(((_proc_status_kb("VmHWM") or 0) - base_kb) * 1024)
    else:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        box["method"] = "ru_maxrss delta (growth beyond the earlier peak only)"
        yield box
        box["bytes"] = int((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)


# -- environment and output ---------------------------------------------------------------------


def load_average() -> list[float] | None:
    try:
        return [float(v) for v in os.getloadavg()]
    except OSError:
        return None


def environment(device: Any, mode: str, seed: int) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "mode": mode,
        "seed": seed,
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": _usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load_average(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": "python -m " + " ".join([_module_name(), *sys.argv[1:]]),
    }
    if getattr(device, "type", device) == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _usable_cpus() -> int:
    from pipeline.threads import affinity_cpus, cgroup_cpu_quota, usable_cpus

    return usable_cpus(len(affinity_cpus()), cgroup_cpu_quota())


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def env_line(env: dict[str, Any]) -> str:
    """One Markdown line saying where and how the numbers were taken."""
    load = env.get("load_average_at_start")
    load_end = env.get("load_average_at_end")
    parts = [
        f"mode `{env['mode']}`",
        f"device `{env['device']}`" + (f" ({env['gpu']})" if env.get("gpu") else ""),
        f"{env['cpu_count']} CPU cores"
        + (f" ({env['usable_cpus']} usable)" if env.get("usable_cpus", env["cpu_count"]) != env["cpu_count"] else "")
        + f", torch {env['torch']} with {env['torch_threads']} thread(s)",
    ]
    if load:
        parts.append(f"1-min load average {load[0]:.2f} at start" +
                     (f", {load_end[0]:.2f} at end" if load_end else ""))
    if "elapsed_s" in env:
        parts.append(f"ran {env['elapsed_s']:.0f} s")
    if env.get("git_commit"):
        parts.append(f"commit {env['git_commit']}" + (" + uncommitted changes" if env.get("git_dirty") else ""))
    return "Measured: " + "; ".join(parts) + "."


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(out: Path, name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Writes ``<out>/<name>.json`` and ``<out>/<name>.md``; returns both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def finish(env: dict[str, Any], started: float) -> None:
    env["load_average_at_end"] = load_average()
    env["elapsed_s"] = time.perf_counter() - started


def note(message: str) -> None:
    print(message, flush=True)


def check(label: str, value: float, target: str, met: bool) -> dict[str, Any]:
    """A target's record: what was measured against what was asked."""
    return {"target": label, "measured": value, "threshold": target, "met": bool(met)}


def targets_table(checks: Sequence[dict[str, Any]], digits: int = 3) -> str:
    rows = [
        (c["target"], fmt(c["measured"], digits), c["threshold"], "met" if c["met"] else "**missed**")
        for c in checks
    ]
    return markdown_table(("target", "measured", "asked", "verdict"), rows)


def start_search_benchmark(args: argparse.Namespace, ray_cpus: int) -> tuple[float, dict[str, Any], float]:
    """The start of a benchmark whose trials run through Ray Tune on the CPU, one thread each
    (``cpus_per_trial`` 1): the clock, the environment record and a local Ray instance of
    ``ray_cpus`` CPUs (:func:`pipeline.search.init_ray`).

    Returns:
        ``(started, environment, seconds ray.init took)``.
    """
    from pipeline.search import init_ray

    started = time.perf_counter()
    device = resolve_device(args.device)
    env = environment(device, args.mode, args.seed)
    env["torch_threads"] = 1  # per trial
    if device.type == "cuda":
        note("note: trials run on the CPU here (cpus_per_trial=1, no GPUs requested)")
    before = time.perf_counter()
    init_ray(num_cpus=ray_cpus)
    return started, env, time.perf_counter() - before


def publish(out: Path, name: str, payload: dict[str, Any], markdown: str) -> None:
    """Writes the results (:func:`write_results`) and prints the tables and where they went."""
    json_path, md_path = write_results(out, name, payload, markdown)
    note(markdown)
    note(f"wrote {json_path} and {md_path}" + (
        f" in {payload['environment']['elapsed_s']:.0f} s" if "elapsed_s" in payload.get("environment", {}) else ""))


def timed(fn: Callable[[], Any], clock: Clock) -> tuple[float, Any]:
    start = clock.now()
    result = fn()
    return clock.now() - start, result
