"""Why a failed episode failed: its failure mode, read from the task state the simulator recorded
on every step (``StepRecord.task``, see ``sims/task_state.py``). A pure function of the records,
so an old log with the state in it is re-explained by the same code (``vla-eval why``).

The modes, in the order they are tried (the first that holds names the episode):

    env_error      the simulator or the policy raised; not the policy's failure
    undone         a goal predicate held, then stopped holding
    wrong_object   the fingers held another object, never one a goal moves (or, below, the arm shoved
                   another object before coming near the goal's)
    knocked_off    an object the goal names fell or tipped over without being dropped from the grasp
    misplaced      the object reached the goal region but was released outside it, or never released
    dropped        the object was lifted, then lost before the goal
    missed_grasp   the fingers closed beside the object, or held it without ever lifting it
    never_reached  the gripper never came near the object
    stalled        near the object (or holding it) with no progress for the rest of the episode
    unexplained    a failure none of the above describes (e.g. stopped early by a monitor alert)

For a long-horizon task (several goal predicates) the mode is that of the first predicate that is
not met at the end, and the evidence names it ("sub-goal 2/2 ...").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from vla_eval.errors import UsageError
from vla_eval.records import EpisodeRecord, GoalState, StepRecord, TaskState

PLACING = ("in", "on")
ARTICULATION = ("open", "close", "turnon", "turnoff")


@dataclass(frozen=True)
class FailureMode:
    name: str
    meaning: str


FAILURE_MODES: tuple[FailureMode, ...] = (
    FailureMode("env_error", "the simulator or the policy raised (not the policy's failure)"),
    FailureMode("undone", "a goal predicate held, then stopped holding"),
    FailureMode("wrong_object", "held or shoved another object, never the one the goal moves"),
    FailureMode("knocked_off", "the goal's object fell or tipped over without being dropped from the grasp"),
    FailureMode("misplaced", "carried to the goal region, released outside it or never released"),
    FailureMode("dropped", "lifted the object, then lost it before the goal"),
    FailureMode("missed_grasp", "closed the fingers beside the object, or held it without lifting it"),
    FailureMode("never_reached", "the gripper never came near the object"),
    FailureMode("stalled", "near the object or holding it, with no progress for the rest of the episode"),
    FailureMode("unexplained", "a failure none of the modes describes"),
)
MODE_NAMES = tuple(m.name for m in FAILURE_MODES)


@dataclass(frozen=True)
class ModeThresholds:
    near_m: float = 0.10  # gripper this close to the object's origin: reached it (held objects read 4-6 cm;
    # origins sit at the base of tall bottles, so closing 5 cm beside one reads ~8 cm)
    lifted_m: float = 0.03  # the object this far above its start: lifted
    at_goal_m: float = 0.15  # the object this close to the goal region's centre, in the table plane: at the goal
    closed_gap: float = 0.07  # finger opening below this: the gripper is closed (or closing)


@dataclass(frozen=True)
class Failure:
    mode: str
    step: int  # the policy step at which the mode became true
    evidence: str  # one line a person can check against the video
    goal: int | None = None  # index of the goal predicate that failed


class UnknownPredicate(UsageError):
    """A task goal the taxonomy has no reading for."""


def nice(name: str) -> str:
    """'ketchup_1' -> 'ketchup'; 'basket_1_contain_region' -> 'basket'; 'flat_stove_1_cook_region' -> 'flat stove cook region'."""
    name = re.sub(r"_\d+", "", name).replace("_contain_region", "").replace("_", " ")
    return name.strip() or "object"


def _cm(metres: float | None, digits: int = 1) -> str:
    return "an unrecorded distance" if metres is None else f"{100 * metres:.{digits}f} cm"


def check_goals(goals: Sequence[str]) -> None:
    for g in goals:
        kind = g.split()[0] if g.split() else ""
        if kind not in PLACING + ARTICULATION:
            raise UnknownPredicate(f"goal predicate {kind!r} ({g!r}) has no failure-mode reading; "
                                   f"known: {', '.join(PLACING + ARTICULATION)}")


def classify(episode: EpisodeRecord, steps: Sequence[StepRecord], goals: Sequence[str] | None = None,
             th: ModeThresholds = ModeThresholds()) -> Failure | None:
    """The failure mode of ``episode`` (None for a success, or when no task state was recorded).
    ``goals`` defaults to the episode's own; a goal predicate outside the taxonomy raises."""
    if episode.outcome == "success":
        return None
    if episode.outcome == "error":
        first = (episode.error or "error").strip().splitlines()[0][:160]
        return Failure("env_error", len(steps), first)
    goals = tuple(goals if goals is not None else episode.goals)
    states = [s.task for s in steps]
    if not goals or not states or any(s is None or len(s.goals) != len(goals) for s in states):
        return None
    check_goals(goals)
    return _classify(goals, states, [s.action[6] for s in steps], th)


def _classify(goals: tuple[str, ...], states: list[TaskState], grip_cmd: list[float], th: ModeThresholds) -> Failure:
    for reader in (_undone, _held_other, _knocked):
        found = reader(goals, states)
        if found:
            return found
    last = states[-1]
    g = next((i for i, gs in enumerate(last.goals) if not gs.met), 0)
    kind, mover = goals[g].split()[0], goals[g].split()[1]
    series = [s.goals[g] for s in states]
    found = _progress(kind, mover, goals[g], series, states, grip_cmd, th)
    if found is None:
        found = Failure("unexplained", len(states) - 1, "no mode fits: every goal predicate held at the last step")
    evidence = found.evidence if len(goals) == 1 else f"sub-goal {g + 1}/{len(goals)} ({goals[g]}): {found.evidence}"
    return Failure(found.mode, found.step, evidence + _also_knocked(states, found.evidence), g)


