"""What a run's failures did: each failed episode's mode (``vla_eval.failure_modes``) and the
breakdown per run tag and task, with Wilson intervals on each mode's share of the failures.
``vla-eval why``, the HTML report and ``compare`` read modes through here.

A mode is re-read from the recorded task state when the steps carry it (so a log written
before a classifier change gets today's reading); an episode whose steps hold no task state
(a run from before schema 3) keeps what its record says, or is "not recorded".
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vla_eval.errors import UsageError
from vla_eval.failure_modes import FAILURE_MODES, MODE_NAMES, Failure, classify
from vla_eval.records import EpisodeRecord, RunLog
from vla_eval.reports.stats import Rate

NOT_RECORDED = "not recorded"
MEANING = {m.name: m.meaning for m in FAILURE_MODES} | {
    NOT_RECORDED: "no task state in the log (written before schema 3); re-run to explain it"}


@dataclass(frozen=True)
class Explained:
    tag: str
    episode: EpisodeRecord
    failure: Failure | None  # None: a success, or nothing recorded to read a mode from

    @property
    def mode(self) -> str | None:
        if self.episode.outcome == "success":
            return None
        return self.failure.mode if self.failure else NOT_RECORDED


def explain(tag: str, log: RunLog) -> list[Explained]:
    """Every episode of a log with its failure (UnknownPredicate propagates: the caller names it)."""
    out = []
    for ep in sorted(log.episodes, key=lambda e: (e.task_id, e.seed)):
        failure = classify(ep, log.steps_of(ep))
        if failure is None and ep.failure_mode is not None and ep.outcome != "success":
            failure = Failure(ep.failure_mode, ep.failure_step or 0, ep.failure_evidence or "")
        out.append(Explained(tag, ep, failure))
    return out


@dataclass(frozen=True)
class ModeShare:
    mode: str
    count: int
    failures: int  # the denominator: failed episodes (errors included, as env_error)

    @property
    def rate(self) -> Rate:
        return Rate(self.count, self.failures)


def shares(explained: list[Explained]) -> list[ModeShare]:
    """Each mode's share of the failed episodes, in the taxonomy's order (absent modes left out)."""
    failed = [x.mode for x in explained if x.mode is not None]
    counts = Counter(failed)
    order = [m for m in (*MODE_NAMES, NOT_RECORDED) if counts[m]]
    return [ModeShare(m, counts[m], len(failed)) for m in order]


def dominant(explained: list[Explained]) -> str:
    """'missed_grasp (7/9)', or '–' with no failure."""
    rows = shares(explained)
    if not rows:
        return "–"
    best = max(rows, key=lambda r: r.count)
    return f"{best.mode} ({best.count}/{best.failures})"


def ci_text(share: ModeShare) -> str:
    lo, hi = share.rate.wilson95
    return f"{100 * share.count / share.failures:.0f}% ({100 * lo:.0f}–{100 * hi:.0f}%)"


def by_task(explained: list[Explained]) -> dict[int, Counter]:
    out: dict[int, Counter] = {}
    for x in explained:
        if x.mode is not None:
            out.setdefault(x.episode.task_id, Counter())[x.mode] += 1
    return out


def find_episode(explained: list[Explained], spec: str) -> Explained:
    """'TASK:SEED' (or 'TAG:TASK:SEED') -> that episode, or a UsageError listing the ones there are."""
    parts = spec.split(":")
    tag = parts[0] if len(parts) == 3 else None
    try:
        task, seed = (int(p) for p in parts[-2:]) if len(parts) in (2, 3) else (None, None)
    except ValueError:
        task = seed = None
    hits = [x for x in explained if (tag is None or x.tag == tag) and (x.episode.task_id, x.episode.seed) == (task, seed)]
    if len(hits) == 1:
        return hits[0]
    there = ", ".join(dict.fromkeys(f"{x.episode.task_id}:{x.episode.seed}" for x in explained))
    if len(hits) > 1:
        raise UsageError(f"--episode {spec} is in several run tags ({', '.join(x.tag for x in hits)}); "
                         f"write TAG:TASK:SEED")
    raise UsageError(f"no episode {spec!r} in this run; valid (TASK:SEED): {there}")


def explain_run(run_dir: Path, tags=None) -> dict[str, list[Explained]]:
    """Every run tag's explained episodes (the run folder checked as every reader checks it)."""
    from vla_eval.rundir import MANIFEST, config_from_manifest, read_tag

    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).is_file():
        raise UsageError(f"{run_dir} is not a vla-eval run folder (no {MANIFEST})")
    cfg = config_from_manifest(run_dir)
    chosen = tags or cfg.tags
    unknown = [t for t in chosen if t not in cfg.tags]
    if unknown:
        raise UsageError(f"run tag {unknown[0]!r} is not in this run; valid: {', '.join(cfg.tags)}")
    out = {}
    for tag in chosen:
        log = read_tag(run_dir, tag, cfg)
        if log is not None and log.episodes:
            out[tag] = explain(tag, log)
    if not out:
        raise UsageError(f"{run_dir} holds no episode records yet")
    return out


def mode_mix_lines(a: list[Explained], b: list[Explained]) -> list[str]:
    """How the mix of failure modes moved from run A to run B: each mode's share of the failures
    in both, and on the (task, seed) pairs both failed, which modes turned into which."""
    sa, sb = {r.mode: r for r in shares(a)}, {r.mode: r for r in shares(b)}
    if not sa and not sb:
        return []
    lines = ["failure modes, share of each run's failures (95% Wilson CI):"]
    for m in [m for m in (*MODE_NAMES, NOT_RECORDED) if m in sa or m in sb]:
        cell = lambda s: f"{s.count}/{s.failures} {ci_text(s)}" if s else "0"  # noqa: E731
        lines.append(f"  {m:<14} A {cell(sa.get(m)):<22} B {cell(sb.get(m))}")
    mode_a = {(x.episode.task_id, x.episode.seed): x.mode for x in a if x.mode}
    moved = Counter((mode_a[k], x.mode) for x in b if x.mode and (k := (x.episode.task_id, x.episode.seed)) in mode_a
                    and mode_a[k] != x.mode)
    if moved:
        lines.append("  same episode failed in both, mode changed: "
                     + ", ".join(f"{ma} -> {mb} ({n})" for (ma, mb), n in moved.most_common()))
    return lines
