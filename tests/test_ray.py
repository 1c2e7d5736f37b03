"""Sweeps on Ray: env actors killed mid-sweep, the driver killed and resumed, and the outcomes
equal a single-machine run of the same seeds (the scripted expert is deterministic); two
suites in one folder. Real LIBERO physics, cameras off."""
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
# The scripted expert solves libero_object's pick-and-place tasks only: it is the deterministic
# reference on one suite; two suites run the zero policy (deterministic failures).
SCRIPTED = ["sweep", "--policy", "scripted", "--tasks", "0,2", "--seeds", "2", "--fast-reset", "--no-progress"]
TWO_SUITES = ["sweep", "--policy", "zero", "--suite", ",".join(SUITES), "--tasks", "0", "--seeds", "2",
              "--max-steps", "20", "--fast-reset", "--no-progress"]


def _sweep(out: Path, *extra: str, wait: bool = True, args=SCRIPTED):
    cmd = [sys.executable, "-m", "vla_eval.cli", *args, "--out", str(out), *extra]
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
    for ep in read_jsonl(run / "baseline.jsonl").episodes:
        key = (ep.suite, ep.task_id, ep.seed)
        assert key not in got, f"{key} recorded twice"
        got[key] = ep.outcome
    return got


def _steps_written(run: Path) -> int:
    path = run / "baseline.jsonl"
    return path.read_text().count('"kind":"step"') if path.exists() else 0


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


def test_ray_sweep_survives_kills_and_matches_local(tmp_path):
    _sweep(tmp_path / "local", "--no-report")  # the reference: the env in this process
    local = _outcomes(tmp_path / "local")
    assert len(local) == 4

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
    proc = _sweep(ray_run, "--ray", "--workers", "2", "--no-report", wait=False)
    killed, before = [], _steps_written(ray_run)

    def kill_one_actor() -> bool:
        pids = _env_actor_pids()
        if pids and _steps_written(ray_run) > before + 10:
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
    assert _outcomes(ray_run) == local  # every (task, seed) exactly once, the same outcomes


def test_two_suites_on_ray_one_folder_each_and_a_summary(tmp_path):
    _sweep(tmp_path / "run", "--ray", "--workers", "2", args=TWO_SUITES)
    for suite in SUITES:
        got = _outcomes(tmp_path / "run" / suite)
        assert sorted(got) == [(suite, 0, 0), (suite, 0, 1)]
    summary = (tmp_path / "run" / "report.html").read_text()
    assert all(f'data-suite="{s}"' in summary for s in SUITES) and "average over suites" in summary
    assert json.loads((tmp_path / "run" / "suites.json").read_text())["suites"] == list(SUITES)
    # the same command again: everything is there, nothing runs twice
    out, _ = _sweep(tmp_path / "run", args=TWO_SUITES)
    assert out.count("0 episodes run, 2 already done") == 2


def test_several_suites_are_checked_before_anything_is_written(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vla_eval.cli", "sweep", "--policy", "scripted", "--suite",
                          "libero_object,libero_mars", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown suite 'libero_mars'; valid: libero_spatial" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "x").exists()
