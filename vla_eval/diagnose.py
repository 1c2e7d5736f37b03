"""``vla-eval diagnose``: which known fault does a run look like?

A *library* is a drill of every fault on one checkpoint (``vla-eval drill --fault all --out
LIB``), or its export (``--export-library F.json``: per-episode features only, small enough
to ship). Each episode becomes a vector of the statistics the monitors and the report read
(``monitors/episode_stats.py``, the one definition), over its first ``WINDOW`` steps (library
drills may be capped there):

    xyz_mean, xyz_max     translation size (mean / max |a[:3]|)
    rot_mean              rotation size (mean |a[3:6]|)
    direction             mean cosine of consecutive translation directions (a still step: 1)
    grip_flips            open <-> close changes
    grip_closed           fraction of steps commanding "close"; grip_first_close (of WINDOW)
    grip_closed_at_0      the first command is "close"
    grip_fractional       fraction of gripper commands that are not +-1 (not binarised)
    img_mean, img_std     the mean pixel of the model's image, and its spread over steps
    token_prob            mean chosen-token probability (native OpenVLA)

Each library tag is a diagonal Gaussian over these features. A library holds few episodes
per tag, so each tag's variance is shrunk towards the variance pooled within all tags (``SHRINK``
pseudo-episodes of it; a feature a tag holds constant would otherwise be an infinitely sharp
spike). An episode's causes are the tags ranked by log-likelihood; a run (all episodes of one
tag) sums its episodes'. A fault is *named* only when its log-likelihood beats the baseline's
by more than the library's own healthy episodes do: the ``HEALTHY_QUANTILE`` quantile of that
gain over the baseline's episodes, each left out of the fit in turn (a run compares its mean
gain per episode). Otherwise the answer is "no known fault".
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from vla_eval.errors import UsageError
from vla_eval.faults import is_run_tag
from vla_eval.monitors.episode_stats import episode_stats

WINDOW = 60
FEATURES = ("xyz_mean", "xyz_max", "rot_mean", "direction", "grip_flips", "grip_closed", "grip_first_close",
            "grip_closed_at_0", "grip_fractional", "img_mean", "img_std", "token_prob")
LIBRARY_VERSION = 1
SHRINK = 5.0  # pseudo-episodes of the pooled within-tag variance added to each tag's own
HEALTHY_QUANTILE = 0.95  # a fault is named above the gain that 95% of healthy library episodes stay under


def episode_features(steps, window: int = WINDOW) -> np.ndarray:
    """(len(FEATURES),) statistics of one episode's first ``window`` step records (NaN where a
    signal is absent, e.g. token_prob for a remote-code run)."""
    if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 100_000:
        raise UsageError(f"window {window!r}: the features read the first 1..100000 steps (default {WINDOW})")
    st = episode_stats(steps, window)
    if not st.steps:
        return np.full(len(FEATURES), np.nan)
    first = window if st.first_close is None else st.first_close
    return np.array([st.xyz_mean, st.xyz_max, st.rot_mean, st.direction, float(st.grip_flips), st.grip_closed,
                     first / window, float(st.first_close == 0), st.grip_fractional, st.img_mean, st.img_std,
                     st.token_prob])


def _fit(rows: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with np.errstate(all="ignore"):
        within = np.nanmean([np.nanvar(x, axis=0) for x in rows.values()], axis=0)  # pooled within tags
        within = np.nan_to_num(within, nan=0.0)
        floor = np.where(within > 0, 0.1 * np.sqrt(within), 1e-3)
        out = {}
        for tag, x in rows.items():
            n = np.sum(np.isfinite(x), axis=0)
            var = (n * np.nan_to_num(np.nanvar(x, axis=0), nan=0.0) + SHRINK * within) / (n + SHRINK)
            out[tag] = (np.nanmean(x, axis=0), np.maximum(np.sqrt(var), floor))
    return out


@dataclass
class Library:
    """Per run tag, the feature rows of its episodes; plus what it was built on."""

    rows: dict[str, np.ndarray]  # tag -> (n_episodes, len(FEATURES))
    suite: str
    checkpoint: str  # the checkpoint's fingerprint (or its name where none was recorded)
    seeds: tuple[int, ...]
    source: str

    @cached_property
    def fit(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """tag -> (mean, spread) over the features, NaN-safe (computed once per library)."""
        return _fit(self.rows)

    @cached_property
    def margin(self) -> float:
        """Nats per episode a fault must beat the baseline by to be named: the
        ``HEALTHY_QUANTILE`` quantile of the best fault's gain on each healthy library episode,
        that episode left out of the fit (0 with fewer than two healthy episodes)."""
        base = self.rows.get("baseline")
        if base is None or len(base) < 2 or len(self.rows) < 2:
            return 0.0
        gains = []
        for i in range(len(base)):
            fit = _fit({**self.rows, "baseline": np.delete(base, i, axis=0)})
            ll = {t: float(_loglik(base[i], mu, sd).sum()) for t, (mu, sd) in fit.items()}
            gains.append(max(v for t, v in ll.items() if t != "baseline") - ll["baseline"])
        return max(float(np.quantile(gains, HEALTHY_QUANTILE)), 0.0)

    def to_json(self) -> dict:
        return {"version": LIBRARY_VERSION, "suite": self.suite, "checkpoint": self.checkpoint, "seeds": list(self.seeds),
                "features": list(FEATURES), "window": WINDOW,
                "rows": {t: [[None if math.isnan(v) else v for v in row] for row in np.round(x, 6).tolist()]
                         for t, x in self.rows.items()}}  # null: a feature the run did not log (strict JSON)


def run_identity(run_dir: Path, manifest: dict | None = None) -> tuple[str, str, tuple[int, ...]]:
    """(suite, checkpoint fingerprint or name, seeds) of a run folder, from its manifest."""
    from vla_eval.rundir import config_from_manifest, load_manifest

    manifest = manifest or load_manifest(run_dir)
    cfg = config_from_manifest(run_dir, manifest)
    prov = manifest.get("provenance") or {}
    model = prov.get("openvla") if isinstance(prov, dict) else None
    model = model if isinstance(model, dict) else {}
    ckpt = model.get("checkpoint_id") or model.get("checkpoint") or cfg.checkpoint or cfg.policy
    return cfg.suite, str(ckpt), cfg.seeds


def run_features(run_dir: Path) -> dict[str, list[tuple[object, np.ndarray]]]:
    """tag -> [(EpisodeRecord, features)] over a run folder's committed, non-error episodes."""
    from vla_eval.rundir import config_from_manifest, read_tag

    cfg = config_from_manifest(run_dir)
    out = {}
    for tag in cfg.tags:
        log = read_tag(run_dir, tag, cfg)
        if log is None:
            continue
        eps = [e for e in log.episodes if e.outcome != "error"]
        out[tag] = [(e, episode_features(log.steps_of(e))) for e in eps]
    return {t: v for t, v in out.items() if v}


