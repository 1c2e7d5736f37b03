"""Validate the failure-mode taxonomy on episodes whose mode is known by construction: the scripted
expert made to fail on purpose (``policies/failing.py``), every variant on the given libero_object
tasks and seeds. Resumable: each episode's line is appended to ``--out`` as it finishes.

    python -m vla_eval.failure_check --tasks 0-9 --seeds 10,11 --out runs/failure-check.jsonl

Prints, per constructed mode, how many episodes the classifier named right (the docs' table).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import vla_eval.argtypes as argtypes
from vla_eval.errors import UsageError
from vla_eval.policies.failing import SABOTAGES, FailingExpert, expected_mode
from vla_eval.policies.scripted import ScriptedExpert

SUITE = "libero_object"  # the suite the scripted expert can do
EXPERT = "expert"  # the plain scripted expert's row


def done_keys(out: Path) -> set[tuple[int, int, str]]:
    """Episodes already in ``out`` (a torn last line is not one: that episode runs again)."""
    return {(r["task"], r["seed"], r["variant"]) for r in read_rows(out)}


def run(tasks, seeds, variants, out: Path, max_steps: int | None = None) -> list[dict]:
    from vla_eval.rollout import rollout
    from vla_eval.sims.libero_env import LiberoEnv

    done, rows = done_keys(out), []
    out.parent.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        # The plain expert first on each (task, seed): a sabotage counts only where the expert succeeds,
        # so the one thing that differs is the constructed failure.
        todo = [(s, v) for s in seeds for v in (EXPERT, *variants)
                if (task, s, v) not in done and (v == EXPERT or task in SABOTAGES[v].tasks)]
        if not todo:
            continue
        expert_ok = {s: r["outcome"] == "success" for r in read_rows(out) if r["task"] == task and r["variant"] == EXPERT
                     for s in [r["seed"]]}
        with LiberoEnv(SUITE, task, cameras=False, hard_reset=False) as env, open(out, "a") as f:
            for seed, variant in todo:
                if variant != EXPERT and not expert_ok.get(seed, False):
                    continue
                policy = ScriptedExpert() if variant == EXPERT else FailingExpert(variant)
                ep, _ = rollout(env, policy, seed, max_steps=max_steps)
                if variant == EXPERT:
                    expert_ok[seed] = ep.success
                row = dict(task=task, seed=seed, variant=variant, expected=None if variant == EXPERT else expected_mode(variant),
                           outcome=ep.outcome, mode=ep.failure_mode, step=ep.failure_step, evidence=ep.failure_evidence)
                f.write(json.dumps(row) + "\n")
                f.flush()
                rows.append(row)
                print(f"task {task} seed {seed} {variant}: {ep.failure_mode} ({ep.failure_evidence})", flush=True)
    return rows


def read_rows(out: Path) -> list[dict]:
    rows = []
    for line in (out.read_text().splitlines() if out.exists() else []):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def table(out: Path) -> str:
    rows = read_rows(out)
    expert_ok = {(r["task"], r["seed"]) for r in rows if r["variant"] == EXPERT and r["outcome"] == "success"}
    expert_n = sum(r["variant"] == EXPERT for r in rows)
    right, total, wrong = Counter(), Counter(), defaultdict(Counter)
    for r in rows:
        if r["variant"] == EXPERT or (r["task"], r["seed"]) not in expert_ok:
            continue
        total[r["variant"]] += 1
        if r["mode"] == r["expected"]:
            right[r["variant"]] += 1
        else:
            wrong[r["variant"]][r["mode"] if r["outcome"] != "success" else "(succeeded)"] += 1
    lines = ["| constructed | how | named right | named otherwise |", "| --- | --- | --- | --- |"]
    for v, sab in SABOTAGES.items():
        if total[v]:
            other = ", ".join(f"{m} {n}" for m, n in wrong[v].most_common()) or "-"
            lines.append(f"| {v} | {sab.how} | {right[v]}/{total[v]} ({100 * right[v] / total[v]:.0f}%) | {other} |")
    lines.append(f"(constructed on the {len(expert_ok)} of {expert_n} (task, seed) pairs where the plain expert succeeds)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vla_eval.failure_check", description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=argtypes.id_set("--tasks"), default=tuple(range(10)), help="task ids (ids and ranges)")
    ap.add_argument("--seeds", type=argtypes.seeds("--seeds", count=False), default=(10, 11), help="seed ids (ids and ranges)")
    ap.add_argument("--variants", default=",".join(SABOTAGES), help=f"comma list of {', '.join(SABOTAGES)}")
    ap.add_argument("--out", type=argtypes.out_file, default=Path("runs/failure-check.jsonl"))
    args = ap.parse_args(argv)
    try:
        variants = [v for v in args.variants.split(",") if v]
        for v in variants:
            FailingExpert(v)
        run(args.tasks, args.seeds, variants, args.out)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
