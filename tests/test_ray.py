"""Sweeps on Ray: two suites in one folder, env actors killed mid-sweep, the driver killed and
resumed, and the outcomes equal a single-machine run of the same seeds (the scripted expert
is deterministic). Real LIBERO physics, cameras off."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")  # ray depends on it

pytestmark = pytest.mark.libero
SUITES = ("libero_object", "libero_goal")
ARGS = ["sweep", "--policy", "scripted", "--suite", ",".join(SUITES), "--tasks", "0,1", "--seeds", "2",
        "--fast-reset", "--no-progress"]


def _sweep(out: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "vla_eval.cli", *ARGS, "--out", str(out), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    if not wait:
        return proc
    out_text, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out_text[-2000:] + err[-4000:]
    return out_text, err


def _outcomes(run: Path) -> dict:
    from vla_eval.records import read_jsonl

    got = {}
    for suite in SUITES:
        for ep in read_jsonl(run / suite / "baseline.jsonl").episodes:
            key = (suite, ep.task_id, ep.seed)
            assert key not in got, f"{key} recorded twice"
            got[key] = ep.outcome
    return got


def _steps_written(run: Path) -> int:
    path = run / SUITES[0] / "baseline.jsonl"
    return path.read_text().count('"kind": "step"') if path.exists() else 0


def _wait_for(pred, timeout: float, what: str) -> None:
    t0 = time.time()
    while not pred():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.5)


def _env_actor_pids() -> list[int]:
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ray::EnvActor" in cmd:
            pids.append(p.info["pid"])
    return pids


def test_ray_sweep_two_suites_survives_kills_and_matches_local(tmp_path):
    local_out, _ = _sweep(tmp_path / "local")  # the reference: envs in this process
    local = _outcomes(tmp_path / "local")
    assert len(local) == 2 * 2 * 2 and "average over suites" in (tmp_path / "local" / "report.html").read_text()

    ray_run = tmp_path / "ray"
    # 1) the driver is killed mid-sweep (SIGKILL: no clean-up at all) ...
    proc = _sweep(ray_run, "--ray", "--workers", "2", "--no-report", wait=False)
    try:
        _wait_for(lambda: _steps_written(ray_run) > 20, 300, "the first steps of the Ray sweep")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True,
                   timeout=120)  # the local instance the killed driver left behind
    # 2) ... the same command resumes; one env actor is killed while it runs
    proc = _sweep(ray_run, "--ray", "--workers", "2", wait=False)
    killed = []

    def kill_one_actor() -> bool:
        pids = _env_actor_pids()
        if pids and _steps_written(ray_run) > 40:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            return True
        return proc.poll() is not None

    try:
        _wait_for(kill_one_actor, 400, "a running Ray env actor")
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    assert killed, "the sweep finished before an actor could be killed"
    assert "re-queued" in err
    assert _outcomes(ray_run) == local  # every (suite, task, seed) exactly once, same outcomes
    summary = (ray_run / "report.html").read_text()
    assert all(f'data-suite="{s}"' in summary for s in SUITES)
    assert json.loads((ray_run / "suites.json").read_text())["suites"] == list(SUITES)


def test_several_suites_are_checked_before_anything_is_written(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vla_eval.cli", "sweep", "--policy", "scripted", "--suite",
                          "libero_object,libero_mars", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert out.returncode == 2 and "valid suites: libero_spatial" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "x").exists()
