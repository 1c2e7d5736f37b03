"""OpenVLA's LIBERO image preprocessing and prompts, without TensorFlow, bit-exact with it.

The published eval does, on the 256x256 agentview frame:
  1. ``img[::-1, ::-1]`` (180 degree rotation; raw MuJoCo frames are upside down);
  2. JPEG encode/decode (quality 95, 4:2:0) - the RLDS training data was JPEG-compressed;
  3. Lanczos-3 resize to 224x224 with antialiasing, rounded to uint8;
  4. centre crop of 0.9 of the area (side sqrt(0.9)), bilinearly resized back to 224
     (``tf.image.crop_and_resize``), through float [0, 1] and back to uint8.
Each step reproduces TensorFlow's CPU kernel exactly, not approximately:
  * JPEG: PIL's encoder writes TF's bytes; TF decodes with libjpeg-turbo's fast integer IDCT
    (JDCT_IFAST) and fancy upsampling, which simplejpeg exposes (``fastdct=True,
    fastupsample=False``). PIL's decoder uses the accurate IDCT (~1 grey level off).
  * Lanczos: ``scale_and_translate``'s float32 spans (kernel, sample positions, normalisation
    in TF's order), then rows before columns, each a float32 sum tap by tap.
  * crop: ``crop_and_resize``'s float32 coordinates and its lerp formula
    ``a + (b - a) * t``, inputs scaled by float32(1/255) as ``convert_image_dtype`` does.
``tests/test_openvla_loop.py`` requires 0 differing values against TensorFlow's outputs on
real LIBERO frames from four suites (``tests/data/make_tf_reference.py``).
"""
from __future__ import annotations

import functools
import io
import math

import numpy as np

from vla_eval.errors import bad_choice, require

IMAGE_SIZE = 224
CROP_AREA = 0.9
JPEG_QUALITY = 95

PROMPT_TEMPLATES = {
    "default": "In: What action should the robot take to {instruction_lower}?\nOut:",
    "rephrased": "What action should the robot take? {instruction}",
}


def build_prompt(instruction: str, template: str = "default") -> str:
    if template not in PROMPT_TEMPLATES:
        raise bad_choice("prompt template", template, PROMPT_TEMPLATES)
    return PROMPT_TEMPLATES[template].format(instruction_lower=instruction.lower(), instruction=instruction)


def jpeg_encode(img: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """The bytes the RLDS data holds: libjpeg, quality 95, 4:2:0 (PIL's encoder matches TF's)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
    return buf.getvalue()


def jpeg_decode(data: bytes) -> np.ndarray:
    """TF's ``decode_image``: libjpeg-turbo, fast integer IDCT, fancy upsampling."""
    require("simplejpeg", "openvla", "decoding JPEG as TensorFlow does")
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False)


