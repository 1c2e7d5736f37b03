"""The debugging puzzle: every hidden cause is exposed by the check its catalogue entry names."""
from __future__ import annotations


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


def test_puzzle_cli_never_shows_the_cause_until_asked(tmp_path, cli_run):
    out = tmp_path / "pz"
    r = cli_run("small", "puzzle", "--seed", "5", "--out", out)
    assert r.returncode == 0, r.stderr
    cause = pz.cause_of(5)
    shown = r.stdout + "".join(p.read_text() for p in out.glob("*.csv")) + (out / "puzzle.json").read_text()
    assert cause.story not in shown
    wrong = next(b.name for b in pz.CATALOGUE if b.name != cause.name)
    r = cli_run("small", "puzzle", out, "--guess", wrong)
    assert r.returncode == 1 and f"not {wrong}" in r.stdout
    r = cli_run("small", "puzzle", out, "--guess", cause.name)
    assert r.returncode == 0 and r.stdout.startswith("right")
    r = cli_run("small", "check", out, "--check", cause.place)
    assert r.returncode == 0 and f"== {cause.place}" in r.stdout
    r = cli_run("small", "puzzle", out, "--reveal")
    assert f"cause: {cause.name}" in r.stdout and f"exposed by the check '{cause.place}'" in r.stdout
    r = cli_run("small", "check", out, "--check", "vibes")
    assert r.returncode == 2 and "unknown check 'vibes'; valid: action_stats" in r.stderr
