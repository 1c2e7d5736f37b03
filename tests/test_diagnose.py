"""`vla-eval diagnose` on real drills of the shipped tiny policy: a library of two faults, a
held-out run on other seeds, the ranking, the export, and the refusals."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from vla_eval.diagnose import FEATURES, Library, diagnose_rows, episode_features
from vla_eval.records import StepRecord

pytestmark = pytest.mark.libero
DRILL = [sys.executable, "-m", "vla_eval.cli", "drill", "--policy", "tiny", "--tasks", "0", "--max-steps", "12",
         "--fault", "gripper_no_invert,vocab_32064", "--batch", "2", "--fast-reset", "--no-progress", "--no-report"]


def _split_by_seed(src, dst, seeds) -> None:
    """A copy of drill folder ``src`` holding only the episodes of ``seeds`` (records and
    manifest), as if the drill had run on those seeds alone."""
    dst.mkdir()
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["config"]["seeds"] = sorted(seeds)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    for log in src.glob("*.jsonl"):
        lines = [ln for ln in log.read_text().splitlines() if json.loads(ln).get("seed") in seeds]
        (dst / log.name).write_text("".join(ln + "\n" for ln in lines))


@pytest.fixture(scope="module")
def drills(tmp_path_factory):
    """One real drill on seeds 0-3 (one env build, one model load), split into the library's
    seeds 0-1 and a run on seeds 2-3 that the library has not seen."""
    root = tmp_path_factory.mktemp("diagnose")
    r = subprocess.run(DRILL + ["--seeds", "0-3", "--out", str(root / "all")], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    _split_by_seed(root / "all", root / "lib", {0, 1})
    _split_by_seed(root / "all", root / "run", {2, 3})
    return root


def test_diagnose_ranks_the_injected_fault_first_on_held_out_seeds(drills, cli_run):
    r = cli_run("diagnose", drills / "run", "--library", drills / "lib", "--per-episode")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "episodes):" in ln]
    assert len(lines) == 6
    for ln in lines:
        tag, verdict = ln.split(" task ")[0], ln.split("): ")[1].split("   ")[0]
        assert verdict == ("no known fault" if tag == "baseline" else tag), ln
    assert "grip_closed_at_0" in r.stdout  # the evidence names the statistic
    assert "gripper_no_invert        2/2   named right" in r.stdout and "healthy runs: 2/2 = 100% right" in r.stdout


def test_library_export_round_trips_and_refuses_to_overwrite(drills, tmp_path, cli_run):
    out = tmp_path / "lib.json"
    assert cli_run("diagnose", "--library", drills / "lib", "--export-library", out).returncode == 0
    d = json.loads(out.read_text())
    assert d["features"] == list(FEATURES) and set(d["rows"]) == {"baseline", "gripper_no_invert", "vocab_32064"}
    assert d["checkpoint"].startswith("sha256:")
    again = cli_run("diagnose", "--library", drills / "lib", "--export-library", out)
    assert again.returncode == 2 and "exists" in again.stderr
    r = cli_run("diagnose", drills / "run", "--library", out)
    assert r.returncode == 0 and "vocab_32064 (2 episodes): vocab_32064" in r.stdout


def test_a_library_of_another_checkpoint_or_suite_is_refused_naming_both(drills, tmp_path, cli_run):
    d = json.loads(_cli_export(drills, tmp_path, cli_run))
    d["checkpoint"] = "sha256:0000"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(d))
    r = cli_run("diagnose", drills / "run", "--library", other)
    assert r.returncode == 2 and "sha256:0000" in r.stderr and "libero_object" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = cli_run("diagnose", drills / "run", "--library", bad)
    assert r.returncode == 2 and "not a diagnose library" in r.stderr and "Traceback" not in r.stderr


def _cli_export(drills, tmp_path, cli_run) -> str:
    out = tmp_path / "x.json"
    assert cli_run("diagnose", "--library", drills / "lib", "--export-library", out).returncode == 0
    return out.read_text()


def _steps(actions, img=100.0, prob=0.9):
    return [StepRecord("t", 0, 0, "a", i, tuple(a), img, 0.0, False, 0.1, 0.1, token_prob=prob)
            for i, a in enumerate(actions)]


def test_features_and_ranking_on_hand_made_episodes():
    base = [[0.5, 0, 0, 0, 0, 0, -1]] * 5 + [[0.5, 0, 0, 0, 0, 0, 1]] * 5
    f = episode_features(_steps(base))
    got = dict(zip(FEATURES, f))
    assert got["grip_flips"] == 1 and got["grip_closed"] == 0.5 and got["grip_first_close"] == 5 / 60
    assert got["xyz_max"] == 0.5 and got["direction"] == pytest.approx(1.0) and got["grip_fractional"] == 0
    half = [[0.5, 0, 0, 0, 0, 0, 0.3]] * 10
    assert dict(zip(FEATURES, episode_features(_steps(half))))["grip_fractional"] == 1
    rng = np.random.default_rng(0)
    lib = Library({"baseline": np.stack([f + rng.normal(0, 0.01, f.shape) for _ in range(4)]),
                   "gripper_no_binarize": np.stack([episode_features(_steps(half)) for _ in range(4)])},
                  "libero_object", "x", (0,), "test")
    assert diagnose_rows(f[None], lib).verdict == "no known fault"
    assert diagnose_rows(episode_features(_steps(half))[None], lib).verdict == "gripper_no_binarize"
    from vla_eval.diagnose import distinct_from_baseline, score_diagnoses

    assert distinct_from_baseline(lib) == {"gripper_no_binarize": False}  # 4 vs 4 runs: no p < 0.01/12 possible
    lines = score_diagnoses([diagnose_rows(f[None], lib, "baseline task 0 seed 0"),
                             diagnose_rows(episode_features(_steps(half))[None], lib, "gripper_no_binarize task 0 seed 0")],
                            lib)
    assert lines[0].startswith("baseline") and "1/1" in lines[0] and lines[-1] == "healthy runs: 1/1 = 100% right"


def test_a_fault_is_named_only_above_the_margin_healthy_episodes_reach():
    """SYNTHETIC features: healthy episodes drawn like the library's baseline are named healthy
    about as often as HEALTHY_QUANTILE says; a fault far from healthy is named."""
    rng = np.random.default_rng(1)
    k = len(FEATURES)
    lib = Library({"baseline": rng.normal(0, 1, (20, k)), "near": rng.normal(0.3, 1, (20, k)),
                   "far": rng.normal(3, 1, (20, k))}, "libero_object", "x", (0,), "test")
    margin = lib.margin
    assert margin > 0
    healthy = [diagnose_rows(rng.normal(0, 1, (1, k)), lib).verdict for _ in range(200)]
    assert healthy.count("no known fault") >= 0.85 * 200
    far = diagnose_rows(rng.normal(3, 1, (1, k)), lib)
    assert far.verdict == "far" and far.gain > margin and far.evidence


def test_runs_of_the_shipped_tiny_policy_use_the_shipped_library(drills, cli_run):
    """No --library: the library shipped for the tiny policy on libero_object (same weights)."""
    r = cli_run("diagnose", drills / "run")
    assert r.returncode == 0, r.stderr
    assert sum("episodes):" in ln for ln in r.stdout.splitlines()) == 3  # baseline and the two faults
