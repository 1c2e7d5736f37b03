"""The debugging puzzle: a SmallPolicy run broken in one hidden place; find it with the seven checks.

A puzzle is drawn from a seed: the cause is one of ``CATALOGUE`` (10 realistic bugs spread over
the seven places of the checklist). ``make_puzzle`` trains the run and writes what a user would
see (loss and gradient curves, final numbers) into a folder; ``run_check`` runs any of the seven
checks on that run; ``guess``/``reveal`` answer. The folder never names the cause.

    pipeline (data -> inputs/labels -> batches -> model -> loss -> lr schedule) <- one bug
    train 8 epochs (Adam, batch 64) -> curves.csv, curves.png, model.pt, puzzle.json
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vla_eval.drills.data import ACT_DIM, OBS_DIM, DataConfig, load_dataset, mse_floor
from vla_eval.errors import UsageError, bad_choice

CHECKS = ("action_stats", "alignment", "overfit", "grad_norms", "finite", "curve", "loss_family")


@dataclass(frozen=True)
class Bug:
    name: str
    place: str  # the check that exposes it (one of CHECKS)
    story: str  # what went wrong, shown by --reveal


CATALOGUE = (
    Bug("unit_mismatch", "action_stats", "rotation labels (dims 3-5) logged in degrees, the rest in radians-like units"),
    Bug("stale_norm_stats", "action_stats", "inputs normalised with statistics of an older dataset version"),
    Bug("shifted_actions", "alignment", "actions paired with the observation one step later (off-by-one join)"),
    Bug("shuffled_labels", "overfit", "the collate function shuffles labels within each batch"),
    Bug("loss_wrong_dims", "overfit", "the loss slices action[:, :3]: rotations and gripper are never trained"),
    Bug("detached_layer", "grad_norms", "a .detach() after the first layer: it never learns"),
    Bug("nan_feature", "finite", "an engineered log-feature is NaN where its argument is negative"),
    Bug("lr_schedule_per_step", "curve", "a per-epoch step decay applied every step: lr is ~0 after 200 steps"),
    Bug("repeated_batch", "curve", "the data loader yields the same batch every step"),
    Bug("bimodal_labels", "loss_family", "two demonstrators disagree on dim 0; MSE averages the modes"),
)
BUGS = {b.name: b for b in CATALOGUE}


@dataclass(frozen=True)
class PuzzleConfig:
    seed: int = 0
    epochs: int = 8
    batch: int = 64
    lr: float = 1e-3
    log_every: int = 50
    data: DataConfig = field(default_factory=DataConfig)


def cause_of(seed: int) -> Bug:
    """The hidden cause drawn from the seed."""
    return CATALOGUE[int(hashlib.sha256(f"puzzle-{seed}".encode()).hexdigest(), 16) % len(CATALOGUE)]


# -- the pipeline a bug can touch ----------------------------------------------------------------
@dataclass
class Pipeline:
    x_train: np.ndarray  # (N, 14) model inputs as fed (after normalisation and features)
    y_train: np.ndarray  # (N, 7) labels as fed
    x_val: np.ndarray
    y_val: np.ndarray
    raw_obs: np.ndarray  # (N, 14) before normalisation (what an alignment check reads)
    floor: float  # best achievable validation MSE
    detach_first: bool = False
    loss_dims: tuple = (0, 7)  # label dims the loss covers
    shuffle_in_batch: bool = False
    repeat_batch: bool = False
    lr_decay_per_step: bool = False

    def loss(self, pred, y):
        lo, hi = self.loss_dims
        return ((pred[:, lo:hi] - y[:, lo:hi]) ** 2).mean()

    def collate(self, idx: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.x_train[idx], self.y_train[idx]
        return (x, y[rng.permutation(len(idx))]) if self.shuffle_in_batch else (x, y)

    def lr_at(self, step: int, base: float, steps_per_epoch: int) -> float:
        unit = step if self.lr_decay_per_step else step // steps_per_epoch  # the bug: steps, not epochs
        return base * 0.5 ** (unit // 10)


def build_pipeline(bug: Bug | None, cfg: PuzzleConfig) -> Pipeline:
    d = load_dataset(cfg.data)
    name = bug.name if bug else "healthy"
    obs_tr, obs_va = d.obs_train.copy(), d.obs_val.copy()
    act_tr = d.bimodal_train.copy() if name == "bimodal_labels" else d.act_train.copy()
    act_va = d.bimodal_val.copy() if name == "bimodal_labels" else d.act_val.copy()
    mean, std = d.mean, d.std
    if name == "stale_norm_stats":
        mean, std = np.zeros_like(mean), std * 4.0  # an older version: no offsets, other units
    if name == "nan_feature":  # "log-compress joint 13": NaN wherever it is below -20
        with np.errstate(invalid="ignore"):
            obs_tr[:, 13], obs_va[:, 13] = np.log(obs_tr[:, 13] + 20.0), np.log(obs_va[:, 13] + 20.0)
        mean, std = np.nanmean(obs_tr, 0), np.nanstd(obs_tr, 0)
    if name == "unit_mismatch":
        act_tr[:, 3:6] *= 180.0 / np.pi
        act_va[:, 3:6] *= 180.0 / np.pi
    if name == "shifted_actions":
        act_tr = np.roll(act_tr, 1, axis=0)
    floor = mse_floor(cfg.data, bimodal=name == "bimodal_labels")
    return Pipeline(
        x_train=((obs_tr - mean) / std).astype(np.float32), y_train=act_tr.astype(np.float32),
        x_val=((obs_va - mean) / std).astype(np.float32), y_val=act_va.astype(np.float32), raw_obs=d.obs_train,
        floor=floor, detach_first=name == "detached_layer",
        loss_dims=(0, 3) if name == "loss_wrong_dims" else (0, ACT_DIM),
        shuffle_in_batch=name == "shuffled_labels", repeat_batch=name == "repeated_batch",
        lr_decay_per_step=name == "lr_schedule_per_step")


def make_model(p: Pipeline, seed: int):
    import torch
    from torch import nn

    class SmallPolicy(nn.Module):  # 14 -> 256 -> 256 -> 7, as the drills
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(OBS_DIM, 256), nn.Linear(256, 256), nn.Linear(256, ACT_DIM)

        def forward(self, x):
            h = torch.relu(self.l1(x))
            if p.detach_first:
                h = h.detach()
            return self.l3(torch.relu(self.l2(h)))

    torch.manual_seed(seed)
    return SmallPolicy()


# -- training ------------------------------------------------------------------------------------
def train(p: Pipeline, cfg: PuzzleConfig):
    """-> (model, rows of step, train_loss, val_loss, grad_norm, lr)."""
    import torch

    model = make_model(p, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    n, rows, run_loss, run_grad, step = len(p.x_train), [], 0.0, 0.0, 0
    spe = n // cfg.batch
    xv, yv = torch.from_numpy(p.x_val), torch.from_numpy(p.y_val)
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        for i in range(spe):
            idx = np.arange(cfg.batch) if p.repeat_batch else order[i * cfg.batch:(i + 1) * cfg.batch]
            x, y = (torch.from_numpy(a) for a in p.collate(idx, rng))
            for g in opt.param_groups:
                g["lr"] = p.lr_at(step, cfg.lr, spe)
            loss = p.loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            run_grad += float(sum(q.grad.norm() ** 2 for q in model.parameters() if q.grad is not None) ** 0.5)
            opt.step()
            run_loss += float(loss.detach())
            step += 1
            if step % cfg.log_every == 0:
                with torch.no_grad():
                    val = float(((model(xv) - yv) ** 2).mean())
                rows.append((step, run_loss / cfg.log_every, val, run_grad / cfg.log_every,
                             p.lr_at(step, cfg.lr, spe)))
                run_loss = run_grad = 0.0
    return model, rows


# -- the seven checks on a run --------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    text: str  # what the check prints
    suspicious: bool  # whether its reading departs from a healthy run's


def _check_action_stats(p, model, rows) -> CheckResult:
    from vla_eval.drills.checks import action_stats

    lstd, xstd, xmean = p.y_train.std(0), np.nanstd(p.x_train, 0), np.nanmean(p.x_train, 0)
    label_spread = float(lstd.max() / max(lstd.min(), 1e-9))
    bad_inputs = bool(np.nanmax(np.abs(np.log(np.maximum(xstd, 1e-9)))) > np.log(2.0) or np.nanmax(np.abs(xmean)) > 0.5)
    text = (f"labels as fed:\n{action_stats(p.y_train)}\ninputs as fed: mean in [{np.nanmin(xmean):+.2f}, "
            f"{np.nanmax(xmean):+.2f}], std in [{np.nanmin(xstd):.2f}, {np.nanmax(xstd):.2f}] (normalised: ~0 and ~1)\n"
            f"label std spread across dims: {label_spread:.1f}x")
    return CheckResult(text, label_spread > 10 or bad_inputs)


def _check_alignment(p, model, rows) -> CheckResult:
    from vla_eval.drills.checks import check_alignment

    n = 4000
    shift = check_alignment(np.nan_to_num(p.raw_obs[:n]), p.y_train[:n])
    return CheckResult(f"best-fitting shift of actions against observations: {shift:+d} (0 = aligned)", shift != 0)


def _check_overfit(p, model, rows) -> CheckResult:
    """10 steps on a batch of 4 through the run's own collate and loss; judged by the full MSE."""
    import torch

    fresh = make_model(p, 123)
    opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    rng, idx = np.random.default_rng(0), np.arange(4)
    x_true, y_true = torch.from_numpy(np.nan_to_num(p.x_train[idx])), torch.from_numpy(p.y_train[idx])
    with torch.no_grad():
        first = ((fresh(x_true) - y_true) ** 2).mean(0)
    for _ in range(10):
        x, y = (torch.from_numpy(np.nan_to_num(a)) for a in p.collate(idx, rng))
        loss = p.loss(fresh(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = ((fresh(x_true) - y_true) ** 2).mean(0)
    ratio = (last / first).numpy()
    text = (f"full MSE on the batch: {float(first.mean()):.4f} -> {float(last.mean()):.4f}; per dim last/first: "
            + " ".join(f"{r:.2f}" for r in ratio))
    return CheckResult(text, float(ratio.max()) > 0.5)


def _check_grad_norms(p, model, rows) -> CheckResult:
    import torch

    from vla_eval.drills.checks import grad_norms

    fresh = make_model(p, 7)
    x, y = (torch.from_numpy(np.nan_to_num(a)) for a in p.collate(np.arange(64), np.random.default_rng(0)))
    p.loss(fresh(x), y).backward()
    norms = grad_norms(fresh)
    text = "\n".join(f"{k:12} {v:.3e}" for k, v in norms.items())
    return CheckResult(text, min(norms.values()) == 0.0)


def _check_finite(p, model, rows) -> CheckResult:
    from vla_eval.drills.checks import assert_finite

    try:
        assert_finite(inputs=p.x_train, labels=p.y_train, val_inputs=p.x_val)
        return CheckResult("inputs, labels and validation inputs are all finite", False)
    except FloatingPointError as e:
        return CheckResult(f"assert_finite: {e}", True)


def _check_curve(p, model, rows) -> CheckResult:
    from vla_eval.drills.checks import read_curve

    steps, tr, va = (np.array([r[i] for r in rows]) for i in range(3))
    c = read_curve(steps, tr)
    gap = float(va[-1] / max(tr[-1], 1e-12)) if np.isfinite(va[-1]) else float("inf")
    over_floor = float(va[-1] / p.floor) if np.isfinite(va[-1]) else float("inf")
    early = c.flattened_at is not None and c.flattened_at < 0.15 * steps[-1]
    text = (f"train loss: {tr[0]:.4g} -> {c.final:.4g} (flattened at step {c.flattened_at}, non-finite: "
            f"{c.non_finite}); val/train at the end: {gap:.1f}x; val over the noise floor: {over_floor:.1f}x")
    return CheckResult(text, c.non_finite or gap > 5 or (early and over_floor > 3))


def _check_loss_family(p, model, rows) -> CheckResult:
    """MSE regression: a plateau above the floor with residuals split into two clusters means
    multimodal labels (the mean sits between the modes): switch the loss family."""
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(np.nan_to_num(p.x_val))).numpy()
    r = p.y_val - pred  # (N, 7)
    far = np.abs(r) > 0.5 * (np.abs(r).max(0) + 1e-9)  # residuals far from zero, per dim
    split = float(far.mean(0).max())
    text = ("residuals on validation: fraction far from zero per dim "
            + " ".join(f"{x:.2f}" for x in far.mean(0)) + "  (unimodal noise: small; two modes: ~1)")
    return CheckResult(text, split > 0.5)


CHECK_FNS: dict[str, Callable] = dict(zip(CHECKS, (_check_action_stats, _check_alignment, _check_overfit,
                                                   _check_grad_norms, _check_finite, _check_curve, _check_loss_family)))


def run_check(name: str, p: Pipeline, model, rows) -> CheckResult:
    if name not in CHECK_FNS:
        raise bad_choice("check", name, CHECKS)
    return CHECK_FNS[name](p, model, rows)


# -- the puzzle folder -----------------------------------------------------------------------------
def make_puzzle(out: Path, seed: int) -> Path:
    import torch

    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; choose a new --out for the puzzle")
    cfg = PuzzleConfig(seed=seed)
    p = build_pipeline(cause_of(seed), cfg)
    model, rows = train(p, cfg)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "train_loss", "val_loss", "grad_norm", "lr"])
        w.writerows(rows)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "puzzle.json").write_text(json.dumps({"seed": seed, "epochs": cfg.epochs, "format": 1}))
    _plot(rows, out / "curves.png")
    return out


