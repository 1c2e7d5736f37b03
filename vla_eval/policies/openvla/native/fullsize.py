"""``vla-eval check-fullsize``: a released-layout checkpoint folder, loaded as a user loads a
snapshot, acts once through the native model and once through OpenVLA's own code; same tokens?

    1. --write      the folder with random weights (``--size 7b``: OpenVLA-7B's exact architecture,
                    sharded at 7 GB as released; written a tensor at a time)
    2. inputs       real LIBERO agentview frames (rendered, or ``--frames``) through the published
                    image chain, each with both prompt templates; every unnorm key in config.json
    3. native       a child process: ``--checkpoint DIR`` loaded as by ``sweep``, one call per input
                    (batch 1) and one call on all of them (batch N): load time, seconds per action,
                    peak RSS, tokens, logits
    4. official     a child process under OpenVLA's pinned stack (``vla-eval setup --pins``) with its
                    code files (``--official-code``: its prismatic/extern/hf folder, copied into the
                    checkpoint folder as the hub has them): the same inputs through ``predict_action``
    5. verdict      tokens identical input by input, batched equal to unbatched; where two runs
                    differ, whether the first differing token was a rounding tie (its two candidates'
                    logits within 2 spacings of the dtype in either run: random weights give flat
                    distributions, and bf16 resolves a logit of 2.6 only to 0.016); the largest logit
                    difference where identical

Each child runs alone, so memory holds one model at a time (~16 GB at 7B in bf16). Exit 0 when
every comparison made agrees, 1 otherwise.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vla_eval.errors import UsageError

OFFICIAL_WORKER = Path(__file__).with_name("official_worker.py")


def prepare_inputs(frames: np.ndarray, instructions: list[str], keys: list[str], path: Path) -> int:
    """Raw frames -> inputs.npz (each frame x both templates); returns the number of inputs."""
    from vla_eval.policies.openvla.check_backend import inputs

    images, prompts = inputs(frames, instructions)
    np.savez(path, images=np.stack(images), prompts=np.array(prompts), unnorm_keys=np.array(keys))
    return len(images)


def native_main(ckpt: str, inputs_path: str, out_path: str, dtype: str) -> None:
    """The native child: loads the folder as ``sweep --checkpoint DIR`` does and acts on the inputs."""
    import resource

    import torch

    from vla_eval.policies.factory import OpenVLAOptions
    from vla_eval.policies.openvla.native.backend import load_native_backend

    data = np.load(inputs_path)
    images, prompts, keys = list(data["images"]), [str(p) for p in data["prompts"]], [str(k) for k in data["unnorm_keys"]]
    t0 = time.perf_counter()
    backend = load_native_backend(ckpt, OpenVLAOptions(checkpoint=ckpt, device="cpu", dtype=dtype))
    load_s = time.perf_counter() - t0
    model = backend.model
    tokens, logits, act_s = [], [], []
    for image, prompt in zip(images, prompts):
        t = time.perf_counter()
        tok, lg = model.generate_action_tokens(backend.pixel_values([image]), backend.prompt_ids([prompt]), 7,
                                               return_logits=True)
        act_s.append(time.perf_counter() - t)
        tokens.append(tok[0].numpy())
        logits.append(lg[0].float().numpy())
        print(f"native: tokens {tokens[-1].tolist()} ({act_s[-1]:.1f} s)", flush=True)
    t = time.perf_counter()
    batched, batched_logits = model.generate_action_tokens(backend.pixel_values(images), backend.prompt_ids(prompts), 7,
                                                           return_logits=True)
    batch_s = time.perf_counter() - t
    tokens = np.stack(tokens)
    actions = np.stack([model.tokens_to_actions(tokens, k) for k in keys])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    np.savez(out_path, tokens=tokens, logits=np.stack(logits), actions=actions, batched=batched.numpy(),
             batched_logits=batched_logits.float().numpy(), load_s=load_s,
             act_s=np.array(act_s), batch_s=batch_s, peak_rss_gib=peak, torch=torch.__version__,
             n_params=sum(p.numel() for p in model.parameters()))


def _child(args: list[str], env: dict | None, what: str) -> None:
    t = time.perf_counter()
    r = subprocess.run(args, env=env, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise UsageError(f"the {what} process failed (exit {r.returncode}) after {time.perf_counter() - t:.0f} s: "
                         + (r.stderr.strip().splitlines() or ["no message"])[-1][:400])


def official_env() -> dict:
    from vla_eval.policies.openvla.pins import pins_dir, pins_installed

    if not pins_installed():
        raise UsageError(f"OpenVLA's pinned stack is not installed in {pins_dir()}: run `vla-eval setup --pins` "
                         "(or pass --skip-official)")
    return {**os.environ, "PYTHONPATH": str(pins_dir()), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


SIGNIFICANT_BITS = {"bfloat16": 8, "float32": 24}


def ulp(x: float, dtype: str = "bfloat16") -> float:
    """The spacing of ``dtype`` numbers at |x|."""
    return float(np.exp2(np.floor(np.log2(max(abs(x), 2.0 ** -126))) - (SIGNIFICANT_BITS[dtype] - 1)))


def agreement(tok_a: np.ndarray, logits_a: np.ndarray, tok_b: np.ndarray, logits_b: np.ndarray,
              dtype: str = "bfloat16", ulps: float = 2.0) -> tuple[bool, bool]:
    """Two runs' (7,) tokens and (7, V) logits -> (identical, explained): a first differing token
    is a rounding tie when, in either run, its two candidates' logits lie within ``ulps`` ``dtype``
    spacings of each other (the runs then disagree by rounding, not by computation; the tokens
    after it follow different histories and are not compared)."""
    differ = np.nonzero(tok_a != tok_b)[0]
    if differ.size == 0:
        return True, True
    t, i, j = int(differ[0]), int(tok_a[differ[0]]), int(tok_b[differ[0]])
    tie = any(abs(lg[t, i] - lg[t, j]) <= ulps * ulp(max(abs(lg[t, i]), abs(lg[t, j])), dtype)
              for lg in (logits_a, logits_b))
    return False, bool(tie)


def compare(native: dict, official: dict | None, dtype: str = "bfloat16") -> dict:
    """The verdict's numbers (see the module docstring)."""
    tok, lg = native["tokens"], native["logits"]
    pairs = {"batched": [agreement(tok[i], lg[i], native["batched"][i], native["batched_logits"][i], dtype)
                         for i in range(len(tok))]}
    if official is not None:
        pairs["official"] = [agreement(tok[i], lg[i], official["tokens"][i], official["logits"][i], dtype)
                             for i in range(len(tok))]
    top2 = np.sort(lg, axis=-1)[..., -2:]
    out = {"inputs": len(tok), "min_top2_margin": float((top2[..., 1] - top2[..., 0]).min())}
    for name, rows in pairs.items():
        out[f"{name}_identical"] = sum(same for same, _ in rows)
        out[f"{name}_ties"] = sum(not same and tie for same, tie in rows)
        out[f"{name}_unexplained"] = sum(not tie for _, tie in rows)
    if official is not None:
        equal = (official["tokens"] == tok).all(axis=1)
        steps = min(lg.shape[1], official["logits"].shape[1])
        diff = np.abs(lg[equal, :steps] - official["logits"][equal, :steps])
        out["max_logit_diff"] = float(diff.max()) if diff.size else float("nan")
        out["logit_scale"] = float(np.abs(lg).max())
        out["max_action_diff_identical"] = float(np.abs(native["actions"][:, equal] -
                                                        official["actions"][:, equal]).max()) if equal.any() else 0.0
    return out


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("check-fullsize", help=VERBS["check-fullsize"].help)
    p.add_argument("--checkpoint", type=Path, required=True, help="the released-layout folder to load")
    p.add_argument("--write", action="store_true", help="first write random weights there (the folder must be "
                                                        "new or empty)")
    p.add_argument("--size", choices=("tiny", "small", "7b"), default="7b", help="with --write (default 7b)")
    p.add_argument("--seed", type=int, default=0, help="with --write: the random weights' seed")
    p.add_argument("--official-code", type=Path, help="OpenVLA's prismatic/extern/hf folder (its three "
                                                      "*_prismatic.py files); with --write copied in")
    p.add_argument("--skip-official", action="store_true", help="the native side only")
    p.add_argument("--frames", type=Path, help="an .npz with raw 'frames' (N, 256, 256, 3) and optional "
                                               "'instructions' (default: render one from LIBERO)")
    p.add_argument("--n", type=int, default=1, help="frames (default 1; each with both templates)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="both sides' weights and activations (default bfloat16, as published; float32 for an exact "
                        "comparison where memory allows: 2x)")
    p.add_argument("--json", type=Path, help="also write the numbers here (a new file)")
    p.set_defaults(fn=_cmd)


