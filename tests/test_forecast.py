"""Failure forecasters: the streaming signals, fitting (numpy logistic/MLP, the conformal band),
judging, the monitor's failure_forecast verdict, and the forecast command on run folders written
by the real writer (synthetic episodes: failures zig-zag and hesitate, successes move straight)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from vla_eval.errors import UsageError
from vla_eval.forecasting.evaluate import leave_one_task_out, metrics
from vla_eval.forecasting.fit import FitConfig, fit, load_episodes
from vla_eval.monitors import RuntimeMonitor
from vla_eval.monitors.forecast import SIGNAL_NAMES, Forecaster, SignalState, signal_series
from vla_eval.records import EpisodeRecord, JsonlWriter, StepRecord

TASKS, SEEDS = range(4), range(12)


def _actions(failing: bool, rng, steps: int) -> list[tuple]:
    out = []
    for t in range(steps):
        d = np.array([0.5, 0.2, -0.1]) + rng.normal(0, 0.05, 3)
        if failing and t > 15 and rng.random() < 0.5:
            d = -d  # turns back: a confused policy
        grip = 1.0 if (t > 40 and not (failing and rng.random() < 0.3)) else -1.0
        out.append((*np.round(d, 4), 0.0, 0.0, 0.0, grip))
    return out


def _steps(tag, task, seed, failing, rng, tokens=True):
    n = 120 if failing else 60 + int(rng.integers(0, 20))
    steps = []
    for t, a in enumerate(_actions(failing, rng, n)):
        probs = tuple(np.round(rng.uniform(0.3, 0.7) if failing else rng.uniform(0.8, 1.0), 3) for _ in range(7))
        ents = tuple(round(2.0 - 2 * p, 3) for p in probs)
        steps.append(StepRecord(tag, task, seed, f"a{task}-{seed}", t, a, None, 0.0, not failing and t == n - 1,
                                0.0, 0.0, token_prob=round(float(np.mean(probs)), 4),
                                token_probs=probs if tokens else None, token_entropy=ents if tokens else None))
    return steps


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder (manifest + baseline.jsonl) written by the toolkit's own writer."""
    from vla_eval.rundir import SweepConfig, check_or_write_manifest

    out = tmp_path_factory.mktemp("fc") / "run"
    cfg = SweepConfig(suite="libero_object", task_ids=tuple(TASKS), seeds=tuple(SEEDS), policy="tiny", max_steps=120)
    check_or_write_manifest(out, cfg)
    rng = np.random.default_rng(7)
    with JsonlWriter(out / "baseline.jsonl") as w:
        for task in TASKS:
            for seed in SEEDS:
                failing = rng.random() < 0.4 + 0.1 * task
                steps = _steps("baseline", task, seed, failing, rng)
                for s in steps:
                    w.write(s)
                w.write(EpisodeRecord("baseline", "libero_object", task, seed, seed, f"a{task}-{seed}",
                                      "failure" if failing else "success", len(steps), None, 1.0, 0.0, 0.0,
                                      failure_mode="missed_grasp" if failing else None,
                                      failure_step=30 if failing else None))
    return out


def test_signals_stream_and_read_no_tokens_as_missing():
    s = SignalState()
    a, b = (0.5, 0, 0, 0, 0, 0, -1), (-0.5, 0, 0, 0, 0, 0, 1)
    rows = [s.push(x) for x in (a, b, a, b)]
    names = dict(zip(SIGNAL_NAMES, rows[-1]))
    assert names["reversal_all"] == 0.75 and names["flips"] == 3.0 and names["chatter"] == 3.0
    assert all(math.isnan(names[n]) for n in ("prob_w", "entropy_all"))
    probs = [0.9] * 6 + [0.5]
    names = dict(zip(SIGNAL_NAMES, SignalState().push(a, probs, [0.1] * 6 + [1.0])))
    assert names["min_prob_w"] == pytest.approx(0.5) and names["grip_entropy_w"] == pytest.approx(1.0)


