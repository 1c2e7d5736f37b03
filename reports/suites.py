"""Several suites in one run folder: ``<run>/<suite>/`` is each suite's own run folder (own
manifest, JSONL, lock, resume, report), ``<run>/suites.json`` lists them, and
``<run>/report.html`` puts them side by side: per-suite success with SE and Wilson CI next
to the published number, and the average over suites (as the paper reports it)."""
from __future__ import annotations

from pathlib import Path

from vla_eval.errors import require
from vla_eval.reports.stats import published_number, rate_of
from vla_eval.rundir import config_from_manifest, read_suites, read_tag


def summary(run_dir: Path, tag: str = "baseline") -> dict:
    """Per suite: rate (n, SE, Wilson CI) of ``tag``, published number; and the averages."""
    rows = []
    for suite in read_suites(run_dir):
        sub = Path(run_dir) / suite
        if not (sub / f"{tag}.jsonl").exists():
            rows.append({"suite": suite, "rate": None, "published": None, "report": None})
            continue
        cfg = config_from_manifest(sub)
        rate = rate_of(e.outcome for e in read_tag(sub, tag, cfg).episodes)
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
