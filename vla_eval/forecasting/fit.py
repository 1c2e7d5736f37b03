"""Fitting a ``Forecaster`` on recorded episodes: the signals of every step, a score (one signal,
a logistic probe or a one-hidden-layer MLP, all in numpy), and the alarm band fitted on the
successful episodes (functional conformal: at most ``alpha`` of them cross it).

    episodes = load_episodes([Path("runs/calib")])                     # -> [Episode]
    f = fit(episodes, FitConfig(signals="all", model="logistic", alpha=0.1))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vla_eval.errors import UsageError, bad_choice
from vla_eval.monitors.forecast import (
    FAMILIES, FEATURES, MODELS, NEEDS, SIGNAL_NAMES, Forecaster, feature_series, signal_series)

STRIDE = 5  # training pairs: every 5th step of every episode
MIN_ALIVE = 5  # the band at step t needs this many successes still running; later steps carry it forward
SD_FLOOR = 1e-3


@dataclass(frozen=True)
class Episode:
    """One recorded episode as the forecasters see it."""

    run: str
    tag: str
    task_id: int
    seed: int
    failed: bool
    steps: int
    failure_step: int | None  # when its failure mode became true (failure_modes), if known
    series: np.ndarray  # (steps, len(SIGNAL_NAMES))
    identity: tuple[str, str, str]  # policy, checkpoint, suite
    features: np.ndarray | None = None  # (steps, 2, d) hidden-state summaries, if the run recorded them

    @property
    def feature_width(self) -> int | None:
        """D = 2 x d, the flattened width of its summaries (what a forecaster's projection reads)."""
        return None if self.features is None else int(np.prod(self.features.shape[1:]))


@dataclass(frozen=True)
class FitConfig:
    # a family of monitors.forecast.FAMILIES, one signal name (training-free), "features" (the hidden-state
    # summaries of --record-features) or "<family>+features"
    signals: str = "all"
    model: str = "logistic"  # signal | logistic | mlp
    alpha: float = 0.1  # false alarms allowed on successful calibration episodes
    max_steps: int = 280  # the band's length (the suite's step limit)
    l2: float = 1.0
    hidden: int = 16
    seed: int = 0
    components: int = 8  # feature family: directions the summaries are projected on (PCA of calibration steps)

    def __post_init__(self):
        if self.model not in MODELS:
            raise bad_choice("forecaster model", self.model, MODELS)
        valid = (*FAMILIES, *SIGNAL_NAMES, FEATURES, *(f"{f}+{FEATURES}" for f in FAMILIES))
        if self.signals not in valid:
            raise bad_choice("signals", self.signals, valid)
        if self.uses_features and self.model == "signal":
            raise UsageError(f"--signals {self.signals} reads the hidden-state summaries: fit it with --model "
                             "logistic or mlp")
        if not 1 <= self.components <= 256:
            raise UsageError(f"--components {self.components}: 1 to 256 directions")
        if not self.uses_features and (self.model == "signal") != (self.signals in SIGNAL_NAMES):
            raise UsageError("--model signal takes one signal name (e.g. --signals reversal_all); logistic and mlp "
                             f"take a family: {', '.join(FAMILIES)}")
        if not 0 < self.alpha < 1:
            raise UsageError(f"--alpha {self.alpha} must lie in (0, 1)")

    @property
    def uses_features(self) -> bool:
        return self.signals == FEATURES or self.signals.endswith("+" + FEATURES)

    @property
    def names(self) -> tuple[str, ...]:
        """The named signals it reads (none for "features" alone)."""
        family = self.signals.removesuffix("+" + FEATURES)
        return () if family == FEATURES else (family,) if family in SIGNAL_NAMES else FAMILIES[family]


def load_episodes(run_dirs: Sequence[Path], tags: Sequence[str] = ("baseline",), seeds=None) -> list[Episode]:
    """Judged episodes (errors left out) of the given run tags, optionally only ``seeds``."""
    from vla_eval.rundir import MANIFEST, config_from_manifest, read_tag

    out = []
    for run in run_dirs:
        run = Path(run)
        if not (run / MANIFEST).is_file():
            raise UsageError(f"{run} is not a vla-eval run folder (no {MANIFEST})")
        cfg = config_from_manifest(run)
        for tag in tags:
            if tag in cfg.tags:
                out += episodes_of(run, tag, read_tag(run, tag, cfg), cfg, seeds)
    return out


def episodes_of(run: Path, tag: str, log, cfg, seeds=None) -> list[Episode]:
    """One run tag's judged episodes from its already-read log (``RunLog`` or None), with their
    hidden-state summaries where the run recorded them."""
    from vla_eval.features import read_features

    out = []
    for ep in (log.episodes if log else []):
        if ep.outcome == "error" or (seeds is not None and ep.seed not in seeds):
            continue
        steps = log.steps_of(ep)
        out.append(Episode(str(run), tag, ep.task_id, ep.seed, not ep.success, len(steps), ep.failure_step,
                           signal_series(steps), (cfg.policy, cfg.checkpoint or "", cfg.suite),
                           read_features(run, tag, ep)))
    return out


def check_signals(episodes: Sequence[Episode], names: Sequence[str], feature_width: int | None = None) -> None:
    """Every needed signal is recorded, or one message naming it and what records it; with
    ``feature_width``, every episode's hidden-state summaries, of that width."""
    if feature_width is not None:
        lacking = [e for e in episodes if e.features is None]
        if lacking:
            e = lacking[0]
            raise UsageError(f"the feature family needs the hidden-state summaries of every episode; {e.run} has none "
                             f"for task {e.task_id} seed {e.seed} ({len(lacking)} episodes lack them): record them "
                             f"with vla-eval sweep --record-features (native OpenVLA)")
        widths = {e.feature_width for e in episodes}
        if widths != {feature_width}:
            raise UsageError(f"hidden-state summaries of width {sorted(widths)} in these runs; the forecaster reads "
                             f"width {feature_width} (another model)")
    uncertain = set(names) & set(FAMILIES["uncertainty"])
    if uncertain and any(np.isnan(e.series[:, SIGNAL_NAMES.index(n)]).all() for e in episodes for n in uncertain):
        fields = NEEDS["uncertainty"]
        raise UsageError(f"signal {sorted(uncertain)[0]} needs {fields[0]} and {fields[1]} on the step records, which "
                         f"these runs lack; they are recorded by {fields[2]}. Use --signals action for any policy.")


def _inputs(e: Episode, idx, projection) -> np.ndarray:
    """(steps, inputs) what the probe reads: the named signals, then the feature family's 2k values."""
    x = e.series[:, idx]
    return x if projection is None else np.hstack([x, feature_series(e.features, *projection)])


def fit_projection(episodes: Sequence[Episode], k: int) -> tuple[list, list]:
    """The feature family's directions: each coordinate of the calibration steps' summaries
    standardised, then their top-``k`` principal directions (unsupervised: fitted on every
    calibration step alike). -> (centre (D,), projection (k, D)) with the scaling folded in."""
    rows = np.vstack([e.features[::STRIDE].reshape(-1, e.feature_width) for e in episodes])
    rows = rows.astype(np.float64)
    if len(rows) > 20_000:  # the directions settle long before; the SVD's cost does not
        rows = rows[np.random.default_rng(0).choice(len(rows), 20_000, replace=False)]
    center, scale = rows.mean(0), rows.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    _, _, vt = np.linalg.svd((rows - center) / scale, full_matrices=False)
    return center.tolist(), (vt[:k] / scale).tolist()


def _pairs(episodes, idx, projection=None):
    X, y = [], []
    for e in episodes:
        rows = _inputs(e, idx, projection)[::STRIDE]
        X.append(rows)
        y += [float(e.failed)] * len(rows)
    return np.nan_to_num(np.vstack(X)), np.asarray(y)


def _logistic(X, y, l2: float) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method, classes weighted to balance."""
    n, d = X.shape
    w_cls = np.where(y > 0, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9))
    A = np.hstack([X, np.ones((n, 1))])
    beta = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-np.clip(A @ beta, -30, 30)))
        grad = A.T @ (w_cls * (p - y)) + reg * beta
        H = (A * (w_cls * p * (1 - p))[:, None]).T @ A + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:-1], float(beta[-1])


def _mlp(X, y, hidden: int, l2: float, seed: int, epochs: int = 300) -> tuple[list, float]:
    """One hidden ReLU layer, logistic output, full-batch Adam (a few thousand pairs: seconds)."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    w_cls = np.where(y > 0, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9)) / n
    params = [rng.normal(0, 1 / math.sqrt(d), (hidden, d)), np.zeros(hidden), rng.normal(0, 1 / math.sqrt(hidden), hidden),
              np.zeros(1)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for it in range(1, epochs + 1):
        W1, b1, w2, b2 = params
        h = np.maximum(X @ W1.T + b1, 0)
        p = 1 / (1 + np.exp(-np.clip(h @ w2 + b2[0], -30, 30)))
        g = w_cls * (p - y)
        gh = np.outer(g, w2) * (h > 0)
        grads = [gh.T @ X + l2 * W1 / n, gh.sum(0), h.T @ g + l2 * w2 / n, np.array([g.sum()])]
        for i, gr in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * gr
            v[i] = 0.999 * v[i] + 0.001 * gr * gr
            params[i] = params[i] - 0.01 * (m[i] / (1 - 0.9 ** it)) / (np.sqrt(v[i] / (1 - 0.999 ** it)) + 1e-8)
    W1, b1, w2, b2 = params
    return [W1.tolist(), b1.tolist(), w2.tolist()], float(b2[0])


def band(forecaster: Forecaster, successes: Sequence[Episode], alpha: float, max_steps: int,
         scores: list[np.ndarray] | None = None) -> Forecaster:
    """Fit ``mu(t)``, ``sd(t)`` and ``c`` on successful episodes: ``c`` is the conformal quantile of
    each success's largest standardised excess, so at most ``alpha`` of exchangeable successes alarm.
    ``scores``: the successes' score series if not the forecaster's own (cross-fitted, see ``fit``)."""
    if not successes:
        raise UsageError("the calibration runs hold no successful episode: the alarm band is fitted on successes; "
                         "add calibration seeds the policy solves")
    scores = scores if scores is not None else [forecaster.scores(e.series, e.features) for e in successes]
    mu, sd = np.zeros(max_steps), np.full(max_steps, SD_FLOOR)
    last = (0.0, 1.0)
    for t in range(max_steps):
        alive = [s[t] for s in scores if len(s) > t]
        if len(alive) >= MIN_ALIVE:
            last = (float(np.mean(alive)), max(float(np.std(alive)), SD_FLOOR))
        mu[t], sd[t] = last
    excess = np.array([max((s[t] - mu[min(t, max_steps - 1)]) / sd[min(t, max_steps - 1)] for t in range(len(s)))
                       for s in scores if len(s)])
    n = len(excess)
    level = math.ceil((n + 1) * (1 - alpha)) / n
    c = float(np.quantile(excess, level, method="higher")) + 1e-9 if level <= 1 else float(excess.max()) + 1e-9
    forecaster.band_mu, forecaster.band_sd, forecaster.band_c = mu.tolist(), sd.tolist(), c
    return forecaster


def fit(episodes: Sequence[Episode], cfg: FitConfig) -> Forecaster:
    """A forecaster from calibration episodes (needs both outcomes unless the score is one signal).

    The band is fitted on scores the probe did not train on: each success is scored by a probe
    fitted without its task (cross-fitting by task), so a probe that fits its calibration episodes
    closely does not set a band its new episodes cross; with one task, by a probe without its seed half."""
    f = _fit_scores(episodes, cfg)
    successes = [e for e in episodes if not e.failed]
    if cfg.model == "signal":
        return band(f, successes, cfg.alpha, cfg.max_steps)
    tasks = sorted({e.task_id for e in episodes})
    group = (lambda e: e.task_id) if len(tasks) > 1 else (lambda e: e.seed % 2)
    scores = []
    for e in successes:
        rest = [x for x in episodes if group(x) != group(e)]
        usable = rest and 0 < sum(x.failed for x in rest) < len(rest)
        scores.append((_fit_scores(rest, cfg) if usable else f).scores(e.series, e.features))
    return band(f, successes, cfg.alpha, cfg.max_steps, scores)


def _fit_scores(episodes: Sequence[Episode], cfg: FitConfig) -> Forecaster:
    """The forecaster's score (its probe fitted on ``episodes``), its band not yet set."""
    if not episodes:
        raise UsageError("no calibration episodes (check the run folders and --calib-seeds)")
    names = cfg.names
    # the width the calibration episodes have (check_signals names any episode without, or of another)
    width = next((e.feature_width for e in episodes if e.features is not None), -1) if cfg.uses_features else None
    check_signals(episodes, names, width)
    idx = [SIGNAL_NAMES.index(n) for n in names]
    failed = sum(e.failed for e in episodes)
    if cfg.model != "signal" and failed in (0, len(episodes)):
        which = "failure" if failed == 0 else "success"
        raise UsageError(f"the calibration episodes hold no {which}: a probe needs both outcomes to fit "
                         f"({len(episodes)} episodes); add calibration seeds, or use --model signal")
    projection = fit_projection(episodes, cfg.components) if cfg.uses_features else None
    X, y = _pairs(episodes, idx, projection)
    mean, scale = X.mean(0), np.where(X.std(0) > 1e-9, X.std(0), 1.0)
    Z = (X - mean) / scale
    weights, bias = [], 0.0
    if cfg.model == "logistic":
        w, bias = _logistic(Z, y, cfg.l2)
        weights = [w.tolist()]
    elif cfg.model == "mlp":
        weights, bias = _mlp(Z, y, cfg.hidden, cfg.l2, cfg.seed)
    ids = sorted({e.identity for e in episodes})
    if len(ids) > 1:
        raise UsageError(f"calibration runs of different policies, checkpoints or suites: {ids}; fit one forecaster each")
    policy, checkpoint, suite = ids[0]
    identity = {"policy": policy, "checkpoint": checkpoint, "suite": suite, "width": X.shape[1],
                **({"feature_width": width} if width else {}),
                "fitted_on": sorted({f"{Path(e.run).name}:{e.tag}" for e in episodes}),
                "seeds": sorted({e.seed for e in episodes}), "tasks": sorted({e.task_id for e in episodes})}
    features = {"center": projection[0], "projection": projection[1]} if projection else None
    return Forecaster(tuple(names), cfg.model, mean.tolist(), scale.tolist(), weights, bias, [0.0], [1.0], 0.0,
                      cfg.alpha, identity, features)
