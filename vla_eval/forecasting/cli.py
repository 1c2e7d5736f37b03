"""``vla-eval forecast fit | eval | study | faults``: failure forecasters from recorded runs.

    vla-eval forecast fit runs/calib --calib-seeds 35-39 --signals all --out f.json
    vla-eval forecast eval runs/heldout --forecaster f.json --seeds 40-44
    vla-eval forecast study runs/heldout --calib-seeds 35-39 --judge-seeds 40-44   # the docs' tables
    vla-eval forecast faults runs/drill --forecaster f.json                        # warnings per injected fault
"""
from __future__ import annotations

from pathlib import Path

import vla_eval.argtypes as argtypes
from vla_eval.errors import UsageError
from vla_eval.forecasting.evaluate import FRACTIONS, Metrics, leave_one_task_out, metrics, seen_tasks, judge
from vla_eval.forecasting.fit import FitConfig, check_signals, fit, load_episodes
from vla_eval.monitors.forecast import FAMILIES, MODELS, SIGNAL_NAMES, Forecaster

# The study's rows: what each forecaster reads and how it scores.
STUDY = (("reversal_all", "signal"), ("jerk", "signal"), ("entropy_all", "signal"), ("action", "logistic"),
         ("uncertainty", "logistic"), ("all", "logistic"), ("all", "mlp"))
# ... and where every episode has its hidden-state summaries (sweep --record-features):
STUDY_FEATURES = (("features", "logistic"), ("features", "mlp"), ("action+features", "logistic"),
                  ("all+features", "logistic"))


def _f(x, pct=False) -> str:
    if x is None or x != x:
        return "–"
    return f"{100 * x:.0f}%" if pct else f"{x:.2f}"


def table_row(name: str, m: Metrics, with_alarms: bool = True) -> str:
    cells = [name, f"{m.n} ({m.failures} failed)", " / ".join(_f(a) for a in m.auroc),
             " / ".join(_f(a) for a in m.within_task), " / ".join(_f(a) for a in m.auprc)]
    if with_alarms:
        cells += [" / ".join(_f(a) for a in m.balanced_acc), _f(m.false_alarms, pct=True),
                  "–" if m.median_lead is None else f"{m.median_lead:.0f}",
                  "–" if m.median_lead_mode is None else f"{m.median_lead_mode:+.0f}"]
    else:
        cells += ["–", "–", "–", "–"]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| forecaster | judged | ROC-AUC at {f} | within-task AUROC | AUPRC | balanced acc. of alarm by then | "
          "false alarms on successes | median lead to step limit | median lead to failure step |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |").format(f=" / ".join(f"{int(100 * x)}%" for x in FRACTIONS))


def cmd_fit(args) -> int:
    if args.out.exists():
        raise UsageError(f"--out {args.out} exists; choose a new file")
    cfg = FitConfig(args.signals, args.model, args.alpha, args.max_steps, components=args.components)
    f = fit(load_episodes(args.runs, seeds=set(args.calib_seeds)), cfg)
    f.save(args.out)
    print(f"forecaster: {args.out} ({cfg.model} on {', '.join(f.signals)}; band c = {f.band_c:.2f} at alpha {cfg.alpha}; "
          f"fitted on seeds {argtypes.format_ids(f.identity['seeds'])} of tasks {argtypes.format_ids(f.identity['tasks'])})")
    return 0


def check_fits(f: Forecaster, episodes) -> None:
    """A forecaster is judged only on runs of the policy, checkpoint and suite it was fitted on."""
    for e in episodes:
        f.check_identity(*e.identity, what=e.run)
    check_signals(episodes, f.signals, f.feature_width)


def cmd_eval(args) -> int:
    if args.plot is not None and args.plot.exists():
        raise UsageError(f"--plot {args.plot} exists; choose a new file")
    f = Forecaster.load(args.forecaster)
    episodes = load_episodes(args.runs, seeds=set(args.seeds) if args.seeds else None)
    if not episodes:
        raise UsageError("no judged episodes in these runs (check --seeds)")
    check_fits(f, episodes)
    overlap = sorted(set(f.identity.get("seeds", ())) & {e.seed for e in episodes})
    print(HEADER)
    print(table_row(f"{f.model} on {'+'.join(f.signals) if len(f.signals) < 3 else f'{len(f.signals)} signals'}",
                    metrics(judge(f, episodes, len(f.band_mu)), len(f.band_mu))))
    if overlap:
        print(f"note: seeds {argtypes.format_ids(overlap)} were also calibration seeds: not held out")
    if args.plot:
        from vla_eval.forecasting.evaluate import forecast_plot

        args.plot.write_bytes(forecast_plot(f, episodes, len(f.band_mu)))
        print(f"plot: {args.plot} (ROC-AUC against time; score traces with the alarm band)")
    return 0


def cmd_faults(args) -> int:
    """How early a forecaster fitted on natural failures warns of injected faults: per run tag of a
    drill, the share of episodes warned by each fraction of the step limit and the median first warning."""
    from vla_eval.rundir import config_from_manifest

    tags = config_from_manifest(args.run).tags  # a folder that is no run: one line naming it
    f = Forecaster.load(args.forecaster)
    episodes = load_episodes([args.run], tags=tags)
    check_fits(f, episodes)
    limit = len(f.band_mu)
    print("| run tag | episodes (failed) | warned by " + " / ".join(f"{int(100 * x)}%" for x in FRACTIONS) +
          " of the step limit | warned at all | median first warning (step) |\n| --- | --- | --- | --- | --- |")
    for tag in tags:
        mine = [e for e in episodes if e.tag == tag]
        if not mine:
            continue
        alarms = [j.alarm for j in judge(f, mine, limit)]
        by = [sum(a is not None and a <= int(x * limit) for a in alarms) / len(alarms) for x in FRACTIONS]
        warned = sorted(a for a in alarms if a is not None)
        print(f"| {tag} | {len(mine)} ({sum(e.failed for e in mine)}) | {' / '.join(_f(b, pct=True) for b in by)}"
              f" | {_f(len(warned) / len(alarms), pct=True)} | {warned[len(warned) // 2] if warned else '–'} |")
    return 0


