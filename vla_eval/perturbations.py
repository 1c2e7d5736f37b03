"""The perturbation families, as data: what each changes in the simulated world and how much at
each level. ``sims/perturb.py`` applies them inside the LIBERO env (so every camera, the video and
the policy see the same world); a run tag ``family:level`` (``camera:2``) runs one, and composes
with faults (``no_flip+camera:2``).

Each episode's perturbation is drawn from its own seed, ``(perturbation seed, family, level, task,
init state)``: the perturbed episode and the unperturbed one of the same (task, seed) differ only by
it (matched pairs by construction), and a re-run draws the same one.
"""
from __future__ import annotations

from dataclasses import dataclass

from vla_eval.errors import UsageError

LEVELS = (1, 2, 3)


@dataclass(frozen=True)
class Family:
    name: str
    changes: str  # what it changes, for the docs and --help
    magnitudes: tuple[str, str, str]  # levels 1, 2, 3 in words
    where: str  # reset (the scene at reset) | frame (each rendered frame) | language (the instruction)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("camera", "agentview camera pose: a shift in a random direction and a turn about a random axis",
           ("2 cm, 2 deg", "5 cm, 5 deg", "10 cm, 10 deg"), "reset"),
    Family("light", "every light: intensity scaled, direction turned, colour tinted",
           ("x0.8-1.2, 10 deg, 5% tint", "x0.6-1.4, 20 deg, 10% tint", "x0.4-1.6, 35 deg, 20% tint"), "reset"),
    Family("table", "the table and floor appearance: colour blended toward a random one",
           ("20% blend", "45% blend", "75% blend"), "reset"),
    Family("layout", "every movable object moved in the table plane beyond the stored init state, then settled",
           ("up to 1.5 cm", "up to 3 cm", "up to 5 cm"), "reset"),
    Family("robot_init", "the arm's initial joint angles: independent offsets per joint",
           ("up to 0.03 rad", "up to 0.07 rad", "up to 0.12 rad"), "reset"),
    Family("language", "the instruction: a paraphrase from a fixed list per template, or another task's",
           ("synonyms", "reworded", "another task of the suite"), "language"),
    Family("noise", "each rendered frame: Gaussian pixel noise, blur, JPEG compression",
           ("noise sigma 4", "sigma 8 + 3x3 blur", "sigma 12 + blur + JPEG quality 30"), "frame"),
)}


@dataclass(frozen=True)
class Perturbation:
    family: str
    level: int
    seed: int = 0  # the perturbation seed (a run's, recorded in its manifest)

    @property
    def tag(self) -> str:
        return f"{self.family}:{self.level}"

    def rng_key(self, task_id: int, init_state: int) -> list[int]:
        return [self.seed, list(FAMILIES).index(self.family), self.level, task_id, init_state]


def parse(part: str, seed: int = 0) -> Perturbation:
    """``camera:2`` -> Perturbation; anything else is one message naming the valid values."""
    family, _, level = part.partition(":")
    if family not in FAMILIES:
        raise UsageError(f"unknown perturbation family {family!r} (in {part!r}); valid: {', '.join(FAMILIES)}")
    if not level.isdigit() or int(level) not in LEVELS:
        raise UsageError(f"perturbation level {level!r} of {family} is out of range; valid: "
                         f"{', '.join(map(str, LEVELS))} (e.g. {family}:2)")
    return Perturbation(family, int(level), seed)


def split_tag(tag: str) -> tuple[tuple[str, ...], Perturbation | None]:
    """A run tag's fault names and its perturbation (at most one): ``no_flip+camera:2``."""
    parts = str(tag).split("+")
    perturbs = [p for p in parts if ":" in p]
    if len(perturbs) > 1:
        raise UsageError(f"run tag {tag!r} names {len(perturbs)} perturbations; one per run tag")
    return tuple(p for p in parts if ":" not in p), (parse(perturbs[0]) if perturbs else None)


def perturbation_of(tag: str, seed: int = 0) -> Perturbation | None:
    p = split_tag(tag)[1]
    return None if p is None else Perturbation(p.family, p.level, seed)
