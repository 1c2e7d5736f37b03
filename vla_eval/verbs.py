"""The subcommands other modules own, as data (bottom layer): ``vla-eval --help`` lists them from
this table without importing anything, and a verb's module is imported only when that verb runs
(or its own ``--help`` is asked for). Each module's ``register`` takes its help line from here.

    Verb(name, module that registers it, the extra it needs or None, the help line)
"""
from __future__ import annotations

from typing import NamedTuple


class Verb(NamedTuple):
    name: str
    module: str
    extra: str | None
    help: str


VERBS: dict[str, Verb] = {v.name: v for v in (
    Verb("monitor", "vla_eval.monitors.cli", None, "classify JSONL logs with the silent-failure predicates"),
    Verb("small", "vla_eval.drills.cli", "drills",
         "SmallPolicy CPU drills: baseline, five faults, loss bake-off, the puzzle"),
    Verb("bench-monitor", "vla_eval.monitors.bench", None, "RuntimeMonitor.update latency, p50/p99"),
    Verb("bench-policy", "vla_eval.policies.openvla.native.bench", "openvla",
         "native batched OpenVLA vs the sequential HF-style loop: actions/s, latency, peak GPU memory"),
    Verb("check-backend", "vla_eval.policies.openvla.check_backend", "openvla",
         "native model vs OpenVLA's remote code on the same real frames and prompts: token agreement per unnorm key"),
    Verb("check-fullsize", "vla_eval.policies.openvla.native.fullsize", "openvla",
         "a released-layout checkpoint folder (random OpenVLA-7B with --write) through the native model and "
         "OpenVLA's own code on the CPU: load time, s/action, peak RSS, tokens identical?"),
    Verb("check-world", "vla_eval.sims.world_check", None,
         "pre-flight for an unintended shift: this machine's LIBERO camera, lights and settling against the "
         "published stack's"),
    Verb("collect-demos", "vla_eval.tinyvla.cli", "data",
         "scripted-expert demos on real LIBERO (sampled scenes, never the eval init states) as parquet; resumable"),
    Verb("train-tiny", "vla_eval.tinyvla.cli", "data", "train the tiny OpenVLA on collected demos (CPU, resumable)"),
    Verb("dagger", "vla_eval.tinyvla.cli", "data",
         "DAgger rounds for the tiny OpenVLA: roll out, label every state with the stateless expert, aggregate, "
         "fine-tune; held-out success per round (resumable)"),
    Verb("compare", "vla_eval.reports.compare", "report",
         "is run B better than run A? per-task and overall difference, CI, exact test"),
    Verb("bench-report", "vla_eval.reports.bench", "report", "report rendering time for synthetic runs of growing size"),
    Verb("setup", "vla_eval.setup", None,
         "fetch LIBERO's assets, write its config, install the Llama-2 tokenizer (idempotent)"),
    Verb("why", "vla_eval.reports.why", None,
         "what each failed episode did (failure modes from the simulator's state), per run tag and task"),
    Verb("forecast", "vla_eval.forecasting.cli", None,
         "failure forecasters: fit on calibration runs, judge on held-out ones (AUROC against time, false alarms)"),
    Verb("diagnose", "vla_eval.diagnose", None,
         "rank the known faults a run's statistics look like (or: no known fault)"),
    Verb("bench-threads", "vla_eval.drills.bench", "drills",
         "SmallPolicy drills alone and next to a tiny-policy sweep: both wall times (CPU threads on a shared machine)"),
)}
