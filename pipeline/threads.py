"""How many CPU threads torch should use: the CPUs this process may use that nobody else is using.

torch sizes its intra-op OpenMP pool to every core of the machine. Its idle threads spin-wait at
the end of each parallel region, so when a neighbour keeps one of those cores busy, every
parallel region waits for the thread the scheduler has parked behind the neighbour: on a 2-core
machine with one core busy, ``dynalay train`` on digits took 340.9 s with 2 threads and 6.5 s
with one. The thread count is therefore chosen from

* the CPUs the process may run on: its affinity (``os.sched_getaffinity``; a container's
  cpuset, ``taskset``) and its cgroup CPU quota (cgroup v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the smallest along the cgroup's ancestors;
  a quota of 1.5 CPUs gives 1 thread, since spinning threads throttled by the quota stall
  like threads behind a neighbour);
* a caller's ceiling (a Ray trial's ``cpus_per_trial``);
* what others are using right now: ``/proc/stat`` busy time on those CPUs over a short window,
  minus this process' own CPU time. The 1-minute load average is not used: it lags a neighbour
  that started seconds ago by most of a minute, and counts this process and every CPU of the
  host, not only those the process may use.

A CPU counts as free when at least :data:`FREE_CPU_SHARE` of it is idle. At least one thread is
always chosen. :class:`ThreadGovernor` re-checks between epochs (others' use measured over the
epoch just run), so a neighbour that starts or stops mid-training costs at most one epoch.

What ``torch.set_num_threads`` can and cannot change at run time: it resizes the OpenMP and MKL
intra-op parallelism for every later operation (on a loaded 2-core machine, setting 1 thread
after torch had used 2 trained within the noise of ``OMP_NUM_THREADS=1``), but pool threads created earlier stay alive (asleep), and libgomp reads ``OMP_WAIT_POLICY`` and
``GOMP_SPINCOUNT`` once, when torch loads it: those only work as environment variables set
before ``import torch``. Inter-op threads (``torch.set_num_interop_threads``) are left alone:
eager training does not use that pool, and torch refuses to resize it once it has started.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FREE_CPU_SHARE",
    "SAMPLE_SECONDS",
    "CpuSnapshot",
    "ThreadDecision",
    "ThreadGovernor",
    "affinity_cpus",
    "apply_threads",
    "busy_seconds",
    "cgroup_cpu_quota",
    "choose_threads",
    "decide_threads",
    "others_busy_cpus",
    "quota_from_cfs",
    "quota_from_cpu_max",
    "requested_from_environment",
    "snapshot",
    "usable_cpus",
]

FREE_CPU_SHARE = 0.75
"""A CPU counts as free for one more thread when at least this share of it is idle."""

SAMPLE_SECONDS = 0.25
"""How long the first look at others' CPU use watches ``/proc/stat``."""

PROC_STAT = Path("/proc/stat")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


# -- pure policy ---------------------------------------------------------------------------------


def usable_cpus(affinity: int, quota: float | None = None, ceiling: float | None = None) -> int:
    """The CPUs the process may use: ``affinity`` capped by the cgroup ``quota`` and the caller's
    ``ceiling`` (both in CPUs, ``None`` for no limit), rounded down, at least 1."""
    limit = float(affinity)
    for cap in (quota, ceiling):
        if cap is not None:
            limit = min(limit, cap)
    return max(1, math.floor(limit))


def choose_threads(usable: int, watched: int, others_busy: float | None) -> int:
    """The thread count: the ``usable`` CPUs, less those others keep busy.

    Args:
        usable: CPUs the process may use (:func:`usable_cpus`).
        watched: CPUs the process may run on (its affinity), the ones ``others_busy`` was
            measured on; with a quota below the affinity, others may use the CPUs beyond it
            without taking any from this process.
        others_busy: CPUs' worth of time others used on the ``watched`` CPUs, ``None`` when it
            could not be measured (then every usable CPU is taken).

    Returns:
        ``min(usable, free CPUs)``, where a CPU counts as free when :data:`FREE_CPU_SHARE` of
        it is idle; at least 1.
    """
    if others_busy is None:
        return max(1, usable)
    free = watched - max(0.0, others_busy)
    return max(1, min(usable, math.floor(free + 1.0 - FREE_CPU_SHARE + 1e-9)))


