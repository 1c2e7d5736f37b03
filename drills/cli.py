"""``vla-eval small {baseline,faults,bakeoff,all,puzzle,check}``: the SmallPolicy CPU drills.

Every drill writes into a run folder (default runs/small): CSVs and PNGs under curves/, the
diagnosis sentences in diagnosis.txt, and prints wall time per drill. ``puzzle`` makes a run
broken in one hidden place (``runs/puzzle-<seed>``); ``check DIR --check NAME`` runs one of the
seven checks on it; ``puzzle DIR --guess CAUSE`` / ``--reveal`` answer.
"""
from __future__ import annotations

import time
from pathlib import Path

from vla_eval.argtypes import add_threads_flag, int_at_least, out_dir


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("small", help=VERBS["small"].help)
    p.add_argument("drill", choices=("baseline", "faults", "bakeoff", "all", "puzzle", "check"))
    p.add_argument("puzzle_dir", nargs="?", type=Path, help="puzzle folder (puzzle --guess/--reveal, check)")
    p.add_argument("--guess", metavar="CAUSE", help="puzzle: your answer (see the list the puzzle prints)")
    p.add_argument("--reveal", action="store_true", help="puzzle: the cause, and the check that exposes it")
    p.add_argument("--check", metavar="NAME", help="check: one of the seven checks (default: all)")
    p.add_argument("--epochs", type=int_at_least(1), help="bakeoff: epochs (default 10; the chapter uses 50)")
    p.add_argument("--fault", help="one fault only (faults drill)")
    p.add_argument("--out", type=out_dir, default=Path("runs/small"))
    p.add_argument("--seed", type=int_at_least(0), default=0)
    add_threads_flag(p)
    p.set_defaults(fn=run)


def run(args) -> int:
    from vla_eval.errors import UsageError, require

    from vla_eval.threads import set_torch_threads

    torch = require("torch", "drills", "vla-eval small")
    set_torch_threads(torch)
    if args.drill in ("puzzle", "check"):
        return _puzzle(args)
    if args.puzzle_dir or args.guess or args.reveal or args.check:
        raise UsageError("a folder, --guess, --reveal and --check apply to `small puzzle` and `small check`")
    if args.epochs is not None and args.drill not in ("bakeoff", "all"):
        raise UsageError("--epochs applies to the bakeoff drill")
    from vla_eval.drills.data import DataConfig, load_dataset
    from vla_eval.drills.faults import TRAINING_FAULTS, run_faults
    from vla_eval.errors import bad_choice

    if args.fault is not None and args.fault not in TRAINING_FAULTS:
        raise bad_choice("fault", args.fault, [f for f in TRAINING_FAULTS if f != "baseline"])
    t0 = time.perf_counter()
    cfg = DataConfig(seed=args.seed)
    data = load_dataset(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {"data": time.perf_counter() - t0}
    lines, all_match = [], True
    if args.drill in ("baseline", "faults", "all"):
        names = ["baseline"] if args.drill == "baseline" else ([args.fault] if args.fault else list(TRAINING_FAULTS))
        if "action_outlier_clipped" in names and "action_outlier" not in names:
            names.insert(0, "action_outlier")
        if args.fault == "action_outlier":
            names.append("action_outlier_clipped")  # the clipped variant is part of this fault's drill
        for r in run_faults(data, cfg, out, names, timings=timings).values():
            lines.append(f"[{'matches' if r.matches else 'DOES NOT MATCH'} the expected signature] {r.sentence}")
            all_match &= r.matches
    if args.drill in ("bakeoff", "all"):
        from vla_eval.drills.bakeoff import plot_bakeoff, run_bakeoff, summarize

        from vla_eval.drills.bakeoff import BakeoffConfig

        t = time.perf_counter()
        bcfg = BakeoffConfig(epochs=args.epochs) if args.epochs else BakeoffConfig()
        result = run_bakeoff(data, cfg, bcfg)
        timings[f"bakeoff (3 families x 2 datasets + sampling, {bcfg.epochs} epochs)"] = time.perf_counter() - t
        lines.append(f"bake-off trained {bcfg.epochs} epochs" + (" (the chapter's 50)" if bcfg.epochs == 50 else
                                                                  " (the chapter uses 50: --epochs 50)"))
        plot_bakeoff(result, out / "curves", cfg.bimodal_offset)
        lines += summarize(result, cfg.bimodal_offset)
    text = "\n".join(lines)
    (out / "diagnosis.txt").write_text(text + "\n")
    print(text)
    print(f"\nwall time per drill ({torch.get_num_threads()} threads):")
    for k, v in timings.items():
        print(f"  {k:45} {v:6.1f} s")
    print(f"  {'total':45} {time.perf_counter() - t0:6.1f} s\nplots and CSVs: {out / 'curves'}")
    return 0 if all_match else 1


def _puzzle(args) -> int:
    from vla_eval.drills import puzzle as pz
    from vla_eval.errors import UsageError, bad_choice

    if args.drill == "puzzle" and args.puzzle_dir is None:  # make one
        if args.guess or args.reveal or args.check:
            raise UsageError("--guess/--reveal need the puzzle folder: vla-eval small puzzle DIR --guess CAUSE")
        out = Path(args.out) if str(args.out) != "runs/small" else Path(f"runs/puzzle-{args.seed}")
        t0 = time.perf_counter()
        pz.make_puzzle(out, args.seed)
        _, _, _, rows = pz.load_puzzle(out)
        print(f"puzzle {args.seed}: {pz.summary(rows)}\ncurves: {out / 'curves.png'} ({time.perf_counter() - t0:.1f} s)")
        print(f"next: vla-eval small check {out} --check NAME   then   vla-eval small puzzle {out} --guess CAUSE")
        return 0
    if args.puzzle_dir is None:
        raise UsageError("vla-eval small check needs the puzzle folder: vla-eval small check DIR [--check NAME]")
    seed, p, model, rows = pz.load_puzzle(args.puzzle_dir)
    cause = pz.cause_of(seed)
    if args.drill == "check":
        if args.guess or args.reveal:
            raise UsageError("--guess/--reveal go with `small puzzle DIR`, not `small check`")
        for name in [args.check] if args.check else pz.CHECKS:
            result = pz.run_check(name, p, model, rows)
            print(f"== {name}\n{result.text}\n")
        return 0
    if args.check:
        raise UsageError("--check goes with `small check DIR`")
    if args.guess:
        if args.guess not in pz.BUGS:
            raise bad_choice("cause", args.guess, pz.BUGS)
        right = args.guess == cause.name
        print("right: " + cause.story if right else f"not {args.guess}. Try another check, or --reveal.")
        if not args.reveal:
            return 0 if right else 1
    if args.reveal:
        result = pz.run_check(cause.place, p, model, rows)
        print(f"cause: {cause.name}: {cause.story}\nexposed by the check '{cause.place}':\n{result.text}")
        return 0
    print(pz.summary(rows))
    return 0
