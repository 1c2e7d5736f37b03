"""Success-rate statistics and the comparison with the published number."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

Z95 = 1.959964


@dataclass(frozen=True)
class Rate:
    successes: int
    n: int  # judged episodes: successes + failures (env errors are counted apart)
    errors: int = 0

    @property
    def p(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    @property
    def se(self) -> float:
        """Binomial standard error sqrt(p(1-p)/n)."""
        return math.sqrt(self.p * (1 - self.p) / self.n) if self.n else float("nan")

    @property
    def wilson95(self) -> tuple[float, float]:
        """95% Wilson score interval; sensible at p = 0 or 1, unlike p +- 1.96 SE."""
        if not self.n:
            return (float("nan"), float("nan"))
        n, p, z2 = self.n, self.p, Z95**2
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return (max(0.0, centre - half), min(1.0, centre + half))

    def __str__(self) -> str:
        if not self.n:
            return "no judged episodes"
        lo, hi = self.wilson95
        return (f"{100 * self.p:.1f}% ± {100 * self.se:.1f} (SE), 95% CI {100 * lo:.1f}–{100 * hi:.1f}% "
                f"[{self.successes}/{self.n}]")


def rate_of(outcomes: Iterable[str]) -> Rate:
    outs = list(outcomes)
    s, f = outs.count("success"), outs.count("failure")
    return Rate(s, s + f, outs.count("error"))


@dataclass(frozen=True)
class Verdict:
    level: str  # healthy | bug | inconclusive | n/a
    text: str


def verdict(rate: Rate, published_pct: float | None, what: str = "") -> Verdict:
    """Healthy within ±3 pp of the published number; more than 5 pp below: treat as a bug;
    otherwise inconclusive. Always read together with the CI, which at n = 50 is ~±9 pp."""
    if published_pct is None:
        return Verdict("n/a", f"not compared with the published number: {what}." if what else
                       "no published number to compare with.")
    if not rate.n:
        return Verdict("n/a", "no judged episodes yet.")
    ours = 100 * rate.p
    lo, hi = (100 * x for x in rate.wilson95)
    delta = ours - published_pct
    inside = lo <= published_pct <= hi
    ci = (f"the 95% CI {lo:.1f}–{hi:.1f}% {'contains' if inside else 'excludes'} the published "
          f"{published_pct:.1f}% (n = {rate.n})")
    if abs(delta) <= 3:
        return Verdict("healthy", f"healthy install: {ours:.1f}% is within ±3 pp of the published "
                                  f"{published_pct:.1f}% ({delta:+.1f} pp); {ci}.")
    if delta < -5:
        why = ("the gap is real at this n" if not inside else
               "but at this n the CI still reaches the published number: run more seeds before concluding")
        return Verdict("bug", f"{-delta:.1f} pp below the published {published_pct:.1f}%: treat as a bug and "
                              f"check the environment and the loop (image flip, prompt template, unnorm_key, "
                              f"package versions); {ci}; {why}.")
    return Verdict("inconclusive", f"inconclusive: {ours:.1f}% is {delta:+.1f} pp from the published "
                                   f"{published_pct:.1f}%; {ci}. More seeds narrow the CI.")


def published_number(policy: str, suite: str) -> float | None:
    from vla_eval.configs import load

    return load("published").get(policy, {}).get("success_rate_pct", {}).get(suite)


def comparability(cfg: dict, main_tag: str, n_tasks: int) -> list[str]:
    """Why a run cannot be held against OpenVLA's published number (empty: it can). The number
    is for the released checkpoint, all tasks, the default step limit and hard resets."""
    why = []
    if cfg["policy"] != "openvla" or cfg.get("checkpoint"):
        why.append(f"policy {cfg['policy']!r}{' with checkpoint ' + cfg['checkpoint'] if cfg.get('checkpoint') else ''}"
                   " is not the published fine-tuned checkpoint")
    if published_number("openvla", cfg["suite"]) is None:
        why.append(f"no published number for {cfg['suite']}")
    if main_tag != "baseline":
        why.append(f"run tag {main_tag!r} is not the default loop")
    if cfg.get("max_steps"):
        why.append(f"--max-steps {cfg['max_steps']} is not the suite's step limit")
    if len(cfg["task_ids"]) < n_tasks:
        why.append(f"{len(cfg['task_ids'])} of {n_tasks} tasks")
    if not cfg.get("hard_reset", True):
        why.append("soft resets (--fast-reset) are not the published protocol")
    return why


@dataclass(frozen=True)
class TaskRow:
    task_id: int
    instruction: str
    rate: Rate
    mean_steps: float
    mean_first_close: float | None


def per_task(episodes) -> list[TaskRow]:
    rows = []
    for t in sorted({e.task_id for e in episodes}):
        eps = [e for e in episodes if e.task_id == t]
        closes = [e.first_close_step for e in eps if e.first_close_step is not None]
        rows.append(TaskRow(t, eps[0].instruction, rate_of(e.outcome for e in eps),
                            sum(e.steps for e in eps) / len(eps), sum(closes) / len(closes) if closes else None))
    return rows


def auroc(scores, labels) -> float:
    """ROC-AUC: the chance a positive (label 1) scores above a negative, ties counted half
    (Mann-Whitney U over the rank sums); NaN without both classes."""
    import numpy as np

    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if not n1 or not n0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(scores, labels) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation)."""
    import numpy as np

    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    hits = y[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def paired_difference_ci(both: int, only_a: int, only_b: int, neither: int) -> tuple[float, float]:
    """95% CI of p_B - p_A for paired binary outcomes (a 2x2 table of n pairs: both succeed, only A,
    only B, neither) by Newcombe's hybrid score method (1998, method 10): the two Wilson intervals
    combined with the pairs' phi correlation. Unlike the Wald interval it stays inside [-1, 1] and
    keeps its coverage at 20-50 pairs and at rates near 0 or 1."""
    n = both + only_a + only_b + neither
    if not n:
        return (float("nan"), float("nan"))
    pa, pb = (both + only_a) / n, (both + only_b) / n
    la, ua = Rate(both + only_a, n).wilson95
    lb, ub = Rate(both + only_b, n).wilson95
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    num = both * neither - only_a * only_b
    if num > 0:  # Newcombe's continuity correction of phi
        num = max(num - n / 2, 0.0)
    phi = num / math.sqrt(margins) if margins else 0.0
    d = pb - pa
    lower = math.sqrt(max((pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2, 0.0))
    upper = math.sqrt(max((ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2, 0.0))
    return (max(-1.0, d - lower), min(1.0, d + upper))


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: a binomial test of the discordant pairs at 1/2."""
    k, m = min(only_a, only_b), only_a + only_b
    if not m:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def smallest_detectable_change(n_pairs: int, alpha: float = 0.05) -> float | None:
    """The smallest |p_B - p_A| that n pairs can show at exact-McNemar p < alpha: every discordant
    pair one way, as few as that takes (6 at alpha 0.05). None if n cannot reach it at all."""
    for k in range(1, n_pairs + 1):
        if mcnemar_exact_p(k, 0) < alpha:
            return k / n_pairs
    return None
