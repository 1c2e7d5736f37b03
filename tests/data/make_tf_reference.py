"""Regenerate tests/data/tf_reference.npz: OpenVLA's LIBERO image chain run by TensorFlow.

Run once in a scratch environment (``pip install tensorflow-cpu numpy``), never in the
project's; only the small output arrays are committed:

    python tests/data/make_tf_reference.py tests/data/libero_frames.npz tests/data/tf_reference.npz

Stored per frame, stage by stage, so a mismatch names its stage: ``jpeg`` (TF's encoded
bytes, concatenated; ``jpeg_offsets`` splits them), ``decoded`` (TF's decode of those bytes),
``resized`` (Lanczos-3 to 224, rounded), ``cropped`` (the 0.9-area centre crop, uint8).
"""
import sys

import numpy as np
import tensorflow as tf


def tf_jpeg(img: np.ndarray) -> tuple[bytes, np.ndarray]:
    data = tf.image.encode_jpeg(img)  # TF defaults: quality 95, 4:2:0 chroma
    return data.numpy(), tf.io.decode_image(data, expand_animations=False, dtype=tf.uint8).numpy()


def tf_resize(decoded: np.ndarray, size: int = 224) -> np.ndarray:
    x = tf.image.resize(decoded, (size, size), method="lanczos3", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8).numpy()


def tf_center_crop(img: np.ndarray, crop_area: float = 0.9, size: int = 224) -> np.ndarray:
    x = tf.image.convert_image_dtype(tf.convert_to_tensor(img), tf.float32)[None]
    side = tf.clip_by_value(tf.sqrt(crop_area), 0, 1)
    off = (1 - side) / 2
    boxes = tf.reshape(tf.stack([off, off, off + side, off + side]), (1, 4))
    x = tf.image.crop_and_resize(x, boxes, tf.range(1), (size, size))
    x = tf.clip_by_value(x[0], 0, 1)
    return tf.image.convert_image_dtype(x, tf.uint8, saturate=True).numpy()


def main(src: str, dst: str) -> None:
    frames = np.load(src)["frames"]
    jpegs, decoded = zip(*(tf_jpeg(np.ascontiguousarray(f[::-1, ::-1])) for f in frames))
    resized = np.stack([tf_resize(d) for d in decoded])
    cropped = np.stack([tf_center_crop(r) for r in resized])
    offsets = np.cumsum([0] + [len(j) for j in jpegs])
    np.savez_compressed(dst, jpeg=np.frombuffer(b"".join(jpegs), np.uint8), jpeg_offsets=offsets,
                        decoded=np.stack(decoded), resized=resized, cropped=cropped, tensorflow=tf.__version__)
    print(dst, resized.shape, cropped.shape, "tensorflow", tf.__version__)


if __name__ == "__main__":
    main(*sys.argv[1:3])