def test_logistic_and_mlp_forecasters_rank_failures_on_unseen_tasks(run_dir):
    episodes = load_episodes([run_dir])
    assert len(episodes) == len(TASKS) * len(SEEDS)
    for model in ("logistic", "mlp"):
        judged, base = leave_one_task_out(episodes, FitConfig("all", model, 0.1, 120))
        m = metrics(judged, 120)
        assert m.auroc[1] > 0.9 and m.false_alarms <= 0.3, (model, m)
        assert metrics(base, 120).auroc[1] == pytest.approx(0.5)  # the task-only score cannot rank an unseen task


def test_the_band_holds_false_alarms_on_calibration_successes_at_alpha(run_dir):
    episodes = load_episodes([run_dir])
    f = fit(episodes, FitConfig("reversal_all", "signal", 0.1, 120))
    oks = [e for e in episodes if not e.failed]
    alarms = [f.first_alarm(f.scores(e.series)) is not None for e in oks]
    assert np.mean(alarms) <= 0.1


def test_save_load_and_the_monitor_warns_once_never_raising(run_dir, tmp_path):
    episodes = load_episodes([run_dir])
    f = fit(episodes, FitConfig("all", "logistic", 0.1, 120))
    f.save(tmp_path / "f.json")
    g = Forecaster.load(tmp_path / "f.json")
    e = next(x for x in episodes if x.failed)
    assert np.allclose(g.scores(e.series), f.scores(e.series))
    m = RuntimeMonitor(forecaster=g)
    rng = np.random.default_rng(1)
    fired = [a for s in _steps("baseline", 0, 0, True, rng) for a in m.update(s)]
    assert fired.count("failure_forecast") == 1 and m.verdicts[-1].evidence["score"] > m.verdicts[-1].evidence["threshold"]
    quiet = RuntimeMonitor(forecaster=g)
    for s in ({"action": [0.1] * 7, "token_probs": "x", "token_entropy": [math.nan]}, {"action": None}, object()):
        quiet.update(s)  # garbage: no exception reaches the loop


@pytest.mark.parametrize("edit, message", [
    (lambda d: d | {"format": "other"}, "not a vla-eval forecaster file"),
    (lambda d: d | {"signals": ["telepathy"]}, "unknown signal 'telepathy'"),
    (lambda d: d | {"band_mu": []}, "malformed"),
    (lambda d: d | {"extra": 1}, "unknown keys extra"),
])
def test_a_bad_forecaster_file_is_one_message(run_dir, tmp_path, edit, message):
    f = fit(load_episodes([run_dir]), FitConfig("action", "logistic", 0.1, 120))
    f.save(tmp_path / "f.json")
    (tmp_path / "g.json").write_text(json.dumps(edit(json.loads((tmp_path / "f.json").read_text()))))
    with pytest.raises(UsageError, match=message):
        Forecaster.load(tmp_path / "g.json")


