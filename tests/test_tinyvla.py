"""The tiny OpenVLA: action tokens, demo collection on real LIBERO, training, the shipped checkpoint."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vla_eval.policies.openvla.tokens import (libero_to_training_gripper, normalize, normalized_to_tokens,
                                             tokens_to_normalized, unnormalize)
from vla_eval.policies.openvla.preprocess import postprocess_gripper

STATS = {"q01": [-0.9, -0.5, -1.0, 0, 0, 0, 0], "q99": [0.9, 0.7, 1.0, 0, 0, 0, 1], "mask": [True] * 6 + [False]}


def test_action_tokens_round_trip_within_one_bin():
    """Expert action -> training tokens -> predict_action's decoding -> the eval's gripper mapping."""
    rng = np.random.default_rng(0)
    actions = np.concatenate([rng.uniform(-0.5, 0.7, (200, 3)), np.zeros((200, 3)),
                              rng.choice([-1.0, 1.0], (200, 1))], axis=1)
    tokens = normalized_to_tokens(normalize(libero_to_training_gripper(actions), STATS))
    assert tokens.min() >= 32000 - 256 and tokens.max() <= 31999  # the last 256 ids of Llama's vocabulary
    back = postprocess_gripper(unnormalize(tokens_to_normalized(tokens), STATS))
    span = np.array(STATS["q99"][:3]) - np.array(STATS["q01"][:3])
    assert np.all(np.abs(back[:, :3] - actions[:, :3]) <= span * 1.01 / 255)  # within one bin width
    assert np.array_equal(back[:, 3:6], actions[:, 3:6])  # zero-width statistics decode to exactly 0
    assert np.array_equal(back[:, 6], actions[:, 6])  # open stays open, close stays close


def test_shipped_checkpoint_is_in_the_released_layout():
    from vla_eval.configs import shipped_checkpoint

    ckpt = shipped_checkpoint("tiny", "libero_object")
    cfg = json.loads((ckpt / "config.json").read_text())
    for field in ("vision_backbone_id", "llm_backbone_id", "arch_specifier", "timm_model_ids", "image_sizes",
                  "norm_stats", "text_config", "n_action_bins"):
        assert field in cfg
    assert set(cfg["norm_stats"]) == {"libero_object_no_noops", "bridge_orig"}
    size = sum(p.stat().st_size for p in ckpt.iterdir())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MB"


@pytest.mark.libero
def test_shipped_tiny_policy_runs_a_real_episode(tmp_path, cli_run):
    """One short real LIBERO episode of the shipped policy through the CLI, cameras on."""
    from vla_eval.records import read_jsonl

    log = tmp_path / "ep.jsonl"
    r = cli_run("run", "--policy", "tiny", "--seed", "0", "--max-steps", "12", "--fast-reset", "--no-progress",
                "--log", log)
    assert r.returncode == 0, r.stdout + r.stderr
    steps = read_jsonl(log).steps
    assert len(steps) == 12 and all(s.img_mean is not None for s in steps)
    actions = np.array([s.action for s in steps])
    assert np.abs(actions[:, :3]).max() > 0.05  # it moves


def test_perturbation_bursts_only_where_the_expert_recovers():
    """Bursts push or close early only in approach/descend/lift/carry, hold one command for
    their length, and never touch the grasp, the release or a late descend."""
    from vla_eval.tinyvla.demos import Bursts, DemoConfig

    cfg = DemoConfig(burst_prob=1.0, burst_steps=(3, 5))
    bursts = Bursts(cfg, np.random.default_rng(0))
    label = np.array([0.1, -0.2, 0.3, 0, 0, 0, -1.0])
    for phase, ticks in (("close", 0), ("lower", 3), ("release", 1), ("done", 0), ("descend", 26)):
        assert np.array_equal(bursts.apply(label, phase, ticks), label)
    lengths, kinds = [], set()
    for _ in range(200):  # consecutive perturbed steps in a phase that allows them
        n, first = 0, bursts.apply(label, "approach", 0)
        while True:
            n += 1
            out = bursts.apply(label, "approach", 0)
            if bursts.left == 0:
                break
            assert np.array_equal(out, first)  # one command for the whole burst
        lengths.append(n + 1)
        kinds.add("grip" if first[6] == 1.0 else "push")
        if first[6] != 1.0:
            assert np.isclose(np.linalg.norm(first[:3]), cfg.burst_speed)
    assert set(lengths) <= {3, 4, 5} and kinds == {"grip", "push"}
    bursts = Bursts(cfg, np.random.default_rng(1))
    carried = [bursts.apply(label, "carry", 0) for _ in range(50)]
    assert all(c[6] == -1.0 for c in carried)  # no premature closes after the grasp
    assert np.array_equal(label, [0.1, -0.2, 0.3, 0, 0, 0, -1.0])  # the label itself is never changed


def test_finer_patch_grid_is_the_same_architecture_on_a_14x14_grid():
    """``train-tiny --patch 8``: both featurizers see 196 patches (the shipped 14 px: 64), and the
    config names ViT variants the checkpoint loader knows."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from vla_eval.policies.openvla.native.vit import VISION_ARCHS
    from vla_eval.tinyvla.train import TrainConfig, build, hf_config, norm_stats_of

    actions = np.concatenate([np.random.default_rng(0).uniform(-1, 1, (50, 3)), np.zeros((50, 3)),
                              np.repeat([[-1.0], [1.0]], 25, axis=0)], axis=1)
    stats = norm_stats_of(actions, 2)
    grids = {}
    for patch in (14, 8):
        cfg = TrainConfig(demos=Path("d"), out=Path("o"), tokenizer=Path("t"), patch=patch)
        ids = hf_config(cfg, stats)["timm_model_ids"]
        assert all(VISION_ARCHS[i].patch_size == patch for i in ids)
        model = build(cfg, stats)
        grids[patch] = {v.num_patches for v in model.cfg.vision}
        logits = model.action_token_logits(torch.zeros(2, 6, 112, 112), [[1, 512, 29901]] * 2,
                                           torch.full((2, 7), 31900))
        assert logits.shape == (2, 7, 32064) and torch.isfinite(logits).all()
    assert grids == {14: {64}, 8: {196}}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """Two real expert demos (libero_object task 0, sampled scenes: scene 0 clean, the next a
    noisy one with perturbation bursts), collected twice: the second call must find them and
    record nothing."""
    pytest.importorskip("pandas")
    from vla_eval.tinyvla.demos import DemoConfig, collect

    out = tmp_path_factory.mktemp("demos") / "libero_object"
    cfg = DemoConfig(tasks=(0,), per_task=2, workers=1, burst_prob=0.04, out=out)
    assert collect(cfg, progress=False) == {0: 2}
    before = sorted(p.name for p in (out / "task0").iterdir())
    assert collect(cfg, progress=False) == {0: 2}  # resumed: nothing new
    assert sorted(p.name for p in (out / "task0").iterdir()) == before
    return out


