"""``vla-eval bench-sim``: what one LIBERO env costs on this machine, to size a sweep.

Prints env create and reset times, the per-step time split into physics (cameras off)
and rendering (the extra time of two 256x256 cameras), the task-state read every step makes
(what the failure modes read), and aggregate steps/s for
1..N spawned workers stepping together. ``--perturb LEVEL``: instead, what each perturbation
family costs per reset and per step against the unperturbed env.
"""
from __future__ import annotations

import time
from dataclasses import dataclass


from vla_eval.sims.protocol import WAIT_ACTION


@dataclass(frozen=True)
class BenchConfig:
    suite: str = "libero_object"
    task_id: int = 0
    steps: int = 40
    max_workers: int = 2
    cameras_in_pool: bool = True


def _time_env(suite: str, task_id: int, cameras: bool, steps: int) -> dict:
    from vla_eval.sims.libero_env import LiberoEnv

    t = time.perf_counter()
    env = LiberoEnv(suite, task_id, cameras=cameras, hard_reset=True)
    create = time.perf_counter() - t
    t = time.perf_counter()
    env.reset(0)
    hard = time.perf_counter() - t
    env.close()
    env = LiberoEnv(suite, task_id, cameras=cameras, hard_reset=False)
    env.reset(0)
    t = time.perf_counter()
    env.reset(1)
    soft = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        env.step(WAIT_ACTION)
    per_step = (time.perf_counter() - t) / steps  # a step reads the task state once: included
    t = time.perf_counter()
    for _ in range(steps):
        env._task.read()
    read = (time.perf_counter() - t) / steps
    env.close()
    return {"create_s": create, "reset_hard_s": hard, "reset_soft_s": soft, "step_s": per_step, "task_state_s": read}


def _pool_rate(cfg: BenchConfig, n: int) -> float:
    from vla_eval.sims.parallel import EnvPool, EnvSpec

    spec = EnvSpec(cfg.suite, cfg.task_id, cameras=cfg.cameras_in_pool, hard_reset=False)
    with EnvPool(n) as pool:
        pool.reset({s: (spec, s) for s in range(n)})
        actions = {s: WAIT_ACTION for s in range(n)}
        pool.step(actions)  # warm-up
        t = time.perf_counter()
        for _ in range(cfg.steps):
            pool.step(actions)
        return n * cfg.steps / (time.perf_counter() - t)


def run_bench(cfg: BenchConfig, out=print) -> dict:
    """Note: reset times include the 10 wait steps of the protocol."""
    off = _time_env(cfg.suite, cfg.task_id, False, cfg.steps)
    on = _time_env(cfg.suite, cfg.task_id, True, cfg.steps)
    render = on["step_s"] - off["step_s"]
    out(f"LIBERO {cfg.suite} task {cfg.task_id}, {cfg.steps} steps per measurement")
    out(f"{'':24}{'cameras off':>14}{'cameras on':>14}")
    for key, label in (("create_s", "env create (s)"), ("reset_hard_s", "reset, hard (s)"),
                       ("reset_soft_s", "reset, soft (s)")):
        out(f"{label:24}{off[key]:>14.2f}{on[key]:>14.2f}")
    out(f"{'step (ms)':24}{1e3 * off['step_s']:>14.1f}{1e3 * on['step_s']:>14.1f}")
    out(f"per step: physics {1e3 * off['step_s']:.1f} ms + rendering {1e3 * render:.1f} ms (2 cameras, 256x256)")
    read = on["task_state_s"]
    out(f"task state (failure modes), read every step: {1e3 * read:.2f} ms = {100 * read / on['step_s']:.1f}% of a "
        f"step with cameras, {100 * off['task_state_s'] / off['step_s']:.1f}% of one without")
    rates = {}
    cams = "on" if cfg.cameras_in_pool else "off"
    out(f"\n{'workers':>8}{'steps/s':>10}{'speed-up':>10}   (cameras {cams}, spawned processes)")
    for n in range(1, cfg.max_workers + 1):
        rates[n] = _pool_rate(cfg, n)
        out(f"{n:>8}{rates[n]:>10.1f}{rates[n] / rates[1]:>10.2f}")
    return {"cameras_off": off, "cameras_on": on, "render_s": render, "pool_steps_per_s": rates}


def perturbation_costs(suite: str, task_id: int, level: int, steps: int, out=print) -> dict:
    """Per family at ``level``: reset time (the settle of the reset families included) and the
    step time with cameras, each against an unperturbed env measured in alternating blocks of
    10 steps beside it (so drift of a shared machine hits both alike). Medians of per-step times."""
    import numpy as np

    from vla_eval.perturbations import FAMILIES, parse
    from vla_eval.sims.libero_env import LiberoEnv

    def timed_steps(env, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            env.step(WAIT_ACTION)
            times.append(time.perf_counter() - t)
        return times

    rows = {}
    out(f"LIBERO {suite} task {task_id}, cameras on, level {level}, {steps} steps each (median per step)")
    out(f"{'family':>12}{'reset (s)':>11}{'step (ms)':>11}{'unperturbed':>13}{'cost':>8}")
    with LiberoEnv(suite, task_id, cameras=True, hard_reset=False) as plain:
        plain.reset(0)
        t = time.perf_counter()
        plain.reset(1)
        plain_reset = time.perf_counter() - t
        for name in FAMILIES:
            with LiberoEnv(suite, task_id, cameras=True, hard_reset=False,
                           perturbation=parse(f"{name}:{level}")) as env:
                env.reset(0)
                t = time.perf_counter()
                env.reset(1)
                reset = time.perf_counter() - t
                ours, theirs = [], []
                for _ in range(max(1, steps // 10)):
                    ours += timed_steps(env, 10)
                    theirs += timed_steps(plain, 10)
            step, base = float(np.median(ours)), float(np.median(theirs))
            rows[name] = {"reset_s": reset, "step_s": step, "unperturbed_step_s": base,
                          "unperturbed_reset_s": plain_reset}
            out(f"{name:>12}{reset:>11.2f}{1e3 * step:>11.1f}{1e3 * base:>13.1f}{100 * (step / base - 1):>+7.1f}%")
    out(f"{'(none)':>12}{plain_reset:>11.2f}")
    return rows


if __name__ == "__main__":
    run_bench(BenchConfig())
