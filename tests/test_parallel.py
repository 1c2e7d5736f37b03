"""Env workers: stepping together, and surviving a worker that raises or dies."""
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from vla_eval.sims.parallel import EnvPool, EnvSpec, WorkerError
from vla_eval.sims.protocol import Observation, StepResult, WAIT_ACTION

pytestmark = pytest.mark.libero

SPEC = EnvSpec("libero_object", 0, cameras=False, hard_reset=False)


@pytest.fixture(scope="module")
def pool():
    with EnvPool(2) as p:
        yield p


def test_workers_step_together(pool):
    first = pool.reset({0: (SPEC, 0), 1: (SPEC, 1)})
    assert all(isinstance(o, Observation) for o in first.values())
    assert not np.allclose(first[0].objects["basket_1_pos"], first[1].objects["basket_1_pos"])
    out = pool.step({0: WAIT_ACTION, 1: WAIT_ACTION})
    assert all(isinstance(r, StepResult) for r in out.values())


def test_exception_in_worker_becomes_error_with_traceback(pool):
    pool.reset({0: (SPEC, 0), 1: (SPEC, 1)})
    out = pool.step({0: np.zeros(3), 1: WAIT_ACTION})
    assert isinstance(out[0], WorkerError) and out[0].kind == "exception"
    assert "shape (7,)" in out[0].message and "Traceback" in out[0].traceback
    assert isinstance(out[1], StepResult)
    assert isinstance(pool.step({0: WAIT_ACTION})[0], StepResult)  # the worker lives on


def test_crashed_worker_is_restarted_and_others_go_on(pool):
    pool.reset({0: (SPEC, 0), 1: (SPEC, 1)})
    restarts = pool.restarts
    os.kill(pool.pid(0), signal.SIGKILL)  # as a segfault would
    out = pool.step({0: WAIT_ACTION, 1: WAIT_ACTION})
    assert isinstance(out[0], WorkerError) and out[0].kind == "crash"
    assert isinstance(out[1], StepResult)
    assert pool.restarts == restarts + 1
    again = pool.reset({0: (SPEC, 2)})  # the fresh worker builds its env lazily
    assert isinstance(again[0], Observation)


def test_runner_records_crash_as_error_outcome(pool, tmp_path):
    """A worker dying mid-episode turns into outcome 'error', kept apart from failures; the
    other episodes run to their step cap."""
    from vla_eval.policies.scripted import ScriptedExpert
    from vla_eval.records import JsonlWriter, read_jsonl
    from vla_eval.runner import EpisodeShape, Execution, make_jobs, run_episodes

    class KillsSecondEpisodesWorker(ScriptedExpert):
        """Kills the env worker running the 2nd episode at its 5th step, as a segfault would."""

        def __init__(self, pool):
            super().__init__()
            self.pool, self.resets, self.victim, self.steps = pool, 0, None, 0

        def reset(self, slot=0):
            super().reset(slot)
            self.resets += 1
            if self.resets == 2:
                self.victim = slot

        def act(self, obs, slots=None):
            self.steps += 1
            if self.steps == 5 and self.victim is not None:
                os.kill(self.pool.pid(self.victim), signal.SIGKILL)
            return super().act(obs, slots)

    path = tmp_path / "baseline.jsonl"
    with JsonlWriter(path) as w:
        eps = run_episodes(KillsSecondEpisodesWorker(pool), make_jobs("libero_object", [0], [0, 1, 2]), w,
                           "baseline", EpisodeShape(cameras=False, hard_reset=False, max_steps=20),
                           Execution(workers=2), pool=pool)
    by_seed = {e.seed: e for e in eps}
    assert by_seed[1].outcome == "error" and by_seed[1].error.startswith("crash")
    assert (by_seed[0].outcome, by_seed[0].steps) == (by_seed[2].outcome, by_seed[2].steps) == ("failure", 20)
    assert len(read_jsonl(path).episodes) == 3


def test_overlapped_env_groups_give_the_same_rollouts(pool, tmp_path):
    """--overlap: two groups alternate (one steps while the policy acts for the other); the
    episodes must be exactly those of the plain lockstep loop."""
    from vla_eval.policies.scripted import ScriptedExpert
    from vla_eval.records import JsonlWriter, read_jsonl
    from vla_eval.runner import EpisodeShape, Execution, make_jobs, run_episodes

    class CountsBatches(ScriptedExpert):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def act(self, obs, slots=None):
            self.sizes.append(len(obs))
            return super().act(obs, slots)

    runs = {}
    for overlap in (False, True):
        policy, path = CountsBatches(), tmp_path / f"overlap{overlap}.jsonl"
        shape, ex = EpisodeShape(cameras=False, hard_reset=True, max_steps=25), Execution(workers=2, overlap=overlap)
        with JsonlWriter(path) as w:
            run_episodes(policy, make_jobs("libero_object", [0], [0, 1]), w, "baseline", shape, ex, pool=pool)
        log = read_jsonl(path)
        runs[overlap] = {(s.seed, s.step): s.action for s in log.steps}, set(policy.sizes)
        assert sorted(e.steps for e in log.episodes) == [25, 25]
    assert runs[False][0] == runs[True][0] and len(runs[True][0]) == 50
    assert runs[False][1] == {2} and runs[True][1] == {1}  # lockstep: both slots per call; overlap: one group


def test_a_policy_that_raises_ends_its_episode_as_an_error_and_the_sweep_goes_on(tmp_path):
    """A policy bug (e.g. a KeyError on a scene it does not know) on one episode: that episode is
    an error with the traceback; the next episodes run as usual."""
    from vla_eval.policies.scripted import ScriptedExpert
    from vla_eval.records import JsonlWriter, read_jsonl
    from vla_eval.runner import EpisodeShape, make_jobs, run_episodes

    class RaisesOnSeedOne(ScriptedExpert):
        def reset(self, slot=0):
            super().reset(slot)
            self.episode = getattr(self, "episode", -1) + 1

        def act(self, obs, slots=None):
            if self.episode == 1:
                raise KeyError("basket_1_pos")
            return super().act(obs, slots)

    path = tmp_path / "baseline.jsonl"
    with JsonlWriter(path) as w:
        eps = run_episodes(RaisesOnSeedOne(), make_jobs("libero_object", [0], [0, 1, 2]), w, "baseline",
                           EpisodeShape(cameras=False, hard_reset=False, max_steps=20))
    by_seed = {e.seed: e for e in eps}
    assert by_seed[1].outcome == "error" and by_seed[1].error.startswith("policy: KeyError: 'basket_1_pos'")
    assert "Traceback" in by_seed[1].error
    assert (by_seed[0].outcome, by_seed[0].steps) == (by_seed[2].outcome, by_seed[2].steps) == ("failure", 20)
    assert len(read_jsonl(path).episodes) == 3


def _sleep_as_a_worker():
    import time

    from vla_eval.sims.stopping import die_with_parent

    die_with_parent()
    time.sleep(60)  # a worker still importing its simulator


PARENT = """
import multiprocessing as mp, sys, time
sys.path.insert(0, {tests!r})
from test_parallel import _sleep_as_a_worker
if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=_sleep_as_a_worker, daemon=True)
    p.start()
    print(p.pid, flush=True)
    time.sleep(60)
"""


def test_a_worker_dies_with_its_sigkilled_parent_within_two_seconds(tmp_path):
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(tests=str(Path(__file__).parent)))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(1.0)  # the child has called die_with_parent
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists() and "Z" not in _state(child):
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child), "the worker outlived its parent"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return "Z"
