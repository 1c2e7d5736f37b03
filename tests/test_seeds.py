"""Seed sets: what format_ids writes, seed_set reads back; the demo hands the drill the seeds it was given."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vla_eval.argtypes import format_ids, seed_set


@given(st.sets(st.integers(0, 49), min_size=1))
def test_format_ids_reads_back_as_the_same_seeds(ids):
    assert seed_set(format_ids(ids)) == tuple(sorted(ids))


def test_demo_runs_the_drill_on_the_seeds_it_was_given(monkeypatch, tmp_path):
    from vla_eval import cli

    seen = []
    monkeypatch.setattr(cli, "cmd_drill", lambda args: seen.append(args.seeds) or 0)
    assert cli.main(["demo", "--out", str(tmp_path / "d")]) == 0  # the default: one seed, init state 0
    assert cli.main(["demo", "--seeds", "7", "--out", str(tmp_path / "e")]) == 0
    assert cli.main(["demo", "--seeds", "12-12", "--out", str(tmp_path / "f")]) == 0
    assert [tuple(s) for s in seen] == [(0,), tuple(range(7)), (12,)]
