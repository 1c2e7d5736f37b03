"""Step and episode records, one versioned schema, and the crash-safe JSONL files they live in.

A run folder holds one ``<tag>.jsonl`` per run tag (``baseline``, ``no_flip``, ...) with
both kinds of line, plus ``manifest.json``. Durability rules, so a ``kill -9`` loses at
most the episode in flight and never duplicates or corrupts one:

* every line is appended and flushed on its own; an episode line is also fsync'ed: an
  episode counts as done only once its ``episode`` line is on disk;
* every attempt at an episode has its own ``attempt`` id; step lines of attempts that
  never got their episode line (killed mid-episode) are ignored by the reader;
* a torn final line (killed mid-write) is reported and dropped; the writer cuts it off
  before appending. A malformed line anywhere else is an error naming file:line.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

from vla_eval.argtypes import format_ids
from vla_eval.errors import UsageError

# 2 added StepRecord.token_prob and EpisodeRecord.reset_s; 3 the simulator's task state (StepRecord.task,
# EpisodeRecord.goals) and the failure mode. Every added field is optional: versions 1 and 2 still read.
SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


@dataclass(frozen=True)
class GoalState:
    """One goal predicate of the task's BDDL goal at one step (``EpisodeRecord.goals`` names them, in order).

    For a placing goal (``in``/``on``) the mover is the object placed; for an articulation goal
    (``open``/``close``/``turnon``/``turnoff``) it is the fixture operated; ``lift`` and ``to_goal``
    are then ``None``. Distances in metres, rounded to 1 mm."""

    met: bool  # the predicate holds (LIBERO's own check)
    reach: float | None  # gripper grip site to the mover
    held: bool  # both fingers touch the mover (a grasp, or the fixture's handle)
    lift: float | None = None  # mover height above where it started
    to_goal: float | None = None  # mover to the goal region's centre, in the table plane


@dataclass(frozen=True)
class TaskState:
    """What the simulator says about the task after one step: read, never acted on (schema 3)."""

    goals: tuple[GoalState, ...]
    gap: float  # finger opening, m (~0.079 open, ~0.005 closed on nothing)
    held: str | None = None  # the object both fingers touch, if any
    moved: tuple[str, ...] = ()  # objects no goal names, displaced > 5 cm from their start
    knocked: tuple[str, ...] = ()  # objects fallen > 10 cm below their start or tipped past 60 degrees


@dataclass(frozen=True)
class StepRecord:
    run_tag: str
    task_id: int
    seed: int
    attempt: str
    step: int  # policy step index, 0-based, after the env's wait steps
    action: tuple[float, ...]  # the 7 env-ready values, rounded to 4 decimals
    img_mean: float | None  # mean of the image fed to the policy; None if it reads no pixels
    reward: float
    done: bool
    policy_s: float  # this step's share of the (batched) policy call
    sim_s: float  # env step wall time
    alerts: tuple[str, ...] = ()
    # Mean over the action tokens of the probability the model gave its chosen token (native
    # OpenVLA only; None otherwise): a confidence signal the monitor can read (schema 2).
    token_prob: float | None = None
    # Per action token (native OpenVLA, schema 3): the chosen token's probability, its distribution's entropy (nats).
    token_probs: tuple[float, ...] | None = None
    token_entropy: tuple[float, ...] | None = None
    task: TaskState | None = None  # the simulator's task state (schema 3; None: not recorded)
    kind: str = "step"
    v: int = SCHEMA_VERSION


@dataclass(frozen=True)
class EpisodeRecord:
    """``first_close_step``: the first policy step whose gripper command is "close" (> 0,
    after the policy's post-processing). The wait steps command "open", so this is the
    first open->close crossing; ``None`` if the gripper never closed."""

    run_tag: str
    suite: str
    task_id: int
    seed: int
    init_state: int
    attempt: str
    outcome: str  # success | failure | error (env or worker crash; not a policy failure)
    steps: int
    first_close_step: int | None
    wall_s: float
    policy_s: float
    sim_s: float
    instruction: str = ""
    error: str | None = None
    alerts: tuple[str, ...] = ()
    reset_s: float | None = None  # env reset (incl. the wait steps), timed apart from wall_s (schema 2)
    # Schema 3: the BDDL goal predicates ("in ketchup_1 basket_1_contain_region"), and for a failure
    # its mode (vla_eval.failure_modes), the step it became true and one line of evidence.
    goals: tuple[str, ...] = ()
    failure_mode: str | None = None
    failure_step: int | None = None
    failure_evidence: str | None = None
    perturbation: str | None = None  # "camera:2" (vla_eval.perturbations) and the seed it was drawn from
    perturbation_seed: int | None = None
    kind: str = "episode"
    v: int = SCHEMA_VERSION

    @property
    def success(self) -> bool:
        return self.outcome == "success"


def new_attempt_id() -> str:
    return uuid.uuid4().hex[:12]


def first_close_step(gripper_commands: Iterable[float]) -> int | None:
    for t, g in enumerate(gripper_commands):
        if g > 0:
            return t
    return None


_KINDS = {"step": StepRecord, "episode": EpisodeRecord}
OUTCOMES = ("success", "failure", "error")


ACTION_DIM = 7  # LIBERO's action: xyz, rpy, gripper (sims.protocol uses this one)
MAX_STEPS = 100_000  # far above any suite's step limit (520)
MAX_INT = 2**53  # a JSON integer beyond this is no count or id, and may not even convert to a float
MAX_GOALS = 16  # LIBERO's goals have at most three predicates
MAX_LINE = 1 << 20  # bytes: a record line is ~1 kB; a longer one is refused before it is parsed


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -MAX_INT <= v <= MAX_INT


def _num(v) -> bool:
    """A finite number: Infinity and NaN, which json reads, are refused."""
    if isinstance(v, float):
        return math.isfinite(v)
    return _int(v)


def _opt(check):
    return lambda v: v is None or check(v)


# Every field read back from a file is checked by type and range, so a report or a monitor only
# ever sees typed values (a crafted line is a file:line error, never a string rendered as a number).
_FIELD_CHECKS = {
    "run_tag": (lambda v: isinstance(v, str) and 0 < len(v) <= 64, "a short string"),
    "suite": (lambda v: isinstance(v, str) and 0 < len(v) <= 64, "a suite name"),
    "task_id": (lambda v: _int(v) and 0 <= v < 1000, "an integer 0..999"),
    "seed": (lambda v: _int(v) and 0 <= v < 1000, "an integer 0..999"),
    "init_state": (lambda v: _int(v) and 0 <= v < 1000, "an integer 0..999"),
    "attempt": (lambda v: isinstance(v, str) and 0 < len(v) <= 64, "an attempt id"),
    "step": (lambda v: _int(v) and 0 <= v < MAX_STEPS, f"an integer 0..{MAX_STEPS - 1}"),
    "steps": (lambda v: _int(v) and 0 <= v <= MAX_STEPS, f"an integer 0..{MAX_STEPS}"),
    "action": (lambda v: isinstance(v, (list, tuple)) and len(v) == ACTION_DIM and all(_num(x) for x in v),
               f"a list of {ACTION_DIM} finite numbers"),
    "img_mean": (_opt(_num), "null or a finite number"),
    "reward": (_num, "a finite number"),
    "done": (lambda v: isinstance(v, bool), "true or false"),
    "policy_s": (lambda v: _num(v) and v >= 0, "seconds >= 0"), "sim_s": (lambda v: _num(v) and v >= 0, "seconds >= 0"),
    "wall_s": (lambda v: _num(v) and v >= 0, "seconds >= 0"),
    "alerts": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(a, str) for a in v), "a list of strings"),
    "outcome": (lambda v: v in OUTCOMES, f"one of {', '.join(OUTCOMES)}"),
    "first_close_step": (_opt(lambda v: _int(v) and 0 <= v < MAX_STEPS), f"null or an integer 0..{MAX_STEPS - 1}"),
    "instruction": (lambda v: isinstance(v, str), "a string"),
    "error": (_opt(lambda v: isinstance(v, str)), "null or a string"),
    "token_prob": (_opt(lambda v: _num(v) and 0 <= v <= 1), "null or a probability"),
    "reset_s": (_opt(lambda v: _num(v) and v >= 0), "null or seconds >= 0"),
    "token_probs": (_opt(lambda v: isinstance(v, (list, tuple)) and len(v) <= 64 and all(_num(x) and 0 <= x <= 1 for x in v)),
                    "null or a list of probabilities"),
    "token_entropy": (_opt(lambda v: isinstance(v, (list, tuple)) and len(v) <= 64
                           and all(_num(x) and 0 <= x <= 100 for x in v)), "null or a list of entropies (nats)"),
    "task": (_opt(lambda v: _task_state(v) is not None), "null or a task state object"),
    "goals": (lambda v: isinstance(v, (list, tuple)) and len(v) <= MAX_GOALS
              and all(isinstance(g, str) and 0 < len(g) <= 200 for g in v), f"a list of at most {MAX_GOALS} strings"),
    "failure_mode": (_opt(lambda v: isinstance(v, str) and 0 < len(v) <= 64), "null or a failure mode name"),
    "failure_step": (_opt(lambda v: _int(v) and 0 <= v < MAX_STEPS), f"null or an integer 0..{MAX_STEPS - 1}"),
    "failure_evidence": (_opt(lambda v: isinstance(v, str) and len(v) <= 500), "null or a line of text"),
    "perturbation": (_opt(lambda v: isinstance(v, str) and 0 < len(v) <= 64), "null or family:level"),
    "perturbation_seed": (_opt(lambda v: _int(v) and 0 <= v < 2**31), "null or an integer 0..2^31-1"),
    "kind": (lambda v: v in _KINDS, "step or episode"),
    "v": (_int, "an integer"),
}


_DIST = lambda v: _num(v) and -100 <= v <= 100  # noqa: E731 - metres inside any scene
_NAMES = lambda v: isinstance(v, (list, tuple)) and len(v) <= 64 and all(  # noqa: E731
    isinstance(n, str) and 0 < len(n) <= 64 for n in v)


def _goal_state(d) -> GoalState | None:
    if not (isinstance(d, dict) and set(d) <= {"met", "reach", "held", "lift", "to_goal"} and {"met", "held"} <= set(d)):
        return None
    if not (isinstance(d["met"], bool) and isinstance(d["held"], bool)):
        return None
    if not all(d.get(k) is None or _DIST(d[k]) for k in ("reach", "lift", "to_goal")):
        return None
    return GoalState(**{"reach": None, **d})


def _task_state(d) -> TaskState | None:
    """A recorded task state, checked field by field, or None if the value is not one."""
    if not (isinstance(d, dict) and set(d) <= {"goals", "gap", "held", "moved", "knocked"} and {"goals", "gap"} <= set(d)):
        return None
    goals = d["goals"]
    if not (isinstance(goals, list) and len(goals) <= MAX_GOALS) or not _num(d["gap"]) or not -1 <= d["gap"] <= 1:
        return None
    parsed = [_goal_state(g) for g in goals]
    held = d.get("held")
    if None in parsed or not (held is None or (isinstance(held, str) and 0 < len(held) <= 64)):
        return None
    if not all(_NAMES(d.get(k, [])) for k in ("moved", "knocked")):
        return None
    return TaskState(goals=tuple(parsed), gap=d["gap"], held=held, moved=tuple(d.get("moved", ())),
                     knocked=tuple(d.get("knocked", ())))


def to_json(record: StepRecord | EpisodeRecord) -> str:
    return json.dumps(asdict(record), separators=(",", ":"), allow_nan=True)


def from_dict(d: dict) -> StepRecord | EpisodeRecord:
    if not isinstance(d, dict):
        raise ValueError(f"a record is a JSON object, got {type(d).__name__}")
    cls = _KINDS.get(d.get("kind"))
    if cls is None:
        raise ValueError(f"unknown record kind {d.get('kind')!r}; valid: {', '.join(_KINDS)}")
    if d.get("v") not in READABLE_VERSIONS:
        raise ValueError(f"schema version {d.get('v')!r}; this vla-eval reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}")
    for key, value in d.items():
        ok, valid = _FIELD_CHECKS[key]
        if not ok(value):
            raise ValueError(f"{key}={value!r:.60} is invalid; valid: {valid}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    if kw.get("task") is not None:
        kw["task"] = _task_state(d["task"])
    try:
        return cls(**kw)
    except TypeError as e:  # a missing field
        raise ValueError(f"bad {cls.__name__}: {e}") from e


class JsonlWriter:
    """Appends records to one JSONL file, flushing each; fsyncs episode lines.

    All or nothing per line: the file is created with its first complete line (a writer that
    never writes leaves no file), and a line that cannot be written whole (disk full) is cut
    off again before the error propagates, so the file never ends in a torn line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f, self._created = None, False
        if self.path.exists():
            _cut_torn_tail(self.path)

    def write(self, record: StepRecord | EpisodeRecord) -> None:
        line = (to_json(record) + "\n").encode("utf-8")
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._created = not self.path.exists()
            self._f = open(self.path, "ab")
        start = self._f.seek(0, os.SEEK_END)
        try:
            self._f.write(line)
            self._f.flush()
            if isinstance(record, EpisodeRecord):
                os.fsync(self._f.fileno())
        except OSError:
            self._undo(start)
            raise

    def _undo(self, start: int) -> None:
        """Drop what a failed write left (buffered bytes included); remove a file it created."""
        f, self._f = self._f, None
        try:
            f.close()
        except OSError:
            pass
        try:
            os.truncate(self.path, start)
            if start == 0 and self._created:
                self.path.unlink()
        except OSError:
            pass

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _cut_torn_tail(path: Path) -> None:
    """Drop a final line with no newline if it is torn (a write cut short by a kill); a complete
    record that only lacks its newline is kept and the newline added."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        start = data.rfind(b"\n") + 1
        try:
            from_dict(json.loads(data[start:].decode("utf-8")))
            f.write(b"\n")
        except (ValueError, UnicodeDecodeError, RecursionError):
            f.seek(0)
            f.truncate(start)


@dataclass
class RunLog:
    """What a JSONL file holds once uncommitted attempts are set aside."""

    path: Path
    episodes: list[EpisodeRecord] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    torn_tail: bool = False
    orphan_steps: int = 0  # step lines of attempts that never completed

    def steps_of(self, episode: EpisodeRecord) -> list[StepRecord]:
        """This episode's steps in file order; the index by attempt is built once per log
        (a scan per episode was quadratic: ~70M comparisons for a 500-episode sweep)."""
        index = self.__dict__.get("_by_attempt")
        if index is None or self.__dict__.get("_indexed_n") != len(self.steps):
            index = {}
            for s in self.steps:
                index.setdefault(s.attempt, []).append(s)
            self.__dict__["_by_attempt"], self.__dict__["_indexed_n"] = index, len(self.steps)
        return list(index.get(episode.attempt, ()))


def iter_lines(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    """Yield (line number, parsed value or None if malformed, raw text)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
            if len(raw) > MAX_LINE:
                raise UsageError(f"{path}:{n}: a line over {MAX_LINE} bytes; is this a vla-eval JSONL log?")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"{path}:{n}: not UTF-8 text; is this a vla-eval JSONL log?") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, RecursionError):  # RecursionError: brackets nested past the stack
                value = None
            yield n, value, line


