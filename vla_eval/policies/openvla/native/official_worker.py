"""One process of ``vla-eval check-fullsize``: OpenVLA's own code acts on the prepared inputs.

Run as a script under OpenVLA's pinned stack (transformers 4.40.1, tokenizers 0.19.1, timm 0.9.10
and torchvision's Python transforms, ``vla-eval setup --pins``), never imported by the toolkit:

    PYTHONPATH=<pins> python official_worker.py CHECKPOINT_DIR inputs.npz out.npz [bfloat16|float32]

``inputs.npz``: ``images`` (N, 224, 224, 3) uint8 after the LIBERO chain, ``prompts`` (N,),
``unnorm_keys`` (K,). For each input the published call, ``predict_action(**processor(prompt,
image), unnorm_key=k, do_sample=False)``, once per key; its ``generate`` is wrapped only to keep
the scores. ``out.npz``: ``tokens`` (N, 7), ``logits`` (N, 7, V) float32, ``actions`` (K, N, 7),
``load_s``, ``act_s`` (N*K,), ``peak_rss_gib``. Only numpy, torch, PIL and the pinned packages.
"""
import importlib
import resource
import sys
import time

import numpy as np
import torch


def _import_torchvision_transforms() -> None:
    """torchvision's wheel is built for another torch; its compiled ops (detection only) do not
    load, and its import then fails registering fake kernels for them. The processor needs only
    the Python transforms, so those registrations are skipped while it imports."""
    import torch.library as library

    register = library.register_fake
    library.register_fake = lambda op, *a, **k: (
        (lambda fn: fn) if str(op).startswith("torchvision::") else register(op, *a, **k))
    try:
        importlib.import_module("torchvision")  # for its side effects, before transformers imports it
    finally:
        library.register_fake = register


def main(ckpt: str, inputs_path: str, out_path: str, dtype: str = "bfloat16") -> None:
    _import_torchvision_transforms()
    import transformers
    from PIL import Image

    data = np.load(inputs_path)
    images, prompts, keys = data["images"], [str(p) for p in data["prompts"]], [str(k) for k in data["unnorm_keys"]]
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    t0 = time.perf_counter()
    processor = transformers.AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)
    vla = transformers.AutoModelForVision2Seq.from_pretrained(
        ckpt, attn_implementation="sdpa", torch_dtype=dtype, low_cpu_mem_usage=True, trust_remote_code=True)
    load_s = time.perf_counter() - t0
    print(f"official: loaded in {load_s:.1f} s (transformers {transformers.__version__})", flush=True)

    generate, kept = vla.generate, {}

    def generate_keeping_scores(*args, **kwargs):
        out = generate(*args, output_scores=True, return_dict_in_generate=True, **kwargs)
        kept["scores"] = torch.stack([s[0].float() for s in out.scores])  # (7, V)
        return out.sequences

    vla.generate = generate_keeping_scores
    tokens, logits, actions, act_s = [], [], np.zeros((len(keys), len(images), 7)), []
    with torch.inference_mode():
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            inputs = processor(prompt, Image.fromarray(image)).to("cpu", dtype=dtype)
            for k, key in enumerate(keys):
                t = time.perf_counter()
                action = vla.predict_action(**inputs, unnorm_key=key, do_sample=False)
                act_s.append(time.perf_counter() - t)
                actions[k, i] = action
                if k == 0:
                    scores = kept["scores"]
                    tokens.append(scores.argmax(-1).numpy())
                    logits.append(scores.numpy())
            print(f"official: input {i + 1}/{len(images)} tokens {tokens[-1].tolist()} ({act_s[-1]:.1f} s)", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    np.savez(out_path, tokens=np.stack(tokens), logits=np.stack(logits), actions=actions, load_s=load_s,
             act_s=np.array(act_s), peak_rss_gib=peak, transformers=transformers.__version__)


if __name__ == "__main__":
    main(*sys.argv[1:5])
