"""Perturbation families: the table and its run tags, the paired statistics of the robustness
profile, and on real LIBERO: the published frames unchanged when no perturbation is asked for,
every family changing what it names, the same draw for the same (task, seed), the sweep's records."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vla_eval.errors import UsageError
from vla_eval.faults import UnknownRunTag, toggles_for
from vla_eval.perturbations import FAMILIES, Perturbation, parse, split_tag
from vla_eval.reports.robustness import verdict
from vla_eval.reports.stats import mcnemar_exact_p, paired_difference_ci, smallest_detectable_change
from vla_eval.rundir import SweepConfig

DATA = Path(__file__).parent / "data"


def test_at_least_seven_families_of_three_levels():
    assert len(FAMILIES) >= 7 and all(len(f.magnitudes) == 3 for f in FAMILIES.values())


@pytest.mark.parametrize("tag, message", [
    ("telepathy:2", "unknown perturbation family 'telepathy'.*valid: camera, light"),
    ("camera:4", "level '4' of camera is out of range; valid: 1, 2, 3"),
    ("camera:x", "level 'x'"),
    ("camera:1+light:2", "names 2 perturbations; one per run tag"),
])
def test_bad_perturbation_tags_name_the_valid_values(tag, message):
    with pytest.raises(UsageError, match=message):
        split_tag(tag) if "+" in tag else parse(tag)
    with pytest.raises(UnknownRunTag):
        SweepConfig("libero_object", (0,), (0,), "tiny", tags=("baseline", tag))


def test_perturbation_tags_compose_with_faults():
    assert split_tag("no_flip+camera:2") == (("no_flip",), Perturbation("camera", 2))
    assert toggles_for("no_flip+camera:2") == toggles_for("no_flip")
    assert toggles_for("camera:2") == toggles_for("baseline")
    cfg = SweepConfig("libero_object", (0,), (0,), "tiny", tags=("baseline", "camera:2"), perturb_seed=3)
    assert cfg.shape.perturb_seed == 3


def test_paired_interval_and_exact_test():
    lo, hi = paired_difference_ci(10, 6, 0, 4)  # 20 pairs, 6 losses, no wins
    assert -1 <= lo < -0.3 < hi < 0 and mcnemar_exact_p(6, 0) == pytest.approx(0.03125)
    assert smallest_detectable_change(20) == pytest.approx(0.30) and smallest_detectable_change(5) is None
    assert verdict(-0.3, (lo, hi), 0.03, 20).startswith("hurts")
    assert verdict(-0.1, (-0.35, 0.12), 0.5, 20).startswith("underpowered: 20 pairs show only changes of 30 pp")


def test_paired_interval_covers_at_least_nominally_on_small_samples():
    rng = np.random.default_rng(0)
    cover, trials = 0, 2000
    probs = np.array([0.45, 0.15, 0.05, 0.35])  # both, only A, only B, neither: true difference -0.10
    for _ in range(trials):
        counts = rng.multinomial(30, probs)
        lo, hi = paired_difference_ci(*counts)
        cover += lo <= -0.10 <= hi
    assert cover / trials >= 0.93


# -- real LIBERO ------------------------------------------------------------------------------------
@pytest.mark.libero
def test_unperturbed_frames_are_the_published_ones_and_each_family_changes_its_world():
    from vla_eval.sims.libero_env import LiberoEnv

    stored = np.load(DATA / "libero_frames.npz")
    i = list(stored["names"]).index("libero_object/task2/step0")
    with LiberoEnv("libero_object", 2, cameras=True, hard_reset=False, camera_names=("agentview",)) as env:
        first = env.reset(0)
        assert np.array_equal(first.agentview, stored["frames"][i])  # no perturbation: bit-exact
    with LiberoEnv("libero_object", 2, cameras=True, hard_reset=False, camera_names=("agentview",),
                   resolution=64) as env:
        env.reset(0)
        base = env.reset(0)
    for family in FAMILIES:
        with LiberoEnv("libero_object", 2, cameras=True, hard_reset=False, camera_names=("agentview",),
                       resolution=64, perturbation=Perturbation(family, 2)) as env:  # small frames: a quicker test
            env.reset(0)
            a, b = env.reset(0), env.reset(0)
            if family == "language":
                assert a.instruction != base.instruction and np.array_equal(a.agentview, base.agentview)
            else:
                assert not np.array_equal(a.agentview, base.agentview), family
            assert np.array_equal(a.agentview, b.agentview) or family == "noise", family  # the same draw per (task, seed)
            assert a.instruction == b.instruction


@pytest.mark.libero
def test_sweep_perturb_records_family_level_and_seed(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "vla_eval.cli", "sweep", "--policy", "scripted", "--task", "4",
                        "--seeds", "2", "--max-steps", "30", "--fast-reset", "--perturb", "layout:3", "--perturb-seed",
                        "5", "--no-progress", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["config"]["perturb_seed"] == 5
    eps = [json.loads(x) for x in (out / "layout:3.jsonl").read_text().splitlines() if '"kind":"episode"' in x]
    assert {(e["perturbation"], e["perturbation_seed"]) for e in eps} == {("layout:3", 5)}
    assert 'id="robustness-table"' in (out / "report.html").read_text()