def _also_knocked(states: list[TaskState], said: str) -> str:
    """What else fell over during the episode (a bystander, or the object after a failed grasp): not
    the mode, but a person watching the video sees it."""
    seen: dict[str, int] = {}
    for t, s in enumerate(states):
        for name in s.knocked:
            seen.setdefault(name, t)
    extra = [f"{nice(n)} at step {t}" for n, t in seen.items() if f"knocked the {nice(n)}" not in said]
    return f"; also knocked over: {', '.join(extra[:3])}" if extra else ""


def _undone(goals, states) -> Failure | None:
    for i, goal in enumerate(goals):
        met_at = None
        for t, s in enumerate(states):
            if s.goals[i].met and met_at is None:
                met_at = t
            elif met_at is not None and not s.goals[i].met:
                return Failure("undone", t, f"'{goal}' held at step {met_at}, undone at step {t}", i)
    return None


def _held_other(goals, states) -> Failure | None:
    """The fingers held an object no goal moves, and never one a goal moves: whatever it knocked on
    the way, the episode went for the wrong object."""
    movers = {g.split()[1] for g in goals}
    if any(gs.held for s in states for gs in s.goals):
        return None
    t, name = next(((t, s.held) for t, s in enumerate(states) if s.held and s.held not in movers), (None, None))
    if name is None:
        return None
    goal = next(g for g in goals if g.split()[0] in PLACING + ARTICULATION)
    return Failure("wrong_object", t, f"held the {nice(name)}, not the {nice(goal.split()[1])}, at step {t}")


def _knocked(goals, states) -> Failure | None:
    """An object a goal names fell or tipped before the fingers ever held it (a drop is not a knock;
    a bystander knocked over on the way does not explain why the goal failed)."""
    named = {part for g in goals for part in g.split()[1:]}
    ever_held: set[str] = set()
    for t, s in enumerate(states):
        if s.held:
            ever_held.add(s.held)
        for name in s.knocked:
            if name in named and name not in ever_held:
                return Failure("knocked_off", t, f"knocked the {nice(name)} over or off at step {t}")
    return None


def _progress(kind: str, mover: str, goal: str, series: list[GoalState], states: list[TaskState],
              grip_cmd: list[float], th: ModeThresholds) -> Failure | None:
    what = nice(mover)
    held_at = [t for t, gs in enumerate(series) if gs.held]
    if not held_at:
        closest = min(range(len(series)), key=lambda t: series[t].reach if series[t].reach is not None else 1e9)
        d = series[closest].reach
        near = [t for t, gs in enumerate(series) if gs.reach is not None and gs.reach <= th.near_m]
        shoved = next(((t, s.moved[0]) for t, s in enumerate(states) if s.moved), None)
        if shoved and (not near or shoved[0] < near[0]):
            return Failure("wrong_object", shoved[0], f"moved the {nice(shoved[1])} at step {shoved[0]}, "
                                                      f"never holding the {what}")
        if not near:
            return Failure("never_reached", closest, f"came no closer than {_cm(d)} to the {what} "
                                                     f"(step {closest})")
        closes = [t for t in near if states[t].gap < th.closed_gap and grip_cmd[t] > 0
                  and (t == 0 or not (states[t - 1].gap < th.closed_gap and grip_cmd[t - 1] > 0))]
        if closes:
            t = closes[0]
            return Failure("missed_grasp", t, f"fingers closed {_cm(series[t].reach)} from the {what} "
                                              f"at step {t}, {len(closes)} time(s), never holding it")
        return Failure("stalled", near[0], f"within {100 * th.near_m:.0f} cm of the {what} from step {near[0]}, "
                                           f"never closing on it")
    if kind in ARTICULATION:
        return Failure("stalled", held_at[0], f"held the {what} from step {held_at[0]} but '{goal}' never held")
    dest = nice(goal.split()[2])
    lifted = [t for t in held_at if (series[t].lift or 0.0) >= th.lifted_m]
    at_goal = [t for t in held_at if series[t].to_goal is not None and series[t].to_goal <= th.at_goal_m]
    last_held = held_at[-1]
    if last_held == len(series) - 1:  # still held at the end
        if at_goal:
            closest = min(series[t].to_goal for t in at_goal)
            return Failure("misplaced", at_goal[0], f"carried the {what} to {_cm(closest)} from the {dest}'s "
                                                    f"centre (step {at_goal[0]}) and held it to the end, never releasing it")
        if not lifted:
            return Failure("missed_grasp", held_at[0], f"held the {what} from step {held_at[0]} but never lifted it")
        return Failure("stalled", lifted[0], f"held the {what} from step {lifted[0]} to the end, "
                                             f"{_cm(series[-1].to_goal, 0)} from the {dest}")
    release = last_held + 1
    at = series[release]
    if at.to_goal is not None and at.to_goal <= th.at_goal_m or at_goal and at_goal[-1] == last_held:
        return Failure("misplaced", release, f"released the {what} {_cm(at.to_goal)} from the "
                                             f"{dest}'s centre at step {release}, outside it")
    if lifted:
        return Failure("dropped", release, f"lifted the {what} {_cm(max(series[t].lift or 0 for t in lifted), 0)}, "
                                           f"lost it at step {release}, {_cm(at.to_goal, 0)} from the {dest}")
    return Failure("missed_grasp", held_at[0], f"closed on the {what} at step {held_at[0]} but lost it at step "
                                               f"{release} without lifting it")