def test_fitting_refuses_what_it_cannot_fit(run_dir):
    episodes = load_episodes([run_dir])
    with pytest.raises(UsageError, match="hold no success"):
        fit([e for e in episodes if e.failed], FitConfig("all", "logistic"))
    with pytest.raises(UsageError, match="hold no failure"):
        fit([e for e in episodes if not e.failed], FitConfig("all", "logistic"))
    with pytest.raises(UsageError, match="valid: action, uncertainty, all"):
        FitConfig("vibes", "logistic")
    no_tokens = [e.__class__(**{**e.__dict__, "series": signal_series(_steps("b", 0, 0, e.failed, np.random.default_rng(0),
                                                                             tokens=False))}) for e in episodes[:6]]
    with pytest.raises(UsageError, match="needs token_probs and token_entropy.*--backend native.*--signals action"):
        fit(no_tokens, FitConfig("uncertainty", "logistic"))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vla_eval.cli", "forecast", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_forecast_fit_eval_and_study_on_a_run_folder(run_dir, tmp_path):
    out = tmp_path / "f.json"
    r = _cli("fit", run_dir, "--calib-seeds", "0-5", "--signals", "all", "--max-steps", "120", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "fitted on seeds 0-5" in r.stdout
    r = _cli("eval", run_dir, "--forecaster", out, "--seeds", "6-11", "--plot", tmp_path / "f.png")
    assert r.returncode == 0 and "| logistic on 13 signals |" in r.stdout and "not held out" not in r.stdout
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert "not held out" in _cli("eval", run_dir, "--forecaster", out).stdout
    r = _cli("fit", run_dir, "--calib-seeds", "0-5", "--out", out)
    assert r.returncode == 2 and "exists" in r.stderr and "Traceback" not in r.stderr
    r = _cli("study", run_dir, "--calib-seeds", "0-5", "--judge-seeds", "6-11", "--max-steps", "120")
    assert r.returncode == 0, r.stderr
    assert "unseen tasks (leave one task out over 4 tasks" in r.stdout and "| task only |" in r.stdout
    assert "seen tasks (fit on seeds 0-5" in r.stdout


def test_the_report_replays_the_runs_forecaster(run_dir, tmp_path):
    """A --forecaster run keeps a copy; its report shows the ROC-AUC against time, the alarms, each
    episode's first warning, and names the seeds the forecaster was fitted on."""
    import shutil

    from vla_eval.reports.html import context, render
    from vla_eval.rundir import FORECASTER_COPY

    run = shutil.copytree(run_dir, tmp_path / "run")
    assert context(run)["forecast"] is None  # no forecaster: no section
    f = fit(load_episodes([run], seeds=set(range(6))), FitConfig(signals="all", max_steps=120))
    f.save(run / FORECASTER_COPY)
    ctx = context(run)
    fc = ctx["forecast"]
    assert fc["n"] == 48 and [r["at"] for r in fc["rows"]] == ["10% (12 steps)", "25% (30 steps)", "50% (60 steps)"]
    assert float(fc["rows"][2]["auroc"]) > 0.8 and fc["plot"]
    assert "seeds 0, 1, 2, 3, 4, 5 of this run are among the forecaster's calibration seeds" in fc["note"]
    warned = [e for e in ctx["episodes"] if e["warning"] != "–"]
    assert warned and all(isinstance(e["warning"], int) for e in warned)
    html = render(run)
    assert 'id="forecast-table"' in html and "forecast warning (step)" in html


def test_a_run_keeps_its_forecaster_and_refuses_another_on_resume(tmp_path):
    from vla_eval.rundir import FORECASTER_COPY
    from vla_eval.sweep import _keep_forecaster

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"format": "a"}')
    b.write_text('{"format": "b"}')
    run = tmp_path / "run"
    run.mkdir()
    _keep_forecaster(run, a)
    _keep_forecaster(run, a)  # a resume with the same one
    with pytest.raises(UsageError, match="another forecaster"):
        _keep_forecaster(run, b)
    assert (run / FORECASTER_COPY).read_text() == a.read_text()


# -- the feature family: hidden-state summaries beside the logs (sweep --record-features) --------
WIDTH = 8  # hidden size of the synthetic model: summaries are (steps, 2, 8)


def _summaries(failing: bool, steps: int, rng) -> np.ndarray:
    """Failures drift along one direction after step 15; coordinates on very different scales."""
    x = rng.normal(0, 1, (steps, 2, WIDTH)) * np.geomspace(0.01, 100, WIDTH)
    if failing:
        x[15:, 1, 3] += 3.0 * np.geomspace(0.01, 100, WIDTH)[3]
    return x.astype(np.float16)


@pytest.fixture(scope="module")
def feature_run(run_dir, tmp_path_factory):
    """The synthetic run with every episode's summaries written by the runner's own keeper."""
    import shutil

    from vla_eval.features import FeatureKeeper
    from vla_eval.rundir import read_tag

    run = shutil.copytree(run_dir, tmp_path_factory.mktemp("ff") / "run")
    keeper, rng = FeatureKeeper(run, "baseline"), np.random.default_rng(3)
    for ep in read_tag(run, "baseline").episodes:
        keeper.finish(ep.task_id, ep.seed, ep.attempt, list(_summaries(not ep.success, ep.steps, rng)))
    return run


def test_feature_family_streams_as_it_replays(feature_run):
    from vla_eval.monitors.forecast import FeatureState, feature_series

    e = next(x for x in load_episodes([feature_run]) if x.failed)
    assert e.features.shape == (e.steps, 2, WIDTH) and e.features.dtype == np.float16
    rng = np.random.default_rng(0)
    center, projection = rng.normal(size=2 * WIDTH), rng.normal(size=(3, 2 * WIDTH))
    state = FeatureState(center, projection)
    streamed = np.array([state.push(row) for row in e.features])
    np.testing.assert_allclose(streamed, feature_series(e.features, center, projection), rtol=1e-4, atol=1e-3)
    assert all(math.isnan(v) for v in FeatureState(center, projection).push(None))  # nothing yet: missing
    state.push(np.zeros(5))  # another width: ignored, the means stay
    np.testing.assert_allclose(state.push(None), streamed[-1], rtol=1e-6)


