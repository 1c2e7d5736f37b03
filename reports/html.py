"""The self-contained HTML report of a run folder: numbers, verdict, per-task tables, drill
comparison, histograms, videos, time split and provenance in one file (everything inline;
opens with no network). Values come from validated records and a checked manifest, and the
jinja2 template escapes everything it prints (autoescape)."""
from __future__ import annotations

import base64
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from vla_eval.errors import UsageError, require
from vla_eval.argtypes import format_ids
from vla_eval.records import RunLog
from vla_eval.reports.failures import MEANING, by_task, ci_text, dominant, explain, shares
from vla_eval.reports.plots import action_trace_plot, gripper_timing_histogram
from vla_eval.reports.stats import comparability, per_task, published_number, rate_of, verdict
from vla_eval.sims.protocol import suite_spec
from vla_eval.rundir import MANIFEST, config_from_manifest, load_manifest, read_tag

VIDEO_BUDGET_BYTES = 8 * 2**20  # embedded videos stop here; the rest stay in videos/ as files


def _logs(run_dir: Path, tags) -> dict[str, RunLog]:
    logs = {tag: log for tag in tags if (log := read_tag(run_dir, tag)) is not None}
    if not any(log.episodes for log in logs.values()):
        raise UsageError(f"{run_dir} holds no episode records yet (looked for {', '.join(f'{t}.jsonl' for t in tags)})")
    return logs


def _features(log: RunLog) -> list[str]:
    """Per-run numbers of the drill comparison (what the monitors read), over steps or episodes."""
    from vla_eval.monitors.episode_stats import episode_stats

    per = [episode_stats(log.steps_of(e)) for e in log.episodes]
    per = [st for st in per if st.steps]
    if not per:
        return ["–"] * 5
    steps = np.array([st.steps for st in per])

    def mean(values, fmt):  # step-weighted, over the episodes that report the signal
        v = np.array(values, dtype=float)
        ok = ~np.isnan(v)
        return format(np.average(v[ok], weights=steps[ok]), fmt) if ok.any() else "–"
    return [mean([st.norm6_mean for st in per], ".3f"), f"{max(st.xyz_max for st in per):.3f}",
            f"{np.mean([st.grip_flips for st in per]):.1f}", mean([st.img_mean for st in per], ".1f"),
            mean([st.token_prob for st in per], ".3f")]


FEATURES = ("mean ||a[:6]||", "max |a[:3]|", "gripper flips per episode", "mean img_mean", "mean token prob")


def _seed_phrase(seeds) -> str:
    """'seed 0' or '5 seeds (0-4)': the header's seed set, per task."""
    seeds = sorted(seeds)
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    ids = ",".join(map(str, seeds)) if len(seeds) == 2 else format_ids(seeds)
    return f"{len(seeds)} seeds ({ids})"


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"


def _ci(rate) -> str:
    lo, hi = rate.wilson95
    return "–" if not rate.n else f"{100 * lo:.0f}–{100 * hi:.0f}%"


def _banners(cfg: dict, manifest: dict, logs: dict[str, RunLog]) -> list[dict]:
    out = []
    from vla_eval.rundir import parse_shard

    i, k = parse_shard(cfg["shard"])
    expected = len(range(i, len(cfg["task_ids"]) * len(cfg["seeds"]), k))
    for tag in cfg["tags"]:
        have = len(logs[tag].episodes) if tag in logs else 0
        if have < expected:
            out.append({"kind": "incomplete", "title": "Incomplete run",
                        "text": f"{tag}: {have} of {expected} episodes are committed (interrupted, or still "
                                f"running); every number below covers only those. Resume with the same command."})
    merged = manifest.get("merged")
    if isinstance(merged, dict) and merged.get("partial"):
        out.append({"kind": "partial-merge", "title": "Partial merge",
                    "text": f"merged {len(merged.get('shards', []))} of {merged.get('of')} shards "
                            f"({', '.join(map(str, merged.get('shards', [])))})"
                            + (f"; {merged['missing_episodes']} episodes missing from them"
                               if isinstance(merged.get("missing_episodes"), int) else "") + "."})
    return out