def jpeg_round_trip(img: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    return jpeg_decode(jpeg_encode(img, quality))


def preprocess_jpeg(data: bytes, center_crop: bool = True) -> np.ndarray:
    """Steps 3-4 of the chain on stored JPEG bytes (an upright frame already encoded): what
    the policy would feed the model for that frame. Demonstrations are stored this way."""
    img = lanczos_resize(jpeg_decode(data))
    return center_crop_resize(img) if center_crop else img


_F = np.float32
_TF_PI = _F(3.14159265359)  # sampling_kernels.h's constant, as a float
_LANCZOS_RADIUS = _F(3.0)


@functools.lru_cache(maxsize=1)
def _libm_sinf():
    """The C library's float ``sinf``: TF's kernel calls it, and glibc's is not correctly
    rounded (it differs from float64-rounded sin in ~1% of arguments, enough to move ~100
    of the 2016 resize weights by an ulp). None where no C math library can be loaded."""
    import ctypes
    import ctypes.util

    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        fn = libm.sinf
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return fn


def _sinf(x: np.ndarray) -> np.ndarray:
    """float32 sin as TF's kernel computes it (the C library's sinf); a handful of values per
    resize, computed once and cached. Without a C math library: float64 sin, rounded."""
    fn = _libm_sinf()
    if fn is None:
        return np.sin(x.astype(np.float64)).astype(np.float32)
    return np.array([fn(float(v)) for v in np.ravel(x)], np.float32).reshape(np.shape(x))


def _lanczos3(x: np.ndarray) -> np.ndarray:
    """TF's Lanczos-3 kernel in float32, evaluated in its order of operations."""
    x = np.abs(x.astype(np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        v = _LANCZOS_RADIUS * _sinf(_TF_PI * x) * _sinf(_TF_PI * x / _LANCZOS_RADIUS) / (_TF_PI * _TF_PI * x * x)
    v = np.where(x <= _F(1e-3), _F(1.0), v)
    return np.where(x > _LANCZOS_RADIUS, _F(0.0), v).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _resize_spans(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """TF ``scale_and_translate`` spans for an antialiased Lanczos-3 resize n_in -> n_out:
    (n_out, span) input indices (clipped; their weight is 0 past the span) and float32 weights."""
    scale = _F(n_out) / _F(n_in)  # tf.image.resize: new size / old size, in float32
    inv_scale = _F(1.0 / float(scale))  # the kernel divides in double, stores a float
    kernel_scale = max(inv_scale, _F(1.0))
    span = min(2 * math.ceil(float(_LANCZOS_RADIUS * kernel_scale)) + 1, n_in)
    one_over_kernel_scale = _F(1.0) / kernel_scale
    index = np.zeros((n_out, span), np.int64)
    weights = np.zeros((n_out, span), np.float32)
    for x in range(n_out):
        sample = _F(x) + _F(0.5)
        sample = sample * inv_scale + _F(-0.0)
        start = min(max(math.ceil(float(sample - _LANCZOS_RADIUS * kernel_scale - _F(0.5))), 0), n_in - 1)
        end = min(max(math.floor(float(sample + _LANCZOS_RADIUS * kernel_scale - _F(0.5))), 0), n_in - 1) + 1
        src = np.arange(start, end)
        w = _lanczos3((src.astype(np.float32) + _F(0.5) - sample) * one_over_kernel_scale)
        total = _F(0.0)
        for v in w:  # sequential float32 sum, as the kernel does
            total = _F(total + v)
        weights[x, :len(w)] = w * (_F(1.0) / total)
        index[x] = np.minimum(start + np.arange(span), n_in - 1)
    index.flags.writeable = weights.flags.writeable = False  # cached: shared by every call
    return index, weights


def _gather(f: np.ndarray, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Resize axis 0 of float32 ``f``: out[i] = sum_j w[i, j] * f[index[i, j]], summed tap by
    tap in float32 (TF's GatherRows/GatherColumns order)."""
    out = np.zeros((index.shape[0],) + f.shape[1:], np.float32)
    extra = (1,) * (f.ndim - 1)
    for j in range(index.shape[1]):
        out += weights[:, j].reshape(-1, *extra) * f[index[:, j]]
    return out


def lanczos_resize(img: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: ``tf.image.resize(..., "lanczos3",
    antialias=True)``, rounded half to even and clipped as the eval does."""
    f = img.astype(np.float32)
    rows = _gather(f, *_resize_spans(img.shape[0], size))  # (size, W, 3): rows first, as TF
    out = _gather(rows.transpose(1, 0, 2), *_resize_spans(img.shape[1], size)).transpose(1, 0, 2)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def center_crop_resize(img: np.ndarray, crop_area: float = CROP_AREA, size: int = IMAGE_SIZE) -> np.ndarray:
    """``tf.image.crop_and_resize`` of the central ``crop_area`` box, bilinear, via float [0, 1],
    in TF's float32 arithmetic."""
    h, w = img.shape[:2]
    side = np.clip(np.sqrt(_F(crop_area)), _F(0), _F(1))
    lo = (_F(1) - side) / _F(2)
    hi = lo + side

    def axis(n: int):
        step = (hi - lo) * _F(n - 1) / _F(size - 1)
        pos = lo * _F(n - 1) + np.arange(size, dtype=np.float32) * step  # (size,) float32
        low = np.floor(pos)
        return low.astype(np.int64), np.ceil(pos).astype(np.int64), (pos - low).astype(np.float32)

    y0, y1, ty = axis(h)
    x0, x1, tx = axis(w)
    f = img.astype(np.float32) * _F(1.0 / 255)  # convert_image_dtype: multiply by float32(1/255)
    tx = tx[None, :, None]
    top = f[y0][:, x0] + (f[y0][:, x1] - f[y0][:, x0]) * tx
    bottom = f[y1][:, x0] + (f[y1][:, x1] - f[y1][:, x0]) * tx
    out = np.clip(top + (bottom - top) * ty[:, None, None], _F(0), _F(1))
    # convert_image_dtype(float -> uint8, saturate=True): times 255.5, clipped, truncated.
    return np.clip(out * _F(255.5), 0, 255).astype(np.uint8)


def bicubic_resize(img: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """PIL's bicubic resize: what a loop written without TensorFlow tends to use (a fault)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BICUBIC))


def preprocess_libero_image(raw: np.ndarray, flip: str = "rotate", center_crop: bool = True, jpeg: bool = True,
                            resize: str = "lanczos3") -> np.ndarray:
    """(256, 256, 3) raw agentview frame -> (224, 224, 3) uint8 image for the processor.
    The defaults are the published chain; the other values reproduce faults (``vla_eval.faults``)."""
    img = {"rotate": raw[::-1, ::-1], "none": raw, "mirror": raw[::-1]}[flip]
    img = np.ascontiguousarray(img)
    img = jpeg_round_trip(img) if jpeg else img
    img = lanczos_resize(img) if resize == "lanczos3" else bicubic_resize(img)
    return center_crop_resize(img) if center_crop else img


def postprocess_gripper(actions: np.ndarray, mode: str = "binarize_invert") -> np.ndarray:
    """OpenVLA outputs the gripper in [0, 1] (0 = close, 1 = open in its training data);
    LIBERO wants -1 = open, +1 = close. As the published eval: map to [-1, 1], binarise
    with sign, then invert. ``no_binarize`` / ``no_invert`` skip a step (faults). (7,) or (B, 7)."""
    a = np.array(actions, dtype=np.float64, copy=True)
    g = 2.0 * a[..., 6] - 1.0
    if mode != "no_binarize":
        g = np.sign(g)
    a[..., 6] = g if mode == "no_invert" else -g
    return a