def test_feature_probe_ranks_unseen_tasks_and_streams_in_the_monitor(feature_run, tmp_path):
    episodes = load_episodes([feature_run])
    judged, _ = leave_one_task_out(episodes, FitConfig("features", "logistic", 0.1, 120, components=4))
    m = metrics(judged, 120)
    assert m.auroc[1] > 0.9 and m.false_alarms <= 0.3, m
    f = fit(episodes, FitConfig("action+features", "logistic", 0.1, 120, components=4))
    assert f.feature_width == 2 * WIDTH and len(f.mean) == len(f.signals) + 8 and f.identity["feature_width"] == 16
    f.save(tmp_path / "f.json")
    g = Forecaster.load(tmp_path / "f.json")
    e = next(x for x in episodes if x.failed)
    from vla_eval.rundir import read_tag

    log = read_tag(feature_run, "baseline")
    steps = log.steps_of(next(x for x in log.episodes if (x.task_id, x.seed) == (e.task_id, e.seed)))
    monitor, live = RuntimeMonitor(forecaster=g), []
    for s, h in zip(steps, e.features):
        monitor.update(s, features=h)
        live.append(monitor.forecast_score)
    np.testing.assert_allclose(live, f.scores(e.series, e.features), rtol=1e-4, atol=1e-4)
    assert "failure_forecast" in [v.predicate for v in monitor.verdicts]
    quiet = RuntimeMonitor(forecaster=g)
    for h in (None, "x", np.full((2, WIDTH), np.nan), object()):
        quiet.update({"action": [0.1] * 7}, features=h)  # garbage: no exception reaches the loop


def test_feature_forecasters_refuse_runs_without_them_or_of_another_width(run_dir, feature_run, tmp_path):
    from vla_eval.forecasting.cli import check_fits

    with pytest.raises(UsageError, match="record them with vla-eval sweep --record-features"):
        fit(load_episodes([run_dir]), FitConfig("features", "logistic"))
    with pytest.raises(UsageError, match="fit it with --model logistic or mlp"):
        FitConfig("features", "signal")
    episodes = load_episodes([feature_run])
    f = fit(episodes, FitConfig("features", "logistic", 0.1, 120, components=2))
    wide = [e.__class__(**{**e.__dict__, "features": np.zeros((e.steps, 2, 2 * WIDTH), np.float16)}) for e in episodes]
    with pytest.raises(UsageError, match=r"width \[32\] in these runs; the forecaster reads width 16"):
        check_fits(f, wide)
    f.save(tmp_path / "f.json")
    d = json.loads((tmp_path / "f.json").read_text())
    d["features"]["projection"][0] = d["features"]["projection"][0][:-1]
    (tmp_path / "g.json").write_text(json.dumps(d))
    with pytest.raises(UsageError, match="malformed.*projection's width"):
        Forecaster.load(tmp_path / "g.json")
    r = _cli("study", feature_run, "--seeds", "0-11", "--max-steps", "120", "--components", "4")
    assert r.returncode == 0, r.stderr
    assert "| logistic features |" in r.stdout and "| logistic action+features |" in r.stdout


