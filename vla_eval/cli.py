"""``vla-eval``: the command line. Each subcommand imports what it needs when it runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vla_eval import __version__, run_flags
from vla_eval.argtypes import add_threads_flag, format_ids, int_at_least, out_dir, out_file, seed_set
from vla_eval.errors import DIST, MissingDependency, UsageError, install_hint
from vla_eval.faults import CHAPTER_FAULTS
from vla_eval.run_flags import DEFAULT_SUITE

_non_negative = int_at_least(0)
_positive_int = int_at_least(1)


def _default_out(cfgs, kind: str) -> Path:
    from vla_eval.sims.protocol import suite_spec

    cfg = cfgs[0]
    n_tasks = suite_spec(cfg.suite).n_tasks
    tasks = "all" if len(cfg.task_ids) == n_tasks > 1 else "t" + "-".join(map(str, cfg.task_ids))
    shard = f"-shard{cfg.shard.replace('/', 'of')}" if cfg.shard else ""
    from vla_eval.rundir import ALL4

    names = tuple(c.suite for c in cfgs)
    suites = "all4" if names == ALL4 else "+".join(names)
    return Path("runs") / f"{kind}-{cfg.policy}-{suites}-{tasks}-{'+'.join(cfg.tags)}{shard}"


def _execute(args, tags: tuple[str, ...], kind: str) -> int:
    """Flags -> typed configs -> ``sweep.run_sweep`` / ``run_suites`` / ``resume`` -> summary + report.
    Several suites: one sub-folder each, run one after the other (OpenVLA has a checkpoint per
    suite), then the summary report."""
    from vla_eval.rundir import config_from_manifest, is_multi_suite, read_suites
    from vla_eval import sweep

    ex = run_flags.execution_from(args)
    resume = args.resume
    if resume is not None:  # the folder's own config: flags that would change it are refused, not ignored
        given = run_flags.given_identity(args) + ["--out"] * bool(args.out)
        if given:
            raise UsageError(f"--resume continues the folder's own run; drop {', '.join(dict.fromkeys(given))}")
        multi = is_multi_suite(resume)
        first = resume / read_suites(resume)[0] if multi else resume
        policy = config_from_manifest(first).policy if (first / "manifest.json").exists() else "openvla"
        model = run_flags.model_options_from(args, policy)
        results = sweep.resume_suites(resume, model, ex) if multi else {None: sweep.resume(resume, model, ex)}
        run_dir = resume
    else:
        cfgs = run_flags.run_configs(args, tags)
        model = run_flags.model_options_from(args, cfgs[0].policy)
        run_dir = args.out or _default_out(cfgs, kind)
        if run_dir.exists() and not run_dir.is_dir():
            raise UsageError(f"--out {run_dir} is a file; a run folder is a directory")
        multi = len(cfgs) > 1
        results = (sweep.run_suites(cfgs, run_dir, model, ex) if multi
                   else {None: sweep.run_sweep(cfgs[0], run_dir, model, ex)})
    for suite, res in results.items():
        print(f"\nrun folder: {res.run_dir}  ({res.ran} episodes run, {res.skipped} already done, {res.wall_s:.1f} s)")
        for tag, eps in res.episodes.items():
            n = {o: sum(e.outcome == o for e in eps) for o in ("success", "failure", "error")}
            judged = n["success"] + n["failure"]
            rate = f"{100 * n['success'] / judged:.1f}%" if judged else "-"
            print(f"  {tag:12} success {n['success']}/{judged} ({rate})  errors {n['error']}")
        if not args.no_report:
            _write_report(res.run_dir)
    if multi and not args.no_report:
        from vla_eval.reports.suites import write_suites_report

        print(f"summary report: {write_suites_report(run_dir)}")
    return 0


def _write_report(run_dir: Path) -> None:
    try:
        from vla_eval.reports.html import write_report
    except ImportError as e:  # matplotlib missing
        print(f"report skipped: {e}. Fix: {install_hint('report')}", file=sys.stderr)
        return
    print(f"report: {write_report(run_dir)}")


def cmd_sweep(args) -> int:
    """A sweep runs the baseline, or only the faults its flags name."""
    chosen = run_flags.chosen_faults(args)
    return _execute(args, run_flags.with_perturbations(chosen or ["baseline"], args.perturb), "sweep")


def cmd_drill(args) -> int:
    """A drill runs the baseline next to the chosen faults (the chapter's three by default)."""
    faults = run_flags.chosen_faults(args) or list(CHAPTER_FAULTS)
    return _execute(args, run_flags.with_perturbations(["baseline"] + faults, args.perturb), "drill")


def cmd_robustness(args) -> int:
    """The unperturbed baseline and every family:level asked for, on the same (task, seed) pairs."""
    from vla_eval.perturbations import FAMILIES, LEVELS, parse

    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families != "all" else list(FAMILIES)
    try:
        levels = [int(x) for x in args.levels.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--levels {args.levels!r}: comma-separated levels; valid: {', '.join(map(str, LEVELS))}") from None
    tags = [parse(f"{f}:{lv}").tag for f in families for lv in levels]  # an unknown family or level names the valid ones
    return _execute(args, ("baseline", *tags), "robustness")


def cmd_run(args) -> int:
    """``vla-eval run``: one episode (seed -> init state), any toggles, no resume bookkeeping."""
    from vla_eval.api import run_episode
    from vla_eval.sims.protocol import N_INIT_STATES

    chosen = run_flags.chosen_faults(args) + list(args.perturb or ())
    if len(args.perturb or ()) > 1:
        raise UsageError(f"vla-eval run is one episode: one --perturb at a time (got {', '.join(args.perturb)})")
    # suite, task and policy before any device check
    (cfg,) = run_flags.run_configs(args, ("+".join(chosen) or "baseline",))
    if not 0 <= args.seed < N_INIT_STATES:
        raise UsageError(f"--seed {args.seed} has no stored init state; valid: 0..{N_INIT_STATES - 1}")
    if (args.batch or 1) > 1 or args.overlap or args.workers or args.ray or args.policy_actors is not None:
        raise UsageError("vla-eval run is one episode in this process: --batch, --overlap, --workers, --ray and "
                         "--policy-actors apply to sweep and drill")
    if args.all_tasks or args.tasks:
        raise UsageError("vla-eval run is one episode: pick its task with --task N (--tasks/--all-tasks apply to "
                         "sweep and drill)")
    extra = [flag for flag, used in (("--seeds", args.seeds != (0,)), ("--out", args.out is not None),
                                     ("--env-timeout", args.env_timeout is not None), ("--no-report", args.no_report),
                                     ("--videos", args.videos != "default"))
             if used]
    if extra:
        raise UsageError(f"vla-eval run is one episode: {', '.join(extra)} apply to sweep and drill "
                         "(use --seed N and --log FILE)")
    if args.log is not None:
        _check_log_target(args.log)
    ep = run_episode(
        policy=cfg.policy, suite=cfg.suite, task_id=args.task, seed=args.seed,
        fault="+".join(chosen) or None, max_steps=cfg.max_steps,
        cameras=cfg.cameras, hard_reset=cfg.hard_reset, log_path=args.log,
        model=run_flags.model_options_from(args, cfg.policy), progress=not args.no_progress,
    )
    print(f"{ep.run_tag}: {ep.outcome} in {ep.steps} steps, first gripper close at "
          f"{ep.first_close_step}, {ep.wall_s:.1f} s" + (f"\nerror: {ep.error}" if ep.error else ""))
    if args.log:
        print(f"log: {args.log}")
    return 0 if ep.outcome != "error" else 1


def _check_log_target(log: Path) -> None:
    """``run --log`` appends to a log of its own; never into a sweep's run folder (it would
    silently replace that seed in the folder's report) and never into a directory."""
    if log.is_dir():
        raise UsageError(f"--log {log} is a folder; give a file path, e.g. {log / 'episode.jsonl'}")
    if (log.parent / "manifest.json").exists():
        raise UsageError(f"--log {log} is inside the run folder {log.parent}; a single episode would mix into "
                         "that sweep's records. Log to a file outside it.")


def cmd_report(args) -> int:
    from vla_eval.rundir import is_multi_suite

    if is_multi_suite(args.run_dir):
        from vla_eval.reports.suites import write_suites_report

        print(f"summary report: {write_suites_report(args.run_dir)}")
        return 0
    _write_report(args.run_dir)
    return 0


def cmd_merge(args) -> int:
    from vla_eval.sweep import merge_runs

    counts = merge_runs(args.out, args.shards, allow_partial=args.allow_partial)
    print(f"merged {len(args.shards)} shards into {args.out}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


def cmd_bench_sim(args) -> int:
    from vla_eval.sims.bench import BenchConfig, perturbation_costs, run_bench

    if args.perturb is not None:
        perturbation_costs(args.suite, args.task, args.perturb, args.steps)
        return 0
    run_bench(BenchConfig(args.suite, args.task, args.steps, args.workers, not args.no_cameras))
    return 0


DEMO_TASKS = "0,4,8"


def cmd_demo(args) -> int:
    """The CPU default main job: the shipped tiny OpenVLA on real LIBERO (pixels in, tokens out),
    its baseline next to the three silent failures, two env workers, then the report."""
    argv = ["drill", "--policy", "tiny", "--suite", "libero_object", "--tasks", args.tasks,
            "--seeds", format_ids(args.seeds), "--batch", "2", "--out", str(args.out)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return main(argv)


ALL_VERBS = "*"


def chosen_verb(argv: list[str]) -> str | None:
    """The subcommand of a command line (its first word that is no option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(chosen: str | None = ALL_VERBS) -> argparse.ArgumentParser:
    """The parser; ``chosen``: the one table verb whose module is imported (``ALL_VERBS``: every
    one, to read their flags; None: none, for ``vla-eval --help``)."""
    p = argparse.ArgumentParser(prog="vla-eval", description="Evaluate and monitor OpenVLA-style policies on LIBERO.")
    p.add_argument("--version", action="version", version=f"vla-eval {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("sweep", help="N seeds per task, resumable; per-step JSONL and an HTML report")
    run_flags.add_run_args(s, seeds_default="50")
    s.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    s.add_argument("--retry-errors", action="store_true", help="on resume, redo episodes that ended in an env error")
    shard = s.add_argument("--shard", help="i/K: run a deterministic 1/K slice (join with `vla-eval merge`)")
    s.set_defaults(identity=s.get_default("identity") + [shard])
    run_flags.add_fault_args(s, "run this fault instead of the baseline")
    s.set_defaults(fn=cmd_sweep)

    d = sub.add_parser("drill", help="baseline next to the silent failures (the chapter's three by default; "
                                     "--fault all for the whole fault table)")
    run_flags.add_run_args(d, seeds_default="1")
    run_flags.add_fault_args(d, "run next to the baseline")
    d.set_defaults(fn=cmd_drill)

    rb = sub.add_parser("robustness", help="the unperturbed baseline next to perturbation families at graded levels, "
                                           "on the same (task, seed) pairs; the report's robustness profile")
    run_flags.add_run_args(rb, seeds_default="2")
    rb.add_argument("--families", default="all", help="comma-separated families (default all: camera, light, table, "
                                                      "layout, robot_init, language, noise)")
    rb.add_argument("--levels", default="2", help="comma-separated levels 1-3 (default 2)")
    rb.add_argument("--perturb-seed", type=int_at_least(0, high=2**31 - 1), default=0,
                    help="the seed perturbations are drawn from (default 0; recorded in the manifest)")
    rb.set_defaults(fn=cmd_robustness, perturb=None)

    r = sub.add_parser("run", help="one episode with any toggles")
    run_flags.add_run_args(r, seeds_default="1")
    r.add_argument("--seed", type=_non_negative, default=0, help="seed = init state index (0..49)")
    r.add_argument("--log", type=out_file, help="write the step and episode records here (JSONL)")
    run_flags.add_fault_args(r, "inject into this episode (several: joined into one run)")
    r.set_defaults(fn=cmd_run)

    rep = sub.add_parser("report", help="(re)write the HTML report of a run folder")
    rep.add_argument("run_dir", type=Path)
    rep.set_defaults(fn=cmd_report)

    m = sub.add_parser("merge", help="join the shard folders of one sweep")
    m.add_argument("out", type=out_dir)
    m.add_argument("shards", type=Path, nargs="+")
    m.add_argument("--allow-partial", action="store_true", help="merge an incomplete shard set (marked partial)")
    m.set_defaults(fn=cmd_merge)

    b = sub.add_parser("bench-sim", help="LIBERO env costs on this machine: create, reset, physics vs rendering, workers")
    b.add_argument("--suite", default=DEFAULT_SUITE)
    b.add_argument("--task", type=_non_negative, default=0)
    b.add_argument("--steps", type=_positive_int, default=40)
    b.add_argument("--workers", type=_positive_int, default=2, help="measure 1..N workers")
    b.add_argument("--no-cameras", action="store_true", help="workers run physics only")
    b.add_argument("--perturb", type=int, choices=(1, 2, 3), metavar="LEVEL",
                   help="instead: each perturbation family at LEVEL against the unperturbed env (reset, step)")
    b.set_defaults(fn=cmd_bench_sim)

    dm = sub.add_parser("demo", help="CPU main job: the tiny OpenVLA's drill (baseline + 3 silent failures) "
                                     "on LIBERO libero_object + report")
    dm.add_argument("--seeds", type=seed_set, default="1",
                    help="a count N (seeds 0..N-1) or seed ids (10-12, 3,4; one seed: 7-7) per task and run tag "
                         "(default 1)")
    dm.add_argument("--tasks", default=DEMO_TASKS, help=f"task ids (default {DEMO_TASKS})")
    dm.add_argument("--out", type=out_dir, default=Path("runs/demo"))
    add_threads_flag(dm)
    dm.set_defaults(fn=cmd_demo)

    from vla_eval.verbs import VERBS

    for verb in VERBS.values():  # the chosen verb's module first: it may register several verbs
        if verb.name not in sub.choices and chosen in (ALL_VERBS, verb.name):
            _lazy(sub, verb.name, verb.module, verb.extra)
    for verb in VERBS.values():  # the rest: listed in --help from the table, their modules never imported
        if verb.name not in sub.choices:
            sub.add_parser(verb.name, help=verb.help)
    _add_examples(sub)
    return p


# Every subcommand's --help ends with these (tests parse each one, so they stay real).
EXAMPLES = {
    "sweep": ["vla-eval sweep --seeds 50", "vla-eval sweep --policy tiny --all-tasks --seeds 0-4 --batch 2",
              "vla-eval sweep --resume runs/my-sweep --retry-errors"],
    "robustness": ["vla-eval robustness --policy tiny --all-tasks --seeds 45-46 --levels 2 --batch 2",
                   "vla-eval robustness --policy tiny --families camera,light --levels 1,2,3 --tasks 0,4"],
    "drill": ["vla-eval drill --no-flip --bad-prompt --bad-unnorm",
              "vla-eval drill --policy tiny --fault all --tasks 0,4 --seeds 10-11 --batch 2"],
    "run": ["vla-eval run --policy tiny --task 3 --seed 7 --log ep.jsonl", "vla-eval run --policy tiny --no-flip"],
    "report": ["vla-eval report runs/my-sweep"],
    "merge": ["vla-eval merge runs/all runs/shard0 runs/shard1"],
    "bench-sim": ["vla-eval bench-sim --workers 2", "vla-eval bench-sim --no-cameras --steps 100",
                  "vla-eval bench-sim --perturb 2"],
    "demo": ["vla-eval demo", "vla-eval demo --seeds 3 --out runs/demo3"],
    "monitor": ["vla-eval monitor runs/my-drill/*.jsonl",
                "vla-eval monitor runs/cal/*.jsonl --calibrate th.json --calib-seeds 10-17 --alpha 0.05"],
    "small": ["vla-eval small all", "vla-eval small puzzle --seed 3 --out runs/puzzle"],
    "bench-monitor": ["vla-eval bench-monitor", "vla-eval bench-monitor --forecaster f.json"],
    "bench-policy": ["vla-eval bench-policy --size tiny --device cpu --batches 1,2",
                     "vla-eval bench-policy --size 7b --device cuda"],
    "bench-report": ["vla-eval bench-report --episodes 50,500"],
    "bench-threads": ["vla-eval bench-threads", "vla-eval bench-threads --spin"],
    "check-fullsize": ["vla-eval check-fullsize --checkpoint /data/openvla-7b-random --write --size 7b "
                       "--official-code openvla/prismatic/extern/hf"],
    "check-world": ["vla-eval check-world", "vla-eval check-world --suite libero_object --tasks 0-2"],
    "check-backend": ["vla-eval check-backend --checkpoint openvla/openvla-7b-finetuned-libero-object --device cuda"],
    "collect-demos": ["vla-eval collect-demos", "vla-eval collect-demos --tasks 0-9 --per-task 5 --expert stateless "
                      "--out runs/dagger/demos"],
    "train-tiny": ["vla-eval train-tiny --demos runs/demos --out runs/train-tiny"],
    "dagger": ["vla-eval dagger --demos runs/dagger/demos --start configs/checkpoints/tiny-openvla-libero_object "
               "--tasks 0-9 --rounds 4 --rollouts 6 --train-steps 2500 --eval-seeds 5-6 --out runs/dagger"],
    "compare": ["vla-eval compare runs/before runs/after --html compare.html"],
    "setup": ["vla-eval setup", "vla-eval setup --check"],
    "forecast": ["vla-eval forecast fit runs/calib --calib-seeds 35-39 --out f.json",
                 "vla-eval forecast eval runs/heldout --forecaster f.json --seeds 40-44",
                 "vla-eval forecast study runs/heldout --calib-seeds 35-39 --judge-seeds 40-44"],
    "why": ["vla-eval why runs/my-sweep", "vla-eval why runs/my-drill --episode no_flip:4:31"],
    "diagnose": ["vla-eval drill --policy tiny --fault all --seeds 2 --max-steps 60 --out runs/lib",
                 "vla-eval diagnose runs/my-sweep --library runs/lib",
                 "vla-eval diagnose --library runs/lib --export-library lib.json"],
}


def _add_examples(sub) -> None:
    for name, parser in sub.choices.items():
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES.get(name, ()))


def _lazy(sub, name: str, module: str, extra: str | None) -> None:
    """A table verb's module registers its arguments (``vla_eval.verbs``). If it cannot be
    imported, the verb still shows in --help and running it says what to install."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        fix = install_hint(extra) if extra else f"pip install --force-reinstall {DIST}"
        reason = f"vla-eval {name} is unavailable: {e}. Fix: {fix}"
        stub = sub.add_parser(name, help=f"(unavailable: {e}; {fix})")
        stub.add_argument("rest", nargs="*")

        def unavailable(args, reason=reason):
            raise MissingDependency(reason)

        stub.set_defaults(fn=unavailable)
        return
    mod.register(sub)


def main(argv: list[str] | None = None) -> int:
    from vla_eval.threads import prepare_process

    prepare_process(None)  # before numpy or torch load: idle OpenMP threads spin briefly, then sleep
    parser = build_parser(chosen_verb(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    prepare_process(getattr(args, "threads", None))  # --threads N reaches torch and every child process
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    import signal

    from vla_eval.sims.stopping import STOP_SIGNALS, Stopped

    def terminate(signum, frame):
        raise Stopped(signum)

    # SIGTERM (docker stop, systemd, pre-emption) and SIGHUP (a closed terminal): the same clean stop as Ctrl-C
    previous = {s: signal.signal(s, terminate) for s in STOP_SIGNALS if s != signal.SIGINT}
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"vla-eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        for sig in STOP_SIGNALS:  # a further signal while we report is not a crash
            signal.signal(sig, signal.SIG_IGN)
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        print(f"\nstopped ({signal.Signals(signum).name}): committed episodes are kept; re-run the same command "
              f"to resume", file=sys.stderr)
        return 128 + signum
    except OSError as e:
        return _os_error(e)
    except Exception as e:
        from vla_eval.sims.assets import SetupError

        if isinstance(e, SetupError):
            print(f"vla-eval: setup error: {e}", file=sys.stderr)
            return 3
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _os_error(e: OSError) -> int:
    """Disk full, read-only folder, permissions: one line naming the file, no traceback."""
    import errno

    if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR):
        print(f"vla-eval: error: cannot write {e.filename or 'a file'}: {e.strerror}. Nothing partial was kept; "
              f"free space or choose a writable --out, then re-run (committed episodes resume).", file=sys.stderr)
        return 1
    raise e


if __name__ == "__main__":
    sys.exit(main())