def _failure_modes(logs: dict[str, RunLog], max_steps: int) -> tuple[dict, dict | None]:
    """Each run tag's explained episodes, and the report's failure-mode section (None: no failures)."""
    from vla_eval.failure_modes import UnknownPredicate

    try:
        explained = {tag: explain(tag, log) for tag, log in logs.items()}
    except UnknownPredicate as e:
        return {}, {"tags": [], "note": str(e), "tasks": [], "columns": [], "histogram": None}
    tags = []
    for tag, xs in explained.items():
        found = shares(xs)
        rows = [{"mode": r.mode, "count": r.count, "share": ci_text(r), "meaning": MEANING.get(r.mode, ""), "video": ""}
                for r in found]
        if rows:
            tags.append({"tag": tag, "n": len(xs), "failed": found[0].failures, "rows": rows})
    if not tags:
        return explained, None
    main = explained.get("baseline") or next(iter(explained.values()))
    counts = by_task(main)
    columns = [m for m in MEANING if any(c[m] for c in counts.values())]
    tasks = [{"task": t, "counts": [c[m] or "" for m in columns]} for t, c in sorted(counts.items())]
    modes = {(x.episode.task_id, x.episode.seed): x.mode for x in main if x.mode}
    episodes = [x.episode for x in main]
    return explained, {"tags": tags, "note": "", "tasks": tasks, "columns": columns, "main": main[0].tag,
                       "histogram": _b64(gripper_timing_histogram(episodes, max_steps, modes=modes))}


def _robustness(logs: dict[str, RunLog], explained: dict) -> dict | None:
    from vla_eval.reports.robustness import profile, profile_plot

    rows = profile(logs, explained)
    if not rows:
        return None
    plot = _b64(profile_plot(rows)) if any(r["against"] == "baseline" for r in rows) else None
    return {"rows": rows, "plot": plot}


def _mode_cell(x) -> str:
    if x is None or x.mode is None:
        return ""
    return x.mode if x.failure is None else f"{x.mode} (step {x.failure.step}): {x.failure.evidence}"


def _video_per_mode(section: dict, videos: list[dict]) -> None:
    """Name, in each mode's row, the first embedded video of an episode in that mode."""
    for t in section["tags"]:
        for row in t["rows"]:
            row["video"] = next((v["name"] for v in videos if v["tag"] == t["tag"] and v.get("mode") == row["mode"]), "")


def _videos(run_dir: Path, logs: dict[str, RunLog], explained: dict | None = None) -> tuple[list[dict], str]:
    folder = run_dir / "videos"
    if not folder.is_dir():
        return [], ""
    committed = {(tag, e.task_id, e.seed): e.outcome for tag, log in logs.items() for e in log.episodes}
    out, used, skipped = [], 0, 0
    from vla_eval.videos import video_name

    modes = {(x.tag, x.episode.task_id, x.episode.seed): x.mode for xs in (explained or {}).values() for x in xs}

    for (tag, task, seed), outcome in sorted(committed.items(), key=lambda kv: (kv[1] == "success", kv[0])):
        path = folder / video_name(tag, task, seed)
        if not path.exists():
            continue
        size = path.stat().st_size
        if used + size > VIDEO_BUDGET_BYTES:
            skipped += 1
            continue
        used += size
        mode = modes.get((tag, task, seed))
        out.append({"tag": tag, "task": task, "seed": seed, "outcome": outcome, "name": path.name, "mode": mode,
                    "data": base64.b64encode(path.read_bytes()).decode()})
    note = f"{used / 2**20:.1f} MB of an {VIDEO_BUDGET_BYTES // 2**20} MB budget"
    return out, note + (f"; {skipped} more in videos/ (over budget)" if skipped else "")


def _time(log: RunLog) -> dict | None:
    eps = [x for x in log.episodes if x.steps]
    steps = sum(x.steps for x in eps)
    if not steps:
        return None
    pol, sim, wall = (sum(getattr(x, k) for x in eps) for k in ("policy_s", "sim_s", "wall_s"))
    resets = [x.reset_s for x in eps if x.reset_s is not None]
    return {"policy_s": f"{pol:.1f}", "policy_ms": f"{1e3 * pol / steps:.1f}", "sim_s": f"{sim:.1f}",
            "sim_ms": f"{1e3 * sim / steps:.1f}", "rate": f"{steps / (pol + sim):.1f}" if pol + sim else "–",
            "reset_s": f"{sum(resets):.1f}" if resets else "–",
            "reset_each": f"{np.mean(resets):.1f}" if resets else "– (logged before schema 2)",
            "wall_s": f"{wall:.1f}", "wall_each": f"{wall / len(eps):.1f}"}


