"""The thread policy (pipeline.threads): pure rules, cgroup and /proc files, and that `dynalay
train` and the CV trial run with the count it chooses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from pipeline import threads as T
from pipeline.cli import main

_ROOT = Path(__file__).resolve().parents[1]
_CPUS = sorted(T.affinity_cpus())
needs_two_cpus = pytest.mark.skipif(len(_CPUS) < 2, reason="needs a process allowed on 2+ CPUs")


@contextmanager
def torch_threads_restored() -> Iterator[None]:
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def busy_neighbours(cpus: list[int], seconds: float = 60.0) -> Iterator[None]:
    """One process spinning on each of ``cpus`` (pinned), stopped on exit or after ``seconds``."""
    spin = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
    procs = [
        subprocess.Popen([sys.executable, "-c", spin],
                         preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu}))
        for cpu in cpus
    ]
    try:
        time.sleep(0.3)  # let them start spinning
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# -- pure policy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("affinity", "quota", "ceiling", "expected"),
    [
        (8, None, None, 8),
        (8, 1.5, None, 1),  # a fractional quota rounds down: throttled spinners stall
        (8, 4.0, 2.0, 2),  # cpus_per_trial below the quota
        (2, 16.0, 4.0, 2),  # the affinity below both
        (8, 0.5, None, 1),  # never below one
        (8, None, 0.5, 1),
    ],
)
def test_usable_cpus_takes_the_smallest_limit(affinity, quota, ceiling, expected):
    assert T.usable_cpus(affinity, quota, ceiling) == expected


@pytest.mark.parametrize(
    ("usable", "watched", "others", "expected"),
    [
        (2, 2, 0.0, 2),  # idle: every usable CPU
        (2, 2, 1.0, 1),  # one neighbour on a 2-core machine: the measured 50x case
        (2, 2, 0.25, 2),  # background noise within the free share
        (2, 2, 0.3, 1),  # a CPU 70 % idle is not free
        (2, 2, 2.5, 1),  # overloaded: still one thread
        (2, 8, 5.0, 2),  # quota 2 on 8 CPUs: others use CPUs beyond the quota
        (8, 8, 3.0, 5),
        (4, 4, None, 4),  # not measurable: every usable CPU
        (4, 4, -0.1, 4),  # rounding noise below zero counts as idle
    ],
)
def test_choose_threads_leaves_others_their_cpus(usable, watched, others, expected):
    assert T.choose_threads(usable, watched, others) == expected


def test_quota_parsers():
    assert T.quota_from_cpu_max("max 100000\n") is None
    assert T.quota_from_cpu_max("150000 100000\n") == 1.5
    assert T.quota_from_cpu_max("200000") == 2.0  # period defaults to the kernel's 100 ms
    assert T.quota_from_cfs("-1\n", "100000\n") is None
    assert T.quota_from_cfs("50000\n", "100000\n") == 0.5
    with pytest.raises(ValueError):
        T.quota_from_cpu_max("lots 100000")


_STAT = """cpu  400 0 200 1000 10 0 0 0 0 0
cpu0 100 5 50 500 5 1 2 3 7 0
cpu1 300 0 150 500 5 0 0 0 0 0
cpu2 999 999 999 0 0 0 0 0 0 0
intr 12345
"""


def test_busy_seconds_counts_only_the_watched_cpus_and_not_idle_or_guest():
    # cpu0: 100+5+50+1+2+3 = 161 ticks (idle, iowait, guest excluded); cpu1: 450.
    assert T.busy_seconds(_STAT, [0], 100) == pytest.approx(1.61)
    assert T.busy_seconds(_STAT, [0, 1], 100) == pytest.approx(6.11)
    assert T.busy_seconds(_STAT, [7], 100) == 0.0


def test_others_busy_subtracts_this_process_own_time():
    before = T.CpuSnapshot(busy=10.0, own=1.0, wall=100.0)
    after = T.CpuSnapshot(busy=13.0, own=2.0, wall=102.0)  # 3 s busy, 1 s of it ours, in 2 s
    assert T.others_busy_cpus(before, after) == pytest.approx(1.0)
    assert T.others_busy_cpus(after, after) is None
    # Clock granularity can make own time exceed the busy ticks: never below zero.
    assert T.others_busy_cpus(before, T.CpuSnapshot(10.0, 1.5, 101.0)) == 0.0


def test_requested_from_environment():
    assert T.requested_from_environment({"OMP_NUM_THREADS": "3"}) == 3
    for value in ("", "0", "-2", "auto", "2,1"):
        assert T.requested_from_environment({"OMP_NUM_THREADS": value}) is None
    assert T.requested_from_environment({}) is None


# -- cgroup and /proc files -----------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cgroup_v2_takes_the_smallest_quota_along_the_ancestors(tmp_path):
    proc = _write(tmp_path / "proc_cgroup", "0::/jobs.slice/job7\n")
    root = tmp_path / "fs"
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "jobs.slice" / "cpu.max", "300000 100000\n")
    _write(root / "jobs.slice" / "job7" / "cpu.max", "max 100000\n")
    assert T.cgroup_cpu_quota(proc, root) == 3.0
    _write(root / "jobs.slice" / "job7" / "cpu.max", "125000 50000\n")
    assert T.cgroup_cpu_quota(proc, root) == 2.5


def test_cgroup_v1_cfs_quota_under_a_joined_controller_mount(tmp_path):
    proc = _write(tmp_path / "proc_cgroup",
                  "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    folder = tmp_path / "fs" / "cpu,cpuacct" / "docker" / "abc"
    _write(folder / "cpu.cfs_quota_us", "150000\n")
    _write(folder / "cpu.cfs_period_us", "100000\n")
    assert T.cgroup_cpu_quota(proc, tmp_path / "fs") == 1.5
    _write(folder / "cpu.cfs_quota_us", "-1\n")
    assert T.cgroup_cpu_quota(proc, tmp_path / "fs") is None


def test_cgroup_seen_from_inside_a_container_reads_the_mount_root(tmp_path):
    # Without a cgroup namespace the path names a folder the container cannot see.
    proc = _write(tmp_path / "proc_cgroup", "0::/kubepods/pod1/ctr\n")
    _write(tmp_path / "fs" / "cpu.max", "200000 100000\n")
    assert T.cgroup_cpu_quota(proc, tmp_path / "fs") == 2.0


def test_cgroup_hybrid_hierarchy_with_v2_under_unified(tmp_path):
    proc = _write(tmp_path / "proc_cgroup", "1:cpu:/\n0::/user\n")
    _write(tmp_path / "fs" / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _write(tmp_path / "fs" / "cpu" / "cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "fs" / "unified" / "user" / "cpu.max", "100000 100000\n")
    assert T.cgroup_cpu_quota(proc, tmp_path / "fs") == 1.0


def test_cgroup_missing_or_malformed_files_mean_no_quota(tmp_path):
    assert T.cgroup_cpu_quota(tmp_path / "absent", tmp_path) is None
    proc = _write(tmp_path / "proc_cgroup", "0::/\n")
    _write(tmp_path / "fs" / "cpu.max", "garbage\n")
    assert T.cgroup_cpu_quota(proc, tmp_path / "fs") is None


def test_real_system_files_read_cleanly():
    quota = T.cgroup_cpu_quota()
    assert quota is None or quota > 0
    assert T.affinity_cpus() == set(os.sched_getaffinity(0))
    first = T.snapshot(_CPUS)
    assert first is not None and first.busy > 0
    assert T.snapshot(_CPUS, Path("/nonexistent/stat")) is None


def test_snapshot_reads_a_stat_file(tmp_path):
    snap = T.snapshot([1], _write(tmp_path / "stat", _STAT))
    assert snap is not None
    assert snap.busy == pytest.approx(450 / os.sysconf("SC_CLK_TCK"))


# -- decisions on this machine ---------------------------------------------------------------------


def test_requested_count_is_taken_as_given():
    decision = T.decide_threads(requested=3, ceiling=1)
    assert (decision.threads, decision.source, decision.usable) == (3, "requested", 1)


def test_ceiling_of_one_needs_no_sample():
    started = time.monotonic()
    decision = T.decide_threads(ceiling=1, sample_seconds=5.0)
    assert decision.threads == 1 and decision.others_busy is None
    assert time.monotonic() - started < 2.0


@needs_two_cpus
def test_busy_neighbours_on_every_cpu_leave_one_thread():
    with busy_neighbours(_CPUS[:2]), torch_threads_restored():
        os.sched_setaffinity(0, set(_CPUS[:2]))
        try:
            governor = T.ThreadGovernor()
            assert governor.decision.others_busy is not None
            assert governor.decision.others_busy > 1.0
            assert governor.decision.threads == 1 and torch.get_num_threads() == 1
            time.sleep(0.3)  # an "epoch", with the neighbours still spinning
            governor.on_epoch(0)
            assert governor.per_epoch == [1]
            assert torch.get_num_threads() == 1
        finally:
            os.sched_setaffinity(0, set(_CPUS))


def test_trial_cpus_per_trial_is_a_ceiling():
    from pipeline.trial import TrialSettings

    with torch_threads_restored():
        torch.set_num_threads(2)
        decision = T.apply_threads(ceiling=TrialSettings("digits", "plain", threads=1).threads)
        assert decision.threads == 1 and torch.get_num_threads() == 1


# -- dynalay train --------------------------------------------------------------------------------


def _train_in_subprocess(tmp_path: Path, cpus: set[int], *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "train", "--model", "plain", "--dataset",
         "digits", "--epochs", "2", "--no-progress", "--json", str(out), *extra],
        check=True, capture_output=True, text=True, timeout=300, cwd=_ROOT, env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    return json.loads(out.read_text())


@needs_two_cpus
def test_train_beside_busy_neighbours_trains_with_one_thread(tmp_path):
    # torch alone sizes its pool to the 2 allowed CPUs (libgomp reads the affinity); the
    # neighbours spinning on both leave one thread's worth, at the start and after each epoch.
    cpus = _CPUS[:2]
    with busy_neighbours(cpus, seconds=240):
        report = _train_in_subprocess(tmp_path, set(cpus))
    assert report["threads_per_epoch"] == [1, 1]


@needs_two_cpus
def test_train_threads_flag_overrides_the_policy(tmp_path):
    report = _train_in_subprocess(tmp_path, set(_CPUS[:2]), "--threads", "2")
    assert report["threads_per_epoch"] == [2, 2]


def test_train_threads_flag_must_be_positive(capsys):
    code = main(["train", "--model", "plain", "--dataset", "digits", "--threads", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["dynalay: error: train: argument --threads: must be an integer >= 1, got 0"]