@pytest.mark.libero
def test_sweep_records_features_beside_the_log_and_refuses_where_it_cannot(feature_run, tmp_path, cli_run, cli_main):
    """`sweep --record-features` on the shipped tiny policy in real LIBERO: one (steps, 2, 96)
    float16 file per committed episode, joined to it by attempt; the forecasters read them. A
    feature forecaster without the flag, or of another model's width, is refused before any episode."""
    from vla_eval.features import FEATURES_DIR

    out = tmp_path / "run"
    r = cli_run("sweep", "--policy", "tiny", "--tasks", "0", "--seeds", "2", "--max-steps", "4", "--fast-reset",
                "--record-features", "--no-progress", "--no-report", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted((out / FEATURES_DIR / "baseline").iterdir())
    assert len(files) == 2 and not list((out / FEATURES_DIR).rglob("*.tmp"))
    episodes = load_episodes([out])
    assert [e.features.shape for e in episodes] == [(4, 2, 96)] * 2 and episodes[0].features.dtype == np.float16
    assert np.isfinite(episodes[0].features.astype(float)).all()
    code, err = cli_main("sweep", "--policy", "zero", "--seeds", "1", "--record-features", "--out", tmp_path / "z")
    assert code == 2 and "--record-features records a model's hidden state; policy 'zero' has none" in err
    assert not (tmp_path / "z").exists()
    fit(load_episodes([feature_run]), FitConfig("features", "logistic", 0.1, 120, components=2)).save(tmp_path / "f.json")
    base = ("sweep", "--policy", "tiny", "--seeds", "1", "--monitor", "--forecaster", tmp_path / "f.json", "--out")
    code, err = cli_main(*base, tmp_path / "y")
    assert code == 2 and "reads the model's hidden-state summaries (the feature family): add --record-features" in err
    code, err = cli_main(*base, tmp_path / "y", "--record-features")
    assert code == 2 and "summaries of width 16; this model's are 192 wide" in err
    assert not (tmp_path / "y").exists()


def test_bench_monitor_times_a_feature_probe(cli_run):
    r = cli_run("bench-monitor", "--steps", "300", "--feature-width", "64")
    assert r.returncode == 0, r.stderr
    assert "all predicates + logistic probe on action signals + 64-wide features): p50" in r.stdout


def test_forecast_faults_tabulates_warnings_per_run_tag(run_dir, tmp_path):
    """A drill folder (baseline + an injected fault whose episodes all zig-zag): per tag, the share
    warned by each fraction of the step limit and the median first warning."""
    from vla_eval.rundir import SweepConfig, check_or_write_manifest

    run = tmp_path / "drill"
    check_or_write_manifest(run, SweepConfig(suite="libero_object", task_ids=(0, 1), seeds=tuple(range(4)),
                                             policy="tiny", tags=("baseline", "no_flip"), max_steps=120))
    rng = np.random.default_rng(11)
    for tag in ("baseline", "no_flip"):
        with JsonlWriter(run / f"{tag}.jsonl") as w:
            for task in (0, 1):
                for seed in range(4):
                    failing = tag == "no_flip"
                    steps = _steps(tag, task, seed, failing, rng)
                    for s in steps:
                        w.write(s)
                    w.write(EpisodeRecord(tag, "libero_object", task, seed, seed, f"a{task}-{seed}",
                                          "failure" if failing else "success", len(steps), None, 1.0, 0.0, 0.0))
    fit(load_episodes([run_dir]), FitConfig("all", "logistic", 0.1, 120)).save(tmp_path / "f.json")
    r = _cli("faults", run, "--forecaster", tmp_path / "f.json")
    assert r.returncode == 0, r.stderr
    rows = {line.split("|")[1].strip(): line for line in r.stdout.splitlines() if line.startswith("| ")}
    assert "| 8 (0) |" in rows["baseline"] and "| 8 (8) | " in rows["no_flip"] and "| 100% |" in rows["no_flip"]
    r = _cli("faults", tmp_path, "--forecaster", tmp_path / "f.json")
    assert r.returncode == 2 and "not a vla-eval run folder" in r.stderr


def test_the_report_replays_a_feature_forecaster_or_says_why_not(run_dir, feature_run, tmp_path):
    import shutil

    from vla_eval.reports.html import context
    from vla_eval.rundir import FORECASTER_COPY

    f = fit(load_episodes([feature_run], seeds=set(range(6))), FitConfig("action+features", "logistic", 0.1, 120,
                                                                          components=4))
    with_features = shutil.copytree(feature_run, tmp_path / "with")
    f.save(with_features / FORECASTER_COPY)
    fc = context(with_features)["forecast"]
    assert "hidden-state features (16 wide)" in fc["model"] and float(fc["rows"][2]["auroc"]) > 0.8
    without = shutil.copytree(run_dir, tmp_path / "without")
    f.save(without / FORECASTER_COPY)
    fc = context(without)["forecast"]
    assert fc["rows"] == [] and "could not be replayed" in fc["note"] and "--record-features" in fc["note"]