def context(run_dir: Path) -> dict:
    """Everything the template prints, as plain typed values."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} does not exist")
    if not (run_dir / MANIFEST).exists():
        raise UsageError(f"{run_dir} is not a vla-eval run folder (no {MANIFEST})")
    manifest = load_manifest(run_dir)
    config = config_from_manifest(run_dir, manifest)
    cfg = asdict(config)
    logs = _logs(run_dir, cfg["tags"])
    main_tag = "baseline" if "baseline" in logs else next(iter(logs))
    main = logs[main_tag]
    spec = suite_spec(cfg["suite"])
    max_steps = cfg["max_steps"] or spec.max_steps
    rate = rate_of(ep.outcome for ep in main.episodes)
    reasons = comparability(cfg, main_tag, spec.n_tasks)
    published = published_number("openvla", cfg["suite"])
    v = verdict(rate, published if not reasons else None, "; ".join(reasons))
    tables = []
    for tag, log in logs.items():
        if not log.episodes:
            continue
        rows = [{"task": r.task_id, "instruction": r.instruction, "pct": _pct(r.rate.p), "n": r.rate.n,
                 "ci": _ci(r.rate), "steps": f"{r.mean_steps:.0f}",
                 "first_close": "never" if r.mean_first_close is None else f"{r.mean_first_close:.0f}"}
                for r in per_task(log.episodes)]
        tables.append({"tag": tag, "rows": rows})
    drill = monitor = None
    if len(logs) > 1:  # the drill table's alerts and the monitor section come from one replay
        scored = _replay(cfg, logs)
        matched = {tag: sorted({p for r in scored[1] if r.tag == tag for p in r.got}) for tag in logs}
        drill = {"features": FEATURES, "rows": [
            {"tag": tag, "rate": f"{_pct(r.p)} ({r.successes}/{r.n})" if r.n else "–", "ci": _ci(r),
             "vs_baseline": _vs_baseline(logs, tag), "features": _features(log), "alerts": ", ".join(matched[tag]) or "–"}
            for tag, log in logs.items() for r in [rate_of(e.outcome for e in log.episodes)]]}
        monitor = _monitor(*scored)
    explained, failure_modes = _failure_modes(logs, max_steps)
    if drill:
        for row in drill["rows"]:
            row["mode"] = dominant(explained.get(row["tag"], []))
    videos, video_note = _videos(run_dir, logs, explained)
    if failure_modes:
        _video_per_mode(failure_modes, videos)
    modes_main = {(x.episode.task_id, x.episode.seed): x for x in explained.get(main_tag, [])}
    from vla_eval.reports.forecast import forecast_section

    forecast = forecast_section(run_dir, main_tag, main, config, max_steps)
    alarms = forecast.pop("alarms") if forecast else {}
    prov = manifest.get("provenance", {})
    prov = prov if isinstance(prov, dict) else {"provenance": f"(not an object: {type(prov).__name__})"}
    return {
        "run_name": run_dir.name, "policy": cfg["policy"], "suite": cfg["suite"], "main_tag": main_tag,
        "task_ids": cfg["task_ids"], "seeds": _seed_phrase(cfg["seeds"]), "banners": _banners(cfg, manifest, logs),
        "headline": {"pct": _pct(rate.p), "se": _pct(rate.se), "text": str(rate), "errors": rate.errors} if rate.n else None,
        "verdict": {"level": v.level, "css": v.level.replace("/", ""), "text": v.text},
        "published": f"{published:.1f}%" if published is not None and not reasons else None,
        "source": _source("openvla"), "tag_tables": tables, "drill": drill, "monitor": monitor,
        "failure_modes": failure_modes, "robustness": _robustness(logs, explained), "forecast": forecast,
        "action_trace": _b64(action_trace_plot({t: log for t, log in logs.items()})) if drill else None,
        "histograms": [{"tag": t, "png": _b64(gripper_timing_histogram(log.episodes, max_steps))}
                       for t, log in logs.items() if log.episodes],
        "videos": videos, "video_note": video_note, "time": _time(main),
        **_diagnosis(run_dir, manifest),
        "episodes": [{"task_id": e.task_id, "seed": e.seed, "init_state": e.init_state, "outcome": e.outcome,
                      "error": e.error.splitlines()[0] if e.error else "", "steps": e.steps,
                      "first_close": "never" if e.first_close_step is None else e.first_close_step,
                      "wall": f"{e.wall_s:.1f}", "alerts": ", ".join(e.alerts) or "–",
                      "mode": _mode_cell(modes_main.get((e.task_id, e.seed))),
                      "warning": "–" if alarms.get((e.task_id, e.seed)) is None else alarms[(e.task_id, e.seed)]}
                     for e in sorted(main.episodes, key=lambda x: (x.task_id, x.seed))],
        "provenance": [(k, val if isinstance(val, str) else json.dumps(val)) for k, val in prov.items()],
        "config_json": json.dumps(cfg, indent=2),
        "log_notes": [f"{t}: {log.orphan_steps} step lines of interrupted attempts"
                      + (", a torn final line" if log.torn_tail else "") + " (ignored)."
                      for t, log in logs.items() if log.torn_tail or log.orphan_steps],
    }


def _vs_baseline(logs: dict[str, RunLog], tag: str) -> str:
    """The run tag's success minus the baseline's on the same (task, seed) pairs, McNemar's p."""
    if tag == "baseline" or "baseline" not in logs:
        return "–"
    from vla_eval.reports.compare import by_episode, compare_episodes

    a, b = by_episode(logs["baseline"].episodes), by_episode(logs[tag].episodes)
    if not a or not b:
        return "–"
    try:
        d = compare_episodes(a, b, tag)
    except UsageError:  # scipy missing (the rest of the report stands), or nothing judged
        return "–"
    return f"{100 * d.diff:+.0f} pp (p {d.p_value:.2g})"