def load_library(path: Path) -> Library:
    path = Path(path)
    if path.is_dir():
        suite, ckpt, seeds = run_identity(path)
        feats = run_features(path)
        if "baseline" not in feats or len(feats) < 2:
            raise UsageError(f"{path}: a library needs the baseline and at least one fault with finished episodes "
                             f"(build it with: vla-eval drill --fault all --out {path}); it has {sorted(feats) or 'none'}")
        return Library({t: np.stack([f for _, f in v]) for t, v in feats.items()}, suite, ckpt, seeds, str(path))
    from vla_eval.safe_json import read_json

    if not path.exists():
        raise UsageError(f"--library {path}: no such file or folder")
    d = read_json(path, "--library", allow_nan=True)  # NaN: a feature an older export did not log
    try:
        if d.get("version") != LIBRARY_VERSION or list(d["features"]) != list(FEATURES):
            raise ValueError(f"version {d.get('version')} / features {d.get('features')}")
        if d.get("window", WINDOW) != WINDOW:
            raise ValueError(f"window {d.get('window')!r}: this version's features read the first {WINDOW} steps")
        rows = {}
        for t, x in d["rows"].items():
            if not is_run_tag(t):
                raise ValueError(f"{t!r} is no run tag")
            rows[t] = np.array(x, dtype=np.float64).reshape(-1, len(FEATURES))
            if not len(rows[t]):
                raise ValueError(f"run tag {t!r} has no rows")
            if np.abs(np.nan_to_num(rows[t])).max() > 1e9:  # null (absent) is NaN; NaN/inf never parse
                raise ValueError(f"run tag {t!r} holds a feature outside +-1e9")
        if "baseline" not in rows or len(rows) < 2:
            raise ValueError(f"it needs the baseline and at least one fault; it has {sorted(rows)}")
        seeds = tuple(int(s) for s in d["seeds"])
        return Library(rows, str(d["suite"]), str(d["checkpoint"]), seeds, str(path))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
        raise UsageError(f"--library {path}: not a diagnose library ({type(e).__name__}: {str(e)[:120]}); give a "
                         f"drill folder (vla-eval drill --fault all) or its --export-library file") from None


