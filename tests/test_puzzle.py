"""The debugging puzzle: every hidden cause is exposed by the check its catalogue entry names."""
from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from vla_eval.drills import puzzle as pz  # noqa: E402


@pytest.fixture(scope="module")
def healthy():
    cfg = pz.PuzzleConfig()
    p = pz.build_pipeline(None, cfg)
    model, rows = pz.train(p, cfg)
    return {name: pz.run_check(name, p, model, rows) for name in pz.CHECKS}


def test_the_healthy_run_passes_every_check(healthy):
    assert [n for n, r in healthy.items() if r.suspicious] == []


def test_catalogue_spans_the_seven_places():
    assert len(pz.CATALOGUE) >= 8 and {b.place for b in pz.CATALOGUE} == set(pz.CHECKS)


@pytest.mark.parametrize("bug", pz.CATALOGUE, ids=[b.name for b in pz.CATALOGUE])
def test_every_cause_is_exposed_by_its_check(bug, healthy):
    cfg = pz.PuzzleConfig()
    p = pz.build_pipeline(bug, cfg)
    model, rows = pz.train(p, cfg)
    result = pz.run_check(bug.place, p, model, rows)
    assert result.suspicious and not healthy[bug.place].suspicious
    assert result.text != healthy[bug.place].text


def test_every_cause_is_drawn_by_some_seed():
    assert {pz.cause_of(s).name for s in range(200)} == set(pz.BUGS)


def test_puzzle_cli_never_shows_the_cause_until_asked(tmp_path):
    cli = [sys.executable, "-m", "vla_eval.cli", "small"]
    out = tmp_path / "pz"
    r = subprocess.run(cli + ["puzzle", "--seed", "5", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cause = pz.cause_of(5)
    shown = r.stdout + "".join(p.read_text() for p in out.glob("*.csv")) + (out / "puzzle.json").read_text()
    assert cause.story not in shown
    wrong = next(b.name for b in pz.CATALOGUE if b.name != cause.name)
    r = subprocess.run(cli + ["puzzle", str(out), "--guess", wrong], capture_output=True, text=True)
    assert r.returncode == 1 and f"not {wrong}" in r.stdout
    r = subprocess.run(cli + ["puzzle", str(out), "--guess", cause.name], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("right")
    r = subprocess.run(cli + ["check", str(out), "--check", cause.place], capture_output=True, text=True)
    assert r.returncode == 0 and f"== {cause.place}" in r.stdout
    r = subprocess.run(cli + ["puzzle", str(out), "--reveal"], capture_output=True, text=True)
    assert f"cause: {cause.name}" in r.stdout and f"exposed by the check '{cause.place}'" in r.stdout
    r = subprocess.run(cli + ["check", str(out), "--check", "vibes"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown check 'vibes'; valid: action_stats" in r.stderr