def _replay(cfg: dict, logs: dict[str, RunLog]):
    """The predicates replayed on every episode, with the thresholds a ``--monitor`` run of this
    policy uses: (their file or None, the scored episodes)."""
    from vla_eval.monitors.predicates import thresholds_for
    from vla_eval.monitors.scoring import score

    th, path = thresholds_for(cfg["policy"], cfg["suite"], cfg.get("checkpoint"))
    return path, score([(e, log.steps_of(e)) for log in logs.values() for e in log.episodes], th)


def _monitor(path, rows) -> dict:
    """Per-predicate rates and the confusion matrix of the replayed episodes."""
    from vla_eval.monitors.scoring import COLUMNS, confusion, healthy_false_alarms, predicate_table, unexplained_failures

    pct = lambda x: "–" if x != x else f"{100 * x:.0f}%"  # noqa: E731
    table = [{"predicate": r["predicate"], "tpr": f"{pct(r['tpr'])} of {r['n_own']}", "exact": pct(r["exact"]),
              "fa_baseline": f"{pct(r['fa_baseline'])} of {r['n_baseline']}",
              "fa_other": f"{pct(r['fa_other'])} of {r['n_other']}",
              "latency": "–" if r["latency"] is None else f"{r['latency']:.0f}"}
             for r in predicate_table(rows) if r["n_own"] or r["n_baseline"]]
    which = f"the thresholds calibrated for this policy ({path.name})" if path else "the generic default thresholds"
    (ks, ns), (kf, nf) = healthy_false_alarms(rows).values()
    ku, nu = unexplained_failures(rows)
    return {"thresholds": which, "healthy": f"{ks + kf} of {ns + nf} (successful runs {ks} of {ns}, failed runs "
                                            f"{kf} of {nf})" if ns + nf else None,
            "unexplained": f"{ku} of {nu}" if ku else None,
            "table": table, "columns": list(COLUMNS),
            "confusion": [{"tag": t, "counts": [c[k] for k in COLUMNS]} for t, c in confusion(rows).items()]}


def _diagnosis(run_dir: Path, manifest: dict) -> dict:
    """``vla-eval diagnose`` as a report section, with the library shipped for this run's suite
    (or ``<run>/library.json``, an ``--export-library`` file) when it was built on the same checkpoint."""
    from vla_eval.diagnose import WINDOW, check_compatible, default_library, diagnose_run, load_library, run_identity

    identity = run_identity(run_dir, manifest)
    own = run_dir / "library.json"
    path = own if own.is_file() else default_library(identity[0])
    if path is None:
        return {"diagnosis": None, "diagnosis_note": ""}
    library = load_library(path)
    try:
        check_compatible(library, run_dir, identity)
    except UsageError:  # the shipped library fits its own checkpoint only: silent for others
        note = (f"The diagnose library {path.name} in this folder was built on another checkpoint; "
                f"vla-eval diagnose --library LIB for this one.") if path == own else ""
        return {"diagnosis": None, "diagnosis_note": note}
    rows = []
    for d in diagnose_run(run_dir, library, identity=identity):
        best = d.ranking[0][1]
        rows.append({"tag": d.tag, "n": d.n, "verdict": d.verdict, "evidence": "; ".join(d.evidence) or "–",
                     "next": ", ".join(f"{t} ({s - best:+.0f})" for t, s in d.ranking[1:3])})
    overlap = sorted(set(library.seeds) & set(identity[2]))
    name = f"the library {path.name} (seeds {format_ids(library.seeds)})"
    return {"diagnosis": {"rows": rows, "window": WINDOW, "library": name + (
        f"; it shares seeds {format_ids(overlap)} with this run, so these are not held-out diagnoses" if overlap
        else "")}, "diagnosis_note": ""}


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def _source(policy: str) -> str:
    from vla_eval.configs import load

    return load("published").get(policy, {}).get("source", "")


def render(run_dir: Path) -> str:
    jinja2 = require("jinja2", "report", "the HTML report")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2").render(**context(run_dir))


def write_report(run_dir: Path) -> Path:
    """Render, then write atomically under the folder's lock; a failed write leaves no partial file."""
    from vla_eval.rundir import run_lock

    text = render(run_dir)
    path = Path(run_dir) / "report.html"
    tmp = path.with_suffix(".tmp")
    with run_lock(run_dir, "write its report"):
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path
