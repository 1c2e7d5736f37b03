"""``vla-eval check-world``: is this machine's LIBERO world the published one, where it matters?

An environment can differ from the one a policy was evaluated in without any error: another
MuJoCo moves contacts (since 3.4 the libero_spatial task-5 bowl no longer settles, 98% -> 12%
success), another robosuite or asset copy moves the agentview camera or the lights. Per task, at
stored init state 0, this reads what the policy's world is made of and compares it with a
reference written on the published stack (libero 0.1.1, robosuite 1.4.0, mujoco 3.3.2):

    camera   the agentview camera's position, orientation and field of view
    lights   every light's position, direction and colours
    settle   how far each object moves in the published 10 wait steps after the init state is
             set, and then in 40 more steps with the robot still: an init state that does not
             settle (objects still moving after the wait) is a physics shift
    rest     where each object rests after the wait (position, orientation): an init state that
             settles somewhere else (MuJoCo 3.4's box-box contact change leaves libero_spatial
             task 5's bowl on the ramekin's rim, 3.4 cm from where 3.3 seats it) is one too

Nothing here changes an episode: the check runs in its own env before a sweep. Exit 0 when every
task matches, 1 when something differs (each difference on one line), 2 on bad input.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vla_eval.errors import UsageError

STILL_STEPS = 40  # after the published wait: objects of a settled scene stay put
# Tolerances: float noise of the same stack is ~1e-9; a real shift is millimetres or percent.
TOL_POS_M, TOL_ANGLE, TOL_LIGHT = 1e-4, 1e-4, 1e-3
TOL_SETTLE_M = 0.005  # movement differing from the reference's by this much: not the published physics
TOL_REST_M, TOL_REST_DEG = 0.005, 5.0  # a resting pose this far from the reference's


def reference_path(suite: str) -> Path:
    from vla_eval.configs import CONFIG_DIR

    return CONFIG_DIR / "world" / f"{suite}.json"


def _positions(inner) -> dict[str, np.ndarray]:
    return {n: inner.sim.data.body_xpos[b].copy() for n, b in inner.obj_body_id.items() if n in inner.objects_dict}


def _poses(inner) -> dict[str, dict]:
    return {n: {"pos": [round(float(x), 6) for x in inner.sim.data.body_xpos[b]],
                "quat": [round(float(x), 6) for x in inner.sim.data.body_xquat[b]]}
            for n, b in inner.obj_body_id.items() if n in inner.objects_dict}


def fingerprint(env) -> dict:
    """One task's world at init state 0 (see the module docstring). ``env``: a ``LiberoEnv``."""
    from vla_eval.sims.protocol import NUM_WAIT_STEPS, WAIT_ACTION

    inner = env._env
    inner.reset()
    inner.set_init_state(env._init_states[0])
    model = inner.sim.model
    cam = model.camera_name2id("agentview")
    start = _positions(inner.env)
    for _ in range(NUM_WAIT_STEPS):
        inner.step(WAIT_ACTION.tolist())
    settled, rest = _positions(inner.env), _poses(inner.env)
    for _ in range(STILL_STEPS):
        inner.step(WAIT_ACTION.tolist())
    still = _positions(inner.env)
    return {
        "camera": {"pos": model.cam_pos[cam].tolist(), "quat": model.cam_quat[cam].tolist(),
                   "fovy": float(model.cam_fovy[cam])},
        "lights": [{f: getattr(model, f"light_{f}")[i].tolist() for f in ("pos", "dir", "diffuse", "ambient", "specular")}
                   for i in range(model.nlight)],
        "settle_m": {n: round(float(np.linalg.norm(settled[n] - start[n])), 6) for n in start},
        "still_m": {n: round(float(np.linalg.norm(still[n] - settled[n])), 6) for n in start},
        "rest": rest,
    }


