"""Contact sheets for checking failure modes by eye: N failed episodes of a run folder drawn at
random (a fixed RNG seed, so the sample is not chosen), each as one PNG of 8 frames of its video
with the mode, step and evidence ``vla-eval why`` gives, the frame at the failure step marked.

    python scripts/failure_sheets.py runs/tiny-heldout --n 20 --out runs/tiny-heldout/sheets
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import av
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vla_eval.reports.failures import explain_run  # noqa: E402
from vla_eval.videos import FPS, video_name  # noqa: E402


def frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def sheet(x, video: Path, out: Path, n_frames: int = 8) -> None:
    fs = frames(video)
    step = x.failure.step if x.failure else 0
    picks = sorted(set(np.linspace(0, len(fs) - 1, n_frames - 1).round().astype(int)) | {min(step, len(fs) - 1)})
    fig, axes = plt.subplots(1, len(picks), figsize=(2.2 * len(picks), 2.6), dpi=100)
    for ax, i in zip(axes, picks):
        ax.imshow(fs[i])
        ax.set_title(f"{'>' if i == min(step, len(fs) - 1) else ''}t={i}", fontsize=7, color="red" if i == step else "k")
        ax.axis("off")
    ep = x.episode
    fig.suptitle(f"task {ep.task_id} seed {ep.seed}: {x.mode} @ {step} | {x.failure.evidence if x.failure else ''}"[:160],
                 fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2026, help="RNG seed of the sample")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    failed = [x for xs in explain_run(args.run_dir).values() for x in xs if x.mode is not None
              and (args.run_dir / "videos" / video_name(x.tag, x.episode.task_id, x.episode.seed)).exists()]
    sample = random.Random(args.seed).sample(failed, min(args.n, len(failed)))
    args.out.mkdir(parents=True, exist_ok=False)
    for x in sample:
        name = f"{x.tag}-t{x.episode.task_id}-s{x.episode.seed}.png"
        sheet(x, args.run_dir / "videos" / video_name(x.tag, x.episode.task_id, x.episode.seed), args.out / name)
        print(f"{name}: {x.mode} @ {x.failure.step if x.failure else '-'} ({x.failure.evidence if x.failure else ''})")
    print(f"{len(sample)} of {len(failed)} failed episodes with videos; frames at {FPS} fps = policy steps")


if __name__ == "__main__":
    main()
