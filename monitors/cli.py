"""``vla-eval monitor LOG.jsonl...``: classify logged runs with the predicates.

For runs tagged with a fault (no_flip, bad_prompt, bad_unnorm) and baselines, prints a
confusion matrix and exits non-zero unless every tagged run matched exactly its own
predicate (baseline: none). A mismatch means the toggle is wrong, not the predicate.
"""
from __future__ import annotations

import sys
from pathlib import Path

from monitors.predicates import PREDICATES, Thresholds
from monitors.stream import classify, evaluate

FAULT_TAGS = ("baseline",) + PREDICATES


def register(sub) -> None:
    p = sub.add_parser("monitor", help="classify JSONL logs with the silent-failure predicates")
    p.add_argument("logs", nargs="+", type=Path)
    p.add_argument("--thresholds", type=Path, help="JSON from calibration (default: the drill's thresholds)")
    p.set_defaults(fn=run)


def run(args) -> int:
    from vla_eval.errors import UsageError
    from vla_eval.records import read_jsonl

    th = Thresholds.load(args.thresholds) if args.thresholds else Thresholds()
    rows, mismatches = [], 0
    confusion = {t: {p: 0 for p in PREDICATES + ("none",)} for t in FAULT_TAGS}
    for path in args.logs:
        log = read_jsonl(path)
        if not log.episodes:
            raise UsageError(f"{path} holds no complete episode")
        for ep in log.episodes:
            verdicts, _ = evaluate(log.steps_of(ep), th)
            got = classify(verdicts)
            rows.append((path.name, ep, got, verdicts))
            if ep.run_tag in confusion:
                for g in got or {"none"}:
                    confusion[ep.run_tag][g] += 1
                want = set() if ep.run_tag == "baseline" else {ep.run_tag}
                mismatches += got != want
    print(f"{'log':24}{'tag':12}{'seed':>5}  {'outcome':9}{'verdict':14}evidence")
    for name, ep, got, verdicts in rows:
        ev = "; ".join(str(v) for v in verdicts) or "-"
        print(f"{name:24}{ep.run_tag:12}{ep.seed:>5}  {ep.outcome:9}{','.join(sorted(got)) or 'ok':14}{ev}")
    tagged = {t: c for t, c in confusion.items() if sum(c.values())}
    if tagged:
        print("\nconfusion (rows: run tag, columns: predicates matched)")
        print(f"{'':12}" + "".join(f"{p:>12}" for p in PREDICATES + ("none",)))
        for t, c in tagged.items():
            print(f"{t:12}" + "".join(f"{c[p]:>12}" for p in PREDICATES + ("none",)))
    if mismatches:
        print(f"\n{mismatches} tagged run(s) did not match exactly their own predicate: check the toggle, "
              f"not the predicate", file=sys.stderr)
        return 1
    return 0
