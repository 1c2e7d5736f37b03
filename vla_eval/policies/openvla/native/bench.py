"""``vla-eval bench-policy``: actions/s and latency of the native batched model vs the
sequential HF-style loop (one ``generate`` per observation), with peak GPU memory.

Weights are random with the checkpoint's exact architecture (``--size 7b``: OpenVLA-7B) unless
``--checkpoint`` is given; timing does not depend on the values, and all 7 action tokens are
always decoded (no early stop). One action = one observation's 7-DoF action = 7 tokens.

The physical limit printed next to each row is the larger of two floors: compute (the call's
FLOPs at the GPU's peak dense bf16 rate) and memory (the weights read once for the prefill and
once per decoded token, at peak bandwidth). Peaks come from a small table of known GPUs, or
``--peak-tflops`` / ``--peak-gbps``.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from vla_eval.errors import UsageError, require

# Dense bf16 tensor TFLOP/s and memory GB/s from the vendors' data sheets; first substring match
# of torch.cuda.get_device_name wins (so the PCIe H100 comes before the SXM one).
PEAKS = {"H100 PCIe": (756.0, 2000.0), "H100": (989.0, 3350.0), "H200": (989.0, 4800.0),
         "A100": (312.0, 2039.0), "RTX 4090": (165.2, 1008.0), "L40S": (362.0, 864.0)}
PROMPT = "In: What action should the robot take to pick up the alphabet soup and place it in the basket?\nOut:"


@dataclass
class Row:
    path: str
    batch: int
    latency_s: float  # one call: B observations -> B actions
    peak_mem_gib: float | None
    limit_s: float | None

    @property
    def actions_per_s(self) -> float:
        return self.batch / self.latency_s


def flops_per_call(model, batch: int, prompt_len: int, n_tokens: int = 7) -> float:
    """2 x parameters x tokens through each part, plus attention scores/values of the LLM."""
    vit = sum(p.numel() for n, p in model.vision_backbone.named_parameters() if "blocks" in n)
    proj = sum(p.numel() for p in model.projector.parameters())
    llm = sum(p.numel() for n, p in model.language_model.model.named_parameters() if "embed_tokens" not in n)
    head = model.language_model.lm_head.weight.numel()
    cfg = model.llama_config
    seq = prompt_len + model.num_patches + 1
    per_row = 2 * (vit + proj) * model.num_patches + 2 * llm * (seq + n_tokens - 1) + 2 * head * n_tokens
    attn = 4 * cfg.num_hidden_layers * cfg.hidden_size * (seq * seq / 2 + (n_tokens - 1) * seq)
    return batch * (per_row + attn)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def physical_limit(model, batch: int, prompt_len: int, peaks) -> float | None:
    if peaks is None:
        return None
    tflops, gbps = peaks
    llm_bytes = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
    memory_s = (weight_bytes(model) + 6 * llm_bytes) / (gbps * 1e9)  # prefill + 6 decode steps
    compute_s = flops_per_call(model, batch, prompt_len) / (tflops * 1e12)
    return max(memory_s, compute_s)


def _peaks(device, args):
    if args.peak_tflops and args.peak_gbps:
        return args.peak_tflops, args.peak_gbps
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAKS.items():
        if key in name:
            return value
    return None


def _time(fn, iters: int, sync) -> float:
    fn()  # warm-up: kernels, allocator, cache shapes
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t) / iters


def run(args) -> list[Row]:
    import torch

    from vla_eval.policies.openvla.native.backend import NativeBackend
    from vla_eval.policies.openvla.native.checkpoint import build_model, check_device, load_native
    from vla_eval.policies.openvla.native.model import NativeConfig
    from vla_eval.policies.openvla.native.random_checkpoints import char_tokenizer, hf_config

    device = check_device(args.device)
    t0 = time.perf_counter()
    if args.checkpoint:
        model, _ = load_native(args.checkpoint, args.device, args.dtype)
        weights = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(0)
        model = build_model(NativeConfig.from_hf(hf_config(args.size)), args.device, args.dtype)
        weights = f"random weights, {args.size} architecture"
    build_s = time.perf_counter() - t0
    backend = NativeBackend(model, char_tokenizer())
    ids = backend.prompt_ids([PROMPT])[0]
    if args.prompt_tokens:  # the stand-in tokenizer is per character; match the real prompt's length
        ids = (ids * (args.prompt_tokens // len(ids) + 1))[:args.prompt_tokens]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    peaks = _peaks(device, args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"bench-policy: {weights}: {n_params / 1e6:,.1f} M parameters built in {build_s:.1f} s on {device} "
          f"({args.dtype}); prompt {len(ids)} tokens + {model.num_patches} patches, 7 action tokens")
    if peaks:
        print(f"peaks used for the physical limit: {peaks[0]:.0f} TFLOP/s bf16, {peaks[1]:.0f} GB/s")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    rows = []

    def measure(path: str, batch: int, fn) -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            latency = _time(fn, args.iters, sync)
        except torch.cuda.OutOfMemoryError:
            print(f"{path:>10} batch {batch:3}: out of GPU memory (the largest batch that fits is below {batch})")
            torch.cuda.empty_cache()
            return
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        rows.append(Row(path, batch, latency, mem, physical_limit(model, batch, len(ids), peaks)))
        _print_row(rows[-1], rows[0])

    pixels1 = backend.pixel_values([image]).to(device)
    measure("hf-loop", 1, lambda: model.generate_with_hf(pixels1, [ids], 7))
    for b in args.batches:
        pixels = backend.pixel_values([image] * b).to(device)
        measure("native", b, lambda: model.generate_action_tokens(pixels, [ids] * b, 7))
    return rows


def _print_row(r: Row, baseline: Row) -> None:
    mem = f"{r.peak_mem_gib:6.1f} GiB" if r.peak_mem_gib is not None else "      -   "
    limit = (f"  limit {r.limit_s * 1e3:7.1f} ms ({100 * r.limit_s / r.latency_s:4.1f}% of it)"
             if r.limit_s else "")
    print(f"{r.path:>10} batch {r.batch:3}: {r.latency_s * 1e3:8.1f} ms/call  {r.actions_per_s:8.2f} actions/s  "
          f"x{r.actions_per_s / baseline.actions_per_s:5.2f} vs hf-loop  peak {mem}{limit}")


def _batches(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batches {text!r}: expected comma-separated integers, e.g. 1,4,8") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"--batches {text!r}: every batch must be at least 1")
    return out


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("bench-policy", help=VERBS["bench-policy"].help)
    p.add_argument("--size", choices=("tiny", "7b"), default="tiny", help="random-weight architecture (default tiny)")
    p.add_argument("--checkpoint", help="time a real checkpoint folder instead of random weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--batches", type=_batches, default=[1, 4, 8, 16, 32])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--prompt-tokens", type=int, default=30,
                   help="prompt length in tokens incl. BOS (default 30: a LIBERO prompt under Llama's tokenizer)")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for the physical limit")
    p.add_argument("--peak-gbps", type=float, help="the GPU's memory bandwidth, for the physical limit")
    p.set_defaults(fn=_cmd)


def _cmd(args) -> int:
    require("torch", "openvla", "bench-policy")
    if args.iters < 1 or args.prompt_tokens < 0:
        raise UsageError(f"--iters must be at least 1 (got {args.iters}) and --prompt-tokens at least 0 "
                         f"(got {args.prompt_tokens})")
    run(args)
    return 0
