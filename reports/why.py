"""``vla-eval why RUN_DIR``: what the failed episodes of a run did, from the simulator's state.

    vla-eval why runs/sweep                  # failure modes per run tag, with Wilson CIs, and per task
    vla-eval why runs/sweep --episode 4:31   # one episode's mode, the step it became true, the evidence
"""
from __future__ import annotations

from pathlib import Path

from vla_eval.reports.failures import (MEANING, NOT_RECORDED, Explained, by_task, ci_text, explain_run, find_episode,
                                      shares)


def breakdown_lines(tag: str, explained: list[Explained]) -> list[str]:
    n = len(explained)
    ok = sum(x.episode.outcome == "success" for x in explained)
    rows = shares(explained)
    lines = [f"{tag}: {ok}/{n} succeeded, {n - ok} failed"]
    if not rows:
        return lines
    width = max(len(r.mode) for r in rows)
    lines.append(f"  {'mode':<{width}}  count  share of failures (95% CI)")
    lines += [f"  {r.mode:<{width}}  {r.count:>5}  {ci_text(r):<22} {MEANING.get(r.mode, '')}" for r in rows]
    tasks = by_task(explained)
    lines.append("  per task: " + "; ".join(
        f"{task}: " + ", ".join(f"{m} {c}" for m, c in counts.most_common()) for task, counts in sorted(tasks.items())))
    return lines


def episode_lines(x: Explained) -> list[str]:
    ep = x.episode
    head = f"{x.tag} task {ep.task_id} seed {ep.seed}: {ep.outcome} after {ep.steps} steps ({ep.instruction})"
    if x.mode is None:
        return [head, "  a success: no failure mode"]
    if x.failure is None:
        return [head, f"  failure mode: {NOT_RECORDED} ({MEANING[NOT_RECORDED]})"]
    return [head, f"  failure mode: {x.failure.mode} from step {x.failure.step}",
            f"  evidence: {x.failure.evidence}", f"  ({MEANING.get(x.failure.mode, '')})"]


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("why", help=VERBS["why"].help)
    p.add_argument("run_dir", type=Path, help="a sweep or drill folder")
    p.add_argument("--episode", metavar="TASK:SEED", help="one episode's evidence (TAG:TASK:SEED in a drill)")
    p.add_argument("--tag", action="append", help="only this run tag (repeatable; default: all)")
    p.set_defaults(fn=cmd_why)


def cmd_why(args) -> int:
    explained = explain_run(args.run_dir, tuple(args.tag) if args.tag else None)
    if args.episode:
        x = find_episode([e for xs in explained.values() for e in xs], args.episode)
        print("\n".join(episode_lines(x)))
        return 0
    for tag, xs in explained.items():
        print("\n".join(breakdown_lines(tag, xs)))
    if any(x.mode == NOT_RECORDED for xs in explained.values() for x in xs):
        print(f"note: '{NOT_RECORDED}': {MEANING[NOT_RECORDED]}")
    print("one episode's evidence: vla-eval why RUN_DIR --episode TASK:SEED")
    return 0