def _frames(args) -> tuple[np.ndarray, list[str]]:
    if args.frames is None:
        from vla_eval.policies.openvla.check_backend import render_frames

        return render_frames("libero_object", args.n)
    try:
        data = np.load(args.frames)
        frames = np.asarray(data["frames"])[:args.n]
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"--frames {args.frames}: not an .npz with a 'frames' array ({e})") from None
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UsageError(f"--frames {args.frames}: 'frames' is {frames.dtype} {frames.shape}; expected uint8 "
                         "(N, H, W, 3) raw agentview frames")
    instructions = [str(s) for s in data["instructions"]] if "instructions" in data.files else [
        "pick up the alphabet soup and place it in the basket"]
    return frames, instructions


def _cmd(args) -> int:
    from vla_eval.errors import require
    from vla_eval.policies.openvla.native.layout import CODE_FILES, check_official_code

    ckpt = args.checkpoint
    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    if args.json is not None and args.json.exists():
        raise UsageError(f"--json {args.json} exists; give a new file")
    if args.write and ckpt.exists() and (not ckpt.is_dir() or any(ckpt.iterdir())):
        raise UsageError(f"--checkpoint {ckpt} exists and is not an empty folder; --write writes only into a new "
                         "or empty one")
    if not args.write and not ckpt.is_dir():
        raise UsageError(f"--checkpoint {ckpt}: no such folder (add --write to write one with random weights)")
    if args.official_code is not None and not args.write:
        raise UsageError("--official-code is copied in by --write; without it, copy the files into the folder")
    official = not args.skip_official
    if official and not args.write and not all((ckpt / f).is_file() for f in CODE_FILES):
        raise UsageError(f"{ckpt} has no OpenVLA code files ({', '.join(CODE_FILES)}): write it with --official-code "
                         "DIR, or pass --skip-official")
    if official and args.write and args.official_code is None:
        raise UsageError("comparing with OpenVLA's code needs its files: pass --official-code DIR (its "
                         "prismatic/extern/hf folder), or --skip-official")
    if args.official_code is not None:
        check_official_code(args.official_code)
    env = official_env() if official else None  # the pins checked before anything is written
    require("torch", "openvla", "check-fullsize")
    frames, instructions = _frames(args)
    if args.write:
        from vla_eval.policies.openvla.native.random_checkpoints import RELEASED_SHARD_BYTES, write_random_checkpoint

        t = time.perf_counter()
        write_random_checkpoint(ckpt, args.size, args.seed, max_shard_bytes=RELEASED_SHARD_BYTES,
                                official_code=args.official_code)
        import resource

        size = sum(f.stat().st_size for f in ckpt.iterdir()) / 1e9
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"wrote {ckpt} ({args.size}, seed {args.seed}): {size:.2f} GB in {time.perf_counter() - t:.0f} s, "
              f"peak RSS while writing {peak:.2f} GiB; "
              f"files: {', '.join(sorted(f.name for f in ckpt.iterdir()))}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vla-eval-fullsize-") as tmp:
        tmp = Path(tmp)
        keys = sorted(json.loads((ckpt / "config.json").read_text()).get("norm_stats", {}))
        n = prepare_inputs(frames, instructions, keys, tmp / "inputs.npz")
        print(f"check-fullsize {ckpt}: {len(frames)} LIBERO frame(s) x 2 templates = {n} inputs; unnorm keys "
              f"{', '.join(keys)}", flush=True)
        _child([sys.executable, "-m", "vla_eval.policies.openvla.native.fullsize", str(ckpt), str(tmp / "inputs.npz"),
                str(tmp / "native.npz"), args.dtype], None, "native")
        native = dict(np.load(tmp / "native.npz"))
        theirs = None
        if official:
            _child([sys.executable, str(OFFICIAL_WORKER), str(ckpt), str(tmp / "inputs.npz"), str(tmp / "official.npz"),
                    args.dtype],
                   env, "official-code")
            theirs = dict(np.load(tmp / "official.npz"))
    verdict = compare(native, theirs, args.dtype)
    report = _report(native, theirs, verdict, args)
    print(report["text"])
    if args.json is not None:
        args.json.write_text(json.dumps({k: v for k, v in report.items() if k != "text"}, indent=1))
    ok = verdict["batched_unexplained"] == 0 and verdict.get("official_unexplained", 0) == 0
    return 0 if ok else 1


