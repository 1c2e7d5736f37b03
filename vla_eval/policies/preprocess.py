"""OpenVLA's LIBERO image preprocessing and prompts, without TensorFlow.

The published eval does, on the 256x256 agentview frame:
  1. ``img[::-1, ::-1]`` (180 degree rotation; raw MuJoCo frames are upside down);
  2. JPEG encode/decode (quality 95, 4:2:0) - the RLDS training data was JPEG-compressed;
  3. Lanczos-3 resize to 224x224 with antialiasing, rounded to uint8;
  4. centre crop of 0.9 of the area (side sqrt(0.9)), bilinearly resized back to 224
     (``tf.image.crop_and_resize``), through float [0, 1] and back to uint8.
Steps 3-4 are re-implemented here in numpy with TF's sampling conventions; PIL does the
JPEG round trip (both are libjpeg). ``tests/test_preprocess.py`` compares the result with
reference outputs of the TF chain on real LIBERO frames.
"""
from __future__ import annotations

import functools
import io

import numpy as np

from vla_eval.errors import bad_choice

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
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def jpeg_round_trip(img: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    return jpeg_decode(jpeg_encode(img, quality))


def preprocess_jpeg(data: bytes, center_crop: bool = True) -> np.ndarray:
    """Steps 3-4 of the chain on stored JPEG bytes (an upright frame already encoded): what
    the policy would feed the model for that frame. Demonstrations are stored this way."""
    img = lanczos_resize(jpeg_decode(data))
    return center_crop_resize(img) if center_crop else img


def _lanczos3(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    out = np.sinc(x) * np.sinc(x / 3.0)
    return np.where(x < 3.0, out, 0.0)


@functools.lru_cache(maxsize=8)
def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) Lanczos-3 weights, antialiased: the kernel widens by the downscale factor
    (TF's scale_and_translate: sample at (i + 0.5) * scale, taps at j + 0.5, rows normalised)."""
    scale = n_in / n_out
    kscale = max(scale, 1.0)
    centre = (np.arange(n_out) + 0.5) * scale
    taps = np.arange(n_in) + 0.5
    w = _lanczos3((taps[None, :] - centre[:, None]) / kscale)
    w /= w.sum(axis=1, keepdims=True)
    w = w.astype(np.float32)
    w.flags.writeable = False  # cached: shared by every call
    return w


def lanczos_resize(img: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, rounded and clipped as the eval does."""
    f = img.astype(np.float32)
    wy, wx = _resize_weights(img.shape[0], size), _resize_weights(img.shape[1], size)
    h, w, c = f.shape
    out = (wy @ f.reshape(h, w * c)).reshape(size, w, c)  # rows; BLAS matmuls (einsum took 126 ms)
    out = (wx @ out.transpose(1, 0, 2).reshape(w, size * c)).reshape(size, size, c).transpose(1, 0, 2)  # columns
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def center_crop_resize(img: np.ndarray, crop_area: float = CROP_AREA, size: int = IMAGE_SIZE) -> np.ndarray:
    """``tf.image.crop_and_resize`` of the central ``crop_area`` box, bilinear, via float [0, 1]."""
    h, w = img.shape[:2]
    side = float(np.clip(np.sqrt(crop_area), 0, 1))
    y1, x1 = (1 - side) / 2, (1 - side) / 2
    y2, x2 = y1 + side, x1 + side
    # TF maps output i to y1*(h-1) + i*(y2-y1)*(h-1)/(size-1) in input pixel coordinates.
    ys = y1 * (h - 1) + np.arange(size) * (y2 - y1) * (h - 1) / (size - 1)
    xs = x1 * (w - 1) + np.arange(size) * (x2 - x1) * (w - 1) / (size - 1)
    f = img.astype(np.float32) / 255.0
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1i, x1i = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    dy, dx = (ys - y0)[:, None, None].astype(np.float32), (xs - x0)[None, :, None].astype(np.float32)
    top = f[y0][:, x0] * (1 - dx) + f[y0][:, x1i] * dx
    bottom = f[y1i][:, x0] * (1 - dx) + f[y1i][:, x1i] * dx
    out = np.clip(top * (1 - dy) + bottom * dy, 0.0, 1.0)
    # tf.image.convert_image_dtype(float -> uint8, saturate=True) scales by 255.5 and truncates.
    return np.clip(out * 255.5, 0, 255).astype(np.uint8)


def preprocess_libero_image(raw: np.ndarray, flip_image: bool = True, center_crop: bool = True) -> np.ndarray:
    """(256, 256, 3) raw agentview frame -> (224, 224, 3) uint8 image for the processor."""
    img = raw[::-1, ::-1] if flip_image else raw
    img = lanczos_resize(jpeg_round_trip(np.ascontiguousarray(img)))
    return center_crop_resize(img) if center_crop else img


def postprocess_gripper(actions: np.ndarray) -> np.ndarray:
    """OpenVLA outputs the gripper in [0, 1] (0 = close, 1 = open in its training data);
    LIBERO wants -1 = open, +1 = close. As the published eval: map to [-1, 1], binarise
    with sign, then invert. Works on (7,) or (B, 7)."""
    a = np.array(actions, dtype=np.float64, copy=True)
    g = 2.0 * a[..., 6] - 1.0
    a[..., 6] = -np.sign(g)
    return a