def differences(got: dict, ref: dict) -> list[str]:
    """What differs between two fingerprints, one line each (empty: the same world)."""
    out = []
    gc, rc = got["camera"], ref["camera"]
    moved = float(np.linalg.norm(np.subtract(gc["pos"], rc["pos"])))
    if moved > TOL_POS_M:
        out.append(f"agentview camera moved {moved * 1000:.1f} mm ({rc['pos']} -> {gc['pos']})")
    turn = 2 * float(np.arccos(min(1.0, abs(float(np.dot(gc["quat"], rc["quat"]))))))
    if turn > TOL_ANGLE:
        out.append(f"agentview camera turned {np.degrees(turn):.2f} deg")
    if abs(gc["fovy"] - rc["fovy"]) > TOL_ANGLE:
        out.append(f"agentview field of view {rc['fovy']} -> {gc['fovy']} deg")
    if len(got["lights"]) != len(ref["lights"]):
        out.append(f"{len(got['lights'])} lights where the published scene has {len(ref['lights'])}")
    else:
        for i, (g, r) in enumerate(zip(got["lights"], ref["lights"])):
            changed = [f for f in r if float(np.abs(np.subtract(g[f], r[f])).max()) > TOL_LIGHT]
            if changed:
                out.append(f"light {i}: {', '.join(f'{f} {r[f]} -> {g[f]}' for f in changed)}")
    for phase, what in (("settle_m", "in the 10 wait steps"), ("still_m", f"in {STILL_STEPS} still steps after them")):
        for name, published in ref[phase].items():
            now = got[phase].get(name)
            if now is None:
                out.append(f"object {name} is missing from the scene")
            elif abs(now - published) > TOL_SETTLE_M:
                out.append(f"{name} moves {now * 1000:.1f} mm {what} (published: {published * 1000:.1f} mm): the "
                           f"init state does not settle as published (physics differ: MuJoCo version?)")
    for name, published in ref.get("rest", {}).items():  # references written before poses were kept lack it
        now = got.get("rest", {}).get(name)
        if now is None:
            continue  # a missing object is named above
        off = float(np.linalg.norm(np.subtract(now["pos"], published["pos"])))
        tilt = np.degrees(2 * float(np.arccos(min(1.0, abs(float(np.dot(now["quat"], published["quat"])))))))
        if off > TOL_REST_M or tilt > TOL_REST_DEG:
            out.append(f"{name} comes to rest {off * 1000:.1f} mm and {tilt:.1f} deg from its published pose after the "
                       f"wait: the init state settles somewhere else (physics differ: MuJoCo version?)")
    return out


def check_world(suite: str, tasks: list[int], reference: dict, out=print) -> int:
    """Fingerprint each task and compare; returns the number of tasks that differ."""
    from vla_eval.sims.libero_env import LiberoEnv

    differing = 0
    for task in tasks:
        ref = reference["tasks"].get(str(task))
        if ref is None:
            raise UsageError(f"the reference has no task {task} of {suite}; it has tasks "
                             f"{', '.join(sorted(reference['tasks'], key=int))}")
        with LiberoEnv(suite, task, cameras=False) as env:
            found = differences(fingerprint(env), ref)
        differing += bool(found)
        out(f"{suite} task {task}: " + ("matches the published world" if not found else
                                         f"{len(found)} difference(s)"))
        for line in found:
            out(f"  - {line}")
    return differing


def versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("libero", "robosuite", "mujoco"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def register(sub) -> None:
    from vla_eval.argtypes import id_set, out_file
    from vla_eval.verbs import VERBS

    p = sub.add_parser("check-world", help=VERBS["check-world"].help)
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--tasks", type=id_set("--tasks"), help="task ids, e.g. 0-9 or 0,3 (default: every task of the "
                                                           "reference)")
    p.add_argument("--reference", type=Path, help="a reference written with --write-reference (default: the shipped "
                                                  "one for the suite)")
    p.add_argument("--write-reference", type=out_file, metavar="FILE",
                   help="write this machine's world as the reference (a new file; on a known-good stack)")
    p.set_defaults(fn=_cmd)


def _cmd(args) -> int:
    from vla_eval.safe_json import read_json
    from vla_eval.sims.protocol import suite_spec

    spec = suite_spec(args.suite)  # an unknown suite: one line naming the valid ones
    if args.write_reference is not None:
        if args.write_reference.exists():
            raise UsageError(f"--write-reference {args.write_reference} exists; give a new file")
        tasks = list(args.tasks or range(spec.n_tasks))
        bad = [t for t in tasks if not 0 <= t < spec.n_tasks]
        if bad:
            raise UsageError(f"--tasks {bad[0]}: {args.suite} has tasks 0-{spec.n_tasks - 1}")
        from vla_eval.sims.libero_env import LiberoEnv

        ref = {"suite": args.suite, "versions": versions(), "tasks": {}}
        for task in tasks:
            with LiberoEnv(args.suite, task, cameras=False) as env:
                ref["tasks"][str(task)] = fingerprint(env)
            print(f"{args.suite} task {task}: recorded", flush=True)
        args.write_reference.write_text(json.dumps(ref, indent=1))
        print(f"wrote {args.write_reference}")
        return 0
    path = args.reference or reference_path(args.suite)
    if not path.is_file():
        raise UsageError(f"no reference world for {args.suite} ({path}); write one on a known-good machine with "
                         f"`vla-eval check-world --suite {args.suite} --write-reference FILE` and pass --reference FILE")
    reference = read_json(path, "reference world")
    if reference.get("suite") != args.suite:
        raise UsageError(f"{path} is the reference of suite {reference.get('suite')!r}, not {args.suite!r}")
    tasks = list(args.tasks or sorted(int(t) for t in reference["tasks"]))
    print(f"check-world {args.suite}: this machine {versions()}, reference {reference.get('versions')}")
    return 1 if check_world(args.suite, tasks, reference) else 0