def _loglik(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Per-feature Gaussian log-likelihood; a feature missing on either side contributes 0."""
    z = (x - mu) / sd
    ll = -0.5 * z * z - np.log(sd) - 0.5 * math.log(2 * math.pi)
    return np.where(np.isfinite(ll), ll, 0.0)


@dataclass(frozen=True)
class Diagnosis:
    tag: str  # the run tag diagnosed (as recorded; may be unknown to the library)
    n: int  # episodes
    ranking: tuple[tuple[str, float], ...]  # (library tag, log-likelihood), best first
    gain: float  # the best fault's log-likelihood over the baseline's, per episode
    margin: float  # the gain a fault needs to be named (the library's, see Library.margin)
    evidence: tuple[str, ...]  # the features that set the named fault apart from the baseline (none if unnamed)

    @property
    def best_fault(self) -> str:
        return next(t for t, _ in self.ranking if t != "baseline")

    @property
    def verdict(self) -> str:
        return self.best_fault if self.gain > self.margin else "no known fault"


def diagnose_rows(x: np.ndarray, library: Library, tag: str = "?") -> Diagnosis:
    """Rank the library's tags for episodes ``x`` (n, len(FEATURES)) taken together."""
    fit, margin = library.fit, library.margin
    scores = {t: float(_loglik(x, mu, sd).sum()) for t, (mu, sd) in fit.items()}
    ranking = tuple(sorted(scores.items(), key=lambda kv: -kv[1]))
    top = next(t for t, _ in ranking if t != "baseline")
    gain = (scores[top] - scores["baseline"]) / len(x)
    evidence = ()
    if gain > margin:  # evidence for a named fault only
        per_feature = (_loglik(x, *fit[top]) - _loglik(x, *fit["baseline"])).sum(axis=0)
        mean = np.nanmean(x, axis=0)
        order = [i for i in np.argsort(-per_feature) if per_feature[i] > 0][:3]
        evidence = tuple(f"{FEATURES[i]} {mean[i]:.3g} (baseline {fit['baseline'][0][i]:.3g}, "
                         f"{top} {fit[top][0][i]:.3g})" for i in order)
    return Diagnosis(tag, len(x), ranking, gain, margin, evidence)


def check_compatible(library: Library, run_dir: Path, identity: tuple | None = None) -> None:
    suite, ckpt, _ = identity or run_identity(run_dir)
    if (suite, ckpt) != (library.suite, library.checkpoint):
        raise UsageError(f"the library {library.source} was built on suite {library.suite!r}, checkpoint "
                         f"{library.checkpoint!r}; the run {run_dir} is suite {suite!r}, checkpoint {ckpt!r}. "
                         f"Build a library on the run's checkpoint: vla-eval drill --fault all --out LIB ...")


def diagnose_run(run_dir: Path, library: Library, per_episode: bool = False,
                 identity: tuple | None = None) -> list[Diagnosis]:
    """One diagnosis per run tag (all its episodes together), or per episode."""
    check_compatible(library, run_dir, identity)
    out = []
    for tag, eps in run_features(run_dir).items():
        x = np.stack([f for _, f in eps])
        if per_episode:
            out += [diagnose_rows(x[i:i + 1], library, f"{tag} task {e.task_id} seed {e.seed}")
                    for i, (e, _) in enumerate(eps)]
        else:
            out.append(diagnose_rows(x, library, tag))
    return out


def distinct_from_baseline(library: Library, alpha: float = 0.01) -> dict[str, bool]:
    """Per library fault: does it change the statistics at all? Some feature's values differ from
    the baseline's (two-sided Mann-Whitney, Bonferroni over the features at ``alpha``). Read off
    the library alone, so the held-out runs judged by ``score_diagnoses`` chose nothing."""
    from vla_eval.errors import require

    stats = require("scipy.stats", "report", "vla-eval diagnose --per-episode")
    base, out = library.rows["baseline"], {}
    for tag, x in library.rows.items():
        if tag == "baseline":
            continue
        ps = []
        for i in range(len(FEATURES)):
            a, b = base[:, i][np.isfinite(base[:, i])], x[:, i][np.isfinite(x[:, i])]
            if len(a) and len(b) and not (np.ptp(np.r_[a, b]) == 0):
                ps.append(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
        out[tag] = bool(ps) and min(ps) < alpha / len(FEATURES)
    return out


def score_diagnoses(diagnoses: list[Diagnosis], library: Library) -> list[str]:
    """Per-episode diagnoses of tagged runs against their true tags: per tag how many were named
    right ("no known fault" for the baseline), and the totals the docs report."""
    distinct = distinct_from_baseline(library)
    right: dict[str, list[bool]] = {}
    for d in diagnoses:
        tag = d.tag.split(" task ")[0]
        right.setdefault(tag, []).append(d.verdict == ("no known fault" if tag == "baseline" else tag))
    lines = []
    for tag, hits in right.items():
        kind = ("healthy" if tag == "baseline" else "changes the statistics" if distinct.get(tag)
                else "not told apart from the baseline in the library" if tag in distinct else "not in the library")
        lines.append(f"{tag:22} {sum(hits):3d}/{len(hits):<3d} named right   ({kind})")
    for label, tags in (("faults that change the statistics", [t for t in right if distinct.get(t)]),
                        ("healthy runs", ["baseline"])):
        hits = [h for t in tags for h in right.get(t, [])]
        if hits:
            lines.append(f"{label}: {sum(hits)}/{len(hits)} = {100 * sum(hits) / len(hits):.0f}% right")
    return lines


def format_diagnosis(d: Diagnosis, top: int = 3) -> str:
    best = d.ranking[0][1]
    ranked = ", ".join(f"{t} ({s - best:+.1f})" for t, s in d.ranking[:top])
    line = (f"{d.tag} ({d.n} episodes): {d.verdict}   [{d.best_fault} {d.gain:+.1f} nats/episode over healthy, "
            f"named above {d.margin:.1f}; ranked: {ranked}]")
    return line + "".join(f"\n    {e}" for e in d.evidence)


def default_library(suite: str) -> Path | None:
    """The shipped library for the tiny policy on ``suite`` (its checkpoint is checked on use)."""
    from vla_eval.configs import CONFIG_DIR

    path = CONFIG_DIR / "diagnose" / f"tiny-{suite}.json"
    return path if path.is_file() else None


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("diagnose", help=VERBS["diagnose"].help)
    p.add_argument("run_dir", type=Path, nargs="?", help="a sweep or drill folder")
    p.add_argument("--library", type=Path, help="a drill of every fault on the run's checkpoint, or its export "
                                                "(default: the shipped one for the tiny policy)")
    p.add_argument("--per-episode", action="store_true", help="one diagnosis per episode")
    p.add_argument("--export-library", type=Path, metavar="FILE", help="write the library's features as JSON")
    p.set_defaults(fn=cmd_diagnose)


def cmd_diagnose(args) -> int:
    if args.run_dir is None and args.export_library is None:
        raise UsageError("give a RUN_DIR to diagnose (or --library LIB --export-library FILE)")
    lib_path = args.library
    identity = run_identity(args.run_dir) if args.run_dir is not None else None  # read the manifest once
    if lib_path is None and identity is not None:
        lib_path = default_library(identity[0])
    if lib_path is None:
        raise UsageError("no --library given and none is shipped for this run; build one: "
                         "vla-eval drill --fault all --out LIB (same checkpoint and suite)")
    library = load_library(lib_path)
    if args.export_library is not None:
        from vla_eval.argtypes import out_file

        target = out_file(str(args.export_library))
        if target.exists():
            raise UsageError(f"--export-library {target} exists; choose a new file name")
        target.write_text(json.dumps(library.to_json(), allow_nan=False))
        print(f"library: {len(library.rows)} tags, {sum(len(x) for x in library.rows.values())} episodes -> {target}")
    if args.run_dir is not None:
        overlap = set(library.seeds) & set(identity[2])
        if overlap:
            print(f"note: the run shares seeds {sorted(overlap)} with the library; a fair test uses other seeds")
        diagnoses = diagnose_run(args.run_dir, library, args.per_episode, identity)
        for d in diagnoses:
            print(format_diagnosis(d))
        if args.per_episode:  # the run's tags are its truth: how often was each named right?
            print("\nper run tag (the tag is the truth):")
            for line in score_diagnoses(diagnoses, library):
                print(f"  {line}")
    return 0
