"""Train the tiny OpenVLA on the scripted-expert demos with OpenVLA's objective, on a CPU.

Reads top to bottom: config -> demos -> model -> loop -> export. The model is the native
OpenVLA architecture (``policies/openvla/native``) at tiny width: two ViT featurizers (DINOv2-style
with registers and LayerScale, SigLIP-style), the fused GELU MLP projector and a Llama
decoder with the 32064-token vocabulary; the loss is next-token cross-entropy on the 7
action tokens (256 bins, OpenVLA's ActionTokenizer), teacher-forced after the prompt.

    pixels  (B, 6, 112, 112)   upright frame through the eval chain up to the crop, resized to
                               118 px, a random 112 crop (0.9 of the area: OpenVLA's fine-tune
                               augmentation; the eval takes the centre crop), twice normalised
    prompt  "In: What action should the robot take to {instruction}?\\nOut:" (Llama-2 ids)
    labels  (B, 7)             action tokens of the expert's action, normalised by the demos'
                               q01/q99 (``libero_object_no_noops``), gripper 1 open / 0 close

Resumable: ``train_state.pt`` is written atomically every ``ckpt_every`` steps and a re-run
continues from it. The result is exported in the released checkpoint layout (bf16
safetensors, config.json with norm_stats, tokenizer) and loads with ``--checkpoint`` (native backend).
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vla_eval.errors import UsageError

PROMPT = "default"  # the template the model is trained on; the bad-prompt drill rephrases it
UNNORM_KEY = "libero_object_no_noops"


@dataclass(frozen=True)
class TrainConfig:
    demos: Path                 # a folder written by ``vla-eval collect-demos``
    out: Path                   # run folder: train_state.pt, train_log.csv, checkpoint/
    tokenizer: Path             # a Llama-2 tokenizer folder (``vla-eval setup-tokenizer``)
    steps: int = 8000  # the shipped weights: ~33 min at ~4 steps/s on 2 cores
    batch: int = 32
    lr: float = 1e-3            # AdamW peak; linear warm-up, cosine to lr/10
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    val_episodes_per_task: int = 1  # the last demo episodes of each task, for token accuracy
    ckpt_every: int = 250
    log_every: int = 50
    threads: int | None = None  # torch threads; None: sized from the usable cores (vla_eval.threads)
    seed: int = 0
    llm_width: int = 96
    llm_layers: int = 3
    patch: int = 14             # ViT patch size on the 112 px input: 14 (8x8 grid, shipped) or 8 (14x14)
    extra_demos: tuple[Path, ...] = ()  # more shard folders of the same layout (DAgger rounds' rollouts)
    init_from: Path | None = None  # start from this checkpoint's weights and keep its norm stats (fine-tuning)
    # Frames within ``grasp_window`` frames of a gripper label change are drawn ``grasp_weight`` times as
    # often: the grasp is where the policy fails (close, miss, reopen) and it is a few frames of each episode.
    grasp_weight: float = 1.0
    grasp_window: int = 4


def text_config(cfg: TrainConfig) -> dict:
    """LlamaConfig kwargs: Llama-2's vocabulary padded to 64 (as OpenVLA), tiny width."""
    return {"model_type": "llama", "vocab_size": 32064, "pad_token_id": 32000, "hidden_size": cfg.llm_width,
            "intermediate_size": 3 * cfg.llm_width, "num_hidden_layers": cfg.llm_layers, "num_attention_heads": 4,
            "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
            "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}


# -- demos -----------------------------------------------------------------------------------
@dataclass
class Demos:
    frames: np.ndarray      # (N, 224, 224, 3) uint8: JPEG-decoded, Lanczos-resized, not yet cropped
    actions: np.ndarray     # (N, 7) float64 expert actions, LIBERO convention
    task_ids: np.ndarray    # (N,) int
    episodes: np.ndarray    # (N,) int: a global episode index
    instructions: dict      # task id -> instruction
    n_episodes: int


def shard_paths(demos: Path) -> list[Path]:
    paths = sorted(demos.glob("task*/scene*.parquet"), key=lambda p: (p.parent.name, int(p.stem[5:])))
    if not paths:
        raise UsageError(f"no demonstration shards in {demos}; collect them first: vla-eval collect-demos")
    return paths


def load_demos(demos: Path | Sequence[Path], cache: Path, progress: bool = True) -> Demos:
    """All shards of one or more folders, frames preprocessed once (cached as .npz next to the
    run, keyed by the shard list)."""
    import pandas as pd

    from vla_eval.policies.openvla.preprocess import jpeg_decode, lanczos_resize

    paths = [p for folder in ([demos] if isinstance(demos, Path) else demos) for p in shard_paths(folder)]
    key = hashlib.sha1("\n".join(f"{p}:{p.stat().st_size}" for p in paths).encode()).hexdigest()[:12]
    cached = cache / f"frames-{key}.npz"
    tables = []
    for i, p in enumerate(paths):
        try:
            df = pd.read_parquet(p, columns=["task_id", "instruction", "action"] + ([] if cached.exists() else ["image"]))
            if len(df) == 0:
                raise ValueError("no rows")
        except Exception as e:
            why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise UsageError(f"demo shard {p} is unreadable ({why}); delete it and re-run vla-eval collect-demos, "
                             f"which records that scene again") from e
        df["episode"] = i
        tables.append(df)
    df = pd.concat(tables, ignore_index=True)
    if cached.exists():
        frames = np.load(cached)["frames"]
    else:
        from concurrent.futures import ThreadPoolExecutor
        from tqdm import tqdm

        def frame(i: int) -> np.ndarray:
            try:
                return lanczos_resize(jpeg_decode(df["image"].iat[i]))
            except Exception as e:  # corrupt JPEG bytes: name the shard, not a decoder traceback
                raise UsageError(f"demo shard {paths[df['episode'].iat[i]]}: frame {i} is not a decodable JPEG "
                                 f"({e}); delete the shard and re-run the collection, which records it again") from e

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # JPEG and BLAS release the GIL
            frames = np.stack(list(tqdm(pool.map(frame, range(len(df))), total=len(df), desc="preprocess",
                                        unit="frame", disable=not progress)))
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, frames=frames)
        os.replace(tmp, cached)
    instructions = dict(zip(df["task_id"].astype(int), df["instruction"]))
    return Demos(frames, np.stack(df["action"].to_numpy()).astype(np.float64), df["task_id"].to_numpy(int),
                 df["episode"].to_numpy(int), instructions, len(paths))


