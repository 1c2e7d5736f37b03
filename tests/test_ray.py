"""Sweeps on Ray: the driver killed and resumed and a worker node of a `ray start` cluster lost
mid-sweep, policy actors killed mid-sweep; outcomes (scripted expert) and actions (tiny OpenVLA)
equal a single-machine run of the same seeds; two suites in one folder. Real LIBERO physics."""
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


def _pids(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (Ray names actor processes ray::<Class>)."""
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if marker in cmd:
            pids.append(p.info["pid"])
    return pids


def _kill_mid_run(proc, run: Path, marker: str, after_steps: int) -> tuple[str, str]:
    """SIGKILL every process matching ``marker`` once ``run`` has more than ``after_steps``
    step lines, then let the sweep finish; asserts it did, after the kill."""
    killed = []

    def kill() -> bool:
        pids = _pids(marker)
        if pids and _steps_written(run) > after_steps:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)
            return True
        return proc.poll() is not None

    try:
        _wait_for(kill, 400, f"a running {marker}")
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    assert killed, f"the sweep finished before {marker} could be killed"
    return out, err


def _ray_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "ray"), *args], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "RAY_AUTH_MODE": "disabled"})


@pytest.fixture(scope="module")
def local_outcomes(tmp_path_factory) -> dict:
    """The reference: the scripted sweep with the env in this process."""
    run = tmp_path_factory.mktemp("local")
    _sweep(run, "--no-report")
    got = _outcomes(run)
    assert len(got) == 4
    return got


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


# -- a cluster started with `ray start`: a head without CPUs and two worker nodes ----------------
HEAD_PORT, DOOMED_NODE_PORT = 6391, 46391  # the node to lose is found by its raylet's port


@pytest.fixture()
def cluster():
    """`ray start --head` + two worker nodes on this machine; the env actors can only go to
    the workers (the head has no CPU). Yields the address to pass to --ray."""
    _ray_cli("stop", "--force")
    try:
        for args in (["--head", f"--port={HEAD_PORT}", "--num-cpus=0", "--include-dashboard=false"],
                     [f"--address=127.0.0.1:{HEAD_PORT}", "--num-cpus=1", f"--node-manager-port={DOOMED_NODE_PORT}"],
                     [f"--address=127.0.0.1:{HEAD_PORT}", "--num-cpus=2"]):
            started = _ray_cli("start", "--disable-usage-stats", *args)
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield f"127.0.0.1:{HEAD_PORT}"
    finally:
        _ray_cli("stop", "--force")


def test_multi_node_cluster_survives_a_killed_driver_and_a_lost_node(tmp_path, cluster, local_outcomes):
    """The sweep joins a running cluster by address. 1) Its driver is SIGKILLed mid-sweep (no
    clean-up at all); 2) the same command resumes, and one worker node dies mid-sweep (its raylet
    SIGKILLed): its episode is re-queued on the other node. Every (task, seed) is recorded exactly
    once, with the outcomes of the local run."""
    run = tmp_path / "ray"
    proc = _sweep(run, "--ray", cluster, "--workers", "2", "--no-report", wait=False)
    try:
        _wait_for(lambda: _steps_written(run) > 20, 300, "the first steps of the Ray sweep")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    proc = _sweep(run, "--ray", cluster, "--workers", "2", "--no-report", wait=False)
    _, err = _kill_mid_run(proc, run, f"--node_manager_port={DOOMED_NODE_PORT}", _steps_written(run) + 10)
    assert "re-queued" in err
    assert _outcomes(run) == local_outcomes


# -- the policy in Ray actors --------------------------------------------------------------------
TINY = ["sweep", "--policy", "tiny", "--tasks", "0", "--seeds", "2", "--max-steps", "30", "--fast-reset",
        "--videos", "none", "--no-report", "--no-progress"]


def _actions(run: Path) -> dict:
    got = {}
    for line in (run / "baseline.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "step":
            got.setdefault((rec["task_id"], rec["seed"], rec["attempt"]), []).append(rec["action"])
    episodes = {json.loads(line)["attempt"] for line in (run / "baseline.jsonl").read_text().splitlines()
                if '"kind":"episode"' in line}
    return {(t, s): a for (t, s, att), a in got.items() if att in episodes}


def test_tiny_policy_in_ray_actors_acts_as_in_process_and_survives_a_kill(tmp_path):
    """Two policy actors, each batching the rows of its env actors; both are SIGKILLed mid-sweep
    (Ray restarts it and retries the step). Every action equals the in-process run's."""
    _sweep(tmp_path / "local", "--workers", "2", args=TINY)
    proc = _sweep(tmp_path / "ray", "--ray", "--workers", "2", "--policy-actors", "2", wait=False, args=TINY)
    _kill_mid_run(proc, tmp_path / "ray", "ray::PolicyActor", 8)
    local, ray_run = _actions(tmp_path / "local"), _actions(tmp_path / "ray")
    assert sorted(local) == [(0, 0), (0, 1)] and local == ray_run


def test_policy_actors_need_ray(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vla_eval.cli", *TINY, "--policy-actors", "2", "--out",
                          str(tmp_path / "x")], capture_output=True, text=True)
    assert out.returncode == 2 and "--policy-actors 2: policy actors live on a Ray cluster; add --ray" in out.stderr
    assert not (tmp_path / "x").exists()
