"""CPU threads sized to the cores this process can really use (bottom layer, no torch import).

Two torch processes that each start one OpenMP thread per core, and spin while they wait, take
turns on the same cores: every parallel region then waits for a thread that is not running, and
the spinning threads burn the time the other process needs. So:

* ``usable_cores()`` counts the cores the scheduler really gives this process: its CPU affinity,
  capped by a cgroup CPU quota (containers, ``docker --cpus``, systemd ``CPUQuota=``);
* ``prepare_process(threads)`` runs before torch or numpy is imported (``vla-eval`` calls it
  first): idle OpenMP threads spin only briefly before they sleep, and the chosen count is
  exported so the env workers and subprocesses this process starts inherit it;
* ``torch_threads(share)`` is the count one torch user gets: ``--threads N`` if given, else the
  usable cores divided among the ``share`` processes this run keeps busy at once, less the cores
  other processes keep busy when it starts.

    >>> prepare_process(None)          # in main, before any heavy import
    >>> torch.set_num_threads(torch_threads(share=1))
"""
from __future__ import annotations

import math
import os
from pathlib import Path

THREADS_ENV = "VLA_EVAL_THREADS"  # the --threads choice, inherited by every process the run starts
# Idle OpenMP threads spin briefly, then sleep (GNU: ~10k spins, a few microseconds; Intel: 1 ms).
# Measured on 2 cores, SmallPolicy drills alone: 86 s spinning (the default), 92 s with these, 128 s
# never spinning (OMP_WAIT_POLICY=PASSIVE): a short spin keeps most of the speed of two threads.
_SHORT_SPIN = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None for no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: affinity, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cpu_times(stat: Path = Path("/proc/stat")) -> tuple[float, float] | None:
    """(busy, total) jiffies over all CPUs, or None where /proc/stat is not readable."""
    try:
        fields = [float(x) for x in stat.read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_elsewhere(window_s: float = 0.2) -> float:
    """Cores other processes keep busy right now: the machine's busy CPU time over ``window_s``,
    less this process's own (0 where it cannot be read)."""
    import time

    first, own0, t0 = _cpu_times(), time.process_time(), time.perf_counter()
    if first is None:
        return 0.0
    time.sleep(window_s)
    second = _cpu_times()
    wall = time.perf_counter() - t0
    if second is None or second[1] <= first[1] or wall <= 0:
        return 0.0
    cores = os.cpu_count() or 1
    busy = (second[0] - first[0]) / (second[1] - first[1]) * cores
    own = (time.process_time() - own0) / wall
    return max(0.0, busy - own)


def requested_threads() -> int | None:
    """The ``--threads`` choice of this run (set by ``prepare_process``), or None for automatic."""
    text = os.environ.get(THREADS_ENV, "")
    return int(text) if text.isdigit() and int(text) > 0 else None


def torch_threads(share: int = 1) -> int:
    """Threads for one torch user: ``--threads N`` if given, else the usable cores split over the
    ``share`` processes this run keeps busy at the same time, less the cores other processes keep
    busy now (a sweep beside a notebook: each gets fewer threads than cores; at least 1). Measured
    once, when the process sizes its pool: a job started later is not seen."""
    requested = requested_threads()
    if requested:
        return requested
    free = usable_cores() // max(1, share) - round(busy_elsewhere())
    return max(1, free)


def prepare_process(threads: int | None) -> None:
    """Before any import of torch or numpy: idle OpenMP threads spin briefly, then sleep; a given
    ``--threads`` reaches every library (torch, OpenBLAS, MKL) and every child process."""
    if "OMP_WAIT_POLICY" not in os.environ:  # a user's own wait policy stands as set
        for key, value in _SHORT_SPIN.items():
            os.environ.setdefault(key, value)
    if threads is not None:
        os.environ[THREADS_ENV] = str(threads)
        for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[key] = str(threads)


def set_torch_threads(torch, share: int = 1) -> int:
    """Size torch's intra-op pool for this process; returns the count."""
    n = torch_threads(share)
    torch.set_num_threads(n)
    return n
