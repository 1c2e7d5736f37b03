"""The native model as an OpenVLA policy backend: batched images + prompts -> actions.

Pixel values are built as OpenVLA's processor builds them: the 224 px image (resized
bicubically only if the model's input size differs), scaled to [0, 1], normalised once per
featurizer with that featurizer's mean/std, the two results stacked on channels.
"""
from __future__ import annotations

import numpy as np
import torch

from vla_eval.errors import UsageError
from vla_eval.policies.openvla.hub import resolve_checkpoint_dir
from vla_eval.policies.openvla.native.model import NativeOpenVLA


class NativeBackend:
    """The native batched model behind ``OpenVLAPolicy`` (the ``Backend`` protocol with confidence:
    actions come with their token probability, and the decoding knobs faults turn apply)."""

    confidence = True

    def __init__(self, model: NativeOpenVLA, tokenizer, means=None, stds=None):
        self.model, self.tokenizer = model, tokenizer
        self.means = means or [v.mean for v in model.cfg.vision]
        self.stds = stds or [v.std for v in model.cfg.vision]

    @property
    def norm_stats(self) -> dict:
        return self.model.cfg.norm_stats

    def pixel_values(self, images: list[np.ndarray]) -> torch.Tensor:
        """B x (H, W, 3) uint8 -> (B, 6, S, S) float32, S the featurizers' input size."""
        from PIL import Image

        size = self.model.cfg.vision[0].img_size
        if images[0].shape[:2] != (size, size):
            images = [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
        parts = [(x - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)
                 for m, s in zip(self.means, self.stds)]
        return torch.cat(parts, dim=1)

    def prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        return [list(self.tokenizer(p).input_ids) for p in prompts]  # BOS first, as the processor does

    def predict(self, images: list[np.ndarray], prompts: list[str], unnorm_key: str) -> np.ndarray:
        return self.model.predict_action(self.pixel_values(images), self.prompt_ids(prompts), unnorm_key)

    def predict_with_confidence(self, images: list[np.ndarray], prompts: list[str], unnorm_key: str, **decoding):
        """-> ((B, 7) actions, ``TokenStats``: per token probability and entropy). ``decoding``: the fault knobs
        of ``NativeOpenVLA.predict_action`` (empty_token, vocab_size, unnorm_mask)."""
        return self.model.predict_action(self.pixel_values(images), self.prompt_ids(prompts), unnorm_key,
                                         return_token_prob=True, **decoding)

    def largest_batch_that_fits(self, want: int, instruction: str = "pick up the object " * 8) -> int:
        """On CUDA, run ``want`` dummy observations once; on out-of-memory halve until one fits,
        then bisect between that and the last failure. ``want`` when it fits (always on CPU,
        where there is no fixed pool to exhaust); 0 when not even one fits."""
        if self.model.device.type != "cuda":
            return want
        image = np.zeros((224, 224, 3), np.uint8)
        key = next(iter(self.norm_stats))

        def fits(n: int) -> bool:
            try:
                self.predict([image] * n, [instruction] * n, key)
                return True
            except torch.cuda.OutOfMemoryError:
                return False
            finally:
                torch.cuda.empty_cache()

        if fits(want):
            return want
        hi, lo = want, want // 2
        while lo >= 1 and not fits(lo):
            hi, lo = lo, lo // 2
        if lo == 0:
            return 0
        while hi - lo > 1:  # lo fits, hi does not
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo


SUPPORTED_RESIZE = ("resize-naive",)
SUPPORTED_INTERPOLATION = ("bicubic",)


def check_processor_config(cfg: dict, image_sizes: list[int], path) -> None:
    """The native processor implements OpenVLA's "resize-naive" bicubic resize only: any other
    strategy (letterbox, resize-crop) or filter is refused, never approximated."""
    strategy = cfg.get("image_resize_strategy", "resize-naive")
    if strategy not in SUPPORTED_RESIZE:
        raise UsageError(f"{path}: image_resize_strategy {strategy!r} is not supported by the native backend; "
                         f"supported: {', '.join(SUPPORTED_RESIZE)} (use --backend remote-code)")
    for interp in cfg.get("interpolations", []):
        if interp not in SUPPORTED_INTERPOLATION:
            raise UsageError(f"{path}: interpolation {interp!r} is not supported by the native backend; "
                             f"supported: {', '.join(SUPPORTED_INTERPOLATION)} (use --backend remote-code)")
    sizes = [s[-1] for s in cfg.get("input_sizes", [])]
    if sizes and sizes != list(image_sizes):
        raise UsageError(f"{path}: input_sizes {sizes} disagree with config.json's image_sizes {list(image_sizes)}")


def load_native_backend(checkpoint: str, opts) -> NativeBackend:
    from vla_eval.policies.openvla.native.checkpoint import load_native
    from vla_eval.policies.openvla.native.llama_tokenizer import load_tokenizer

    ckpt_dir = resolve_checkpoint_dir(checkpoint, opts.revision)
    model, report = load_native(ckpt_dir, opts.device, opts.dtype, opts.attn_implementation)
    try:
        tokenizer = load_tokenizer(ckpt_dir)  # tokenizer.json as written: the ids transformers 4.40.1 gives
    except Exception as e:  # parsed JSON that the tokenizers library still refuses
        raise UsageError(f"broken checkpoint file {ckpt_dir / 'tokenizer.json'}: the tokenizer does not load "
                         f"({type(e).__name__}: {str(e)[:160]}); re-download the checkpoint") from e
    means = stds = None
    pre = ckpt_dir / "preprocessor_config.json"
    if pre.exists():
        from vla_eval.policies.openvla.native.validate import read_json_object

        cfg = read_json_object(pre)
        check_processor_config(cfg, [v.img_size for v in model.cfg.vision], pre)
        means, stds = cfg.get("means"), cfg.get("stds")
    backend = NativeBackend(model, tokenizer, means, stds)
    if opts.batch > 1:
        fits = backend.largest_batch_that_fits(opts.batch)
        if fits < opts.batch:
            total = torch.cuda.mem_get_info(model.device)[1] / 2**30
            raise UsageError(f"batch {opts.batch} does not fit in GPU memory ({total:.0f} GiB); the largest batch "
                             f"that fits is {fits}: use --batch {fits}" if fits else
                             f"even batch 1 does not fit in GPU memory ({total:.0f} GiB)")
    print(f"native OpenVLA: {report.loaded} tensors loaded, {report.skipped_unused} unused ViT tensors skipped "
          f"({model.device}, {model.dtype})")
    return backend