def quota_from_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` (``"$QUOTA $PERIOD"`` or ``"max $PERIOD"``)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    period = int(parts[1]) if len(parts) > 1 else 100_000
    return _quota(int(parts[0]), period)


def quota_from_cfs(quota_us: str, period_us: str) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (quota -1: none)."""
    return _quota(int(quota_us.strip()), int(period_us.strip()))


def _quota(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None


def busy_seconds(stat_text: str, cpus: Iterable[int], ticks_per_second: float) -> float:
    """Non-idle seconds summed over ``cpus`` in a ``/proc/stat`` text.

    Busy is user + nice + system + irq + softirq + steal (stolen time is no more ours than a
    neighbour's); guest time is already inside user. CPUs missing from the text count zero.
    """
    wanted = {f"cpu{cpu}" for cpu in cpus}
    ticks = 0
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:9]] + [0] * max(0, 9 - len(fields))
            user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
            ticks += user + nice + system + irq + softirq + steal
    return ticks / ticks_per_second


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU times at one moment, to subtract from a later one.

    Attributes:
        busy: non-idle seconds of the watched CPUs since boot.
        own: this process' CPU seconds, all its threads.
        wall: ``time.monotonic()``.
    """

    busy: float
    own: float
    wall: float


def others_busy_cpus(before: CpuSnapshot, after: CpuSnapshot) -> float | None:
    """CPUs' worth of time others used between two snapshots (``None`` for no time between)."""
    elapsed = after.wall - before.wall
    if elapsed <= 0:
        return None
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, others / elapsed)


# -- reading the system --------------------------------------------------------------------------


def affinity_cpus() -> set[int]:
    """The CPU ids this process may run on (every CPU where the OS has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def cgroup_cpu_quota(
    proc_cgroup: Path = PROC_SELF_CGROUP, root: Path = CGROUP_ROOT
) -> float | None:
    """The smallest CPU quota on this process' cgroup and its ancestors, in CPUs; ``None``: none.

    Reads ``proc_cgroup`` (``/proc/self/cgroup``) for the cgroup paths, then cgroup v2
    ``cpu.max`` under ``root`` (or ``root/unified`` on hybrid hosts) and v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under the cpu controller's mount. Where the
    cgroup's own folder is not visible (a container sees its cgroup as the mount's root), the
    mount's root is read. Unreadable or malformed files count as no quota.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            for mount in (root, root / "unified"):
                quotas += _read_along(mount, path, ("cpu.max",), quota_from_cpu_max)
        elif "cpu" in controllers.split(","):
            mounts = (root / controllers, root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu")
            for mount in dict.fromkeys(mounts):
                quotas += _read_along(mount, path, ("cpu.cfs_quota_us", "cpu.cfs_period_us"),
                                      quota_from_cfs)
    return min(quotas) if quotas else None


def _read_along(
    mount: Path, path: str, names: tuple[str, ...], parse: Callable[..., float | None]
) -> list[float]:
    """``parse`` of the files ``names`` in the cgroup's folder under ``mount`` and every
    ancestor up to ``mount`` (the mount alone when the cgroup's folder is not there)."""
    if not mount.is_dir():
        return []
    folder = mount / path.strip("/")
    if not folder.is_dir():
        folder = mount
    chain = [folder]
    while chain[-1] != mount:
        chain.append(chain[-1].parent)
    quotas = []
    for here in chain:
        try:
            quota = parse(*((here / name).read_text() for name in names))
        except (OSError, ValueError, IndexError):
            continue
        if quota is not None:
            quotas.append(quota)
    return quotas


def snapshot(cpus: Iterable[int], stat_path: Path = PROC_STAT) -> CpuSnapshot | None:
    """A :class:`CpuSnapshot` of ``cpus``; ``None`` where ``/proc/stat`` cannot be read."""
    try:
        text = stat_path.read_text()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return CpuSnapshot(busy_seconds(text, cpus, ticks), time.process_time(), time.monotonic())


# -- deciding and applying ------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreadDecision:
    """A thread count and what it came from (for logs and result files).

    Attributes:
        threads: the count chosen.
        source: ``"requested"`` (the caller fixed it) or ``"free CPUs"`` (this module's policy).
        affinity: CPUs the process may run on.
        quota: the cgroup CPU quota in CPUs, ``None`` for none.
        ceiling: the caller's ceiling (``cpus_per_trial``), ``None`` for none.
        usable: :func:`usable_cpus` of the three.
        others_busy: CPUs others kept busy over the sample, ``None`` if not measured.
    """

    threads: int
    source: str
    affinity: int
    quota: float | None
    ceiling: float | None
    usable: int
    others_busy: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def decide_threads(
    *,
    requested: int | None = None,
    ceiling: float | None = None,
    sample_seconds: float = SAMPLE_SECONDS,
) -> ThreadDecision:
    """The thread count for this process now.

    Args:
        requested: a count fixed by the caller (``--threads``); taken as given.
        ceiling: at most this many CPUs (a Ray trial's ``cpus_per_trial``).
        sample_seconds: how long to watch others' CPU use; skipped when only one CPU is usable.
    """
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota()
    usable = usable_cpus(len(cpus), quota, ceiling)
    if requested is not None:
        return ThreadDecision(requested, "requested", len(cpus), quota, ceiling, usable, None)
    others = None
    if usable > 1:
        before = snapshot(cpus)
        time.sleep(sample_seconds)
        after = snapshot(cpus)
        others = others_busy_cpus(before, after) if before and after else None
    threads = choose_threads(usable, len(cpus), others)
    return ThreadDecision(threads, "free CPUs", len(cpus), quota, ceiling, usable, others)


def apply_threads(**kwargs: Any) -> ThreadDecision:
    """:func:`decide_threads` (same arguments), then ``torch.set_num_threads`` to it."""
    import torch

    decision = decide_threads(**kwargs)
    torch.set_num_threads(decision.threads)
    return decision


def requested_from_environment(environ: Mapping[str, str] = os.environ) -> int | None:
    """``OMP_NUM_THREADS`` when it is a positive integer: a user's explicit choice."""
    value = environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


@dataclass
class ThreadGovernor:
    """Sets torch's threads when created and re-checks them after every epoch.

    Pass :meth:`on_epoch` as ``models.training.fit``'s ``on_epoch``. After each epoch, others'
    CPU use over that epoch (``/proc/stat`` minus this process' own CPU time, so this
    process' spinning threads are not mistaken for a neighbour) decides the next epoch's count.
    A requested count is never changed.

    Attributes:
        decision: the first decision.
        per_epoch: the thread count each finished epoch ran with.
    """

    requested: int | None = None
    ceiling: float | None = None
    decision: ThreadDecision = field(init=False)
    per_epoch: list[int] = field(init=False, default_factory=list)
    _cpus: set[int] = field(init=False, repr=False)
    _last: CpuSnapshot | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.decision = apply_threads(requested=self.requested, ceiling=self.ceiling)
        self._cpus = affinity_cpus()
        self._last = snapshot(self._cpus)

    def on_epoch(self, epoch: int, record: Mapping[str, Any] | None = None) -> None:
        import torch

        self.per_epoch.append(torch.get_num_threads())
        if self.decision.source == "requested" or self.decision.usable == 1:
            return
        now = snapshot(self._cpus)
        others = others_busy_cpus(self._last, now) if self._last and now else None
        self._last = now
        torch.set_num_threads(choose_threads(self.decision.usable, len(self._cpus), others))
