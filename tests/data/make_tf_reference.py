"""Regenerate tests/data/tf_reference.npz: OpenVLA's LIBERO image chain run by TensorFlow.

Run once in a scratch environment (``pip install tensorflow-cpu numpy``), never in the
project's; only the small output arrays are committed:

    python tests/data/make_tf_reference.py tests/data/libero_frames.npz tests/data/tf_reference.npz
"""
import sys

import numpy as np
import tensorflow as tf


def tf_resize(img: np.ndarray, size: int = 224) -> np.ndarray:
    x = tf.image.encode_jpeg(img)  # TF defaults: quality 95, 4:2:0 chroma
    x = tf.io.decode_image(x, expand_animations=False, dtype=tf.uint8)
    x = tf.image.resize(x, (size, size), method="lanczos3", antialias=True)
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
    resized = np.stack([tf_resize(np.ascontiguousarray(f[::-1, ::-1])) for f in frames])
    cropped = np.stack([tf_center_crop(r) for r in resized])
    np.savez_compressed(dst, resized=resized, cropped=cropped, tensorflow=tf.__version__)
    print(dst, resized.shape, cropped.shape, "tensorflow", tf.__version__)


if __name__ == "__main__":
    main(*sys.argv[1:3])
