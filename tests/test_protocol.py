"""The published evaluation protocol's constants and input validation (no simulator)."""
import subprocess
import sys

import numpy as np
import pytest

from vla_eval.sims.protocol import NUM_WAIT_STEPS, RESOLUTION, SUITES, WAIT_ACTION, check_task_id, suite_spec
from vla_eval.errors import UsageError


def test_suite_step_limits_match_the_published_eval():
    assert {k: v.max_steps for k, v in SUITES.items()} == {
        "libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400,
    }
    assert {k: v.n_tasks for k, v in SUITES.items()} == {
        "libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90,
    }


def test_wait_steps_hold_still_with_gripper_open():
    assert NUM_WAIT_STEPS == 10
    np.testing.assert_array_equal(WAIT_ACTION, [0, 0, 0, 0, 0, 0, -1])
    assert RESOLUTION == 256


def test_unknown_suite_names_the_valid_ones():
    with pytest.raises(UsageError, match="unknown suite 'libero_objects'.*libero_spatial, libero_object"):
        suite_spec("libero_objects")


@pytest.mark.parametrize("task", [-1, 10])
def test_task_out_of_range(task):
    with pytest.raises(UsageError, match=rf"task id {task} out of range for libero_goal; valid: 0\.\.9"):
        check_task_id("libero_goal", task)


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "vla_eval.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_help_and_version_import_nothing_heavy():
    out = _cli("--help")
    assert out.returncode == 0 and "sweep" in out.stdout and "drill" in out.stdout
    assert _cli("--version").stdout.strip().startswith("vla-eval ")
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, vla_eval.cli as c; c.build_parser(); "
         "print(sorted(m for m in ('torch','transformers','libero','robosuite','mujoco') if m in sys.modules))"],
        capture_output=True, text=True)
    assert probe.stdout.strip() == "[]", probe.stderr


@pytest.mark.parametrize("argv, message", [
    (["run"], "torch sees no CUDA device. OpenVLA-7B in bf16 needs a GPU"),
    (["run", "--device", "cpu", "--checkpoint", "/nonexistent/ckpt"], "could not load '/nonexistent/ckpt'"),
    (["run", "--device", "cpu", "--native"], "could not load 'openvla/openvla-7b-finetuned-libero-object'"),
    (["run", "--device", "cpu", "--native", "--checkpoint", "/nonexistent/ckpt"], "could not load '/nonexistent/ckpt'"),
    (["run", "--device", "cpu", "--native", "--dtype", "int4"], "invalid choice: 'int4'"),
    (["run", "--device", "cpu", "--backend", "remote-code", "--dtype", "float32"], "--dtype applies to the native backend"),
    (["run", "--policy", "tiny", "--backend", "remote-code"], "tiny runs on the native backend"),
    (["run", "--backend", "jax"], "invalid choice: 'jax'"),
    (["sweep", "--suite", "libero_90", "--device", "cpu", "--no-report"], "no fine-tuned OpenVLA checkpoint for libero_90"),
])
def test_openvla_setup_problems_fail_before_any_episode(argv, message, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    out = _cli(*argv, timeout=180)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()
