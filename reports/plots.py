"""Figures for the report (matplotlib, Agg backend, PNG bytes)."""
from __future__ import annotations

import io
from typing import Mapping, Sequence

from vla_eval.records import EpisodeRecord

SUCCESS_COLOUR, FAILURE_COLOUR = "#2a9d4b", "#d1495b"


def png_bytes(fig) -> bytes:
    """A finished matplotlib figure as PNG bytes (tight layout), and the figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
MODE_COLOURS = ("#d1495b", "#edae49", "#00798c", "#30638e", "#8d5a97", "#a44a3f", "#6c757d", "#003d5b", "#b5838d")


def gripper_timing_histogram(episodes: Sequence[EpisodeRecord], max_steps: int, bins: int = 20,
                             modes: Mapping[tuple[int, int], str] | None = None) -> bytes:
    """x: policy step of the first gripper close; bars stacked by outcome (with ``modes``,
    (task, seed) -> failure mode: the failures stacked by mode); a separate 'never closed' bucket
    to the right. Env errors are left out (not a policy outcome)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    judged = [e for e in episodes if e.outcome in ("success", "failure")]
    edges = np.linspace(0, max_steps, bins + 1)
    width = edges[1] - edges[0]
    never_x = max_steps + 1.5 * width
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    bottom = np.zeros(bins)
    never_bottom = 0
    def group(e: EpisodeRecord) -> str:
        return e.outcome if modes is None or e.outcome == "success" else modes.get((e.task_id, e.seed), "failure")

    groups = [("success", SUCCESS_COLOUR)]
    if modes is None:
        groups.append(("failure", FAILURE_COLOUR))
    else:
        names = sorted({group(e) for e in judged} - {"success"})
        groups += [(m, MODE_COLOURS[i % len(MODE_COLOURS)]) for i, m in enumerate(names)]
    for outcome, colour in groups:
        steps = [e.first_close_step for e in judged if group(e) == outcome and e.first_close_step is not None]
        never = sum(1 for e in judged if group(e) == outcome and e.first_close_step is None)
        counts, _ = np.histogram(steps, bins=edges)
        ax.bar(edges[:-1], counts, width=width, bottom=bottom, align="edge", color=colour,
               edgecolor="white", label=f"{outcome} ({len(steps) + never})")
        ax.bar([never_x], [never], width=width, bottom=[never_bottom], color=colour, edgecolor="white", hatch="//")
        bottom += counts
        never_bottom += never
    ax.axvline(max_steps + 0.5 * width, color="#888", lw=0.8, ls=":")
    ticks = list(np.linspace(0, max_steps, 5).round().astype(int))
    ax.set_xticks(ticks + [never_x], [str(t) for t in ticks] + ["never\nclosed"])
    ax.set_xlabel("policy step of the first gripper close")
    ax.set_ylabel("episodes")
    ax.set_title("Gripper timing by outcome" if modes is None else "Gripper timing by failure mode")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return png_bytes(fig)


def action_trace_plot(logs: dict, max_tags: int = 4) -> bytes:
    """The 7 action dimensions over steps of one episode per run tag (the same task and seed
    where possible): how a silent failure moves the arm next to the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
    fig, axes = plt.subplots(7, 1, figsize=(8, 7.5), sharex=True, dpi=90)
    first = None
    for tag, log in list(logs.items())[:max_tags]:
        eps = sorted(log.episodes, key=lambda e: (e.task_id, e.seed))
        if first is not None:
            eps = [e for e in eps if (e.task_id, e.seed) == first] or eps
        if not eps:
            continue
        ep = eps[0]
        first = first or (ep.task_id, ep.seed)
        a = np.array([s.action for s in log.steps_of(ep)], dtype=float)
        if not len(a):
            continue
        for d, ax in enumerate(axes):
            ax.plot(a[:, d], lw=1, label=f"{tag} ({ep.outcome})")
            ax.set_ylabel(names[d], rotation=0, ha="right", fontsize=8)
    axes[0].set_title(f"actions of task {first[0] if first else '-'}, seed {first[1] if first else '-'} per run tag")
    axes[0].legend(fontsize=7, ncol=4, frameon=False)
    axes[-1].set_xlabel("policy step")
    return png_bytes(fig)
