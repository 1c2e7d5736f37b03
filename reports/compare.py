"""``vla-eval compare RUN_A RUN_B``: is B really better than A?

Per task and overall, the success-rate difference B - A with a 95% CI and an exact test:
* paired by (task, seed) where both runs hold that episode (the same init state): the
  difference of paired proportions with Newcombe's paired score CI, and McNemar's exact test (a
  binomial test on the discordant pairs);
* otherwise (no common seeds) unpaired: Newcombe's hybrid-score CI from the two Wilson
  intervals, and Fisher's exact test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from vla_eval.errors import UsageError, require
from vla_eval.records import EpisodeRecord
from vla_eval.reports.stats import Rate, mcnemar_exact_p, paired_difference_ci, rate_of


@dataclass(frozen=True)
class Difference:
    scope: str  # "overall" or "task N"
    a: Rate
    b: Rate
    paired: bool
    n_pairs: int
    diff: float  # B - A, as a fraction
    ci: tuple[float, float]
    p_value: float
    test: str

    def line(self) -> str:
        lo, hi = self.ci
        return (f"{self.scope:10} A {self.a.successes}/{self.a.n}  B {self.b.successes}/{self.b.n}  "
                f"B-A {100 * self.diff:+.1f} pp  95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}]  "
                f"p = {self.p_value:.3g} ({self.test}{', ' + str(self.n_pairs) + ' pairs' if self.paired else ''})")


def _episodes(run: Path, tag: str, cfg) -> dict[tuple[int, int], EpisodeRecord]:
    from vla_eval.rundir import read_tag

    log = read_tag(run, tag, cfg)  # checked against the run's config, read from its manifest once
    if log is None:
        raise UsageError(f"{run} has no {tag}.jsonl (run tags are files in the run folder)")
    return by_episode(log.episodes)


def by_episode(episodes) -> dict[tuple[int, int], EpisodeRecord]:
    """(task, seed) -> the judged episode (env errors say nothing about the policy)."""
    return {(e.task_id, e.seed): e for e in episodes if e.outcome != "error"}


def compare_episodes(a: dict, b: dict, scope: str) -> Difference:
    ra, rb = rate_of(e.outcome for e in a.values()), rate_of(e.outcome for e in b.values())
    if not ra.n or not rb.n:
        raise UsageError(f"{scope}: a run has no judged episodes to compare")
    common = sorted(set(a) & set(b))
    if common:
        n = len(common)
        wins_b = sum(b[k].success and not a[k].success for k in common)  # discordant pairs
        wins_a = sum(a[k].success and not b[k].success for k in common)
        both = sum(a[k].success and b[k].success for k in common)
        d = (wins_b - wins_a) / n
        ci = paired_difference_ci(both, wins_a, wins_b, n - both - wins_a - wins_b)
        return Difference(scope, ra, rb, True, n, d, ci, mcnemar_exact_p(wins_a, wins_b), "McNemar exact")
    stats = require("scipy.stats", "report", "vla-eval compare")  # Fisher's test, for unpaired runs only
    (la, ua), (lb, ub) = ra.wilson95, rb.wilson95
    d = rb.p - ra.p
    ci = (d - math.sqrt((rb.p - lb) ** 2 + (ua - ra.p) ** 2), d + math.sqrt((ub - rb.p) ** 2 + (ra.p - la) ** 2))
    _, p = stats.fisher_exact([[rb.successes, rb.n - rb.successes], [ra.successes, ra.n - ra.successes]])
    return Difference(scope, ra, rb, False, 0, d, ci, float(p), "Fisher exact")


def compare_runs(run_a: Path, run_b: Path, tag: str = "baseline", tag_b: str | None = None) -> list[Difference]:
    from vla_eval.rundir import config_from_manifest

    cfg_a, cfg_b = config_from_manifest(run_a), config_from_manifest(run_b)
    if cfg_a.suite != cfg_b.suite:  # task 3 of one suite is not task 3 of another: nothing pairs or compares
        raise UsageError(f"{run_a} is a {cfg_a.suite} run and {run_b} a {cfg_b.suite} run; compare runs of one suite")
    a, b = _episodes(run_a, tag, cfg_a), _episodes(run_b, tag_b or tag, cfg_b)
    for run, eps, t in ((run_a, a, tag), (run_b, b, tag_b or tag)):
        if not eps:
            raise UsageError(f"{run} has no judged {t} episode yet (only env errors, or none committed)")
    out = [compare_episodes(a, b, "overall")]
    for t in sorted({k[0] for k in a} & {k[0] for k in b}):
        out.append(compare_episodes({k: v for k, v in a.items() if k[0] == t},
                                    {k: v for k, v in b.items() if k[0] == t}, f"task {t}"))
    return out


def render_html(rows: list[Difference], run_a: Path, run_b: Path, tag: str) -> str:
    jinja2 = require("jinja2", "report", "the comparison page")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")), autoescape=True)
    return env.get_template("compare.html.j2").render(
        run_a=str(run_a), run_b=str(run_b), tag=tag,
        rows=[{"scope": r.scope, "a": f"{r.a.successes}/{r.a.n}", "b": f"{r.b.successes}/{r.b.n}",
               "diff": f"{100 * r.diff:+.1f}", "ci": f"[{100 * r.ci[0]:+.1f}, {100 * r.ci[1]:+.1f}]",
               "p": f"{r.p_value:.3g}", "test": r.test + (f" ({r.n_pairs} pairs)" if r.paired else ""),
               "significant": r.p_value < 0.05} for r in rows])


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("compare", help=VERBS["compare"].help)
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--tag", default="baseline", help="run tag to compare (default baseline)")
    p.add_argument("--tag-b", metavar="TAG", help="B's run tag, when it differs (e.g. a fault against A's baseline)")
    p.add_argument("--html", type=Path, metavar="OUT.html", help="also write the comparison as a page")
    p.set_defaults(fn=_cmd)


def _cmd(args) -> int:
    if args.html is not None and args.html.exists():
        raise UsageError(f"--html {args.html} exists; choose a new file")
    rows = compare_runs(args.run_a, args.run_b, args.tag, args.tag_b)
    print(f"B = {args.run_b} ({args.tag_b or args.tag})  vs  A = {args.run_a} ({args.tag})")
    for r in rows:
        print(r.line())
    from vla_eval.failure_modes import UnknownPredicate
    from vla_eval.reports.failures import explain_run, mode_mix_lines

    try:
        mix = mode_mix_lines(explain_run(args.run_a, (args.tag,))[args.tag],
                             explain_run(args.run_b, (args.tag_b or args.tag,))[args.tag_b or args.tag])
    except UnknownPredicate as e:
        mix = [f"failure modes: {e}"]
    print("\n".join(mix))
    if args.html is not None:
        args.html.write_text(render_html(rows, args.run_a, args.run_b, args.tag), encoding="utf-8")
        print(f"page: {args.html}")
    return 0
