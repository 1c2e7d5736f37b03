"""The native (trust_remote_code-free) OpenVLA model on tiny random-weight configs.

Everything here is the real code at a small size: the ViTs are checked against transformers'
own DINOv2-with-registers and SigLIP implementations with the same weights, the cached
batched decoder against a no-cache per-sample reference and against HF ``generate``, and the
checkpoint loader against files in OpenVLA's released layout."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vla_eval.errors import UsageError  # noqa: E402
from vla_eval.policies.openvla.native.checkpoint import build_model, load_native, read_config  # noqa: E402
from vla_eval.policies.openvla.native.model import EMPTY_TOKEN, NativeConfig  # noqa: E402
from vla_eval.policies.openvla.native.random_checkpoints import hf_config, write_random_checkpoint  # noqa: E402
from vla_eval.policies.openvla.native.vit import ViTFeaturizer  # noqa: E402

PROMPTS = ["In: What action should the robot take to pick up the soup?\nOut:",
           "What action should the robot take? Pick up the alphabet soup and place it in the basket",
           "In: hi\nOut:"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-openvla"))


@pytest.fixture(scope="module")
def backend(ckpt):
    from vla_eval.policies.factory import OpenVLAOptions
    from vla_eval.policies.openvla.native.backend import load_native_backend

    return load_native_backend(str(ckpt), OpenVLAOptions(device="cpu", dtype="float32", native=True))


def _pixels(backend, n, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(n)]
    return backend.pixel_values(images)


def _random_featurizer(index: int):
    cfg = NativeConfig.from_hf(hf_config("tiny")).vision[index]
    torch.manual_seed(index)
    ours = ViTFeaturizer(cfg).eval()
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return cfg, ours


def _block_state(blk, prefix: str, names: dict) -> dict:
    """One of our ViT blocks as a transformers state dict (separate q/k/v), by module name."""
    mods = dict(norm1=blk.norm1, norm2=blk.norm2, fc1=blk.mlp.fc1, fc2=blk.mlp.fc2, o=blk.attn.proj)
    out = {f"{prefix}{names[n]}.{p}": getattr(m, p) for n, m in mods.items() for p in ("weight", "bias")}
    for n, w, b in zip("qkv", blk.attn.qkv.weight.chunk(3), blk.attn.qkv.bias.chunk(3)):
        out.update({f"{prefix}{names[n]}.weight": w, f"{prefix}{names[n]}.bias": b})
    return out


@pytest.mark.skipif(not hasattr(transformers, "Dinov2WithRegistersModel"), reason="transformers < 4.48")
def test_dinov2_features_match_transformers_dinov2_with_registers():
    cfg, ours = _random_featurizer(0)
    ref = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_hidden // cfg.embed_dim, image_size=cfg.img_size, patch_size=cfg.patch_size,
        num_register_tokens=cfg.reg_tokens, layer_norm_eps=cfg.eps)).eval()
    sd = {"embeddings.cls_token": ours.cls_token, "embeddings.register_tokens": ours.reg_token,
          # timm's reg4 layout: positions for patches only (none for class/registers)
          "embeddings.position_embeddings": torch.cat([torch.zeros(1, 1, cfg.embed_dim), ours.pos_embed], 1),
          "embeddings.patch_embeddings.projection.weight": ours.patch_embed.proj.weight,
          "embeddings.patch_embeddings.projection.bias": ours.patch_embed.proj.bias}
    names = dict(norm1="norm1", norm2="norm2", fc1="mlp.fc1", fc2="mlp.fc2", q="attention.q_proj",
                 k="attention.k_proj", v="attention.v_proj", o="attention.o_proj")
    for i, blk in enumerate(ours.blocks):
        p = f"encoder.layer.{i}."
        sd.update(_block_state(blk, p, names))
        sd.update({p + "layer_scale1.lambda1": blk.ls1.gamma, p + "layer_scale2.lambda1": blk.ls2.gamma})
    missing, _ = ref.load_state_dict(sd, strict=False)
    assert all(k.startswith(("embeddings.mask_token", "layernorm", f"encoder.layer.{cfg.depth - 1}.")) for k in missing)
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        want = ref(x, output_hidden_states=True).hidden_states[cfg.feature_block + 1][:, 1 + cfg.reg_tokens:]
        got = ours(x)
    assert got.shape == (2, cfg.num_patches, cfg.embed_dim)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_siglip_features_match_transformers_siglip():
    cfg, ours = _random_featurizer(1)
    ref = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.mlp_hidden, image_size=cfg.img_size, patch_size=cfg.patch_size,
        hidden_act="gelu", layer_norm_eps=cfg.eps)).eval()  # timm 0.9's so400m uses exact GELU
    pre = "vision_model." if any(k.startswith("vision_model.") for k in ref.state_dict()) else ""  # 4.x vs 5.x
    sd = {pre + "embeddings.patch_embedding.weight": ours.patch_embed.proj.weight,
          pre + "embeddings.patch_embedding.bias": ours.patch_embed.proj.bias,
          pre + "embeddings.position_embedding.weight": ours.pos_embed[0]}
    names = dict(norm1="layer_norm1", norm2="layer_norm2", fc1="mlp.fc1", fc2="mlp.fc2", q="self_attn.q_proj",
                 k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj")
    for i, blk in enumerate(ours.blocks):
        sd.update(_block_state(blk, f"{pre}encoder.layers.{i}.", names))
    missing, _ = ref.load_state_dict(sd, strict=False)
    assert all(k.startswith((pre + "post_layernorm", pre + "head", f"{pre}encoder.layers.{cfg.depth - 1}."))
               for k in missing)
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        want = ref(x, output_hidden_states=True).hidden_states[cfg.feature_block + 1]
        got = ours(x)
    assert len(ours.blocks) == cfg.depth - 1  # the last block is never built
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _reference_tokens(model, pixels, ids, n=7):
    """Straightforward decode: one sample, no padding, no cache, the whole sequence re-run per token."""
    with torch.no_grad():
        patches = model.projector(model.vision_backbone(pixels))[0]
        embed = model.language_model.get_input_embeddings()
        tok = embed(torch.tensor(ids + [EMPTY_TOKEN]))
        seq = torch.cat([tok[:1], patches, tok[1:]])[None]
        out, logits = [], []
        for _ in range(n):
            step_logits = model.language_model(inputs_embeds=seq).logits[0, -1].float()
            nxt = int(step_logits.argmax())
            out.append(nxt)
            logits.append(step_logits)
            seq = torch.cat([seq, embed(torch.tensor([[nxt]]))], dim=1)
    return out, torch.stack(logits)


def test_batched_cached_decode_equals_per_sample_reference(backend):
    model = backend.model
    pixels = _pixels(backend, 3)
    ids = backend.prompt_ids(PROMPTS)
    assert len({len(i) for i in ids}) == 3  # three lengths: rows are left-padded differently
    tokens, logits = model.generate_action_tokens(pixels, ids, 7, return_logits=True)
    for i in range(3):
        ref_tokens, ref_logits = _reference_tokens(model, pixels[i:i + 1], ids[i])
        assert tokens[i].tolist() == ref_tokens
        torch.testing.assert_close(logits[i], ref_logits, atol=2e-4, rtol=1e-4)
        alone = model.generate_action_tokens(pixels[i:i + 1], ids[i:i + 1], 7)
        assert alone[0].tolist() == ref_tokens
    assert torch.equal(model.generate_with_hf(pixels, ids, 7), tokens)  # transformers' own generate loop
    # the steered random head keeps outputs on action bins, and they differ between rows
    assert ((tokens >= 32000 - 256) & (tokens < 32000)).all() and len({tuple(t) for t in tokens.tolist()}) > 1


def test_feature_summary_is_the_layers_output_at_the_action_positions(backend):
    """``return_features``: per row, the middle and last decoder layer's output at the 7 positions
    that produced the action tokens, averaged; checked against a no-cache, unpadded forward pass of
    the whole sequence with ``output_hidden_states``. The tokens do not change when it is asked for."""
    model = backend.model
    pixels, ids = _pixels(backend, 3, seed=5), backend.prompt_ids(PROMPTS)
    tokens, feats = model.generate_action_tokens(pixels, ids, 7, return_features=True)
    assert torch.equal(tokens, model.generate_action_tokens(pixels, ids, 7))
    middle, last = model.feature_layers
    assert feats.shape == (3, 2, model.llama_config.hidden_size) and feats.dtype == np.float16
    assert (middle, last) == (max(model.llama_config.num_hidden_layers // 2, 1), model.llama_config.num_hidden_layers)
    for i in range(3):
        with torch.no_grad():
            patches = model.projector(model.vision_backbone(pixels[i:i + 1]))[0]
            embed = model.language_model.get_input_embeddings()
            tok = embed(torch.tensor(ids[i] + [EMPTY_TOKEN] + tokens[i, :-1].tolist()))
            seq = torch.cat([tok[:1], patches, tok[1:]])[None]
            hs = model.language_model.model(inputs_embeds=seq, output_hidden_states=True).hidden_states
        want = torch.stack([hs[middle][0, -7:].mean(0), hs[last][0, -7:].mean(0)]).numpy()
        np.testing.assert_allclose(feats[i].astype(np.float32), want, rtol=2e-2, atol=2e-2)
    acts, stats = model.predict_action(pixels, ids, "libero_object_no_noops", return_token_prob=True, features=True)
    np.testing.assert_array_equal(stats.features, feats)
    assert model.predict_action(pixels, ids, "libero_object_no_noops", return_token_prob=True)[1].features is None


def test_actions_decode_as_predict_action(backend):
    model = backend.model
    pixels, ids = _pixels(backend, 2, seed=3), backend.prompt_ids(PROMPTS[:2])
    tokens = model.generate_action_tokens(pixels, ids, 7).numpy()
    acts = model.predict_action(pixels, ids, "libero_object_no_noops")
    stats = model.cfg.norm_stats["libero_object_no_noops"]["action"]
    bins = np.clip(32000 - tokens - 1, 0, 254)
    centres = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    q01, q99 = np.array(stats["q01"]), np.array(stats["q99"])
    want = 0.5 * (centres[bins] + 1) * (q99 - q01) + q01
    want[:, 6] = centres[bins[:, 6]]  # mask False: the gripper stays normalised
    np.testing.assert_allclose(acts, want)
    with pytest.raises(UsageError, match="valid: bridge_orig, libero_object_no_noops"):
        model.predict_action(pixels, ids, "libero_goal")


def test_checkpoint_keys_roundtrip_and_mismatches_are_listed(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / "model.safetensors"))
    assert any(k.endswith("ls1.scale_factor") for k in state) and not any(k.endswith(".gamma") for k in state)
    model, report = load_native(ckpt, "cpu", "float32")
    # DINOv2: last block 14 + norm 2; SigLIP: last block 12 + norm 2 + attention-pool head 13
    assert report.skipped_unused == 43 and report.loaded == len(model.state_dict())
    key = "vision_backbone.featurizer.blocks.0.ls1.scale_factor"
    torch.testing.assert_close(model.vision_backbone.featurizer.blocks[0].ls1.gamma, state[key])

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ckpt.iterdir():  # a complete folder: only the weights differ
        if f.is_file() and f.name != "model.safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    bad = dict(state)
    del bad["projector.fc2.bias"]
    bad["projector.fc9.weight"] = torch.zeros(2, 2)
    save_file(bad, str(broken / "model.safetensors"))
    with pytest.raises(UsageError, match=r"1 missing keys: projector\.fc2\.bias; 1 unexpected keys: projector\.fc9"):
        load_native(broken, "cpu", "float32")


def test_random_checkpoint_is_in_the_full_released_layout(ckpt):
    """What the official remote code needs to load it: every OpenVLAConfig field, safetensors
    metadata, a processor config, a Llama tokenizer without token_type_ids; no zero/one params."""
    from safetensors import safe_open

    cfg = read_config(ckpt)
    for field in ("vision_backbone_id", "llm_backbone_id", "arch_specifier", "timm_override_act_layers",
                  "image_resize_strategy", "auto_map", "llm_max_length", "output_projector_states", "hf_llm_id"):
        assert field in cfg, field
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        for key in f.keys():
            t = f.get_tensor(key)
            assert not bool((t == 0).all()) and not bool((t == 1).all()), f"{key} is all zeros or ones"
    assert json.loads((ckpt / "preprocessor_config.json").read_text())["image_resize_strategy"] == "resize-naive"
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert tok_cfg["model_input_names"] == ["input_ids", "attention_mask"]
    from vla_eval.policies.openvla.native.llama_tokenizer import load_tokenizer

    tok = load_tokenizer(ckpt)
    assert "token_type_ids" not in tok("In: hi\nOut:")


def test_config_values_come_from_the_checkpoint(ckpt, tmp_path):
    cfg = read_config(ckpt)
    cfg["text_config"]["rms_norm_eps"] = 1e-5
    model = build_model(NativeConfig.from_hf(cfg), "cpu", "float32")
    assert model.language_model.model.norm.variance_epsilon == 1e-5
    assert model.cfg.action_vocab_size == 32000 and model.action_dim("bridge_orig") == 7
    cfg["timm_model_ids"][0] = "vit_huge_patch14_clip_224"
    with pytest.raises(UsageError, match="unknown vision backbone 'vit_huge_patch14_clip_224'.*known: vit_large"):
        NativeConfig.from_hf(cfg)


@pytest.mark.parametrize("device,dtype,message", [
    ("cpu", "int8", "unknown dtype 'int8'; valid: bfloat16, float16, float32"),
    ("tpu", "float32", "bad device 'tpu'"),
    ("cuda:0", "float32", "torch sees no CUDA device"),
])
def test_bad_dtype_and_device_requests(device, dtype, message):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match=message):
        build_model(NativeConfig.from_hf(hf_config("tiny")), device, dtype)


def test_native_policy_toggles_reach_the_model(backend, ckpt, monkeypatch):
    """The policy (preprocessing + prompts + post-processing) over the real native backend."""
    from vla_eval.faults import RUN_TAGS, toggles_for
    from vla_eval.policies.factory import OpenVLAOptions, make_policies
    from vla_eval.policies.openvla.native import backend as backend_mod
    from vla_eval.preflight import image_sensitivity, probe_frame
    from vla_eval.sims.protocol import Observation

    load = backend_mod.load_native_backend  # the dtype fault loads its own copy of the weights
    monkeypatch.setattr(backend_mod, "load_native_backend",
                        lambda checkpoint, opts: backend if opts.dtype == "bfloat16" else load(str(ckpt), opts))
    tags = list(RUN_TAGS)  # the baseline and every fault of the table
    policies = make_policies("openvla", "libero_object", [toggles_for(t) for t in tags],
                             OpenVLAOptions(checkpoint="tiny", device="cpu", native=True))
    assert {p.toggles.tag for p in policies} == set(tags)
    assert {t: p.unnorm_key for t, p in zip(tags, policies) if p.unnorm_key != "libero_object_no_noops"} == {
        "bad_unnorm": "bridge_orig"}
    assert len({id(p.backend) for p in policies}) == 2  # the weights are loaded once per dtype of the sweep
    frame = probe_frame()  # structure at every scale: resize filters, crops and JPEG all differ on it
    obs = [Observation("Pick up the soup", np.zeros(3), np.array([0, 0, 0, 1.0]), np.zeros(2), agentview=frame)] * 2
    batches = {t: p.act(obs, [0, 1]) for t, p in zip(tags, policies)}
    acts = {t: b.actions for t, b in batches.items()}
    for t in tags:
        assert acts[t].shape == (2, 7)
        np.testing.assert_array_equal(acts[t][0], acts[t][1])  # same input, same row
        if t != "gripper_no_binarize":
            assert set(np.abs(acts[t][:, 6])) == {1.0}, t
        if t in ("baseline", "unnorm_gripper"):  # the latter shows on a close only: checked below
            continue
        # Each fault reaches the model's inputs or outputs: the image, the prompt/confidence, or the action.
        changed = (not np.array_equal(acts[t], acts["baseline"])
                   or not np.array_equal(batches[t].token_prob, batches["baseline"].token_prob)
                   or not np.array_equal(batches[t].img_mean, batches["baseline"].img_mean))
        assert changed, t
    np.testing.assert_array_equal(acts["gripper_no_invert"][:, 6], -acts["baseline"][:, 6])
    np.testing.assert_array_equal(acts["gripper_no_invert"][:, :6], acts["baseline"][:, :6])
    assert batches["blind"].img_mean[0] == 128
    # The gripper's bin for "close" (0 in the training convention): left as is by the released mask,
    # unnormalised to 0.5 by a decoder that ignores the mask, which LIBERO then reads as neither.
    from vla_eval.policies.openvla.tokens import normalized_to_tokens

    close = normalized_to_tokens(np.zeros((1, 7)), backend.model.cfg.action_vocab_size)  # every dim's bin at 0
    key = "libero_object_no_noops"
    released = backend.model.tokens_to_actions(close, key)[0, 6]
    ignored = backend.model.tokens_to_actions(close, key, unnorm_mask=False)[0, 6]
    assert abs(released) < 0.01 and abs(ignored - 0.5) < 0.01
    assert image_sensitivity(policies[0]) > 0


def test_hf_config_of_the_7b_model_has_openvla_sizes():
    from vla_eval.policies.openvla.native.model import NativeOpenVLA

    cfg = NativeConfig.from_hf(hf_config("7b"))
    with torch.device("meta"):  # shapes only, no memory
        model = NativeOpenVLA(cfg)
    # OpenVLA-7B has 7,541,237,184 parameters; 43,080,480 of them are never run (DINOv2's last
    # block 12,598,272 + norm 2,048; SigLIP's last block 15,239,504 + norm 2,304 + pool head 15,238,352).
    assert sum(p.numel() for p in model.parameters()) == 7_541_237_184 - 43_080_480
    dino, siglip = cfg.vision
    assert (dino.embed_dim, dino.depth, dino.feature_block, dino.num_patches) == (1024, 24, 22, 256)
    assert (siglip.embed_dim, siglip.depth, siglip.feature_block, siglip.mlp_hidden) == (1152, 27, 25, 4304)
    assert json.loads(json.dumps(hf_config("7b")))["text_config"]["vocab_size"] == 32064


def test_native_drill_on_real_libero_with_two_batched_envs(ckpt, tmp_path, cli_run):
    """`vla-eval drill --native --batch 2` end to end: two spawned LIBERO workers with cameras,
    one batched model call per step, four run tags sharing one set of envs and one model."""
    from vla_eval.records import read_jsonl

    out = tmp_path / "drill"
    r = cli_run("drill", "--policy", "openvla", "--native", "--checkpoint", ckpt, "--device", "cpu", "--dtype",
                "float32", "--seeds", "2", "--batch", "2", "--max-steps", "3", "--fast-reset", "--no-progress",
                "--no-report", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("native OpenVLA: ") == 1  # one model for the four tags
    means = {}
    for tag in ("baseline", "no_flip", "bad_prompt", "bad_unnorm"):
        log = read_jsonl(out / f"{tag}.jsonl")
        assert sorted(e.seed for e in log.episodes) == [0, 1]
        assert all(e.outcome == "failure" and e.steps == 3 for e in log.episodes)  # random weights, 3 steps
        assert len(log.steps) == 6 and all(len(s.action) == 7 and s.img_mean is not None for s in log.steps)
        means[tag] = {s.seed: s.img_mean for s in log.steps if s.step == 0}
    for seed in (0, 1):  # same init state, same preprocessing (soft resets warm-start MuJoCo: not bit-exact)
        assert abs(means["baseline"][seed] - means["bad_prompt"][seed]) < 0.5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["openvla"]["native"] is True and manifest["provenance"]["openvla"]["batch"] == 2
    from vla_eval.reports.html import write_report

    html = write_report(out).read_text()  # a drill's report replays every episode through the monitor
    assert 'id="monitor-table"' in html and 'id="monitor-confusion"' in html and "generic default thresholds" in html


def test_batch_flag_conflicts_are_refused(ckpt, cli_main):
    base = ["sweep", "--policy", "openvla", "--native", "--checkpoint", ckpt, "--device", "cpu", "--seeds", "1"]
    code, err = cli_main(*base, "--batch", "2", "--workers", "3")
    assert code == 2 and "--batch 2 runs 2 env workers; drop --workers 3" in err
    code, err = cli_main(*base, "--batch", "0")
    assert code == 2 and "--batch: must be at least 1, got 0" in err
    code, err = cli_main(*base, "--overlap")
    assert code == 2 and "--overlap needs two env groups: --batch (or --workers) of at least 2, got 1" in err
    code, err = cli_main("run", "--policy", "zero", "--batch", "4")
    assert code == 2 and "--batch, --overlap, --workers, --ray and --policy-actors apply to sweep and drill" in err


def test_bench_policy_cli_prints_native_and_hf_loop_rows(cli_run):
    r = cli_run("bench-policy", "--dtype", "float32", "--batches", "1,3", "--iters", "1")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if "ms/call" in line]
    assert [line.split("batch")[0].strip() for line in rows] == ["hf-loop", "native", "native"]
    assert "prompt 30 tokens + 16 patches" in r.stdout
    bad = cli_run("bench-policy", "--batches", "4,x")
    assert bad.returncode == 2 and "expected comma-separated integers" in bad.stderr


def test_batch_too_large_names_the_largest_that_fits(backend, monkeypatch):
    """The search behind `--batch N` on a GPU: out-of-memory at N halves, then bisects.
    (Out-of-memory is raised by a stand-in here; this machine has no GPU to exhaust.)"""
    from types import SimpleNamespace

    from vla_eval.policies.openvla.native.backend import NativeBackend

    tried = []

    class SmallGPU(NativeBackend):
        def predict(self, images, prompts, unnorm_key):
            tried.append(len(images))
            if len(images) > 5:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return np.zeros((len(images), 7))

    fake = SmallGPU(SimpleNamespace(device=torch.device("cuda"), cfg=backend.model.cfg), backend.tokenizer)
    assert fake.largest_batch_that_fits(32) == 5 and tried == [32, 16, 8, 4, 6, 5]
    tried.clear()
    assert fake.largest_batch_that_fits(5) == 5 and tried == [5]
    monkeypatch.setattr(SmallGPU, "predict", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")))
    assert fake.largest_batch_that_fits(8) == 0
    assert backend.largest_batch_that_fits(32) == 32  # CPU: no fixed memory pool, nothing to probe
