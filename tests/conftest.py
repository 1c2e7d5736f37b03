"""Shared fixtures. LIBERO tests use the real simulator on CPU (physics only unless a test
needs pixels); one env per module keeps the suite inside CI's budget."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Test processes share the cores: each takes its share of threads (torch, imported later, and
    # every vla-eval process a test starts read them), or their OpenMP threads take turns spinning.
    from vla_eval.threads import prepare_process, usable_cores

    prepare_process(max(1, usable_cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="module")
def object_env():
    """libero_object task 0, cameras off, soft resets (same init states, faster)."""
    from vla_eval.sims.libero_env import LiberoEnv

    env = LiberoEnv("libero_object", 0, cameras=False, hard_reset=False)
    yield env
    env.close()


@pytest.fixture()
def cli_run(capsys):
    """``cli.main`` in this process: ``cli_run(*argv)`` returns what ``subprocess.run`` would
    (``returncode``, ``stdout``, ``stderr``); argparse's own refusals exit via SystemExit.
    Cheaper than a subprocess (no interpreter, no imports)."""
    import subprocess

    def call(*argv) -> subprocess.CompletedProcess:
        from vla_eval.cli import main

        argv = [str(a) for a in argv]
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, captured.out, captured.err)

    return call


@pytest.fixture()
def cli_main(cli_run):
    """``cli_main(*argv) -> (exit code, stderr)``: ``cli_run`` for refusals."""
    def call(*argv) -> tuple[int, str]:
        r = cli_run(*argv)
        return r.returncode, r.stderr

    return call


# -- shared record and run-folder factories (the records, writer and reader are real) ------------
def make_step(attempt: str = "a0", step: int = 0, *, tag: str = "baseline", task: int = 0, seed: int = 0,
              grip: float = 1.0, **kw):
    from vla_eval.records import StepRecord

    fields = dict(run_tag=tag, task_id=task, seed=seed, attempt=attempt, step=step, action=(0.1,) * 6 + (grip,),
                  img_mean=100.0, reward=0.0, done=False, policy_s=0.01, sim_s=0.02)
    return StepRecord(**{**fields, **kw})


def make_episode(attempt: str = "a0", *, tag: str = "baseline", task: int = 0, seed: int = 0,
                 outcome: str = "success", **kw):
    from vla_eval.records import EpisodeRecord

    fields = dict(run_tag=tag, suite="libero_object", task_id=task, seed=seed, init_state=seed, attempt=attempt,
                  outcome=outcome, steps=2, first_close_step=1, wall_s=1.0, policy_s=0.1, sim_s=0.5,
                  instruction="pick")
    return EpisodeRecord(**{**fields, **kw})


def make_run(folder, outcomes: dict, tags=("baseline",), policy: str = "scripted", seeds=None, steps: int = 1,
             **cfg_kw):
    """A run folder: manifest + one log per tag, ``steps`` step lines and the episode line per
    ``outcomes`` entry {(task, seed): outcome}. Seeds default to 0..max given."""
    from pathlib import Path

    from vla_eval.records import JsonlWriter
    from vla_eval.rundir import SweepConfig, check_or_write_manifest

    folder = Path(folder)
    tasks = sorted({t for t, _ in outcomes})
    seeds = seeds if seeds is not None else max(s for _, s in outcomes) + 1
    cfg = SweepConfig(suite="libero_object", task_ids=tuple(tasks), seeds=seeds, policy=policy, tags=tuple(tags),
                      cameras=False, **cfg_kw)
    check_or_write_manifest(folder, cfg)
    for tag in tags:
        with JsonlWriter(folder / f"{tag}.jsonl") as w:
            for (t, s), outcome in outcomes.items():
                att = f"{tag}{t}{s}"
                for i in range(steps):
                    w.write(make_step(att, i, tag=tag, task=t, seed=s))
                w.write(make_episode(att, tag=tag, task=t, seed=s, outcome=outcome, instruction=f"pick up thing {t}"))
    return folder


def build_wheel(tmp):
    """The wheel built from the tracked files only (a copy: no stale build/ in the clone), checked."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root, tmp = Path(__file__).resolve().parents[1], Path(tmp)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, files.split("\0")):
        if (root / rel).is_file():
            (tmp / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, tmp / "src" / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "dist"), str(tmp / "src")], check=True, capture_output=True, timeout=900)
    (wheel,) = (tmp / "dist").glob("vla_eval_libero-*.whl")
    return wheel