@dataclass(frozen=True)
class RunScope:
    """What records of one run's JSONL may hold: its suite, its tag, its tasks and seeds."""

    suite: str
    tag: str
    task_ids: frozenset[int]
    seeds: frozenset[int]

    def problem(self, rec: StepRecord | EpisodeRecord) -> str | None:
        if rec.run_tag != self.tag:
            return f"a record of run {rec.run_tag!r} in the {self.tag!r} log"
        if isinstance(rec, EpisodeRecord) and rec.suite != self.suite:
            return f"an episode of suite {rec.suite!r} in a {self.suite} run"
        if rec.task_id not in self.task_ids or rec.seed not in self.seeds:
            return (f"task {rec.task_id} seed {rec.seed} is outside this run (tasks {format_ids(self.task_ids)}, "
                    f"seeds {format_ids(self.seeds)})")
        return None


def read_jsonl(path: Path, scope: RunScope | None = None) -> RunLog:
    """A log's committed records; with ``scope``, a record that does not belong to the run is a
    file:line error (never counted, never taken as done by a resume)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such log file: {path}")
    log = RunLog(path)
    raw_steps: list[StepRecord] = []
    ep_lines: list[int] = []  # the line of each episode record, in order
    lines = list(iter_lines(path))
    for i, (n, d, text) in enumerate(lines):
        last = i == len(lines) - 1
        if d is None:
            if last and not text.endswith("\n"):
                log.torn_tail = True
                continue
            raise UsageError(f"{path}:{n}: malformed JSON line: {text[:80]!r}")
        try:
            rec = from_dict(d)
        except ValueError as e:
            raise UsageError(f"{path}:{n}: {e}") from e
        problem = scope.problem(rec) if scope is not None else None
        if problem:
            raise UsageError(f"{path}:{n}: {problem}; this record does not belong here (was the file copied "
                             f"from another run?)")
        if isinstance(rec, EpisodeRecord):
            log.episodes.append(rec)
            ep_lines.append(n)
        else:
            raw_steps.append(rec)
    # An episode may have been retried after an env error: the rerun replaces the error. Any other
    # second result for one episode of a run is refused (which one counts is not for a reader to guess).
    by_key: dict[tuple[str, int, int], tuple[EpisodeRecord, int]] = {}
    for ep, n in zip(log.episodes, ep_lines):
        key = (ep.run_tag, ep.task_id, ep.seed)
        first, first_n = by_key.get(key, (None, 0))
        if scope is not None and first is not None and first.outcome != "error":
            raise UsageError(f"{path}:{n}: a second result ({ep.outcome}) for task {ep.task_id} seed {ep.seed}, "
                             f"which line {first_n} already records ({first.outcome}); only an env error may be "
                             f"followed by its rerun. Keep one of the two lines (or re-run the episode into a new "
                             f"folder).")
        by_key[key] = (ep, n)
    log.episodes = [ep for ep, _ in by_key.values()]
    committed = {ep.attempt for ep in log.episodes}
    log.steps = [s for s in raw_steps if s.attempt in committed]
    log.orphan_steps = len(raw_steps) - len(log.steps)
    return log
