"""The report's per-task tables, banners, comparability and videos; `vla-eval compare` on runs
with known answers; the notebook API. Run folders here are written by the real writer."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_episode, make_run, make_step
from vla_eval.records import JsonlWriter
from vla_eval.reports.compare import compare_runs
from vla_eval.reports.html import context, write_report
from vla_eval.reports.stats import comparability


def test_paired_comparison_has_the_known_mcnemar_answer(tmp_path):
    a = make_run(tmp_path / "a", {(0, s): "failure" for s in range(10)})
    b = make_run(tmp_path / "b", {(0, s): "success" for s in range(10)})
    overall = compare_runs(a, b)[0]
    assert overall.paired and overall.n_pairs == 10 and overall.diff == 1.0
    assert overall.p_value == pytest.approx(2 * 0.5 ** 10)  # all 10 discordant pairs favour B
    assert overall.test == "McNemar exact"


def test_unpaired_comparison_uses_fisher(tmp_path):
    a = make_run(tmp_path / "a", {(0, s): "success" if s < 5 else "failure" for s in range(10)})
    b = make_run(tmp_path / "b", {(1, s): "success" if s < 5 else "failure" for s in range(10)})
    overall = compare_runs(a, b)[0]
    assert not overall.paired and overall.diff == 0.0 and overall.p_value == pytest.approx(1.0)
    lo, hi = overall.ci
    assert lo < 0 < hi


def test_identical_runs_differ_by_nothing_and_the_cli_prints_it(tmp_path, cli_run):
    outcomes = {(t, s): "success" if (t + s) % 3 else "failure" for t in (0, 1) for s in range(6)}
    a, b = make_run(tmp_path / "a", outcomes), make_run(tmp_path / "b", outcomes)
    r = cli_run("compare", a, b, "--html", tmp_path / "cmp.html")
    assert r.returncode == 0, r.stderr
    assert "overall" in r.stdout and "B-A +0.0 pp" in r.stdout and "p = 1 (McNemar exact, 12 pairs)" in r.stdout
    assert "task 1" in r.stdout and (tmp_path / "cmp.html").read_text().count("<tr") == 4


def test_report_has_per_task_tables_for_every_tag_and_an_incomplete_banner(tmp_path):
    run = make_run(tmp_path / "d", {(t, s): "success" if s == 0 else "failure" for t in (0, 1) for s in range(2)},
                   tags=("baseline", "no_flip"), policy="tiny")
    (run / "no_flip.jsonl").write_text("")  # the fault tag has not started
    ctx = context(run)
    assert [t["tag"] for t in ctx["tag_tables"]] == ["baseline"]
    assert [r["pct"] for r in ctx["tag_tables"][0]["rows"]] == ["50.0%", "50.0%"]
    assert any(b["kind"] == "incomplete" and "no_flip: 0 of 4" in b["text"] for b in ctx["banners"])
    assert ctx["verdict"]["level"] == "n/a" and "not the published fine-tuned checkpoint" in ctx["verdict"]["text"]


def test_verdict_only_for_comparable_runs():
    full = dict(policy="openvla", checkpoint=None, suite="libero_object", task_ids=list(range(10)), max_steps=None,
                hard_reset=True)
    assert comparability(full, "baseline", 10) == []
    assert "--max-steps 30" in " ".join(comparability({**full, "max_steps": 30}, "baseline", 10))
    assert "1 of 10 tasks" in comparability({**full, "task_ids": [0]}, "baseline", 10)
    assert comparability(full, "no_flip", 10) and comparability({**full, "hard_reset": False}, "baseline", 10)


def test_videos_are_embedded_within_the_budget(tmp_path):
    pytest.importorskip("av")
    from vla_eval.videos import VideoKeeper, small_upright

    run = make_run(tmp_path / "v", {(0, 0): "failure", (0, 1): "success", (0, 2): "success"})
    keeper = VideoKeeper(run / "videos", "default", "baseline")
    frames = [small_upright(np.full((256, 256, 3), i * 8 % 255, np.uint8)) for i in range(40)]
    kept = [keeper.finish(0, s, o, frames) for s, o in ((0, "failure"), (1, "success"), (2, "success"))]
    assert kept[0] is not None and kept[1] is not None and kept[2] is None  # failures + one success
    ctx = context(run)
    assert [v["name"] for v in ctx["videos"]] == ["baseline-t0-s0.webm", "baseline-t0-s1.webm"]
    html = write_report(run).read_text()
    assert html.count("<video") == 2 and "data:video/webm;base64," in html


def test_load_run_gives_committed_rows_only(tmp_path):
    pd = pytest.importorskip("pandas")
    from vla_eval import load_run

    run = make_run(tmp_path / "r", {(0, 0): "success", (0, 1): "failure"})
    with JsonlWriter(run / "baseline.jsonl") as w:  # a killed attempt: steps without an episode line
        w.write(make_step("killed", 0, seed=1))
    episodes, steps = load_run(run)
    assert isinstance(episodes, pd.DataFrame) and sorted(episodes["seed"]) == [0, 1]
    assert len(steps) == 2 and "killed" not in set(steps["attempt"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["tags"] == ["baseline"]


def test_report_video_plays_in_chromium(tmp_path):
    """The embedded WebM loads in headless Chromium with a duration; tables and histograms render."""
    pytest.importorskip("av")
    playwright = pytest.importorskip("playwright.sync_api")
    import shutil

    from vla_eval.videos import VideoKeeper, small_upright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (make test installs it)")
    run = make_run(tmp_path / "v", {(0, 0): "failure", (1, 0): "success"})
    keeper = VideoKeeper(run / "videos", "default", "baseline")
    frames = [small_upright(np.full((256, 256, 3), (i * 6) % 255, np.uint8)) for i in range(60)]  # 3 s at 20 fps
    keeper.finish(0, 0, "failure", frames)
    report = write_report(run)
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        page.wait_for_function("document.querySelector('video').readyState >= 1", timeout=20_000)
        duration = page.evaluate("document.querySelector('video').duration")
        tables = page.locator("table.per-task").count()
        hist_width = page.evaluate("document.getElementById('gripper-hist').naturalWidth")
        browser.close()
    assert 2.5 < duration < 3.5, duration
    assert tables == 1 and hist_width > 300 and errors == []


def test_report_diagnoses_each_run_tag_against_a_library_of_the_same_checkpoint(tmp_path):
    """The report's diagnosis section is ``vla-eval diagnose`` itself, with the library of the run's
    checkpoint (here an exported library placed in the run folder); another checkpoint's is named."""
    import numpy as np

    from vla_eval.diagnose import FEATURES, LIBRARY_VERSION, episode_features
    from vla_eval.rundir import read_tag

    run = make_run(tmp_path / "r", {(0, s): "success" for s in range(4)}, steps=20)
    log = read_tag(run, "baseline")
    healthy = np.stack([episode_features(log.steps_of(e)) for e in log.episodes])
    flipped = healthy.copy()
    flipped[:, FEATURES.index("grip_closed")] = 0.0
    library = {"version": LIBRARY_VERSION, "suite": "libero_object", "checkpoint": "scripted", "seeds": [10, 11],
               "features": list(FEATURES), "rows": {"baseline": healthy.tolist(), "gripper_no_invert": flipped.tolist()}}
    (run / "library.json").write_text(json.dumps(library))
    ctx = context(run)
    (row,) = ctx["diagnosis"]["rows"]
    assert row["tag"] == "baseline" and row["verdict"] == "no known fault" and "gripper_no_invert" in row["next"]
    assert 'id="diagnosis"' in write_report(run).read_text()
    (run / "library.json").write_text(json.dumps({**library, "checkpoint": "another"}))
    ctx = context(run)
    assert ctx["diagnosis"] is None and "built on another checkpoint" in ctx["diagnosis_note"]


def test_drill_report_puts_each_fault_next_to_the_baseline_on_the_same_seeds(tmp_path, cli_run):
    run = make_run(tmp_path / "d", {(0, s): "success" for s in range(6)}, tags=("baseline", "no_flip"))
    (run / "no_flip.jsonl").unlink()
    with JsonlWriter(run / "no_flip.jsonl") as w:  # the fault's own outcomes: every episode failed
        for s in range(6):
            w.write(make_episode(f"late{s}", tag="no_flip", seed=s, outcome="failure"))
    rows = {r["tag"]: r for r in context(run)["drill"]["rows"]}
    assert rows["baseline"]["vs_baseline"] == "–"
    assert rows["no_flip"]["vs_baseline"] == "-100 pp (p 0.031)"  # 6 discordant pairs: 2 * 0.5**6
    r = cli_run("compare", run, run, "--tag-b", "no_flip")
    assert r.returncode == 0 and "B-A -100.0 pp" in r.stdout, r.stderr
