"""Forecasting a policy's own failure while the episode runs (numpy only, never raises in a loop).

Per step, ``SignalState`` turns what the loop already has into running summaries (O(1) each):

    action family       reversal, reversal_all, jerk, chatter, straightness, speed, closed_frac, flips
    uncertainty family  prob_w, min_prob_w, entropy_w, entropy_all, grip_entropy_w   (native OpenVLA)

    feature family      the model's hidden-state summary (``sweep --record-features``), projected on
                        k fitted directions: their running mean over the last 10 steps and so far

A ``Forecaster`` (fitted by ``vla-eval forecast fit`` on calibration runs, a JSON file) maps them to
a score: one signal itself (training-free), a logistic probe or a small MLP; an alarm is raised at
the first step whose score crosses a time-varying threshold ``mu(t) + c * sd(t)``, fitted on
successful calibration episodes so that at most ``alpha`` of them would have alarmed (a functional
conformal band). ``RuntimeMonitor(forecaster=...)`` adds its ``failure_forecast`` verdict.
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_eval.errors import UsageError
from vla_eval.monitors.episode_stats import gripper_step

WINDOW = 10  # steps of the running windows
CHATTER_WINDOW = 20


@dataclass(frozen=True)
class Signal:
    name: str
    family: str  # action | uncertainty
    meaning: str


SIGNALS: tuple[Signal, ...] = (
    Signal("reversal", "action", f"share of the last {WINDOW} steps whose translation turned back (cos < 0)"),
    Signal("reversal_all", "action", "share of all steps so far whose translation turned back"),
    Signal("jerk", "action", f"mean second difference of the translation over the last {WINDOW} steps"),
    Signal("chatter", "action", f"gripper open/close flips in the last {CHATTER_WINDOW} steps"),
    Signal("straightness", "action", f"1 - |sum of the last {WINDOW} translations| / their summed lengths"),
    Signal("speed", "action", f"mean translation command over the last {WINDOW} steps"),
    Signal("closed_frac", "action", "share of the steps so far with the gripper commanded closed"),
    Signal("flips", "action", "gripper flips so far"),
    Signal("prob_w", "uncertainty", f"1 - mean chosen-token probability over the last {WINDOW} steps"),
    Signal("min_prob_w", "uncertainty", f"1 - mean of each step's least likely token, last {WINDOW} steps"),
    Signal("entropy_w", "uncertainty", f"mean action-token entropy over the last {WINDOW} steps (nats)"),
    Signal("entropy_all", "uncertainty", "mean action-token entropy so far (nats)"),
    Signal("grip_entropy_w", "uncertainty", f"the gripper token's entropy over the last {WINDOW} steps"),
)
SIGNAL_NAMES = tuple(s.name for s in SIGNALS)
FAMILIES = {"action": tuple(s.name for s in SIGNALS if s.family == "action"),
            "uncertainty": tuple(s.name for s in SIGNALS if s.family == "uncertainty")}
FAMILIES["all"] = FAMILIES["action"] + FAMILIES["uncertainty"]
NEEDS = {"uncertainty": ("token_probs", "token_entropy", "the native OpenVLA backend (--backend native, the default)")}
FEATURES = "features"  # the hidden-state family: "features" alone or "<family>+features"


class _Window:
    """A running mean over the last ``n`` values."""

    def __init__(self, n: int):
        self.q, self.sum = deque(maxlen=n), 0.0

    def push(self, x: float) -> float:
        if len(self.q) == self.q.maxlen:
            self.sum -= self.q[0]
        self.q.append(x)
        self.sum += x
        return self.sum / len(self.q)


class SignalState:
    """Every signal's running value after each step; ``push`` returns them in ``SIGNAL_NAMES`` order
    (uncertainty ones are NaN where the policy reports no token statistics)."""

    def __init__(self, uncertainty: bool = True):
        self.uncertainty = uncertainty  # False: those signals stay NaN (a forecaster that does not read them)
        self.n = 0
        self.prev: list[float] | None = None
        self.prev2: list[float] | None = None
        self.prev_speed = 0.0
        self.reversals = 0
        self.rev_w, self.jerk_w, self.speed_w = _Window(WINDOW), _Window(WINDOW), _Window(WINDOW)
        self.xyz_w: deque = deque(maxlen=WINDOW)  # (x, y, z, length) of the last WINDOW translations
        self.xyz_sum = [0.0, 0.0, 0.0, 0.0]  # their running sums
        self.flip_w = _Window(CHATTER_WINDOW)
        self.grip_sign, self.flips, self.closed = 0, 0, 0
        self.prob_w, self.minp_w, self.ent_w, self.grip_w = (_Window(WINDOW) for _ in range(4))
        self.ent_sum, self.ent_n = 0.0, 0

    def push(self, action, token_probs=None, token_entropy=None) -> list[float]:
        # Scalars and local names throughout: this runs inside a control loop (bench-monitor).
        a = action if type(action) is list else [float(x) for x in action[:7]]  # the monitor passes floats
        x0, x1, x2, grip = a[0], a[1], a[2], a[6]
        speed = math.sqrt(x0 * x0 + x1 * x1 + x2 * x2)
        rev = jerk = 0.0
        prev = self.prev
        if prev is not None:
            p0, p1, p2 = prev[0], prev[1], prev[2]
            if speed > 0.05 and self.prev_speed > 0.05 and x0 * p0 + x1 * p1 + x2 * p2 < 0:
                rev = 1.0
            q = self.prev2
            if q is not None:
                j0, j1, j2 = x0 - 2 * p0 + q[0], x1 - 2 * p1 + q[1], x2 - 2 * p2 + q[2]
                jerk = math.sqrt(j0 * j0 + j1 * j1 + j2 * j2)
        self.reversals += rev
        flip, self.grip_sign = gripper_step(self.grip_sign, grip)
        self.flips += flip
        self.closed += grip > 0
        w = self.xyz_w
        sums = self.xyz_sum
        if len(w) == WINDOW:
            o = w[0]
            sums[0] -= o[0]
            sums[1] -= o[1]
            sums[2] -= o[2]
            sums[3] -= o[3]
        w.append((x0, x1, x2, speed))
        sums[0] += x0
        sums[1] += x1
        sums[2] += x2
        sums[3] += speed
        sx, sy, sz, lengths = sums
        straight = 1.0 - math.sqrt(sx * sx + sy * sy + sz * sz) / lengths if lengths > 1e-9 else 0.0
        self.n += 1
        self.prev2, self.prev, self.prev_speed = prev, a, speed
        out = [self.rev_w.push(rev), self.reversals / self.n, self.jerk_w.push(jerk), self.flip_w.push(flip) * len(
            self.flip_w.q), straight, self.speed_w.push(speed), self.closed / self.n, float(self.flips)]
        if (not self.uncertainty or token_probs is None or token_entropy is None or not len(token_probs)
                or not len(token_entropy)):
            return out + [math.nan] * len(FAMILIES["uncertainty"])
        probs, ents = [float(x) for x in token_probs], [float(x) for x in token_entropy]
        ent = sum(ents) / len(ents)
        self.ent_sum += ent
        self.ent_n += 1
        return out + [self.prob_w.push(1.0 - sum(probs) / len(probs)), self.minp_w.push(1.0 - min(probs)),
                      self.ent_w.push(ent), self.ent_sum / self.ent_n, self.grip_w.push(ents[-1])]


class FeatureState:
    """The feature family streaming: each step's hidden-state summary (2, d) projected on the
    fitted directions, ``z = P (f - c)`` (k values), then the running means of ``z`` over the last
    ``WINDOW`` steps and over all steps so far: 2k inputs. A missing or malformed summary leaves
    the means as they were (NaN before the first good one)."""

    def __init__(self, center, projection):
        self.c = np.asarray(center, np.float32)
        self.P = np.asarray(projection, np.float32)  # (k, D)
        k = self.P.shape[0]
        self.window: deque = deque(maxlen=WINDOW)
        self.win_sum, self.all_sum, self.n = np.zeros(k), np.zeros(k), 0

    def push(self, features) -> list[float]:
        f = None
        if features is not None:
            try:
                f = np.asarray(features, np.float32).reshape(-1)
            except (TypeError, ValueError):
                f = None
        if f is not None and f.shape == self.c.shape and np.isfinite(f).all():
            z = self.P @ (f - self.c)
            if len(self.window) == WINDOW:
                self.win_sum -= self.window[0]
            self.window.append(z)
            self.win_sum += z
            self.all_sum += z
            self.n += 1
        if not self.n:
            return [math.nan] * (2 * len(self.win_sum))
        return (self.win_sum / len(self.window)).tolist() + (self.all_sum / self.n).tolist()


def feature_series(features: np.ndarray, center, projection) -> np.ndarray:
    """(T, 2k) the feature family of a recorded episode ((T, 2, d) summaries), as ``FeatureState``
    streams it."""
    z = (np.asarray(features, np.float32).reshape(len(features), -1) - np.asarray(center, np.float32)) @ np.asarray(
        projection, np.float32).T
    csum = np.cumsum(z.astype(float), axis=0)
    n = np.arange(1, len(z) + 1)[:, None]
    lagged = np.vstack([np.zeros((WINDOW, z.shape[1])), csum])[:len(z)]  # sum up to step t - WINDOW
    return np.hstack([(csum - lagged) / np.minimum(n, WINDOW), csum / n])


def signal_series(steps) -> np.ndarray:
    """(T, len(SIGNAL_NAMES)) signals of a recorded episode (step records or dicts)."""
    state = SignalState()
    get = (lambda s, k: s.get(k)) if steps and isinstance(steps[0], dict) else getattr
    rows = [state.push(get(s, "action"), get(s, "token_probs"), get(s, "token_entropy")) for s in steps]
    return np.array(rows, dtype=float).reshape(len(rows), len(SIGNAL_NAMES))


FORMAT = "vla-eval forecaster"
MODELS = ("signal", "logistic", "mlp")


@dataclass
class Forecaster:
    """A fitted forecaster: which signals, how they become a score, and the alarm band over time."""

    signals: tuple[str, ...]
    model: str  # signal (the first signal is the score) | logistic | mlp
    mean: list[float]  # standardisation of the signals
    scale: list[float]
    weights: list  # logistic: [w]; mlp: [W1 (h x d), b1 (h), w2 (h)]
    bias: float
    band_mu: list[float]  # per step: successes' mean score
    band_sd: list[float]
    band_c: float  # alarm when score > mu(t) + c * sd(t)
    alpha: float
    identity: dict = field(default_factory=dict)  # policy, checkpoint, suite, fitted_on, widths
    features: dict | None = None  # the feature family: {"center": D floats, "projection": k x D}

    def __post_init__(self):
        # Plain floats for the per-step path: for a dozen numbers numpy's call overhead dominates.
        self._idx = [SIGNAL_NAMES.index(s) for s in self.signals]
        self._k2 = 2 * len(self.features["projection"]) if self.features else 0
        self._mean, self._scale = [float(x) for x in self.mean], [float(x) for x in self.scale]
        if self.model == "mlp":
            self._w1, self._b1, self._w2 = (np.asarray(w, float) for w in self.weights)
        elif self.model == "logistic":
            self._w = [float(x) for x in self.weights[0]]
            # Standardisation folded into the weights: score = b + sum(w_i (v_i - m_i) / s_i), a missing
            # input contributing 0, computed as one loop over plain floats (the per-step path).
            self._wf = [w / sc for w, sc in zip(self._w, self._scale)]
            self._bf = self.bias - sum(w * m for w, m in zip(self._wf, self._mean))

    @property
    def feature_width(self) -> int | None:
        """D, the width of the hidden-state summary (2 x the model's hidden size) it reads; None without."""
        return len(self.features["center"]) if self.features else None

    def feature_state(self) -> FeatureState | None:
        return FeatureState(self.features["center"], self.features["projection"]) if self.features else None

    def score(self, signals, feature_inputs=None) -> float:
        """The score of one step's signals (``SignalState.push``'s list, all signals) and, for the
        feature family, ``FeatureState.push``'s list; a missing (NaN) or infinite input counts as
        its calibration mean."""
        if self.model == "logistic" and not self._k2:
            total = self._bf
            for i, w, m in zip(self._idx, self._wf, self._mean):
                v = signals[i]
                total += w * (v if v - v == 0 else m)  # v - v is 0 only for a finite v
            return total
        x = []
        values = [float(signals[i]) for i in self._idx]
        if self._k2:
            values += list(feature_inputs) if feature_inputs is not None else [math.nan] * self._k2
        for v, m, sc in zip(values, self._mean, self._scale):
            z = (v - m) / sc
            x.append(z if math.isfinite(z) else 0.0)
        if self.model == "signal":
            return x[0]
        if self.model == "logistic":
            return sum(a * b for a, b in zip(x, self._w)) + self.bias
        return float(np.maximum(self._w1 @ np.array(x) + self._b1, 0.0) @ self._w2 + self.bias)

    def scores(self, series: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """Per step scores of a recorded episode: its signal series and (feature family) its (T, 2, d) summaries."""
        if not self._k2:
            return np.array([self.score(row) for row in series])
        fs = (feature_series(features, self.features["center"], self.features["projection"]) if features is not None
              else np.full((len(series), self._k2), np.nan))
        return np.array([self.score(row, f) for row, f in zip(series, fs)])

    def threshold(self, t: int) -> float:
        i = min(t, len(self.band_mu) - 1)
        return self.band_mu[i] + self.band_c * self.band_sd[i]

    def first_alarm(self, scores: np.ndarray) -> int | None:
        for t, s in enumerate(scores):
            if s > self.threshold(t):
                return t
        return None

    def check_identity(self, policy: str, checkpoint: str | None, suite: str, what: str) -> None:
        """Refuse a run of another policy, checkpoint or suite than the one this was fitted on."""
        fitted = (self.identity.get("policy"), self.identity.get("checkpoint") or "", self.identity.get("suite"))
        if fitted != (policy, checkpoint or "", suite):
            raise UsageError(f"the forecaster was fitted on policy/checkpoint/suite {fitted}; {what} is "
                             f"{(policy, checkpoint or '', suite)}")

    @property
    def families(self) -> set[str]:
        return {s.family for s in SIGNALS if s.name in self.signals} | ({FEATURES} if self.features else set())

    def save(self, path: str | Path) -> None:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        Path(path).write_text(json.dumps({"format": FORMAT, "version": 1, **d}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Forecaster":
        from vla_eval.safe_json import read_json

        d = read_json(Path(path), "forecaster file", max_bytes=64 * 2**20)
        if d.pop("format", None) != FORMAT or d.pop("version", None) != 1:
            raise UsageError(f"{path} is not a vla-eval forecaster file (version 1); fit one with vla-eval forecast fit")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise UsageError(f"forecaster file {path}: unknown keys {', '.join(unknown)}")
        try:
            bad = [s for s in d["signals"] if s not in SIGNAL_NAMES]
            if bad:
                raise UsageError(f"forecaster file {path}: unknown signal {bad[0]!r}; this vla-eval knows "
                                 f"{', '.join(SIGNAL_NAMES)}")
            f = cls(**{**d, "signals": tuple(d["signals"])})
            if f.model not in MODELS or len(f.band_mu) != len(f.band_sd) or not f.band_mu:
                raise ValueError("bad model or band")
            if f.features and {len(row) for row in f.features["projection"]} != {f.feature_width}:
                raise ValueError("the feature projection's width differs from its centre's")
            if len(f.mean) != len(f.signals) + f._k2 or len(f.scale) != len(f.mean):
                raise ValueError(f"{len(f.mean)} standardisation entries for {len(f.signals) + f._k2} inputs")
            if f.model == "logistic" and len(f._w) != len(f.mean):
                raise ValueError(f"{len(f._w)} weights for {len(f.mean)} inputs")
            f.score([0.0] * len(SIGNAL_NAMES), [0.0] * f._k2)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise UsageError(f"forecaster file {path} is malformed ({e}); fit it again with vla-eval forecast fit") from None
        return f