def norm_stats_of(actions: np.ndarray, n_episodes: int) -> dict:
    """OpenVLA's dataset statistics of the training-convention actions (gripper 1 open, 0 close)."""
    from vla_eval.policies.openvla.tokens import libero_to_training_gripper

    a = libero_to_training_gripper(actions)
    q01, q99 = np.quantile(a, 0.01, axis=0), np.quantile(a, 0.99, axis=0)
    q01[6], q99[6] = 0.0, 1.0
    stat = lambda x: [float(v) for v in x]  # noqa: E731
    return {"action": {"mean": stat(a.mean(0)), "std": stat(a.std(0)), "max": stat(a.max(0)), "min": stat(a.min(0)),
                       "q01": stat(q01), "q99": stat(q99), "mask": [True] * 6 + [False]},
            "num_transitions": int(len(a)), "num_trajectories": int(n_episodes)}


def grasp_weights(d: Demos, weight: float, window: int) -> np.ndarray:
    """(N,) sampling weights: ``weight`` within ``window`` frames of a gripper label change in the
    same episode, 1 elsewhere."""
    w = np.ones(len(d.actions))
    if weight == 1.0:
        return w
    grip, ep = d.actions[:, 6], d.episodes
    change = np.flatnonzero((grip[1:] != grip[:-1]) & (ep[1:] == ep[:-1])) + 1  # first frame after a change
    near = np.zeros(len(w), bool)
    for off in range(-window, window + 1):
        i = np.clip(change + off, 0, len(w) - 1)
        near[i[ep[i] == ep[change]]] = True
    w[near] = weight
    return w


def val_split(d: Demos, per_task: int) -> np.ndarray:
    """(N,) bool: the last ``per_task`` episodes of every task are validation."""
    val = np.zeros(len(d.task_ids), bool)
    if per_task < 1:
        return val
    for t in np.unique(d.task_ids):
        eps = np.unique(d.episodes[d.task_ids == t])
        val |= np.isin(d.episodes, eps[-per_task:]) if len(eps) > per_task else False
    return val


# -- model -------------------------------------------------------------------------------------
def hf_config(cfg: TrainConfig, norm_stats: dict) -> dict:
    """config.json in the released layout (the remote code's OpenVLAConfig fields)."""
    from vla_eval.policies.openvla.tokens import shipped_norm_stats
    from vla_eval.policies.openvla.native.layout import openvla_config
    from vla_eval.policies.openvla.native.vit import tiny_112_ids

    return openvla_config(
        tiny_112_ids(cfg.patch), [112, 112], text_config(cfg),
        {UNNORM_KEY: norm_stats, "bridge_orig": {"action": shipped_norm_stats("bridge_orig")["action"]}},
        vision_backbone_id="tiny-dinosiglip-112px", llm_backbone_id="tiny-llama2")


