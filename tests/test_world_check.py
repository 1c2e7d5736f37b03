"""Pre-flight for an unintended shift: the shipped reference worlds match this (published) stack, and
a moved camera, a changed light or a scene that keeps moving are each named on one line."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from vla_eval.sims.world_check import differences, reference_path

REF = json.loads(reference_path("libero_object").read_text())


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vla_eval.cli", "check-world", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_the_reference_matches_itself_and_each_shift_is_named():
    ref = REF["tasks"]["5"]
    assert differences(copy.deepcopy(ref), ref) == []
    shifted = copy.deepcopy(ref)
    shifted["camera"]["pos"][0] += 0.02
    shifted["lights"][0]["diffuse"] = [0.5, 0.5, 0.5]
    name = next(iter(ref["still_m"]))
    shifted["still_m"][name] += 0.03
    del shifted["settle_m"][sorted(ref["settle_m"])[-1]]
    lines = differences(shifted, ref)
    assert len(lines) == 4, lines
    assert "agentview camera moved 20.0 mm" in lines[0]
    assert lines[1].startswith("light 0: diffuse")
    assert any(f"{name} moves 30.0 mm in 40 still steps" in ln and "does not settle" in ln for ln in lines)
    assert any("is missing from the scene" in ln for ln in lines)


def test_mujoco_3_4s_world_is_caught_where_the_bowl_comes_to_rest():
    """A fingerprint written under MuJoCo 3.4.0: libero_spatial task 5's bowl settles 3.4 cm from
    where the published stack seats it (lerobot#4390: 98% -> 12% success); named on one line."""
    from pathlib import Path

    got = json.loads((Path(__file__).parent / "data" / "world" / "libero_spatial-task5-mujoco-3.4.0.json").read_text())
    assert got["versions"]["mujoco"] == "3.4.0"
    ref = json.loads(reference_path("libero_spatial").read_text())["tasks"]["5"]
    lines = differences(got["tasks"]["5"], ref)
    rests = [ln for ln in lines if "comes to rest" in ln]
    assert len(rests) == 1 and rests[0].startswith("akita_black_bowl_1 comes to rest 3") and "MuJoCo version" in rests[0]
    assert not any("camera" in ln or "light" in ln for ln in lines)


def test_shipped_references_name_the_published_stack():
    for suite in ("libero_object", "libero_spatial", "libero_goal", "libero_10"):
        ref = json.loads(reference_path(suite).read_text())
        assert ref["versions"] == {"libero": "0.1.1", "robosuite": "1.4.0", "mujoco": "3.3.2"}
        assert sorted(map(int, ref["tasks"])) == list(range(10))


@pytest.mark.libero
def test_this_machine_matches_and_a_moved_camera_is_reported():
    r = _cli("--tasks", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "libero_object task 0: matches the published world" in r.stdout

    from vla_eval.sims.libero_env import LiberoEnv
    from vla_eval.sims.world_check import fingerprint

    with LiberoEnv("libero_object", 1, cameras=False, hard_reset=False) as env:
        env._env.reset()
        model = env.sim.model
        model.cam_pos[model.camera_name2id("agentview")] += [0.0, 0.015, 0.0]  # another asset copy's camera
        lines = differences(fingerprint(env), REF["tasks"]["1"])
    assert lines == [lines[0]] and "agentview camera moved 15.0 mm" in lines[0]


def test_bad_input_is_one_line_and_nothing_is_written(tmp_path):
    r = _cli("--suite", "libero_nope")
    assert r.returncode == 2 and "libero_nope" in r.stderr and "libero_object" in r.stderr
    existing = tmp_path / "ref.json"
    existing.write_text("{}")
    r = _cli("--write-reference", existing)
    assert r.returncode == 2 and "exists" in r.stderr and existing.read_text() == "{}"
    r = _cli("--suite", "libero_spatial", "--reference", reference_path("libero_object"))
    assert r.returncode == 2 and "reference of suite 'libero_object'" in r.stderr
    r = _cli("--reference", tmp_path / "none.json")
    assert r.returncode == 2 and "no reference world" in r.stderr


@pytest.mark.libero
def test_sweep_checks_its_first_tasks_world_before_the_first_episode(tmp_path, cli_run, monkeypatch, capsys):
    r = cli_run("sweep", "--policy", "zero", "--tasks", "0", "--seeds", "1", "--max-steps", "2", "--check-world",
                "--no-progress", "--no-report", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pre-flight world: libero_object task 0: matches the published world" in r.stdout

    import vla_eval.sims.world_check as wc
    from vla_eval.preflight import preflight_world

    def shifted(suite, tasks, reference, out=print):
        out(f"{suite} task {tasks[0]}: 1 difference(s)")
        out("  - agentview camera moved 15.0 mm")
        return 1

    monkeypatch.setattr(wc, "check_world", shifted)
    assert preflight_world("libero_object", 3) == 1
    assert "pre-flight warning: world: - agentview camera moved 15.0 mm" in capsys.readouterr().err
    monkeypatch.setattr(wc, "reference_path", lambda suite: tmp_path / "none.json")
    said = []
    assert preflight_world("libero_object", 3, out=said.append) == 0 and "not checked" in said[0]