def _tally(verdict: dict, name: str) -> str:
    n = verdict["inputs"]
    return (f"identical on {verdict[name + '_identical']}/{n} inputs, {verdict[name + '_ties']} differ at a "
            f"rounding tie, {verdict[name + '_unexplained']} differ otherwise")


def _report(native: dict, official: dict | None, verdict: dict, args) -> dict:
    n_params = int(native["n_params"])
    rows = {"checkpoint": str(args.checkpoint), "parameters_m": round(n_params / 1e6, 1), "dtype": args.dtype,
            "native_load_s": round(float(native["load_s"]), 1),
            "native_s_per_action": round(float(np.median(native["act_s"])), 2),
            "native_batch_s": round(float(native["batch_s"]), 2),
            "native_peak_rss_gib": round(float(native["peak_rss_gib"]), 2), **verdict}
    lines = [f"native ({n_params / 1e6:,.1f} M parameters, {args.dtype}, cpu): loaded in {rows['native_load_s']} s, "
             f"{rows['native_s_per_action']} s per action (batch 1, median of {len(native['act_s'])}), "
             f"batch {verdict['inputs']} in {rows['native_batch_s']} s, peak RSS {rows['native_peak_rss_gib']} GiB",
             f"  tokens (batch 1): {native['tokens'].tolist()}",
             f"  batched (batch {verdict['inputs']}) vs unbatched: {_tally(verdict, 'batched')}; smallest top-2 "
             f"logit margin {verdict['min_top2_margin']:.3g}"]
    if official is None:
        lines.append("official code: not run (--skip-official)")
    else:
        rows.update(official_load_s=round(float(official["load_s"]), 1),
                    official_s_per_action=round(float(np.median(official["act_s"])), 2),
                    official_peak_rss_gib=round(float(official["peak_rss_gib"]), 2),
                    official_transformers=str(official["transformers"]))
        lines += [f"official code (transformers {rows['official_transformers']}, {args.dtype}): loaded in "
                  f"{rows['official_load_s']} s, {rows['official_s_per_action']} s per action, peak RSS "
                  f"{rows['official_peak_rss_gib']} GiB",
                  f"  tokens: {_tally(verdict, 'official')}; where identical, max |logit diff| "
                  f"{verdict['max_logit_diff']:.3g} (logits up to {verdict['logit_scale']:.3g}), max |action diff| "
                  f"{verdict['max_action_diff_identical']:.3g} over {official['actions'].shape[0]} unnorm keys"]
    rows["text"] = "\n".join(lines)
    return rows


if __name__ == "__main__":
    native_main(*sys.argv[1:5])