def load_puzzle(folder: Path):
    import torch

    meta = folder / "puzzle.json"
    if not meta.exists():
        raise UsageError(f"{folder} is not a puzzle folder (no puzzle.json); make one: vla-eval small puzzle")
    from vla_eval.safe_json import read_json

    seed = read_json(meta, "puzzle record", max_bytes=2**16).get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        raise UsageError(f"{meta}: 'seed' must be an integer 0..2**31-1, got {seed!r}; make a new puzzle")
    cfg = PuzzleConfig(seed=seed)
    p = build_pipeline(cause_of(seed), cfg)
    model = make_model(p, seed)
    model.load_state_dict(torch.load(folder / "model.pt"))
    with open(folder / "curves.csv") as f:
        rows = [tuple(float(v) for v in r) for r in list(csv.reader(f))[1:]]
    return seed, p, model, rows


def summary(rows) -> str:
    last = rows[-1]
    return (f"after {int(last[0])} steps: train loss {last[1]:.4g}, val loss {last[2]:.4g}, grad norm {last[3]:.3g}. "
            f"Something is wrong. Run the checks ({', '.join(CHECKS)}) and guess the cause: "
            f"{', '.join(BUGS)}")


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, tr, va, gn = (np.array([r[i] for r in rows]) for i in range(4))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.semilogy(steps, tr, label="train")
    a.semilogy(steps, va, label="val")
    a.set_xlabel("step")
    a.set_title("loss")
    a.legend()
    b.plot(steps, gn)
    b.set_xlabel("step")
    b.set_title("gradient norm")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