def _study_rows(episodes) -> list[tuple[str, str]]:
    """The study's forecasters these episodes have the signals for."""
    has_tokens = not any(all(x != x for x in e.series[:, SIGNAL_NAMES.index("entropy_all")]) for e in episodes)
    rows = [(s, m) for s, m in STUDY if has_tokens or s not in FAMILIES["uncertainty"] + ("uncertainty", "all")]
    if all(e.features is not None for e in episodes):
        rows += [(s, m) for s, m in STUDY_FEATURES if has_tokens or not s.startswith("all")]
    return rows


def cmd_study(args) -> int:
    loaded = load_episodes(args.runs)
    episodes = [e for e in loaded if not args.seeds or e.seed in set(args.seeds)]  # the unseen-task study's
    if not episodes:
        raise UsageError("no judged episodes in these runs (check --seeds)")
    rows = _study_rows(episodes)
    n_tasks = len({e.task_id for e in episodes})
    print(f"unseen tasks (leave one task out over {n_tasks} tasks; seeds {argtypes.format_ids({e.seed for e in episodes})}):")
    print(HEADER)
    base = None
    for signals, model in rows:
        judged, base = leave_one_task_out(episodes, FitConfig(signals, model, args.alpha, args.max_steps,
                                                              components=args.components))
        print(table_row(f"{model} {signals}", metrics(judged, args.max_steps)))
    print(table_row("task only", metrics(base, args.max_steps), with_alarms=False))
    if args.calib_seeds and args.judge_seeds:
        calib = [e for e in loaded if e.seed in set(args.calib_seeds)]
        held = [e for e in loaded if e.seed in set(args.judge_seeds)]
        print(f"\nseen tasks (fit on seeds {argtypes.format_ids(args.calib_seeds)}, judge seeds "
              f"{argtypes.format_ids(args.judge_seeds)}, all tasks):")
        print(HEADER)
        for signals, model in _study_rows(calib + held):
            judged, base = seen_tasks(calib, held, FitConfig(signals, model, args.alpha, args.max_steps,
                                                             components=args.components))
            print(table_row(f"{model} {signals}", metrics(judged, args.max_steps)))
        print(table_row("task only", metrics(base, args.max_steps), with_alarms=False))
    return 0


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("forecast", help=VERBS["forecast"].help)
    verbs = p.add_subparsers(dest="forecast_verb", required=True, metavar="{fit,eval,study,faults}")
    common = dict(type=argtypes.int_at_least(1, " steps"), default=280, help="the suite's step limit (default 280)")
    components = dict(type=argtypes.int_at_least(1, high=256), default=8,
                      help="feature family: directions the hidden-state summaries are projected on (default 8)")
    a = verbs.add_parser("fit", help="fit a forecaster on calibration runs")
    a.add_argument("runs", nargs="+", type=Path)
    a.add_argument("--calib-seeds", type=argtypes.seeds("--calib-seeds", count=False), required=True,
                   help="the seeds to fit on (ids and ranges; a lone number is one seed)")
    a.add_argument("--signals", default="all", help=f"a family ({', '.join(FAMILIES)}), features (the hidden-state "
                                                     "summaries of sweep --record-features) or FAMILY+features; with "
                                                     f"--model signal one of {', '.join(SIGNAL_NAMES)}")
    a.add_argument("--model", default="logistic", choices=MODELS)
    a.add_argument("--alpha", type=float, default=0.1, help="false alarms allowed on successful episodes (default 0.1)")
    a.add_argument("--max-steps", **common)
    a.add_argument("--components", **components)
    a.add_argument("--out", type=argtypes.out_file, required=True)
    a.set_defaults(fn=cmd_fit)
    e = verbs.add_parser("eval", help="judge a forecaster on held-out runs")
    e.add_argument("runs", nargs="+", type=Path)
    e.add_argument("--forecaster", type=Path, required=True)
    e.add_argument("--seeds", type=argtypes.seeds("--seeds", count=False), help="only these seeds (ids and ranges)")
    e.add_argument("--plot", type=argtypes.out_file, metavar="OUT.png",
                   help="also draw ROC-AUC against time and every episode's score trace with the alarm band")
    e.set_defaults(fn=cmd_eval)
    s = verbs.add_parser("study", help="every forecaster on unseen tasks (leave one out) and seen ones, with the "
                                       "task-only score")
    s.add_argument("runs", nargs="+", type=Path)
    s.add_argument("--calib-seeds", type=argtypes.seeds("--calib-seeds", count=False))
    s.add_argument("--judge-seeds", type=argtypes.seeds("--judge-seeds", count=False))
    s.add_argument("--seeds", type=argtypes.seeds("--seeds", count=False),
                   help="the unseen-task (leave one task out) study on these seeds' episodes only (default: all)")
    s.add_argument("--alpha", type=float, default=0.1)
    s.add_argument("--max-steps", **common)
    s.add_argument("--components", **components)
    s.set_defaults(fn=cmd_study)
    d = verbs.add_parser("faults", help="how early a forecaster warns of each injected fault of a drill run")
    d.add_argument("run", type=Path)
    d.add_argument("--forecaster", type=Path, required=True)
    d.set_defaults(fn=cmd_faults)
