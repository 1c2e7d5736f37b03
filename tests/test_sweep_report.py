"""The resumable sweep on real LIBERO (scripted expert), shards, and the HTML report in a browser."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vla_eval.records import read_jsonl

pytestmark = pytest.mark.libero
SWEEP_ARGS = ["sweep", "--policy", "scripted", "--suite", "libero_object", "--task", "0", "--fast-reset",
              "--no-progress"]
SWEEP = [sys.executable, "-m", "vla_eval.cli", *SWEEP_ARGS]


def _episode_lines(path: Path) -> int:
    return sum('"kind":"episode"' in line for line in path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A 4-seed sweep killed with SIGKILL mid-episode, then resumed by the same command."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    cmd = SWEEP + ["--seeds", "4", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    log = out / "baseline.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and _episode_lines(log) < 1:
        time.sleep(0.2)
    assert _episode_lines(log) >= 1, "the first episode never finished"
    n_lines = len(log.read_text().splitlines())
    while time.time() < deadline and len(log.read_text().splitlines()) < n_lines + 20:
        time.sleep(0.1)  # the next episode is now in flight
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _episode_lines(log)
    assert killed_at < 4
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    return out, killed_at, resumed.stdout + resumed.stderr


def test_kill_and_resume_gives_exactly_one_record_per_seed(resumed_run):
    out, killed_at, stdout = resumed_run
    log = read_jsonl(out / "baseline.jsonl")
    assert sorted(e.seed for e in log.episodes) == [0, 1, 2, 3]
    assert _episode_lines(out / "baseline.jsonl") == 4  # nothing duplicated
    assert log.orphan_steps > 0  # the killed attempt's steps are on disk, and ignored
    assert f"{killed_at} already done" in stdout
    for ep in log.episodes:  # every committed episode has exactly its own steps
        steps = log.steps_of(ep)
        assert [s.step for s in steps] == list(range(ep.steps))
    assert sum(e.success for e in log.episodes) >= 3  # the expert really solves this task


def test_third_party_noise_is_silenced_at_the_source(resumed_run):
    """robosuite's macro-file warnings and LIBERO's task-order print never reach the user."""
    _, _, stdout = resumed_run
    assert "No private macro file" not in stdout and "using task orders" not in stdout


def test_rerun_of_a_finished_sweep_runs_nothing(resumed_run, cli_run):
    out, _, _ = resumed_run
    r = cli_run(*SWEEP_ARGS, "--seeds", "4", "--out", out, "--no-report")
    assert r.returncode == 0 and "0 episodes run, 4 already done" in r.stdout


def test_resume_with_another_config_is_refused(resumed_run, cli_main):
    out, _, _ = resumed_run
    before = (out / "baseline.jsonl").read_text()
    code, err = cli_main(*SWEEP_ARGS, "--seeds", "5", "--out", out)
    assert code == 2 and "seeds: folder has 0-3, command asks 0-4" in err
    assert (out / "baseline.jsonl").read_text() == before


def test_shards_merge_and_mismatches_are_refused(tmp_path, cli_run, cli_main):
    for i in (0, 1):
        r = cli_run(*SWEEP_ARGS, "--seeds", "2", "--shard", f"{i}/2", "--out", tmp_path / f"s{i}", "--no-report",
                    "--max-steps", "5")
        assert r.returncode == 0, r.stderr
    r = cli_run("merge", tmp_path / "all", tmp_path / "s0", tmp_path / "s1")
    assert r.returncode == 0, r.stderr
    assert sorted(e.seed for e in read_jsonl(tmp_path / "all" / "baseline.jsonl").episodes) == [0, 1]
    # A shard of another config (its step limit differs) must not be merged.
    shutil.copytree(tmp_path / "s1", tmp_path / "odd")
    manifest = json.loads((tmp_path / "odd" / "manifest.json").read_text())
    manifest["config"]["max_steps"] = 6
    (tmp_path / "odd" / "manifest.json").write_text(json.dumps(manifest))
    code, err = cli_main("merge", tmp_path / "mixed", tmp_path / "s0", tmp_path / "odd")
    assert code == 2 and "configs differ in max_steps" in err
    assert not (tmp_path / "mixed").exists() and not (tmp_path / "mixed.partial").exists()


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium for the report's browser test (scripts/setup_env.sh installs it)")
        pytest.skip("chromium not installed")
    return path


def test_report_renders_in_a_browser(resumed_run, tmp_path):
    from playwright.sync_api import sync_playwright

    out, _, _ = resumed_run
    report = out / "report.html"
    assert report.exists()
    html = report.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        headline = page.inner_text("#headline")
        width = page.evaluate("document.getElementById('gripper-hist').naturalWidth")
        rows = page.locator("#episodes tr").count()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    log = read_jsonl(out / "baseline.jsonl")
    rate = 100 * sum(e.success for e in log.episodes) / len(log.episodes)
    assert f"{rate:.1f}%" in headline
    assert width > 300  # the histogram PNG decoded
    assert rows == 1 + 4
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_report_escapes_text_from_tasks_and_configs(tmp_path):
    """Synthetic run folder (records written by hand) with markup in the instruction."""
    from vla_eval.records import EpisodeRecord, JsonlWriter
    from vla_eval.reports.html import write_report

    (tmp_path / "manifest.json").write_text(json.dumps({"config": {
        "suite": "libero_object", "task_ids": [0], "seeds": 1, "policy": "scripted", "tags": ["baseline"],
        "cameras": False, "hard_reset": True, "max_steps": None, "checkpoint": "<img src=x onerror=alert(1)>",
        "revision": None, "shard": None}, "provenance": {"command": "vla-eval <b>sweep</b>"}}))
    with JsonlWriter(tmp_path / "baseline.jsonl") as w:
        w.write(EpisodeRecord("baseline", "libero_object", 0, 0, 0, "a", "failure", 3, None, 1.0, 0.1, 0.2,
                              instruction="pick up the <script>alert(1)</script>"))
    text = write_report(tmp_path).read_text()
    assert "<script>alert" not in text and "&lt;script&gt;" in text
    assert "<img src=x" not in text and "<b>sweep" not in text


def test_report_bad_input(tmp_path, cli_run):
    r = cli_run("report", tmp_path / "missing")
    assert r.returncode == 2 and "does not exist" in r.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "manifest.json").write_text(json.dumps({"config": {
        "suite": "libero_object", "task_ids": [0], "seeds": 1, "policy": "scripted", "tags": ["baseline"]}}))
    r = cli_run("report", tmp_path / "empty")
    assert r.returncode == 2 and "holds no episode records" in r.stderr


@pytest.mark.libero
@pytest.mark.parametrize("sig,code,group,workers", [
    (signal.SIGINT, 130, False, 0),   # Ctrl-C to the parent
    (signal.SIGTERM, 143, True, 2),   # docker stop / systemd / pre-emption: the whole group, env workers too
    (signal.SIGHUP, 129, True, 0),    # the terminal closed
])
def test_signals_stop_cleanly_between_steps_and_resume_reruns_what_was_in_flight(tmp_path, sig, code, group, workers):
    """A stop signal mid-episode: a clean stop with the resume hint, no traceback, no `error`
    episode (an env worker the signal reached is no crash), and the resume ends with every
    episode a real success or failure."""
    out = tmp_path / "run"
    cmd = SWEEP + ["--seeds", "3", "--out", str(out), "--no-report", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = out / "baseline.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 30):
        time.sleep(0.1)
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"stopped ({signal.Signals(sig).name})" in err and "re-run the same command" in err
    assert "Traceback" not in err
    assert all(e.outcome != "error" for e in read_jsonl(log).episodes)
    if group:  # resume: the episodes in flight are rerun, every one a real result
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        eps = read_jsonl(log).episodes
        assert sorted(e.seed for e in eps) == [0, 1, 2]
        assert {e.outcome for e in eps} <= {"success", "failure"}, [e.error for e in eps]


def test_summary_of_a_several_suite_run_that_has_not_started(tmp_path):
    """Suites without episodes yet: the summary renders with an 'Incomplete' banner, no average."""
    from vla_eval.reports.suites import summary, write_suites_report
    from vla_eval.rundir import write_suites_file

    write_suites_file(tmp_path, ("libero_object", "libero_goal"))
    assert summary(tmp_path)["mean"] is None and not summary(tmp_path)["complete"]
    html = write_suites_report(tmp_path).read_text()
    assert "Incomplete" in html and 'data-suite="libero_goal"' in html
