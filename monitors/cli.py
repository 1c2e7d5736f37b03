"""``vla-eval monitor LOG.jsonl...``: classify logged runs with the predicates.

For runs tagged with a fault (no_flip, bad_prompt, bad_unnorm) and baselines, prints a
confusion matrix and exits non-zero unless every tagged run matched exactly its own
predicate (baseline: none). A mismatch means the toggle is wrong, not the predicate.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from vla_eval.argtypes import format_ids, seeds
from vla_eval.monitors.predicates import Thresholds
from vla_eval.monitors.scoring import FAULT_TAGS


def _alpha(text: str) -> float:
    from vla_eval.argtypes import float_between

    return float_between(0.0, 1.0)(text)  # a false-alarm rate strictly between 0 and 1


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("monitor", help=VERBS["monitor"].help)
    p.add_argument("logs", nargs="+", type=Path)
    p.add_argument("--thresholds", type=Path, help="JSON from calibration (default: the thresholds shipped for the policy that wrote the logs, read from the manifest beside them; else the generic defaults)")
    p.add_argument("--calibrate", type=Path, metavar="OUT.json",
                   help="fit thresholds on the successful baseline runs of LOGS (half fit, half held out), "
                        "save them here, then classify with them")
    p.add_argument("--alpha", type=_alpha, default=0.05, help="target false-alarm rate for --calibrate (0 < a < 1)")
    p.add_argument("--calib-seeds", type=seeds("--calib-seeds", count=False), metavar="S",
                   help="with --calibrate: fit on the baseline runs of these seed ids (7, 3,4 or 10-29: a lone "
                        "number is one seed, not a count; successes and "
                        "failures), then judge only the runs of the other seeds (held out), every tag")
    p.add_argument("--force", action="store_true", help="let --calibrate replace an existing file")
    p.set_defaults(fn=run)


def _calibrate(logs, out: Path, alpha: float, calib_seeds: tuple[int, ...] | None) -> Thresholds:
    """Fit on calibration runs, report the false-alarm rate on held-out baseline runs.
    Calibration runs: the baseline runs of ``calib_seeds`` (any outcome); without it, the
    first half of the successful baseline runs (the second half is held out)."""
    from vla_eval.errors import UsageError
    from vla_eval.monitors.calibrate import calibrate, false_alarm_rate, min_runs

    if calib_seeds is not None:
        base = [(e, log) for log in logs for e in log.episodes if e.run_tag == "baseline"]
        fit = [log.steps_of(e) for e, log in base if e.seed in calib_seeds]
        held = [log.steps_of(e) for e, log in base if e.seed not in calib_seeds]
        no_flip = [log.steps_of(e) for log in logs for e in log.episodes if e.run_tag == "no_flip"
                   and e.seed in calib_seeds]
        where = f"seeds {format_ids(calib_seeds)}"
        if len(fit) < min_runs(alpha):
            raise UsageError(f"--calibrate at --alpha {alpha} needs at least {min_runs(alpha)} baseline runs of the "
                             f"calibration seeds, found {len(fit)}: add seeds or raise --alpha")
    else:
        base = [log.steps_of(e) for log in logs for e in log.episodes if e.run_tag == "baseline" and e.success]
        need = 2 * min_runs(alpha)  # half to fit, half to measure the false-alarm rate
        if len(base) < need:
            raise UsageError(f"--calibrate at --alpha {alpha} needs at least {need} successful baseline runs in the "
                             f"logs (half fit, half held out), found {len(base)}: add baseline seeds or raise --alpha")
        fit, held = base[: (len(base) + 1) // 2], base[(len(base) + 1) // 2:]
        where, no_flip = "the first half of the successful baseline runs", []
    cal = calibrate(fit, alpha, no_flip=no_flip)
    th = cal.thresholds
    th.save(out)
    print(f"calibrated on {len(fit)} baseline runs ({where}; alpha {alpha} for all predicates together); saved {out}")
    print(cal.note)
    fa = false_alarm_rate(held, th) if held else float("nan")
    print(f"false-alarm rate (any predicate) on {len(held)} held-out baseline runs: {100 * fa:.0f}%")
    if fa > alpha:
        print(f"WARNING: the held-out false-alarm rate {100 * fa:.0f}% exceeds alpha = {100 * alpha:.0f}%: these "
              f"thresholds will alarm on healthy runs more often than asked. Calibrate on more baseline runs.",
              file=sys.stderr)
    return th


def print_predicate_table(rows) -> None:
    from vla_eval.monitors.scoring import predicate_table

    table = [r for r in predicate_table(rows) if r["n_own"] or r["n_baseline"]]
    if not table:
        return
    pct = lambda x: "-" if x != x else f"{100 * x:.0f}%"  # noqa: E731
    print(f"\n{'predicate':12}{'TPR (own)':>12}{'exactly own':>13}{'FA baseline':>14}{'FA other':>11}{'latency':>9}")
    for r in table:
        lat = "-" if r["latency"] is None else f"{r['latency']:.0f}"
        print(f"{r['predicate']:12}{pct(r['tpr']) + ' /' + str(r['n_own']):>12}{pct(r['exact']):>13}"
              f"{pct(r['fa_baseline']) + ' /' + str(r['n_baseline']):>14}{pct(r['fa_other']) + ' /' + str(r['n_other']):>11}"
              f"{lat:>9}")


def _shipped_thresholds_of(paths):
    """The thresholds shipped for the policy that wrote the logs (read from the manifest beside
    each log), or None: the generic defaults. Logs of runs calibrated differently are refused."""
    from vla_eval.configs import shipped_thresholds
    from vla_eval.errors import UsageError
    from vla_eval.rundir import load_manifest

    found = {}
    for p in paths:
        try:
            cfg = load_manifest(p.parent)["config"]
        except UsageError:  # a bare log or a damaged manifest: no policy to look up
            found[None] = p
            continue
        found[shipped_thresholds(str(cfg.get("policy")), str(cfg.get("suite")), cfg.get("checkpoint"))] = p
    if len(found) > 1:
        raise UsageError("the logs come from runs with different shipped thresholds (" + ", ".join(
            f"{log}: {th or 'none'}" for th, log in found.items()) + "); judge them apart or pass --thresholds FILE")
    return next(iter(found), None)


def run(args) -> int:
    from vla_eval.errors import UsageError

    seen: dict[str, Path] = {}  # real path -> as given (realpath never raises: a link loop is refused when read)
    for p in args.logs:  # the same log twice would count every run twice
        key = os.path.realpath(p)
        if key in seen:
            raise UsageError(f"{p} is given twice (also as {seen[key]}); each log is read once")
        seen[key] = p

    if args.calibrate is not None:  # checked before anything is read or written
        if os.path.realpath(args.calibrate) in seen:
            raise UsageError(f"--calibrate {args.calibrate} is one of the input logs; choose another file")
        if args.calibrate.is_dir() or (args.calibrate.exists() and not args.force):
            raise UsageError(f"--calibrate {args.calibrate} exists; choose a new file or pass --force to replace it")
        if args.thresholds:
            raise UsageError("--calibrate fits new thresholds; it cannot be combined with --thresholds")
    from vla_eval.rundir import read_log

    logs = [read_log(p) for p in args.logs]
    th_path = args.thresholds or (None if args.calibrate else _shipped_thresholds_of(args.logs))
    th = Thresholds.load(th_path) if th_path else Thresholds()
    if args.calib_seeds is not None and not args.calibrate:
        raise UsageError("--calib-seeds chooses the calibration runs of --calibrate; give --calibrate OUT.json too")
    if args.calibrate:
        th = _calibrate(logs, args.calibrate, args.alpha, args.calib_seeds)
    held_out = (lambda ep: ep.seed not in args.calib_seeds) if args.calib_seeds is not None else (lambda ep: True)
    from vla_eval.monitors.scoring import COLUMNS, confusion, healthy_false_alarms, score, unexplained_failures

    rows, names = [], []
    for path, log in zip(args.logs, logs):
        if not log.episodes:
            raise UsageError(f"{path} holds no complete episode")
        eps = [(ep, log.steps_of(ep)) for ep in filter(held_out, log.episodes)]
        rows += score(eps, th)
        names += [path.name] * len(eps)
    if args.calib_seeds is not None:
        print(f"\nheld-out runs only (seeds not in {format_ids(args.calib_seeds)}):")
    elif not args.calibrate:  # say which thresholds judged the runs: the defaults are not a policy's calibration
        print(f"thresholds: {th_path or 'the generic defaults (--thresholds FILE for a calibrated set)'}")
    print(f"{'log':24}{'tag':12}{'seed':>5}  {'outcome':9}{'verdict':14}evidence")
    for name, r in zip(names, rows):
        ev = "; ".join(str(v) for v in r.verdicts) or "-"
        print(f"{name:24}{r.tag:12}{r.seed:>5}  {r.outcome:9}{','.join(sorted(r.got)) or 'ok':14}{ev}")
    print_predicate_table(rows)
    fa = healthy_false_alarms(rows)
    if any(n for _, n in fa.values()):
        (ks, ns), (kf, nf) = fa["success"], fa["failure"]
        print(f"\nbaseline runs with an online alert (false alarms): {ks + kf}/{ns + nf}; on successful runs "
              f"{ks}/{ns}, on failed runs {kf}/{nf}")
        ku, nu = unexplained_failures(rows)
        if ku:
            print(f"failed baseline runs given no_flip only at episode end, by elimination: {ku}/{nu} (the verdict "
                  f"names every failure no online check explains; it is a hypothesis, not an alarm)")
    tagged = confusion(rows)
    if tagged:
        print("\nconfusion (rows: run tag, columns: predicates matched)")
        print(f"{'':12}" + "".join(f"{p:>12}" for p in COLUMNS))
        for t, c in tagged.items():
            print(f"{t:12}" + "".join(f"{c[p]:>12}" for p in COLUMNS))
    mismatches = sum(not r.matches for r in rows if r.tag in FAULT_TAGS)
    if mismatches:
        print(f"\n{mismatches} tagged run(s) did not match exactly their own predicate: check the toggle, "
              f"not the predicate", file=sys.stderr)
        return 1
    return 0
