"""The OpenVLA loop's pieces: preprocessing parity with TensorFlow, prompts, action decoding,
unnormalisation, gripper mapping, and that each toggle changes what the model receives.

The 7B model is replaced by a small recording double with OpenVLA's ``predict_action``
signature; everything under test (preprocessing, prompt, key resolution, post-processing,
the adapter's per-slot batching) is the real code."""
from pathlib import Path

import numpy as np
import pytest

from vla_eval.sims.protocol import Observation
from vla_eval.errors import UsageError
from vla_eval.policies.openvla.tokens import (
    bin_centres, resolve_unnorm_key, tokens_to_normalized, unnormalize,
)
from vla_eval.faults import Toggles, toggles_for
from vla_eval.policies.openvla.policy import OpenVLAPolicy, RemoteCodeBackend, prepare_unnorm_key
from vla_eval.policies.openvla.preprocess import (
    build_prompt, center_crop_resize, jpeg_decode, jpeg_encode, jpeg_round_trip, lanczos_resize, postprocess_gripper,
    preprocess_libero_image,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def frames():
    return np.load(DATA / "libero_frames.npz")["frames"]  # real LIBERO agentview renders, raw orientation


@pytest.fixture(scope="module")
def tf_ref():
    return np.load(DATA / "tf_reference.npz")  # tests/data/make_tf_reference.py


def _tf_jpeg(tf_ref, i: int) -> bytes:
    off = tf_ref["jpeg_offsets"]
    return tf_ref["jpeg"][off[i]:off[i + 1]].tobytes()


def test_reference_covers_four_suites(frames, tf_ref):
    names = np.load(DATA / "libero_frames.npz")["names"]
    assert {n.split("/")[0] for n in names} >= {"libero_spatial", "libero_object", "libero_goal", "libero_10"}
    assert len(tf_ref["cropped"]) == len(frames) >= 10


def test_jpeg_encoder_writes_tensorflows_bytes(frames, tf_ref):
    """Identical from the quantisation tables on (TF's JFIF header says 300 dpi, PIL's 1:1)."""
    for i, raw in enumerate(frames):
        ours, theirs = jpeg_encode(np.ascontiguousarray(raw[::-1, ::-1])), _tf_jpeg(tf_ref, i)
        assert ours[ours.index(b"\xff\xdb"):] == theirs[theirs.index(b"\xff\xdb"):]


@pytest.mark.parametrize("stage", ["decoded", "resized", "cropped", "chain"])
def test_every_stage_is_bit_exact_with_tensorflow(frames, tf_ref, stage):
    """0 differing values against TF's own outputs, stage by stage (each stage fed TF's input)."""
    for i, raw in enumerate(frames):
        if stage == "decoded":
            ours = jpeg_decode(_tf_jpeg(tf_ref, i))
        elif stage == "resized":
            ours = lanczos_resize(tf_ref["decoded"][i])
        elif stage == "cropped":
            ours = center_crop_resize(tf_ref["resized"][i])
        else:
            ours = preprocess_libero_image(raw)
        ref = tf_ref["cropped" if stage == "chain" else stage][i]
        assert ours.shape == ref.shape and int((ours != ref).sum()) == 0, f"frame {i}: {stage} differs"


def test_lanczos_weights_equal_tensorflows_with_any_sin(monkeypatch, tf_ref):
    """Without the C library's sinf the weights move by an ulp at most, and the resize stays
    within one level of TF (the fallback for platforms without libm)."""
    import vla_eval.policies.openvla.preprocess as pre

    monkeypatch.setattr(pre, "_libm_sinf", lambda: None)
    pre._resize_spans.cache_clear()
    try:
        diff = np.abs(lanczos_resize(tf_ref["decoded"][1]).astype(int) - tf_ref["resized"][1])
        assert diff.max() <= 1
    finally:
        pre._resize_spans.cache_clear()


def test_lanczos_resize_without_jpeg_is_smooth_and_preserves_mean(frames):
    img = frames[0]
    out = lanczos_resize(img)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert abs(out.mean() - img.mean()) < 0.5
    const = np.full((256, 256, 3), 77, np.uint8)
    assert (lanczos_resize(const) == 77).all()  # weights sum to one


def test_flip_is_a_180_degree_rotation(frames):
    raw = frames[0]
    a = preprocess_libero_image(raw, center_crop=False)
    b = lanczos_resize(jpeg_round_trip(np.ascontiguousarray(raw[::-1, ::-1])))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, preprocess_libero_image(raw, flip="none", center_crop=False))


def test_prompt_templates():
    assert build_prompt("Pick up the Soup") == "In: What action should the robot take to pick up the soup?\nOut:"
    assert build_prompt("Pick up the Soup", "rephrased") == "What action should the robot take? Pick up the Soup"
    with pytest.raises(UsageError, match="unknown prompt template 'casual'; valid: default, rephrased"):
        build_prompt("x", "casual")


def test_action_tokens_decode_to_bin_centres():
    centres = bin_centres()
    assert len(centres) == 255 and centres[0] == pytest.approx(-1 + 1 / 255)
    # token 31999 -> bin 0 ... token 31745 -> bin 254; ids below clip to the last bin
    np.testing.assert_allclose(tokens_to_normalized(np.array([31999, 31745, 100])), centres[[0, 254, 254]])


