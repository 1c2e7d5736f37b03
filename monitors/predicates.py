"""Streaming predicates for the three silent failures of a VLA loop (numpy only).

Each predicate sees one step at a time in O(1) (running sums over a fixed window) and
returns at most one verdict, the first time it fires:

* ``bad_prompt``  - the policy has collapsed: mean ||action[:6]|| over the last ``window``
  steps below ``prompt_norm`` (0.02), whatever the image shows, within the first
  ``calm_steps``. Fires at step ``window - 1`` at the earliest.
* ``bad_unnorm``  - translations out of scale, either way: too small (the largest |action[:3]|
  of the first ``min_steps`` steps below ``unnorm_small``: a key with a smaller scale, e.g.
  ``bridge_orig``'s on LIBERO-scale actions, shrinks translations ~25x), or too large (above
  ``unnorm_abs`` on at least ``unnorm_frac`` of the steps; LIBERO's actions live in [-1, 1]).
* ``no_flip``     - online once calibrated, by what an upside-down scene does to the policy
  (nothing in a single frame shows it: a 180-degree rotation keeps ``img_mean``): low token
  confidence, zig-zag translations, or a grasp before the arm can have reached anything.
  Otherwise by elimination at episode end: actions of healthy size and the gripper used,
  yet no reward and never done (a hypothesis, and it says so in its evidence).
* ``bad_action``  - a NaN/inf or wrong-length action: ERROR at once (never an exception
  inside the caller's loop).

Thresholds are the drill's defaults; ``vla_eval.monitors.calibrate`` fits them to baseline runs.
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vla_eval.errors import UsageError
from vla_eval.monitors.episode_stats import gripper_step, pair_cosine

OK, WARN, ERROR = "OK", "WARN", "ERROR"
# field -> (type, lowest allowed, highest allowed, lowest inclusive)
_RANGES = {"window": (int, 1, 10_000, True), "prompt_norm": (float, 0.0, math.inf, True),
           "unnorm_abs": (float, 0.0, math.inf, False), "unnorm_frac": (float, 0.0, 1.0, False),
           "unnorm_small": (float, 0.0, math.inf, True),
           "min_steps": (int, 1, 10_000, True), "flip_min_norm": (float, 0.0, math.inf, True),
           "action_dim": (int, 7, 64, True), "conf_window": (int, 1, 10_000, True),
           "conf_min": (float, 0.0, 1.0, True), "cos_window": (int, 2, 10_000, True),
           "cos_min": (float, -1.0, 1.0, True), "grasp_min": (int, 0, 10_000, True),
           "calm_steps": (int, 0, 100_000, True)}


@dataclass(frozen=True)
class Thresholds:
    window: int = 8
    prompt_norm: float = 0.02  # frozen; the scripted expert's calmest 8-step window is 0.056
    unnorm_abs: float = 1.05  # LIBERO (and OpenVLA's q01/q99-scaled) translations stay within [-1, 1]
    unnorm_frac: float = 0.25
    unnorm_small: float = 0.1  # 0 switches the too-small side off
    min_steps: int = 10
    flip_min_norm: float = 0.05  # "healthy" action size for the no-flip elimination
    action_dim: int = 7
    # Online no-flip signal (native OpenVLA logs ``token_prob``, the mean probability of its
    # chosen action tokens): alarm when its mean over the first ``conf_window`` steps is below
    # ``conf_min``. 0 switches it off (the default until calibrated: see ``calibrate``).
    conf_window: int = 10
    conf_min: float = 0.0
    # Direction consistency: mean cosine between consecutive translation directions over the
    # first ``cos_window`` steps. A healthy policy moves smoothly (tiny OpenVLA: >= 0.95 on all
    # 50 held-out baseline runs); a confused one zig-zags. -1 switches it off (until calibrated).
    cos_window: int = 20
    cos_min: float = -1.0
    # Early grasp: the gripper commanded closed before step ``grasp_min``. A pick-and-place policy
    # closes on an object it has reached, which takes the arm tens of steps from the start pose; a
    # policy that misreads the scene closes at once (tiny OpenVLA on libero_object: healthy runs
    # first close at step >= 20, no_flip runs at step <= 4). 0 switches it off (until calibrated).
    grasp_min: int = 0
    # The calm-window check (bad_prompt) reads the first ``calm_steps`` steps only (0: the whole
    # episode). A wrong prompt collapses the policy from the start; a healthy policy that is stuck
    # late in a failed episode also holds still, and calibration runs capped at a few tens of steps
    # never show that, so a check over the whole episode alarms on them more than calibrated.
    calm_steps: int = 60

    def __post_init__(self):
        for name, (kind, lo, hi, lo_inclusive) in _RANGES.items():
            v = getattr(self, name)
            ok_type = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or float(v).is_integer())
            if not ok_type or not math.isfinite(v) or not (v >= lo if lo_inclusive else v > lo) or v > hi:
                bound = f"{'>=' if lo_inclusive else '>'} {lo}" + (f" and <= {hi}" if math.isfinite(hi) else "")
                raise UsageError(f"threshold {name}={v!r} is invalid: a {kind.__name__} {bound}")
            object.__setattr__(self, name, kind(v))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Thresholds":
        """Read a thresholds file; a missing, malformed or misspelled one is one clear error."""
        from vla_eval.safe_json import read_json

        path = Path(path)
        d = read_json(path, "thresholds file", max_bytes=2**20)
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise UsageError(f"thresholds file {path}: unknown keys {', '.join(unknown)}; valid: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        try:
            return cls(**d)
        except UsageError as e:
            raise UsageError(f"thresholds file {path}: {e}") from None


def thresholds_for(policy: str, suite: str, checkpoint: str | None = None) -> tuple[Thresholds, Path | None]:
    """The thresholds calibrated for a shipped policy (by name, or by its shipped checkpoint
    folder) and suite (``configs/monitors/``) and their file, else the generic defaults and
    None: what ``--monitor``, the report and ``vla-eval monitor`` use."""
    from vla_eval.configs import shipped_thresholds  # data only; keeps this module numpy-only

    path = shipped_thresholds(policy, suite, checkpoint)
    return (Thresholds.load(path) if path else Thresholds()), path


@dataclass(frozen=True)
class Verdict:
    predicate: str
    level: str  # OK | WARN | ERROR
    step: int | None  # the step at which it fired (None: at episode end)
    evidence: dict

    @property
    def online(self) -> bool:
        """Raised during the run (an alert); else the end-of-episode verdict (a hypothesis)."""
        return self.step is not None

    def __str__(self) -> str:
        ev = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.evidence.items())
        at = f"step {self.step}" if self.online else "episode end"
        return f"{self.level} {self.predicate} @ {at}: {ev}"


class StreamState:
    """The running statistics every predicate reads; O(1) per step. Each statistic's score over
    the run so far (the ``*_score`` properties) is what its check compares and what calibration
    reads: one source, so a threshold set at a score is exactly where the check flips."""

    def __init__(self, th: Thresholds):
        self.th = th
        self.n = 0
        self.norm_sum = 0.0
        self.window = deque(maxlen=th.window)
        self.window_sum = 0.0
        self.min_window_mean = math.inf  # bad_prompt: the calmest full window so far
        self.big_xyz = 0
        self.max_big_frac = 0.0  # bad_unnorm (too large): the largest running fraction from min_steps on
        self.max_xyz = 0.0
        self.early_max_xyz = math.inf  # bad_unnorm (too small): max |a[:3]| of the first min_steps steps
        self.grip_sign = 0.0
        self.grip_flips = 0
        self.first_close: int | None = None  # the step index of the first "close" command
        self.reward = 0.0
        self.done = False
        self.conf_sum = 0.0  # token_prob over the first conf_window steps that report one
        self.conf_n = 0
        self.prev_xyz: list[float] | None = None
        self.cos_sum = 0.0  # cosine of consecutive translation directions, first cos_window steps
        self.cos_n = 0

    def push(self, action: list[float], reward: float, done: bool, token_prob: float | None = None) -> None:
        th = self.th
        if token_prob is not None and self.conf_n < th.conf_window:
            self.conf_sum += token_prob
            self.conf_n += 1
        # Plain floats: for 7 numbers numpy's per-call overhead dominates (p99 matters here).
        norm = math.sqrt(sum(x * x for x in action[:6]))
        if len(self.window) == self.window.maxlen:
            self.window_sum -= self.window[0]
        self.window.append(norm)
        self.window_sum += norm
        self.n += 1
        if len(self.window) == th.window and self.in_calm_steps:
            self.min_window_mean = min(self.min_window_mean, self.window_mean)
        self.norm_sum += norm
        if self.cos_n < th.cos_window - 1:
            cur = action[:3]
            if self.prev_xyz is not None:
                self.cos_sum += pair_cosine(cur, self.prev_xyz)
                self.cos_n += 1
            self.prev_xyz = cur
        xyz = max(abs(action[0]), abs(action[1]), abs(action[2]))
        self.max_xyz = max(self.max_xyz, xyz)
        self.big_xyz += xyz > th.unnorm_abs
        if self.n == th.min_steps:
            self.early_max_xyz = self.max_xyz
        if self.n >= th.min_steps:
            self.max_big_frac = max(self.max_big_frac, self.big_frac)
        flip, self.grip_sign = gripper_step(self.grip_sign, action[6])
        self.grip_flips += flip
        if action[6] > 0 and self.first_close is None:
            self.first_close = self.n - 1
        self.reward += reward
        self.done |= bool(done)

    @property
    def in_calm_steps(self) -> bool:
        return self.th.calm_steps == 0 or self.n <= self.th.calm_steps

    @property
    def window_mean(self) -> float:
        return self.window_sum / len(self.window)

    @property
    def big_frac(self) -> float:
        return self.big_xyz / self.n

    @property
    def conf_mean(self) -> float | None:
        """Mean token probability over the first ``conf_window`` steps (None until that many)."""
        return self.conf_sum / self.conf_n if self.conf_n == self.th.conf_window else None

    @property
    def cos_mean(self) -> float | None:
        """Direction consistency over the first ``cos_window`` steps (None until that many)."""
        return self.cos_sum / self.cos_n if self.cos_n == self.th.cos_window - 1 else None


def check_bad_prompt(s: StreamState, step: int) -> Verdict | None:
    """Collapsed: the mean ||a[:6]|| of the last ``window`` steps below ``prompt_norm``."""
    if len(s.window) < s.th.window or not s.in_calm_steps:
        return None
    mean = s.window_mean
    if mean < s.th.prompt_norm:
        return Verdict("bad_prompt", ERROR, step, {"window_mean_norm6": mean, "threshold": s.th.prompt_norm,
                                                  "window": s.th.window})
    return None


def check_bad_unnorm(s: StreamState, step: int) -> Verdict | None:
    """Translations out of scale: too small at step ``min_steps``, or too often too large."""
    if s.n < s.th.min_steps:
        return None
    frozen = s.window_mean < s.th.prompt_norm  # that is bad_prompt's signature, not a scale
    if s.n == s.th.min_steps and s.early_max_xyz < s.th.unnorm_small and not frozen:
        return Verdict("bad_unnorm", ERROR, step, {"max_abs_xyz": s.max_xyz, "small_threshold": s.th.unnorm_small,
                                                  "steps": s.n, "side": "too small"})
    frac = s.big_frac
    if frac >= s.th.unnorm_frac:
        return Verdict("bad_unnorm", ERROR, step, {"frac_steps_xyz_above": frac, "abs_threshold": s.th.unnorm_abs,
                                                  "max_abs_xyz": s.max_xyz, "side": "too large"})
    return None


def _conf_on(s: StreamState) -> bool:
    return s.th.conf_min > 0


def _cos_on(s: StreamState) -> bool:
    return s.th.cos_min > -1


def _grasp_on(s: StreamState) -> bool:
    return s.th.grasp_min > 0


def online_no_flip_checked(s: StreamState) -> bool:
    """An online no_flip check has judged this run (then elimination at the end is not needed)."""
    return ((_conf_on(s) and s.conf_mean is not None) or (_cos_on(s) and s.cos_mean is not None)
            or (_grasp_on(s) and (s.first_close is not None or s.n >= s.th.grasp_min)))


def _no_flip_below(on: bool, value: float | None, threshold: float, step: int, what: str, window: int):
    """The online no_flip verdict of a windowed statistic below its calibrated threshold."""
    if on and value is not None and value < threshold:
        return Verdict("no_flip", ERROR, step, {what: value, "threshold": threshold, "window": window})
    return None


def check_token_confidence(s: StreamState, step: int) -> Verdict | None:
    """no_flip, online: the model is unsure of its action tokens from the start (an upside-down
    scene is out of its training distribution, with the same image statistics, so img_mean
    cannot see it). Off until calibrated (``conf_min`` 0)."""
    return _no_flip_below(_conf_on(s), s.conf_mean, s.th.conf_min, step, "mean_token_prob", s.th.conf_window)


def check_direction_consistency(s: StreamState, step: int) -> Verdict | None:
    """no_flip, online: the translations zig-zag over the first ``cos_window`` steps (a healthy
    policy moves smoothly). Off until calibrated (``cos_min`` -1)."""
    return _no_flip_below(_cos_on(s), s.cos_mean, s.th.cos_min, step, "direction_consistency", s.th.cos_window)


def check_early_grasp(s: StreamState, step: int) -> Verdict | None:
    """no_flip, online: the gripper closes before step ``grasp_min``, before the arm can have
    reached any object (a rephrased prompt can do this too; the evidence says so). Off until
    calibrated (``grasp_min`` 0)."""
    if _grasp_on(s) and s.first_close is not None and s.first_close < s.th.grasp_min:
        return Verdict("no_flip", ERROR, step, {"first_close_step": s.first_close, "threshold": s.th.grasp_min,
                                               "note": "closed before reaching any object: the policy misreads "
                                                       "the scene (an unflipped image; a wrong prompt can too)"})
    return None


def check_no_flip_at_end(s: StreamState) -> Verdict | None:
    """no_flip by elimination, the fallback where no online no_flip check ran (none calibrated, a
    policy that logs no token probability, or a run shorter than the check's window)."""
    if online_no_flip_checked(s) or s.n == 0 or s.done or s.reward > 0:
        return None
    mean = s.norm_sum / s.n
    if mean >= s.th.flip_min_norm and s.first_close is not None:
        return Verdict("no_flip", WARN, None, {
            "mean_norm6": mean, "gripper_flips": s.grip_flips, "reward": s.reward,
            "note": "by elimination: healthy actions and gripper use, no success; an upside-down "
                    "image is invisible to per-step statistics (img_mean is rotation-invariant)"})
    return None


@dataclass(frozen=True)
class Predicate:
    """One row of the predicate table: the name a verdict carries (and a fault's ``caught_by``
    names, ``monitor:<name>``), its streaming checks ``(StreamState, step) -> Verdict | None``,
    its end-of-episode check, and the ``Thresholds`` fields it reads. The monitor, the replay,
    the scoring and the docs read this table; ``calibrate`` fits the fields it lists."""
    name: str
    streaming: tuple[Callable[[StreamState, int], Verdict | None], ...]
    fields: tuple[str, ...]
    at_end: Callable[[StreamState], Verdict | None] | None = None


PREDICATE_TABLE: tuple[Predicate, ...] = (
    Predicate("bad_prompt", (check_bad_prompt,), ("window", "prompt_norm", "calm_steps")),
    Predicate("bad_unnorm", (check_bad_unnorm,), ("unnorm_abs", "unnorm_frac", "unnorm_small", "min_steps")),
    Predicate("no_flip", (check_token_confidence, check_direction_consistency, check_early_grasp),
              ("conf_window", "conf_min", "cos_window", "cos_min", "grasp_min", "flip_min_norm"),
              at_end=check_no_flip_at_end),
)
PREDICATES = tuple(p.name for p in PREDICATE_TABLE)
STREAMING = tuple(check for p in PREDICATE_TABLE for check in p.streaming)
SHARED_FIELDS = ("action_dim",)  # read by every check (the action's length), owned by none


def finite_action(action, th: Thresholds, step: int) -> tuple[list[float] | None, Verdict | None]:
    """Validate one action without raising: (floats, None) or (None, ERROR verdict)."""
    if isinstance(action, (str, bytes)):  # iterable, but never 7 numbers
        return None, Verdict("bad_action", ERROR, step, {"error": f"a {type(action).__name__}, not numbers"})
    try:
        a = [float(x) for x in (action.tolist() if isinstance(action, np.ndarray) else action)]
    except Exception as e:  # noqa: BLE001 - anything the caller passes must become a verdict
        return None, Verdict("bad_action", ERROR, step, {"error": f"not a list of numbers: {e!r}"[:200]})
    if len(a) != th.action_dim:
        return None, Verdict("bad_action", ERROR, step, {"error": f"length {len(a)}, expected {th.action_dim}"})
    if not all(map(math.isfinite, a)):
        return None, Verdict("bad_action", ERROR, step, {"error": "NaN/inf", "action": str(a)})
    return a, None


def _finite(x, default=0.0) -> float:
    try:
        x = float(x)
    except Exception:  # noqa: BLE001 - TypeError, ValueError, OverflowError, a raising __float__
        return default
    return x if math.isfinite(x) else default


def as_done(x) -> bool:
    """Only a real boolean (or 0/1) means done: ``"False"`` or an array must not end an episode."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)) and x in (0, 1):
        return bool(x)
    return False
