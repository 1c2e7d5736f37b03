"""The run flags of ``sweep``, ``drill``, ``robustness`` and ``run``: how they are declared, and
how they become the typed run (``SweepConfig`` per suite, model options, ``Execution``), parsed
once. The identity flags (what is run) sit in one argument group, so a resume can refuse them."""
from __future__ import annotations

import argparse
from pathlib import Path

from vla_eval.argtypes import MAX_STEP_LIMIT, add_threads_flag, float_between, id_set, int_at_least, out_dir, seed_set
from vla_eval.errors import UsageError
from vla_eval.faults import FAULTS, parse_faults

DEFAULT_SUITE = "libero_object"

_step_limit = int_at_least(1, " steps (LIBERO's longest suite allows 520)", high=MAX_STEP_LIMIT)
_process_count = int_at_least(0, " processes", high=256)
_task_list = id_set("--tasks")


def add_run_args(p: argparse.ArgumentParser, seeds_default: str) -> None:
    """The run flags. Those that define what is run (recorded in the manifest) sit in one group,
    whose actions ``given_identity`` reads: a resume refuses them instead of ignoring them."""
    from vla_eval.policies.factory import policies
    from vla_eval.policies.registry import BACKENDS, DTYPES

    ident = p.add_argument_group("what is run (recorded in the run folder; a resume takes these from it)")
    actions = [ident.add_argument(
        "--suite", default=DEFAULT_SUITE, help="libero_spatial|libero_object|libero_goal|libero_10|libero_90, "
        "or several (comma-separated, or all4): one sub-folder per suite and a summary report")]
    tasks = ident.add_mutually_exclusive_group()
    actions += [tasks.add_argument("--task", type=int, default=0, help="task id within the suite (default 0)"),
                tasks.add_argument("--all-tasks", action="store_true", help="every task of the suite"),
                tasks.add_argument("--tasks", type=_task_list, help="comma-separated task ids, e.g. 0,3,5")]
    actions += [
        ident.add_argument("--seeds", type=seed_set, default=seeds_default,
                           help=f"a count N (seeds 0..N-1) or seed ids such as 10-59, 3,4 or 7-7 (one seed); seed i -> "
                                f"stored init state i (default {seeds_default})"),
        ident.add_argument("--policy", default="openvla", choices=policies(),
                           help="; ".join(f"{n}: {s.help}" for n, s in policies().items())),
        ident.add_argument("--checkpoint", help="HF id or local path (default: openvla/openvla-7b-finetuned-<suite>)"),
        ident.add_argument("--revision", help="pin the checkpoint's revision (commit hash)"),
        ident.add_argument("--cameras", choices=("auto", "on", "off"), default="auto",
                           help="auto: on for pixel policies, off (physics only, ~10x faster) for state-based ones"),
        ident.add_argument("--fast-reset", action="store_true",
                           help="reuse the MuJoCo model between episodes (not the published protocol's hard reset)"),
        ident.add_argument("--max-steps", type=_step_limit,
                           help=f"override the suite's step limit (1..{MAX_STEP_LIMIT})")]
    p.set_defaults(identity=actions, shard=None, resume=None, retry_errors=False)  # sweep's own flags set them
    p.add_argument("--attn", choices=("flash_attention_2", "sdpa", "eager"), help="attention (default sdpa)")
    p.add_argument("--device", help="torch device for the model (default: cuda; cpu for --policy tiny)")
    p.add_argument("--backend", choices=BACKENDS, help="OpenVLA model: native (default; batched, no "
                   "trust_remote_code) or remote-code (OpenVLA's own HF code, one observation per call)")
    p.add_argument("--native", dest="backend", action="store_const", const="native", help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=DTYPES,
                   help="native model weights and activations (default: bfloat16; float32 for --policy tiny)")
    p.add_argument("--workers", type=_process_count, default=0, help="parallel env processes (0: env in this process)")
    p.add_argument("--env-timeout", type=float_between(0.0, 86_400.0), default=None, metavar="S",
                   help="with workers: a reset or step taking longer than S seconds ends that episode as an error "
                        "and restarts its worker (default 180 s reset / 60 s step)")
    p.add_argument("--batch", type=int_at_least(1, high=256),
                   help="N parallel envs feeding one model call per step (= --workers N; batched on the native "
                        "backend, a loop on the remote code)")
    p.add_argument("--overlap", action="store_true",
                   help="split the envs into two groups: one simulates while the model acts for the other")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="env workers as Ray actors on a cluster (ADDRESS, e.g. auto or host:6379; no value: a local "
                        "Ray instance); the run folder stays in this process")
    p.add_argument("--policy-actors", type=_process_count, metavar="N",
                   help="with --ray: the policy in N Ray actors, each batching the observations of its env "
                        "actors (default: one per cluster GPU for a CUDA model; 0 for CPU: the policy in this process)")
    add_threads_flag(p)
    p.add_argument("--out", type=out_dir, help="run folder (default: runs/<policy>-<suite>-<tasks>-<tags>)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report at the end")
    p.add_argument("--monitor", action="store_true", help="attach the runtime monitor; alerts go to the logs and report")
    p.add_argument("--stop-on-alert", action="store_true", help="end an episode at its monitor's first alert")
    p.add_argument("--forecaster", type=Path, metavar="F.json",
                   help="with the monitor, a failure forecaster (vla-eval forecast fit): its warnings go to the logs")
    p.add_argument("--record-features", action="store_true",
                   help="native OpenVLA: each step's hidden-state summary (middle and last layer) to features/")
    p.add_argument("--check-world", action="store_true", help="pre-flight: the first task's camera, lights and "
                   "settling against the published world (vla-eval check-world); differences are warnings")
    p.add_argument("--videos", default="default", metavar="POLICY",
                   help="agentview videos to keep (cameras on): none | failures | all | first:K | default "
                        "(every failure + one success per tag, at most 8 per tag)")


