"""The documentation: the site builds with --strict (a broken link or a page missing from the
nav fails), and the README stays a front door."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "site" / "faults" / "index.html").exists()


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    import re

    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_every_subcommand_help_ends_with_examples_that_parse():
    import shlex

    from vla_eval.cli import EXAMPLES, build_parser

    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if a.choices)  # the COMMAND subparsers
    assert set(sub.choices) == set(EXAMPLES)
    for name, p in sub.choices.items():
        assert p.format_help().rstrip().endswith(EXAMPLES[name][-1]), name
        for example in EXAMPLES[name]:
            argv = shlex.split(example)
            assert argv[0] == "vla-eval"
            args = build_parser().parse_args(argv[1:])  # a typo'd flag or value would exit here
            assert args.command == argv[1]