def build(cfg: TrainConfig, norm_stats: dict):
    import torch

    from vla_eval.policies.openvla.native.checkpoint import build_model
    from vla_eval.policies.openvla.native.model import NativeConfig

    torch.manual_seed(cfg.seed)
    model = build_model(NativeConfig.from_hf(hf_config(cfg, norm_stats)), "cpu", "float32")
    for name, p in model.named_parameters():  # the ViTs' tokens and positions start at zero otherwise
        if name.endswith(("pos_embed", "cls_token", "reg_token")):
            torch.nn.init.normal_(p, std=0.02)
    return model.train()


def shrink_frames(frames: np.ndarray, size: int, chunk: int = 512) -> np.ndarray:
    """(N, 224, 224, 3) uncropped frames -> (N, S', S', 3) with S' = size / sqrt(0.9): a later
    ``size`` crop then covers 0.9 of the area, as the eval's centre crop does before the
    processor's resize (resize-then-crop equals crop-then-resize up to the filter)."""
    import torch
    import torch.nn.functional as F

    pre = round(size / math.sqrt(0.9))
    out = np.empty((len(frames), pre, pre, 3), np.uint8)
    for i in range(0, len(frames), chunk):
        x = torch.from_numpy(frames[i:i + chunk]).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(pre, pre), mode="bicubic", antialias=True, align_corners=False)
        out[i:i + chunk] = y.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def pixel_batch(small: np.ndarray, vision, rng: np.random.Generator | None):
    """(B, S', S', 3) uint8 -> (B, 6, S, S): a random S crop (OpenVLA's fine-tune augmentation:
    0.9 of the area at a random place) or, without ``rng``, the centre crop the eval takes;
    normalised once per featurizer."""
    import torch

    size = vision[0].img_size
    slack = small.shape[1] - size
    b = len(small)
    ys, xs = (rng.integers(0, slack + 1, (2, b)) if rng is not None else np.full((2, b), slack // 2))
    crops = np.stack([small[i, y:y + size, x:x + size] for i, (y, x) in enumerate(zip(ys, xs))])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    parts = [(x - torch.tensor(v.mean).view(1, 3, 1, 1)) / torch.tensor(v.std).view(1, 3, 1, 1) for v in vision]
    return torch.cat(parts, dim=1)


# -- loop --------------------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from vla_eval.policies.openvla.tokens import libero_to_training_gripper, normalize, normalized_to_tokens
    from vla_eval.policies.openvla.native.llama_tokenizer import load_tokenizer
    from vla_eval.policies.openvla.preprocess import build_prompt
    from vla_eval.threads import torch_threads

    torch.set_num_threads(cfg.threads or torch_threads())
    cfg.out.mkdir(parents=True, exist_ok=True)
    demos = load_demos([cfg.demos, *cfg.extra_demos], cfg.out / "cache", progress)
    stats = norm_stats_of(demos.actions, demos.n_episodes) if cfg.init_from is None else _init_stats(cfg.init_from)
    tokens = normalized_to_tokens(normalize(libero_to_training_gripper(demos.actions), stats["action"]))  # (N, 7)
    tokenizer = load_tokenizer(cfg.tokenizer)
    prompts = {t: list(tokenizer(build_prompt(i, PROMPT)).input_ids) for t, i in demos.instructions.items()}
    val = val_split(demos, cfg.val_episodes_per_task)
    train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    draw = None  # uniform: the random stream of runs made before grasp weighting existed
    if cfg.grasp_weight != 1:
        draw = grasp_weights(demos, cfg.grasp_weight, cfg.grasp_window)[train_idx]
        draw /= draw.sum()
    print(f"demos: {demos.n_episodes} episodes, {len(train_idx)} train / {len(val_idx)} val frames, "
          f"{len(prompts)} tasks" + (f"; frames near a gripper change drawn {cfg.grasp_weight:g}x "
                                     f"({(draw > draw.min()).mean():.1%} of them)" if draw is not None else ""))

    model = build(cfg, stats)
    if cfg.init_from is not None:
        from vla_eval.policies.openvla.native.checkpoint import load_weights

        load_weights(model, cfg.init_from)
    small = shrink_frames(demos.frames, model.cfg.vision[0].img_size)  # (N, 118, 118, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    state_path, start = cfg.out / "train_state.pt", 0
    if state_path.exists():  # resume
        state = torch.load(state_path, weights_only=False)
        if state["config"] != _comparable(_jsonable(cfg), state["config"]):
            raise UsageError(f"{cfg.out} holds a run with another config; use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    rng = np.random.default_rng(cfg.seed + start)
    vision = model.cfg.vision

    def batch_loss(idx: np.ndarray, augment: bool):
        pixels = pixel_batch(small[idx], vision, rng if augment else None)
        labels = torch.from_numpy(tokens[idx]).long()
        logits = model.action_token_logits(pixels, [prompts[t] for t in demos.task_ids[idx]], labels)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return loss, (logits.argmax(-1) == labels).float().mean()

    log = cfg.out / "train_log.csv"
    new_log = not log.exists() or start == 0
    with open(log, "w" if new_log else "a", newline="") as f:
        writer = csv.writer(f)
        if new_log:
            writer.writerow(["step", "loss", "token_acc", "val_loss", "val_token_acc", "lr", "elapsed_s"])
        t0, bar = time.perf_counter(), tqdm(range(start, cfg.steps), initial=start, total=cfg.steps,
                                            desc="train", disable=not progress)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            loss, acc = batch_loss(rng.choice(train_idx, cfg.batch, p=draw), augment=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            last = step + 1 == cfg.steps
            if (step + 1) % cfg.log_every == 0 or last:
                vloss, vacc = _validate(batch_loss, val_idx, cfg.batch, model)
                writer.writerow([step + 1, f"{loss.item():.4f}", f"{acc.item():.3f}", f"{vloss:.4f}", f"{vacc:.3f}",
                                 f"{lr_at(step, cfg):.2e}", f"{time.perf_counter() - t0:.0f}"])
                f.flush()
                bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{vacc:.2f}")
            if (step + 1) % cfg.ckpt_every == 0 or last:
                tmp = state_path.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                            "config": _jsonable(cfg)}, tmp)
                os.replace(tmp, state_path)
    return export(model, cfg, stats, cfg.out / "checkpoint")


def require_checkpoint(flag: str, folder: Path) -> None:
    """``folder`` holds a checkpoint (its config.json), or one message naming the flag and the fix."""
    if not (folder / "config.json").is_file():
        raise UsageError(f"{flag} {folder}: no checkpoint there (no config.json); pass a checkpoint/ folder "
                         f"written by vla-eval train-tiny")


def _init_stats(checkpoint: Path) -> dict:
    """A fine-tune keeps its starting checkpoint's statistics: the same action maps to the same tokens."""
    from vla_eval.policies.openvla.native.checkpoint import read_config

    stats = read_config(checkpoint).get("norm_stats", {}).get(UNNORM_KEY)
    if not isinstance(stats, dict) or "action" not in stats:
        raise UsageError(f"{checkpoint}/config.json has no norm_stats[{UNNORM_KEY!r}]: not a tiny OpenVLA checkpoint "
                         f"to fine-tune; train one with vla-eval train-tiny")
    return stats


def _validate(batch_loss, val_idx: np.ndarray, batch: int, model) -> tuple[float, float]:
    import torch

    if len(val_idx) == 0:
        return float("nan"), float("nan")
    model.eval()
    with torch.no_grad():
        idx = val_idx[:: max(1, len(val_idx) // (2 * batch))][: 2 * batch]  # a fixed, spread-out subset
        loss, acc = batch_loss(idx, augment=False)
    model.train()
    return loss.item(), acc.item()


# Fields added after runs were already on disk, with the value those runs had.
_LATER_FIELDS = {"patch": 14, "extra_demos": [], "init_from": None, "grasp_weight": 1.0, "grasp_window": 4}


def _comparable(mine: dict, theirs: dict) -> dict:
    """``mine`` without later fields that an older run lacks and that hold the value it had."""
    return {k: v for k, v in mine.items() if k in theirs or _LATER_FIELDS.get(k, object()) != v}


def _jsonable(cfg: TrainConfig) -> dict:
    return {k: str(v) if isinstance(v, Path) else [str(p) for p in v] if k == "extra_demos" else v
            for k, v in asdict(cfg).items()
            if k not in ("demos", "out", "tokenizer", "threads", "ckpt_every", "log_every")}


# -- export ------------------------------------------------------------------------------------
def export(model, cfg: TrainConfig, stats: dict, out_dir: Path) -> Path:
    """The released layout (``policies/openvla/native/layout.py``): bf16 safetensors with every tensor,
    config.json, preprocessor_config.json and the Llama-2 tokenizer."""
    import torch

    from vla_eval.policies.openvla.native.layout import save_released

    model = model.eval().to(torch.bfloat16)
    return save_released(model, out_dir, hf_config(cfg, stats), dtype=torch.bfloat16, seed=cfg.seed,
                         tokenizer_source=cfg.tokenizer)
