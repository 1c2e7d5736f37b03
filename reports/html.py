"""The self-contained HTML report of a run folder: numbers, verdict, histogram, episodes,
time split and provenance in one file (images inline; opens with no network)."""
from __future__ import annotations

import base64
from dataclasses import asdict
import html
import json
from pathlib import Path

import numpy as np

from vla_eval.reports.plots import gripper_timing_histogram
from vla_eval.reports.stats import published_number, rate_of, verdict
from vla_eval.sims.protocol import suite_spec
from vla_eval.errors import UsageError
from vla_eval.records import RunLog, read_jsonl
from vla_eval.sweep import MANIFEST, config_from_manifest, load_manifest

e = html.escape

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
.headline{font-size:2.2em;font-weight:600} .muted{color:#666}
.v-healthy{background:#e6f4ea} .v-bug{background:#fde8e8} .v-inconclusive{background:#fff4e0} .v-n\\/a{background:#f0f0f0}
.verdict{padding:.6em 1em;border-radius:6px;margin:.8em 0}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 9px;border-bottom:1px solid #eee;text-align:right}
th{background:#fafafa} td.l,th.l{text-align:left} .success{color:#2a9d4b} .failure{color:#d1495b} .error{color:#8a5a00}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:12px}
"""


def _logs(run_dir: Path, tags) -> dict[str, RunLog]:
    logs = {}
    for tag in tags:
        path = run_dir / f"{tag}.jsonl"
        if path.exists():
            logs[tag] = read_jsonl(path)
    if not any(log.episodes for log in logs.values()):
        raise UsageError(f"{run_dir} holds no episode records yet (looked for {', '.join(f'{t}.jsonl' for t in tags)})")
    return logs


def _features(log: RunLog) -> dict:
    """Per-run numbers the drill comparison shows (the monitors' inputs)."""
    if not log.steps:
        return {}
    a = np.array([s.action for s in log.steps], dtype=float)
    img = [s.img_mean for s in log.steps if s.img_mean is not None]
    return {
        "mean ||a[:6]||": float(np.linalg.norm(a[:, :6], axis=1).mean()),
        "max |a[:3]|": float(np.abs(a[:, :3]).max()),
        "gripper flips": int((np.diff(np.sign(a[:, 6])) != 0).sum()),
        "mean img_mean": float(np.mean(img)) if img else None,
    }


def render(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} does not exist")
    if not (run_dir / MANIFEST).exists():
        raise UsageError(f"{run_dir} is not a vla-eval run folder (no {MANIFEST})")
    manifest = load_manifest(run_dir)
    cfg, prov = asdict(config_from_manifest(run_dir)), manifest.get("provenance", {})  # typed, checked config
    logs = _logs(run_dir, cfg["tags"])
    main_tag = "baseline" if "baseline" in logs else next(iter(logs))
    main = logs[main_tag]
    spec = suite_spec(cfg["suite"])
    rate = rate_of(ep.outcome for ep in main.episodes)
    published = published_number(cfg["policy"], cfg["suite"]) if main_tag == "baseline" else None
    v = verdict(rate, published, f"policy {cfg['policy']!r}")
    partial = published is not None and len(cfg["task_ids"]) < spec.n_tasks
    hist = base64.b64encode(gripper_timing_histogram(main.episodes, cfg.get("max_steps") or spec.max_steps)).decode()

    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>vla-eval: {e(run_dir.name)}</title>",
           f"<style>{CSS}</style></head><body>",
           f"<h1>{e(cfg['policy'])} on {e(cfg['suite'])} — {e(main_tag)}</h1>",
           f"<div class='muted'>tasks {e(', '.join(map(str, cfg['task_ids'])))} · {cfg['seeds']} seeds per task · "
           f"{e(run_dir.name)}</div>",
           f"<p class='headline' id='headline'>{100 * rate.p:.1f}% <span class='muted' style='font-size:.5em'>"
           f"± {100 * rate.se:.1f} SE</span></p>" if rate.n else "<p class='headline' id='headline'>–</p>",
           f"<p>{e(str(rate))}; env errors (not counted): {rate.errors}</p>",
           f"<div class='verdict v-{e(v.level)}' id='verdict'><b>{e(v.level)}</b> — {e(v.text)}"
           + (" <br><i>Note: this run covers only part of the suite; the published number averages all "
              f"{spec.n_tasks} tasks, so per-task differences are expected.</i>" if partial else "")
           + "</div>"]
    if published is not None:
        out.append(f"<p class='muted'>Published: {published:.1f}% — {e(_source(cfg['policy']))}</p>")
    out.append(f"<h2>Gripper timing</h2><img id='gripper-hist' alt='gripper timing histogram' "
               f"src='data:image/png;base64,{hist}'>")
    if len(logs) > 1:
        out.append(_drill_table(logs))
    out.append(_time_split(main))
    out.append(_episode_table(main))
    out.append("<h2>Provenance</h2><table>" + "".join(
        f"<tr><th class='l'>{e(k)}</th><td class='l'>{e(json.dumps(val) if not isinstance(val, str) else val)}</td></tr>"
        for k, val in prov.items()) + "</table>")
    out.append(f"<h3>Config</h3><pre>{e(json.dumps(cfg, indent=2))}</pre>")
    if any(log.torn_tail or log.orphan_steps for log in logs.values()):
        out.append("<p class='muted'>Logs held " + ", ".join(
            f"{t}: {log.orphan_steps} step lines of interrupted attempts" + (", a torn final line" if log.torn_tail else "")
            for t, log in logs.items()) + " (ignored).</p>")
    out.append("</body></html>")
    return "\n".join(out)


def _source(policy: str) -> str:
    from vla_eval.configs import load

    return load("published").get(policy, {}).get("source", "")


def _drill_table(logs: dict[str, RunLog]) -> str:
    rows = []
    for tag, log in logs.items():
        r = rate_of(ep.outcome for ep in log.episodes)
        f = _features(log)
        alerts = sorted({a for ep in log.episodes for a in ep.alerts})
        cells = [f"{100 * r.p:.0f}% ({r.successes}/{r.n})" if r.n else "–"]
        cells += ["–" if f.get(k) is None else (f"{f[k]:.3f}" if isinstance(f[k], float) else str(f[k]))
                  for k in ("mean ||a[:6]||", "max |a[:3]|", "gripper flips", "mean img_mean")]
        rows.append(f"<tr><td class='l'>{e(tag)}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells)
                    + f"<td class='l'>{e(', '.join(alerts) or '–')}</td></tr>")
    head = "".join(f"<th>{e(h)}</th>" for h in ("success", "mean ||a[:6]||", "max |a[:3]|", "gripper flips", "mean img_mean"))
    return (f"<h2>Drill comparison</h2><table id='drill'><tr><th class='l'>run</th>{head}<th class='l'>monitor alerts</th></tr>"
            + "".join(rows) + "</table>")


def _time_split(log: RunLog) -> str:
    eps = [x for x in log.episodes if x.steps]
    steps = sum(x.steps for x in eps)
    pol, sim, wall = (sum(getattr(x, k) for x in eps) for k in ("policy_s", "sim_s", "wall_s"))
    if not steps:
        return ""
    per = (pol + sim) / steps
    return (f"<h2>Time</h2><table><tr><th class='l'>policy</th><td>{pol:.1f} s</td><td>{1e3 * pol / steps:.1f} ms/step</td></tr>"
            f"<tr><th class='l'>simulation</th><td>{sim:.1f} s</td><td>{1e3 * sim / steps:.1f} ms/step</td></tr>"
            f"<tr><th class='l'>control rate</th><td colspan=2>{1 / per:.1f} Hz (policy + sim; the robot runs at 20 Hz)</td></tr>"
            f"<tr><th class='l'>episode wall time</th><td>{wall:.1f} s</td><td>{wall / len(eps):.1f} s/episode (incl. resets)</td></tr>"
            "</table>")


def _episode_table(log: RunLog) -> str:
    rows = []
    for ep in sorted(log.episodes, key=lambda x: (x.task_id, x.seed)):
        err = f"<br><span class='muted'>{e(ep.error.splitlines()[0])}</span>" if ep.error else ""
        rows.append(
            f"<tr><td>{ep.task_id}</td><td>{ep.seed}</td><td>{ep.init_state}</td>"
            f"<td class='l {e(ep.outcome)}'>{e(ep.outcome)}{err}</td><td>{ep.steps}</td>"
            f"<td>{'never' if ep.first_close_step is None else ep.first_close_step}</td><td>{ep.wall_s:.1f}</td>"
            f"<td class='l'>{e(', '.join(ep.alerts) or '–')}</td></tr>")
    instr = {ep.task_id: ep.instruction for ep in log.episodes}
    tasks = "".join(f"<li>task {t}: {e(i)}</li>" for t, i in sorted(instr.items()))
    return ("<h2>Episodes</h2><ul>" + tasks + "</ul><table id='episodes'><tr><th>task</th><th>seed</th><th>init state</th>"
            "<th class='l'>outcome</th><th>steps</th><th>first close</th><th>wall s</th><th class='l'>monitor alerts</th></tr>"
            + "".join(rows) + "</table>")


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
