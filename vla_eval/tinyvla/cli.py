"""``vla-eval collect-demos`` and ``vla-eval train-tiny``: rebuild the shipped tiny OpenVLA from scratch."""
from __future__ import annotations

from pathlib import Path

from vla_eval.argtypes import add_threads_flag, float_between, id_set, int_at_least, out_dir, seeds

from vla_eval.errors import UsageError


_positive = int_at_least(1)


def _eval_seeds(text: str) -> tuple[int, ...]:
    return () if text.strip() == "none" else seeds("--eval-seeds", count=True)(text)


def register(sub) -> None:
    from vla_eval.tinyvla.demos import DEFAULT_BURSTS, DEFAULT_NOISE, demos_root
    from vla_eval.verbs import VERBS

    c = sub.add_parser("collect-demos", help=VERBS["collect-demos"].help)
    c.add_argument("--suite", default="libero_object", choices=("libero_object",),
                   help="the scripted expert solves pick-and-place (libero_object) tasks")
    c.add_argument("--per-task", type=_positive, default=20, help="successful episodes per task (default 20)")
    c.add_argument("--frame-every", type=_positive, default=2,
                   help="render and keep every k-th step (default 2: rendering is most of a step's cost)")
    c.add_argument("--noise", type=float, default=DEFAULT_NOISE, help="DART noise std on executed xyz (default 0.2)")
    c.add_argument("--bursts", type=float, default=DEFAULT_BURSTS,
                   help="per-step chance of a perturbation burst (a push or an early gripper close, expert "
                        f"labels kept) in noisy episodes (default {DEFAULT_BURSTS:g}: none; 0.04 was tried, see README)")
    c.add_argument("--tasks", type=id_set("--tasks"), default=tuple(range(10)),
                   help="task ids, e.g. 0 or 0,3 or 0-9 (default 0-9)")
    c.add_argument("--expert", choices=("scripted", "stateless"), default="scripted",
                   help="scripted: the phase-machine expert (the shipped weights' data); stateless: the phase "
                        "read off the state, the labeller DAgger uses (default scripted)")
    c.add_argument("--workers", type=_positive, default=2, help="env processes (default 2)")
    c.add_argument("--out", type=out_dir, help=f"demo folder (default {demos_root()}/<suite>)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(fn=cmd_collect)

    t = sub.add_parser("train-tiny", help=VERBS["train-tiny"].help)
    t.add_argument("--demos", type=Path, help=f"demo folder (default {demos_root()}/libero_object)")
    t.add_argument("--out", type=out_dir, default=Path("runs/train-tiny"), help="run folder (default runs/train-tiny)")
    t.add_argument("--steps", type=_positive, default=None, help="optimizer steps (default: TrainConfig's)")
    t.add_argument("--batch", type=_positive, default=None)
    t.add_argument("--patch", type=int, choices=(14, 8), default=14,
                   help="ViT patch size on the 112 px input (default 14: the shipped 8x8 grid; 8: 14x14, ~2x slower: 1.9 vs ~4 steps/s here)")
    t.add_argument("--extra-demos", type=Path, nargs="+", default=(), metavar="FOLDER",
                   help="more shard folders of the same layout, e.g. DAgger rounds' rollouts/")
    t.add_argument("--init-from", type=Path, help="fine-tune this checkpoint (keeps its norm stats)")
    t.add_argument("--lr", type=float_between(0), default=None, help="peak learning rate (default: TrainConfig's, 1e-3)")
    t.add_argument("--grasp-weight", type=float_between(0), default=1.0,
                   help="draw frames near a gripper change this many times as often (default 1: uniform)")
    t.add_argument("--grasp-window", type=int_at_least(0), default=4,
                   help="frames each side of a gripper change (default 4)")
    add_threads_flag(t)
    t.add_argument("--tokenizer", type=Path, help="Llama-2 tokenizer folder (default: the cached one, "
                                                  "installed on first use)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)

    d = sub.add_parser("dagger", help=VERBS["dagger"].help)
    d.add_argument("--demos", type=Path, required=True, help="expert demos (collect-demos --expert stateless)")
    d.add_argument("--start", type=Path, required=True, help="round 0's checkpoint folder (train-tiny's export)")
    d.add_argument("--out", type=out_dir, required=True, help="run folder (rounds, curve.csv)")
    d.add_argument("--tasks", type=id_set("--tasks"), default=(0,), help="libero_object task ids (default 0)")
    d.add_argument("--rounds", type=_positive, default=3, help="DAgger rounds after round 0 (default 3)")
    d.add_argument("--rollouts", type=_positive, default=10, help="rollouts per task and round (default 10)")
    d.add_argument("--beta", type=float, default=0.5, help="round 1's chance that the expert acts at a step (default 0.5)")
    d.add_argument("--decay", type=float, default=0.5, help="beta of round R: beta * decay**(R-1) (default 0.5)")
    d.add_argument("--train-steps", type=_positive, default=1500, help="fine-tune steps per round (default 1500)")
    d.add_argument("--eval-seeds", type=_eval_seeds, default="5",
                   help="held-out stored init states per task, evaluated every round: a count N (0..N-1), ids "
                        "such as 10-19, or none (no per-round evaluation: the rebuild's fastest path) (default 5)")
    d.add_argument("--workers", type=_positive, default=2, help="rollout processes (default 2)")
    d.add_argument("--tokenizer", type=Path, help="Llama-2 tokenizer folder (default: the cached one)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=cmd_dagger)


def cmd_collect(args) -> int:
    from vla_eval.sims.libero_env import require_sim
    from vla_eval.tinyvla.demos import DemoConfig, collect, demos_root

    require_sim()
    cfg = DemoConfig(suite=args.suite, tasks=args.tasks, per_task=args.per_task, noise=args.noise,
                     burst_prob=args.bursts, workers=args.workers, expert=args.expert,
                     frame_every=args.frame_every,
                     out=args.out or demos_root() / args.suite)
    counts = collect(cfg, progress=not args.no_progress)
    print(f"demos in {cfg.out}: " + ", ".join(f"task {t}: {n}" for t, n in counts.items()))
    return 0


def cmd_train(args) -> int:
    from dataclasses import replace

    from vla_eval.errors import require
    from vla_eval.policies.openvla.native import llama_tokenizer
    from vla_eval.tinyvla.demos import demos_root

    require("torch", "drills", "vla-eval train-tiny")
    require("pandas", "data", "vla-eval train-tiny")
    from vla_eval.tinyvla.train import TrainConfig, train

    demos = args.demos or demos_root() / "libero_object"
    if not demos.is_dir():
        raise UsageError(f"no demo folder {demos}; collect demos first: vla-eval collect-demos")
    from vla_eval.tinyvla.train import require_checkpoint, shard_paths

    for folder in (demos, *args.extra_demos):
        shard_paths(folder)  # "no demonstration shards in ..." before anything is installed or loaded
    if args.init_from is not None:
        require_checkpoint("--init-from", args.init_from)
    tokenizer = args.tokenizer or llama_tokenizer.install()
    cfg = TrainConfig(demos=demos, out=args.out, tokenizer=tokenizer, threads=args.threads, patch=args.patch,
                      extra_demos=tuple(args.extra_demos), init_from=args.init_from,
                      grasp_weight=args.grasp_weight, grasp_window=args.grasp_window)
    cfg = replace(cfg, **{k: v for k, v in (("steps", args.steps), ("batch", args.batch), ("lr", args.lr))
                          if v is not None})
    out = train(cfg, progress=not args.no_progress)
    print(f"checkpoint: {out}\n  use it: vla-eval sweep --policy openvla --checkpoint {out} "
          f"--device cpu --dtype float32")
    return 0


def cmd_dagger(args) -> int:
    from vla_eval.errors import require
    from vla_eval.policies.openvla.native import llama_tokenizer

    require("torch", "drills", "vla-eval dagger")
    require("pandas", "data", "vla-eval dagger")
    from vla_eval.sims.libero_env import require_sim

    require_sim()
    from vla_eval.tinyvla.dagger import DaggerConfig, run

    cfg = DaggerConfig(out=args.out, demos=args.demos, start=args.start, tokenizer=args.tokenizer or Path("."),
                       tasks=args.tasks, rounds=args.rounds, rollouts_per_task=args.rollouts, beta0=args.beta,
                       decay=args.decay, train_steps=args.train_steps, eval_seeds=args.eval_seeds,
                       workers=args.workers)
    from vla_eval.tinyvla.dagger import check_config

    check_config(cfg)  # bad values and folders before the tokenizer is installed or anything runs
    if args.tokenizer is None:
        from dataclasses import replace

        cfg = replace(cfg, tokenizer=llama_tokenizer.install())
    curve = run(cfg, progress=not args.no_progress)
    print(f"curve: {cfg.out / 'curve.csv'} ({len(curve)} rounds); checkpoint: {cfg.checkpoint(len(curve) - 1)}")
    return 0
