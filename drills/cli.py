"""``vla-eval small {baseline,faults,bakeoff,all}``: the SmallPolicy CPU drills.

Every command writes into a run folder (default runs/small): CSVs and PNGs under
curves/, the diagnosis sentences in diagnosis.txt, and prints wall time per drill.
"""
from __future__ import annotations

import time
from pathlib import Path

from vla_eval.argtypes import int_at_least


def register(sub) -> None:
    p = sub.add_parser("small", help="SmallPolicy CPU drills: baseline, five faults, loss bake-off")
    p.add_argument("drill", choices=("baseline", "faults", "bakeoff", "all"))
    p.add_argument("--fault", help="one fault only (faults drill)")
    p.add_argument("--out", type=Path, default=Path("runs/small"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int_at_least(1), default=2, help="torch CPU threads")
    p.set_defaults(fn=run)


def run(args) -> int:
    from vla_eval.errors import require

    torch = require("torch", "drills", "vla-eval small")
    from vla_eval.drills.data import DataConfig, load_dataset
    from vla_eval.drills.faults import FAULTS, run_faults
    from vla_eval.errors import bad_choice

    torch.set_num_threads(args.threads)
    if args.fault is not None and args.fault not in FAULTS:
        raise bad_choice("fault", args.fault, [f for f in FAULTS if f != "baseline"])
    t0 = time.perf_counter()
    cfg = DataConfig(seed=args.seed)
    data = load_dataset(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {"data": time.perf_counter() - t0}
    lines, all_match = [], True
    if args.drill in ("baseline", "faults", "all"):
        names = ["baseline"] if args.drill == "baseline" else ([args.fault] if args.fault else list(FAULTS))
        if "action_outlier_clipped" in names and "action_outlier" not in names:
            names.insert(0, "action_outlier")
        if args.fault == "action_outlier":
            names.append("action_outlier_clipped")  # the clipped variant is part of this fault's drill
        for r in run_faults(data, cfg, out, names, timings=timings).values():
            lines.append(f"[{'matches' if r.matches else 'DOES NOT MATCH'} the expected signature] {r.sentence}")
            all_match &= r.matches
    if args.drill in ("bakeoff", "all"):
        from vla_eval.drills.bakeoff import plot_bakeoff, run_bakeoff, summarize

        t = time.perf_counter()
        result = run_bakeoff(data, cfg)
        timings["bakeoff (3 families x 2 datasets + sampling)"] = time.perf_counter() - t
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
