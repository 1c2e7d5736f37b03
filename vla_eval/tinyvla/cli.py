"""``vla-eval collect-demos`` and ``vla-eval train-tiny``: rebuild the shipped tiny OpenVLA from scratch."""
from __future__ import annotations

from pathlib import Path

from vla_eval.argtypes import int_at_least

from vla_eval.errors import UsageError


_positive = int_at_least(1)


def register(sub) -> None:
    from vla_eval.tinyvla.demos import DEFAULT_BURSTS, DEFAULT_NOISE, demos_root

    c = sub.add_parser("collect-demos", help="scripted-expert demos on real LIBERO (sampled scenes, never the "
                                             "eval init states) as parquet; resumable")
    c.add_argument("--suite", default="libero_object", choices=("libero_object",),
                   help="the scripted expert solves pick-and-place (libero_object) tasks")
    c.add_argument("--per-task", type=_positive, default=20, help="successful episodes per task (default 20)")
    c.add_argument("--frame-every", type=_positive, default=2,
                   help="render and keep every k-th step (default 2: rendering is most of a step's cost)")
    c.add_argument("--noise", type=float, default=DEFAULT_NOISE, help="DART noise std on executed xyz (default 0.2)")
    c.add_argument("--bursts", type=float, default=DEFAULT_BURSTS,
                   help="per-step chance of a perturbation burst (a push or an early gripper close, expert "
                        f"labels kept) in noisy episodes (default {DEFAULT_BURSTS:g}: none; 0.04 was tried, see README)")
    c.add_argument("--workers", type=_positive, default=2, help="env processes (default 2)")
    c.add_argument("--out", type=Path, help=f"demo folder (default {demos_root()}/<suite>)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(fn=cmd_collect)

    t = sub.add_parser("train-tiny", help="train the tiny OpenVLA on collected demos (CPU, resumable)")
    t.add_argument("--demos", type=Path, help=f"demo folder (default {demos_root()}/libero_object)")
    t.add_argument("--out", type=Path, default=Path("runs/train-tiny"), help="run folder (default runs/train-tiny)")
    t.add_argument("--steps", type=_positive, default=None, help="optimizer steps (default: TrainConfig's)")
    t.add_argument("--batch", type=_positive, default=None)
    t.add_argument("--patch", type=int, choices=(14, 8), default=14,
                   help="ViT patch size on the 112 px input (default 14: the shipped 8x8 grid; 8: 14x14, ~2x slower: 1.9 vs ~4 steps/s here)")
    t.add_argument("--threads", type=_positive, default=2, help="torch CPU threads (default 2)")
    t.add_argument("--tokenizer", type=Path, help="Llama-2 tokenizer folder (default: the cached one, "
                                                  "installed on first use)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)


def cmd_collect(args) -> int:
    from vla_eval.tinyvla.demos import DemoConfig, collect, demos_root

    cfg = DemoConfig(suite=args.suite, per_task=args.per_task, noise=args.noise, burst_prob=args.bursts,
                     workers=args.workers,
                     frame_every=args.frame_every,
                     out=args.out or demos_root() / args.suite)
    counts = collect(cfg, progress=not args.no_progress)
    print(f"demos in {cfg.out}: " + ", ".join(f"task {t}: {n}" for t, n in counts.items()))
    return 0


def cmd_train(args) -> int:
    from dataclasses import replace

    from vla_eval.errors import require
    from vla_eval.policies.native import llama_tokenizer
    from vla_eval.tinyvla.demos import demos_root

    require("torch", "drills", "vla-eval train-tiny")
    require("pandas", "data", "vla-eval train-tiny")
    from vla_eval.tinyvla.train import TrainConfig, train

    demos = args.demos or demos_root() / "libero_object"
    if not demos.is_dir():
        raise UsageError(f"no demo folder {demos}; collect demos first: vla-eval collect-demos")
    tokenizer = args.tokenizer or llama_tokenizer.install()
    cfg = TrainConfig(demos=demos, out=args.out, tokenizer=tokenizer, threads=args.threads, patch=args.patch)
    cfg = replace(cfg, **{k: v for k, v in (("steps", args.steps), ("batch", args.batch)) if v is not None})
    out = train(cfg, progress=not args.no_progress)
    print(f"checkpoint: {out}\n  use it: vla-eval sweep --policy openvla --checkpoint {out} "
          f"--device cpu --dtype float32")
    return 0