def _fault_type(text: str) -> tuple[str, ...]:
    try:
        return parse_faults(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_fault_args(p, what: str) -> None:
    """``--fault NAME[,NAME]`` (or ``all``) from the fault table; the chapter's three also keep their flags.
    They sit in the identity group (the run tags are part of what is run)."""
    flags = [p.add_argument("--fault", type=_fault_type, action="append", metavar="NAME",
                            help=f"{what}: {', '.join(FAULTS)}; several separated by commas, 'all' for every one, "
                                 "a+b for both in one run")]
    flags += [p.add_argument(f.flag, action="store_true", help=f"= --fault {f.name}: {f.help}")
              for f in FAULTS.values() if f.flag]
    flags += add_perturb_args(p)
    p.set_defaults(identity=p.get_default("identity") + flags)


def _perturb_list(text: str) -> tuple[str, ...]:
    """``--perturb camera:2,light:1``: perturbation run tags, each checked against the family table."""
    from vla_eval.perturbations import parse

    try:
        return tuple(parse(part.strip()).tag for part in text.split(",") if part.strip())
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_perturb_args(p) -> list:
    from vla_eval.perturbations import FAMILIES

    return [p.add_argument("--perturb", type=_perturb_list, metavar="FAMILY:LEVEL",
                           help=f"perturbed runs next to the unperturbed baseline on the same (task, seed) pairs, "
                                f"e.g. camera:2,light:1; families: {', '.join(FAMILIES)}; levels 1-3"),
            p.add_argument("--perturb-seed", type=int_at_least(0, high=2**31 - 1), default=0,
                           help="the seed perturbations are drawn from (default 0; recorded in the manifest)")]


# -- from flags to the typed run (parsed once) ---------------------------------------------------
def given_identity(args) -> list[str]:
    """The identity flags given on the command line (those that differ from their defaults)."""
    def default(a):  # argparse converts a string default with the flag's type
        return a.type(a.default) if isinstance(a.default, str) and a.type else a.default
    return [a.option_strings[0] for a in args.identity if getattr(args, a.dest) != default(a)]


def _task_ids(args, suite: str) -> tuple[int, ...]:
    from vla_eval.sims.protocol import suite_spec

    return tuple(range(suite_spec(suite).n_tasks)) if args.all_tasks else (args.tasks or (args.task,))


def run_configs(args, tags: tuple[str, ...]) -> list:
    """One SweepConfig per suite; the config checks itself (suite, tasks, seeds, tags, shard), the
    registry the policy, before any model or device."""
    from vla_eval.policies.factory import policy_spec
    from vla_eval.rundir import SweepConfig, parse_suites

    suites = parse_suites(args.suite)
    spec = policy_spec(args.policy)
    cameras = spec.reads_images if args.cameras == "auto" else args.cameras == "on"
    return [SweepConfig(suite=suite, task_ids=_task_ids(args, suite), seeds=args.seeds, policy=args.policy,
                        tags=tags, cameras=cameras, hard_reset=not args.fast_reset, max_steps=args.max_steps,
                        checkpoint=args.checkpoint, revision=args.revision, shard=args.shard,
                        perturb_seed=getattr(args, "perturb_seed", 0))
            for suite in suites]


def model_options_from(args, policy: str):
    """The model flags of a model policy (None for the others; given flags are refused there)."""
    from vla_eval.policies.factory import model_options, policy_spec

    opts = model_options(policy, args.checkpoint, args.revision, args.attn, args.device, args.backend, args.dtype)
    return opts if policy_spec(policy).model else None


def execution_from(args):
    from vla_eval.sweep import Execution

    if args.batch is not None and args.workers and args.workers != args.batch:
        raise UsageError(f"--batch {args.batch} runs {args.batch} env workers; drop --workers {args.workers}")
    return Execution(workers=args.batch or args.workers, overlap=args.overlap, env_timeout_s=args.env_timeout,
                     ray_address=args.ray, policy_actors=args.policy_actors, videos=args.videos,
                     monitor=args.monitor, stop_on_alert=args.stop_on_alert,
                     forecaster=str(args.forecaster) if args.forecaster else None,
                     record_features=args.record_features, check_world=args.check_world,
                     retry_errors=args.retry_errors, progress=not args.no_progress)


def with_perturbations(tags: list[str], perturbs) -> tuple[str, ...]:
    """Each chosen run (baseline or fault) unperturbed, then under each perturbation."""
    return tuple(tags + [p if t == "baseline" else f"{t}+{p}" for t in tags for p in perturbs or ()])


def chosen_faults(args) -> list[str]:
    chosen = [name for name, f in FAULTS.items() if f.flag and getattr(args, f.flag[2:].replace("-", "_"))]
    for group in args.fault or ():
        chosen += [t for t in group if t not in chosen]
    return chosen