@pytest.mark.libero
def test_demo_shards_are_plain_parquet_with_upright_frames(demo_dir):
    import pandas as pd

    from vla_eval.policies.openvla.preprocess import jpeg_decode

    clean, noisy = sorted((demo_dir / "task0").glob("*.parquet"), key=lambda p: int(p.stem[5:]))
    df = pd.read_parquet(clean)
    assert np.array_equal(np.stack(df["action"].to_numpy()), np.stack(df["executed"].to_numpy()))
    labels, executed = (np.stack(pd.read_parquet(noisy)[c].to_numpy()) for c in ("action", "executed"))
    pushed = np.isclose(np.linalg.norm(executed[:, :3], axis=1), 0.8, atol=1e-4)  # a burst's fixed speed
    closed_early = (executed[:, 6] == 1.0) & (labels[:, 6] == -1.0)
    burst = pushed | closed_early
    assert burst.any() and not np.allclose(executed[burst], labels[burst], atol=0.05)  # labels stay the expert's
    assert np.abs(labels[:, :3]).max() <= 1.0 and set(np.unique(labels[:, 6])) <= {-1.0, 1.0}
    assert {"task_id", "scene", "step", "instruction", "image", "action", "executed"} <= set(df.columns)
    assert len(df) > 40 and df["instruction"].nunique() == 1
    assert (df["step"] % 2 == 0).all()  # frame_every=2: only rendered steps are kept
    frame = jpeg_decode(df["image"].iloc[0])
    assert frame.shape == (256, 256, 3)
    # Upright: LIBERO's floor is at the bottom of the training image, the (brighter) wall at the top.
    assert frame[:64].mean() != frame[-64:].mean()
    actions = np.stack(df["action"].to_numpy())
    assert set(np.unique(actions[:, 6])) <= {-1.0, 1.0} and (actions[:, 6] == 1.0).any()  # it grasps
    config = json.loads((demo_dir / "collection.json").read_text())
    assert config["scene_seed_base"] >= 100_000  # never the stored init states 0..49


