"""The baseline and the five injected training faults, each read from its measured curve."""
from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vla_eval.drills.checks import CurveFeatures, read_curve
from vla_eval.drills.data import DataConfig, Dataset, mse_floor
from vla_eval.drills.train import History, TrainConfig, train_many

TRAINING_FAULTS: dict[str, TrainConfig] = {
    "baseline": TrainConfig(),
    "big_lr": TrainConfig(lr=1.0),
    "tiny_lr": TrainConfig(lr=1e-8),
    "unnormalized_inputs": TrainConfig(normalize=False),
    "action_outlier": TrainConfig(outlier=True),
    "action_outlier_clipped": TrainConfig(outlier=True, clip_grad=1.0),
    "bimodal_labels": TrainConfig(bimodal=True),
}


@dataclass(frozen=True)
class Reading:
    name: str
    train: CurveFeatures
    val: CurveFeatures
    grad: CurveFeatures
    sentence: str
    matches: bool  # the measured signature is the expected one


def _describe_loss(f: CurveFeatures) -> str:
    if f.non_finite:
        return "went to NaN/inf"
    if f.rel_decrease < 0.01:
        return f"stayed flat ({100 * f.rel_decrease:.2f}% decrease)"
    shape = "oscillated" if f.oscillation > 0.6 and f.rel_decrease < 0.5 else "decreased"
    return f"{shape} by {100 * f.rel_decrease:.0f}% to {f.final:.4g}" + (f" with {f.spikes} spikes" if f.spikes else "")


def _describe_grad(f: CurveFeatures) -> str:
    if f.non_finite:
        return "went to NaN/inf"
    return f"settled near {f.final:.3g}" + (f" with {f.spikes} spikes" if f.spikes else "")


def diagnose(name: str, h: History, base: History | None, data_cfg: DataConfig) -> Reading:
    a = h.arrays()
    tr, va, gr = (read_curve(a["step"], a[k]) for k in ("train_loss", "val_loss", "grad_norm"))
    floor = mse_floor(data_cfg, bimodal=name == "bimodal_labels")
    b = base.arrays() if base is not None else None
    if name == "baseline":
        ok = tr.rel_decrease > 0.9 and va.final >= tr.final * 0.95 and va.final < 2 * floor
        z = f"healthy (val {va.final:.4f} vs noise floor {floor:.4f}; flattens near step {va.flattened_at})"
    elif name == "big_lr":
        ok = tr.non_finite or tr.rel_decrease < 0.5 or va.final > 10 * floor
        z = "learning rate far too high: steps overshoot"
    elif name == "tiny_lr":
        ok = tr.rel_decrease < 0.01
        z = "learning rate too small: weights barely move"
    elif name == "unnormalized_inputs":
        ok = b is not None and (gr.final > 5 * read_curve(b["step"], b["grad_norm"]).final or va.final > 2 * read_curve(b["step"], b["val_loss"]).final)
        z = "inputs not normalised (std ~50): badly conditioned first layer"
    elif name == "action_outlier":
        base_gn = read_curve(b["step"], b["grad_norm"]).final if b is not None else float("inf")
        ok = tr.final > 10 * va.final and gr.final > 10 * base_gn
        z = "an outlier label (1e3) dominates every batch's loss and gradient"
    elif name == "action_outlier_clipped":
        ok = True  # judged against the unclipped run by the caller
        z = "same outlier with gradient clipping at 1.0: the updates stay bounded"
    else:  # bimodal_labels
        best = float(np.nanmin(a["val_loss"]))
        ok = 0.9 * floor <= best <= 1.2 * floor
        z = (f"multimodal labels: MSE predicts the mean of the two demonstrators and plateaus at "
             f"the theoretical floor {floor:.4f} (best val {best:.4f}; it then rises to {va.final:.4f} as the "
             f"network memorises which demonstrator labelled each training sample)")
    sentence = (f"{name}: training loss {_describe_loss(tr)}, gradient norm {_describe_grad(gr)}, "
                f"the diagnosis is {z}.")
    return Reading(name, tr, va, gr, sentence, bool(ok))


def save_csv(path: Path, h: History) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "train_loss", "val_loss", "grad_norm"])
        w.writerows(zip(h.step, h.train_loss, h.val_loss, h.grad_norm))


def plot_curve(path: Path, name: str, h: History, floor: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(h.step, h.train_loss, label="train")
    ax.plot(h.step, h.val_loss, label="val")
    if floor is not None:
        ax.axhline(floor, color="#888", ls=":", label=f"floor {floor:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_title(name)
    ax2 = ax.twinx() if name != "baseline" else None
    if ax2 is not None:
        ax2.plot(h.step, h.grad_norm, color="#999", lw=0.8, label="grad norm")
        ax2.set_yscale("log")
        ax2.set_ylabel("grad norm", color="#777")
    ax.legend(frameon=False, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_faults(data: Dataset, data_cfg: DataConfig, out_dir: Path, names=None, epochs: int | None = None,
               timings: dict | None = None) -> dict[str, Reading]:
    import time

    out_dir = Path(out_dir)
    (out_dir / "curves").mkdir(parents=True, exist_ok=True)
    names = list(names or TRAINING_FAULTS)
    if "baseline" not in names:
        names.insert(0, "baseline")
    cfgs = [TRAINING_FAULTS[n] if epochs is None else replace(TRAINING_FAULTS[n], epochs=epochs) for n in names]
    t = time.perf_counter()
    _, hists = train_many(data, cfgs)  # all runs in lockstep, each its own model
    if timings is not None:
        timings["faults (all runs, batched)"] = time.perf_counter() - t
    hist = dict(zip(names, hists))
    readings: dict[str, Reading] = {}
    for name in names:
        save_csv(out_dir / "curves" / f"{name}.csv", hist[name])
        floor = mse_floor(data_cfg, bimodal=name == "bimodal_labels")
        fname = "baseline_mse.png" if name == "baseline" else f"{name}.png"
        plot_curve(out_dir / "curves" / fname, name, hist[name], floor)
        readings[name] = diagnose(name, hist[name], hist["baseline"], data_cfg)
    if "action_outlier_clipped" in readings and "action_outlier" in readings:
        c, u = readings["action_outlier_clipped"], readings["action_outlier"]
        ok = c.val.final < u.val.final and c.val.spikes <= u.val.spikes
        readings["action_outlier_clipped"] = replace(c, matches=ok, sentence=c.sentence[:-1] +
            f"; val loss {c.val.final:.4g} vs {u.val.final:.4g} unclipped, val spikes {c.val.spikes} vs {u.val.spikes}.")
    return readings
