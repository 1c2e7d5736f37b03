"""``vla-eval monitor LOG.jsonl...``: classify logged runs with the predicates.

For runs tagged with a fault (no_flip, bad_prompt, bad_unnorm) and baselines, prints a
confusion matrix and exits non-zero unless every tagged run matched exactly its own
predicate (baseline: none). A mismatch means the toggle is wrong, not the predicate.
"""
from __future__ import annotations

import sys
from pathlib import Path

from vla_eval.monitors.predicates import PREDICATES, Thresholds
from vla_eval.monitors.stream import classify, evaluate

FAULT_TAGS = ("baseline",) + PREDICATES


def _alpha(text: str) -> float:
    from vla_eval.argtypes import float_between

    return float_between(0.0, 1.0)(text)  # a false-alarm rate strictly between 0 and 1


def register(sub) -> None:
    p = sub.add_parser("monitor", help="classify JSONL logs with the silent-failure predicates")
    p.add_argument("logs", nargs="+", type=Path)
    p.add_argument("--thresholds", type=Path, help="JSON from calibration (default: the drill's thresholds)")
    p.add_argument("--calibrate", type=Path, metavar="OUT.json",
                   help="fit thresholds on the successful baseline runs of LOGS (half fit, half held out), "
                        "save them here, then classify with them")
    p.add_argument("--alpha", type=_alpha, default=0.05, help="target false-alarm rate for --calibrate (0 < a < 1)")
    p.add_argument("--force", action="store_true", help="let --calibrate replace an existing file")
    p.set_defaults(fn=run)


def _calibrate(logs, out: Path, alpha: float) -> Thresholds:
    from vla_eval.monitors.calibrate import calibrate, detection_latency, false_alarm_rate
    from vla_eval.errors import UsageError

    from vla_eval.monitors.calibrate import min_runs

    base = [log.steps_of(e) for log in logs for e in log.episodes if e.run_tag == "baseline" and e.success]
    need = 2 * min_runs(alpha)  # half to fit, half to measure the false-alarm rate
    if len(base) < need:
        raise UsageError(f"--calibrate at --alpha {alpha} needs at least {need} successful baseline runs in the logs "
                         f"(half fit, half held out), found {len(base)}: add baseline seeds or raise --alpha")
    fit, held = base[: (len(base) + 1) // 2], base[(len(base) + 1) // 2:]
    th = calibrate(fit, alpha)
    th.save(out)
    print(f"calibrated on {len(fit)} baseline runs (alpha {alpha}); saved {out}")
    fa = false_alarm_rate(held, th) if held else float("nan")
    print(f"false-alarm rate on {len(held)} held-out baseline runs: {100 * fa:.0f}%")
    if fa > alpha:
        print(f"WARNING: the held-out false-alarm rate {100 * fa:.0f}% exceeds alpha = {100 * alpha:.0f}%: these "
              f"thresholds will alarm on healthy runs more often than asked. Calibrate on more baseline runs.",
              file=sys.stderr)
    for log in logs:
        for e in log.episodes:
            if e.run_tag in PREDICATES:
                lat = detection_latency(log.steps_of(e), th, e.run_tag)
                print(f"detection latency {e.run_tag} seed {e.seed}: "
                      + ("never fired" if lat is None else f"{lat + 1} steps"))
    return th


def predicate_table(rows) -> list[dict]:
    """Per predicate, over tagged runs: true-positive rate on its own fault, false-alarm rate on
    the baseline and on the other faults, and the median step of its first alert on its fault."""
    out = []
    for pred in PREDICATES:
        own = [(got, vs) for _, ep, got, vs in rows if ep.run_tag == pred]
        base = [got for _, ep, got, _ in rows if ep.run_tag == "baseline"]
        other = [got for _, ep, got, _ in rows if ep.run_tag in PREDICATES and ep.run_tag != pred]
        steps = [v.step for got, vs in own for v in vs if v.predicate == pred and v.step is not None]
        rate = lambda xs: (sum(pred in g for g in xs) / len(xs)) if xs else float("nan")  # noqa: E731
        out.append({"predicate": pred, "tpr": rate([g for g, _ in own]), "n_own": len(own),
                    "fa_baseline": rate(base), "n_baseline": len(base), "fa_other": rate(other),
                    "n_other": len(other), "latency": float(sorted(steps)[len(steps) // 2]) + 1 if steps else None})
    return out


def print_predicate_table(rows) -> None:
    table = [r for r in predicate_table(rows) if r["n_own"] or r["n_baseline"]]
    if not table:
        return
    pct = lambda x: "-" if x != x else f"{100 * x:.0f}%"  # noqa: E731
    print(f"\n{'predicate':12}{'TPR (own)':>12}{'FA baseline':>14}{'FA other':>11}{'latency':>9}")
    for r in table:
        lat = "-" if r["latency"] is None else f"{r['latency']:.0f}"
        print(f"{r['predicate']:12}{pct(r['tpr']) + ' /' + str(r['n_own']):>12}"
              f"{pct(r['fa_baseline']) + ' /' + str(r['n_baseline']):>14}{pct(r['fa_other']) + ' /' + str(r['n_other']):>11}"
              f"{lat:>9}")


def run(args) -> int:
    from vla_eval.errors import UsageError
    from vla_eval.records import read_jsonl

    if args.calibrate is not None:  # checked before anything is read or written
        if any(args.calibrate.resolve() == p.resolve() for p in args.logs):
            raise UsageError(f"--calibrate {args.calibrate} is one of the input logs; choose another file")
        if args.calibrate.is_dir() or (args.calibrate.exists() and not args.force):
            raise UsageError(f"--calibrate {args.calibrate} exists; choose a new file or pass --force to replace it")
        if args.thresholds:
            raise UsageError("--calibrate fits new thresholds; it cannot be combined with --thresholds")
    logs = [read_jsonl(p) for p in args.logs]
    th = Thresholds.load(args.thresholds) if args.thresholds else Thresholds()
    if args.calibrate:
        th = _calibrate(logs, args.calibrate, args.alpha)
    rows, mismatches = [], 0
    confusion = {t: {p: 0 for p in PREDICATES + ("none",)} for t in FAULT_TAGS}
    for path, log in zip(args.logs, logs):
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
    print_predicate_table(rows)
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
