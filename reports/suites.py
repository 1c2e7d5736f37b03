"""Several suites in one run folder: ``<run>/<suite>/`` is each suite's own run folder (own
manifest, JSONL, lock, resume, report), ``<run>/suites.json`` lists them, and
``<run>/report.html`` puts them side by side: per-suite success with SE and Wilson CI next
to the published number, and the average over suites (as the paper reports it)."""
from __future__ import annotations

import json
from pathlib import Path

from vla_eval.errors import UsageError, bad_choice, require
from vla_eval.records import read_jsonl
from vla_eval.reports.stats import published_number, rate_of
from vla_eval.sims.protocol import SUITES
from vla_eval.sweep import config_from_manifest

SUITES_FILE = "suites.json"
ALL4 = ("libero_spatial", "libero_object", "libero_goal", "libero_10")  # the four suites OpenVLA reports


def parse_suites(text: str) -> tuple[str, ...]:
    """``libero_object`` | ``libero_spatial,libero_goal`` | ``all4``."""
    names = ALL4 if text == "all4" else tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in SUITES]
    if bad:
        raise bad_choice("suite", bad[0], [*SUITES, "all4 (several: comma-separated)"])
    if not names or len(set(names)) != len(names):
        raise UsageError(f"--suite {text!r}: give one suite, a comma-separated list without repeats, or all4")
    return names


def write_suites_file(run_dir: Path, suites: tuple[str, ...]) -> None:
    path = Path(run_dir) / SUITES_FILE
    if path.exists():
        have = json.loads(path.read_text()).get("suites")
        if have != list(suites):
            raise UsageError(f"{run_dir} holds a run over suites {have}; this command asks for {list(suites)}. "
                             f"Use another --out folder.")
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"suites": list(suites)}, indent=1) + "\n")
    tmp.replace(path)


def is_multi_suite(run_dir: Path) -> bool:
    return (Path(run_dir) / SUITES_FILE).is_file()


def summary(run_dir: Path, tag: str = "baseline") -> dict:
    """Per suite: rate (n, SE, Wilson CI) of ``tag``, published number; and the averages."""
    suites = json.loads((Path(run_dir) / SUITES_FILE).read_text())["suites"]
    rows = []
    for suite in suites:
        sub = Path(run_dir) / suite
        path = sub / f"{tag}.jsonl"
        if not path.exists():
            rows.append({"suite": suite, "rate": None, "published": None, "report": None})
            continue
        cfg = config_from_manifest(sub)
        rate = rate_of(e.outcome for e in read_jsonl(path).episodes)
        rows.append({"suite": suite, "rate": rate, "published": published_number(cfg.policy, suite),
                     "report": f"{suite}/report.html"})
    done = [r for r in rows if r["rate"] is not None and r["rate"].n]
    mean = sum(r["rate"].p for r in done) / len(done) if done else None
    pub = [r["published"] for r in done]
    return {"suites": rows, "mean": mean, "published_mean": sum(pub) / len(pub) if pub and None not in pub else None,
            "complete": len(done) == len(rows)}


def write_suites_report(run_dir: Path) -> Path:
    jinja2 = require("jinja2", "report", "the HTML report")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    ctx = summary(run_dir)
    html = env.get_template("suites.html.j2").render(run=str(run_dir), **ctx)
    out = Path(run_dir) / "report.html"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
