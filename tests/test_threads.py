"""CPU threads sized to the cores a process may use: affinity, cgroup quotas, --threads, and the
OpenMP waits set before torch loads (the benchmark is `vla-eval bench-threads`, not a test)."""
from __future__ import annotations

import os

import pytest

from vla_eval import threads


@pytest.fixture(autouse=True)
def _environment_restored():
    """prepare_process writes os.environ (that is its job): undo it after each test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
    ({"cpu.max": "garbage"}, None),
])
def test_cgroup_quotas_v1_and_v2_are_read(tmp_path, files, expected):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert threads._cgroup_quota(tmp_path) == expected


def test_usable_cores_take_the_affinity_capped_by_the_quota_rounded_up(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.usable_cores(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.usable_cores(tmp_path) == 4


def test_threads_flag_wins_and_reaches_child_processes(monkeypatch):
    for key in (threads.THREADS_ENV, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 3.2)
    assert threads.torch_threads() == 5 and threads.torch_threads(share=2) == 1  # 8 // 2 - 3, at least 1
    threads.prepare_process(3)
    assert threads.torch_threads() == 3 and os.environ["OMP_NUM_THREADS"] == "3"


def test_idle_openmp_threads_spin_briefly_unless_the_user_chose_a_wait_policy(monkeypatch):
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.delenv(key, raising=False)
    threads.prepare_process(None)
    assert os.environ["GOMP_SPINCOUNT"] == "10000"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    threads.prepare_process(None)
    assert "GOMP_SPINCOUNT" not in os.environ


def test_other_processes_busy_cores_are_measured_without_counting_this_one():
    """A spinning child process is a core busy elsewhere."""
    import subprocess
    import sys
    import time

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # past its start-up
        busy = threads.busy_elsewhere(0.3)
    finally:
        spinner.kill()
        spinner.wait()
    assert 0.5 <= busy <= (os.cpu_count() or 1)
