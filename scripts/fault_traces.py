"""Fault traces of an OpenVLA checkpoint on chosen seeds: the monitor's calibration data.

``vla-eval sweep --seeds N`` always runs seeds 0..N-1; the monitor needs fault runs on the
calibration seeds only (kept apart from the held-out seeds it is judged on), so this runs
exactly the given seeds, one JSONL per tag, resumable (a (task, seed) already in a log is
skipped).

    python scripts/fault_traces.py --checkpoint configs/checkpoints/tiny-openvla-libero_object \\
        --seeds 3,4 --out runs/tiny-faults-calib
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--seeds", required=True, help="comma-separated, e.g. 3,4")
    p.add_argument("--tags", default="no_flip,bad_prompt,bad_unnorm")
    p.add_argument("--max-steps", type=int, default=60, help="the monitor judges the first steps (default 60)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    from vla_eval.policies.factory import model_options, make_policies
    from vla_eval.records import JsonlWriter
    from vla_eval.runner import RunConfig, make_jobs, run_episodes
    from vla_eval.sims.libero_env import configure_gl
    from vla_eval.sims.pools import make_pool
    from vla_eval.sweep import committed, toggles_for

    configure_gl()
    tags = args.tags.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    opts = model_options("openvla", checkpoint=args.checkpoint, device="cpu", dtype="float32")
    policies = make_policies("openvla", "libero_object", [toggles_for(t) for t in tags], opts)
    args.out.mkdir(parents=True, exist_ok=True)
    rc = RunConfig(max_steps=args.max_steps, workers=args.workers)
    with make_pool(args.workers) as pool:
        for tag, policy in zip(tags, policies):
            done = {(e.task_id, e.seed) for e in committed(args.out, tag)}  # the sweep's resume rule
            jobs = [j for j in make_jobs("libero_object", range(10), seeds) if (j.task_id, j.seed) not in done]
            with JsonlWriter(args.out / f"{tag}.jsonl") as w:
                eps = run_episodes(policy, jobs, w, tag, rc, pool=pool)
            print(f"{tag}: {len(eps)} run, {len(done)} already there", flush=True)


if __name__ == "__main__":  # spawned env workers re-import this module
    main()
