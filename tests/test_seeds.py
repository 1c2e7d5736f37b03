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


def test_every_seed_flag_reads_one_grammar_and_says_whether_a_lone_number_is_a_count(tmp_path):
    """Ids and ranges mean the same on every seed flag; a lone number is a count only where the
    flag takes a count (its help says so), and one seed id elsewhere."""
    import argparse

    import pytest

    from vla_eval.argtypes import seeds
    from vla_eval.cli import build_parser

    count, ids = seeds("--seeds", count=True), seeds("--calib-seeds", count=False)
    for text, expected in (("3,4", (3, 4)), ("10-12", (10, 11, 12)), ("0-1,7", (0, 1, 7)), ("7-7", (7,))):
        assert count(text) == ids(text) == expected
    assert count("3") == (0, 1, 2) and ids("3") == (3,) and ids("0") == (0,)
    for bad in ("", "a", "3-1", "1,1", "-2", "1.5"):
        for parse in (count, ids):
            with pytest.raises(argparse.ArgumentTypeError):
                parse(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="0-0"):
        count("0")  # a count of 0 names the way to write seed 0
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {(name, a.option_strings[0]): a.help for name, p in sub.choices.items() for a in p._actions
             if a.option_strings and "seeds" in a.option_strings[0]}
    assert helps, "no seed flags found"
    for (name, flag), text in helps.items():  # each seed flag says which kind of lone number it reads
        assert "count" in text, (name, flag, text)