@pytest.mark.libero
def test_training_lowers_the_loss_and_exports_a_loadable_checkpoint(demo_dir, tmp_path):
    """A few real optimizer steps on the collected demo; the export loads through --native."""
    pytest.importorskip("transformers")
    from vla_eval.policies.factory import OpenVLAOptions
    from vla_eval.policies.openvla.native import llama_tokenizer
    from vla_eval.policies.openvla.native.backend import load_native_backend
    from vla_eval.tinyvla.train import TrainConfig, train

    if not llama_tokenizer.is_installed():
        pytest.skip("Llama-2 tokenizer not installed (python -m vla_eval.policies.openvla.native.llama_tokenizer install)")
    cfg = TrainConfig(demos=demo_dir, out=tmp_path / "run", tokenizer=llama_tokenizer.tokenizer_dir(), steps=30,
                      batch=8, warmup=5, log_every=5, ckpt_every=15, val_episodes_per_task=0)
    ckpt = train(cfg, progress=False)
    rows = (tmp_path / "run" / "train_log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert losses[-1] < losses[0] - 1.0, losses
    backend = load_native_backend(str(ckpt), OpenVLAOptions(device="cpu", dtype="float32", native=True))
    out = backend.predict([np.zeros((224, 224, 3), np.uint8)] * 2, ["In: What?\nOut:"] * 2, "libero_object_no_noops")
    assert out.shape == (2, 7) and np.isfinite(out).all()
    # Resuming a finished run trains nothing more and gives the same export.
    assert train(cfg, progress=False) == ckpt


def test_bad_demo_shard_names_the_file(tmp_path):
    pytest.importorskip("pandas")
    from vla_eval.errors import UsageError
    from vla_eval.tinyvla.train import load_demos

    (tmp_path / "task0").mkdir()
    (tmp_path / "task0" / "scene0.parquet").write_bytes(b"not parquet")
    with pytest.raises(UsageError, match="scene0.parquet.*re-run vla-eval collect-demos"):
        load_demos(tmp_path, tmp_path / "cache")
    with pytest.raises(UsageError, match="no demonstration shards"):
        load_demos(tmp_path / "empty", tmp_path / "cache")


def test_tiny_policy_refuses_another_checkpoint():
    from vla_eval.errors import UsageError
    from vla_eval.policies.factory import model_options, resolve_options

    with pytest.raises(UsageError, match="--policy openvla --checkpoint"):
        model_options("tiny", checkpoint="/elsewhere")
    with pytest.raises(UsageError, match="no shipped tiny checkpoint for suite 'libero_goal'"):
        resolve_options("tiny", "libero_goal", model_options("tiny"))
    opts = resolve_options("tiny", "libero_object", model_options("tiny"))
    assert opts.native and opts.device == "cpu" and opts.dtype == "float32" and Path(opts.checkpoint).is_dir()
    assert model_options("tiny", device="cuda").device == "cuda"  # an explicit choice is kept


def test_worker_pool_spawns_nothing_without_work_and_names_a_dead_worker():
    from vla_eval.tinyvla.demos import run_worker_pool

    run_worker_pool(None, (), [], 2, 0, lambda: 0, "nothing", False)  # no target needed: nothing spawned
    with pytest.raises(RuntimeError, match=r"workers exited with \[1\]; re-run the same command to resume"):
        run_worker_pool(sys.exit, (), [1], 1, 1, lambda: 0, "doomed", False)  # sys.exit(queue) raises: exit 1


def test_grasp_weights_mark_frames_near_a_gripper_change_within_each_episode():
    from vla_eval.tinyvla.train import Demos, grasp_weights

    actions = np.zeros((12, 7))
    actions[:, 6] = [-1, -1, -1, 1, 1, 1, -1, -1, -1, 1, 1, 1]
    d = Demos(np.zeros((12, 1, 1, 3), np.uint8), actions, np.zeros(12, int), np.repeat([0, 1], 6), {}, 2)
    # changes at frames 3 and 9; the -1 at frame 6 starts a new episode, not a change
    assert grasp_weights(d, 3.0, 1).tolist() == [1, 1, 3, 3, 3, 1, 1, 1, 3, 3, 3, 1]
    assert grasp_weights(d, 1.0, 4).tolist() == [1] * 12