def test_unnormalize_respects_the_mask():
    stats = {"q01": [-1.0] * 6 + [0.0], "q99": [3.0] * 6 + [1.0], "mask": [True] * 6 + [False]}
    out = unnormalize(np.array([-1, 0, 1, 0.5, -0.5, 0, 0.3]), stats)
    np.testing.assert_allclose(out, [-1, 1, 3, 2, 0, 1, 0.3])  # gripper untouched
    np.testing.assert_allclose(unnormalize(np.zeros(7), {"q01": [0] * 7, "q99": [2] * 7}), np.ones(7))


def test_gripper_mapping_as_the_published_eval():
    # model: 1 = open (training data) -> LIBERO -1 = open; 0 = close -> +1
    out = postprocess_gripper(np.array([[0.1] * 6 + [1.0], [0.1] * 6 + [0.0], [0.1] * 6 + [0.8], [0.1] * 6 + [0.2]]))
    np.testing.assert_array_equal(out[:, 6], [-1, 1, -1, 1])
    np.testing.assert_array_equal(out[:, :6], 0.1)


def test_unnorm_key_resolution():
    stats = {"libero_object_no_noops": {}, "bridge_orig": {}}
    assert resolve_unnorm_key(stats, "libero_object", None) == "libero_object_no_noops"
    with pytest.raises(UsageError, match="unnorm_key 'libero_goal' is not in the checkpoint's norm_stats; "
                                         "valid: bridge_orig, libero_object_no_noops"):
        resolve_unnorm_key(stats, "libero_goal", None)
    fine_tuned = {"libero_object_no_noops": {}}
    assert prepare_unnorm_key(fine_tuned, "libero_object", "bridge_orig") == "bridge_orig"
    assert fine_tuned["bridge_orig"]["action"]["q99"][0] == pytest.approx(0.0283, abs=1e-4)


class RecordingModel:
    """Stands in for OpenVLA-7B: records its inputs, returns a fixed normalised-space action."""

    def __init__(self):
        self.calls = []

    def predict_action(self, pixel_values, prompt, unnorm_key, do_sample):
        self.calls.append((pixel_values, prompt, unnorm_key, do_sample))
        return np.array([0.2, -0.1, 0.05, 0, 0, 0, 0.0])  # gripper 0 -> close


class Inputs(dict):
    def to(self, device, dtype=None):
        return self


def fake_processor(prompt, image):
    return Inputs(pixel_values=np.asarray(image), prompt=prompt)


def _obs(frame):
    return Observation("Pick up the alphabet soup and place it in the basket", np.zeros(3), np.zeros(4),
                       np.zeros(2), agentview=frame)


@pytest.mark.parametrize("tag", ["no_flip", "bad_prompt", "bad_unnorm"])
def test_each_toggle_changes_exactly_its_input(frames, tag):
    seen = {}
    for name in ("baseline", tag):
        model = RecordingModel()
        toggles = toggles_for(name)
        key = prepare_unnorm_key({"libero_object_no_noops": {}}, "libero_object", toggles.unnorm_key)
        policy = OpenVLAPolicy(RemoteCodeBackend(model, fake_processor), toggles, key)
        out = policy.act([_obs(frames[0]), _obs(frames[1])], [0, 1])  # two slots in one call
        assert out.actions.shape == (2, 7) and (out.actions[:, 6] == 1).all()
        assert len(model.calls) == 2 and all(c[3] is False for c in model.calls)
        seen[name] = model.calls[0], out.img_mean[0]
    (b_img, b_prompt, b_key, _), b_mean = seen["baseline"]
    (t_img, t_prompt, t_key, _), t_mean = seen[tag]
    assert b_key == "libero_object_no_noops" and b_prompt.startswith("In: What action")
    assert (not np.array_equal(b_img, t_img)) == (tag == "no_flip")
    assert (b_prompt != t_prompt) == (tag == "bad_prompt")
    assert (b_key != t_key) == (tag == "bad_unnorm")
    if tag == "no_flip":  # a 180-degree rotation keeps the pixel mean: img_mean alone cannot see it
        assert abs(b_mean - t_mean) < 1.0


def test_preflight_catches_a_policy_blind_to_its_image():
    from vla_eval.preflight import image_sensitivity, preflight

    class Blind(RecordingModel):
        def predict_action(self, pixel_values, prompt, unnorm_key, do_sample):
            return np.array([0.1] * 6 + [1.0])  # ignores pixel_values

    class Sees(RecordingModel):
        def predict_action(self, pixel_values, prompt, unnorm_key, do_sample):
            return np.array([pixel_values.mean() / 255] * 6 + [1.0])

    blind = OpenVLAPolicy(RemoteCodeBackend(Blind(), fake_processor), Toggles(), "k")
    sees = OpenVLAPolicy(RemoteCodeBackend(Sees(), fake_processor), Toggles(), "k")
    assert image_sensitivity(sees) > 0.5
    with pytest.raises(UsageError, match="identical actions"):
        preflight(blind)


def test_version_warnings_name_the_known_bad_versions(monkeypatch):
    import vla_eval.preflight as pf

    versions = {"mujoco": (3, 3, 5), "torch": (2, 13, 0), "transformers": (4, 55, 0), "timm": (1, 0, 31),
                "libero": (0, 2, 0)}
    monkeypatch.setattr(pf, "_version", versions.get)
    text = "\n".join(pf.version_warnings("openvla"))
    assert "mujoco 3.3.5 > 3.3.2" in text and "torch 2.13.0 >= 2.6" in text
    assert "transformers 4.55.0" in text and "timm 1.0.31" in text
    assert not any("transformers" in w for w in pf.version_warnings("openvla", native=True))
