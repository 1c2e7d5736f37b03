"""The fault table: names, tags, toggles and the CLI that reads them."""
from __future__ import annotations


import numpy as np
import pytest

from vla_eval.faults import CHAPTER_FAULTS, FAULTS, RUN_TAGS, Toggles, is_run_tag, parse_faults, toggles_for
from vla_eval.policies.openvla.preprocess import postprocess_gripper, preprocess_libero_image


def test_every_fault_changes_the_loop_and_names_its_own_tag():
    assert len(FAULTS) >= 11 and CHAPTER_FAULTS == ("no_flip", "bad_prompt", "bad_unnorm")
    for name, fault in FAULTS.items():
        assert fault.toggles != Toggles() and fault.toggles.tag == name == toggles_for(name).tag, name
        assert fault.caught_by and all(layer.split(":")[0] in ("preflight", "monitor", "diagnose")
                                       for layer in fault.caught_by)
    assert len({f.toggles for f in FAULTS.values()}) == len(FAULTS)  # no two faults are the same loop
    assert Toggles().tag == "baseline" and toggles_for("baseline") == Toggles()


def test_combined_and_unnamed_toggles_get_distinct_tags():
    both = toggles_for("no_crop+no_jpeg")
    assert both.tag == "no_crop+no_jpeg" and not both.center_crop and not both.jpeg
    assert Toggles(flip="none", resize="bicubic").tag == "no_flip+bicubic_resize"
    assert Toggles(prompt_template="other").tag == "prompt_template=other"
    assert is_run_tag("no_crop+blind") and not is_run_tag("no_crop+nope") and not is_run_tag("prompt_template=other")


def test_parse_faults_names_the_bad_value_and_the_valid_ones():
    assert parse_faults("all") == tuple(FAULTS)
    assert parse_faults("no_crop, blind") == ("no_crop", "blind")
    with pytest.raises(ValueError, match=r"unknown fault 'nope'; valid: all, no_flip"):
        parse_faults("no_crop,nope")
    with pytest.raises(ValueError, match="unknown fault 'x'"):
        parse_faults("blind+x")
    with pytest.raises(ValueError):
        Toggles(flip="sideways")


def test_image_and_gripper_knobs_do_what_their_names_say():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    base = preprocess_libero_image(raw)
    assert base.shape == (224, 224, 3)
    assert np.array_equal(preprocess_libero_image(raw[:, ::-1].copy(), flip="mirror"), base)  # mirror = no left-right
    assert np.array_equal(preprocess_libero_image(raw[::-1, ::-1].copy(), flip="none"), base)
    for kw in ({"jpeg": False}, {"resize": "bicubic"}, {"center_crop": False}):
        out = preprocess_libero_image(raw, **kw)
        assert out.shape == (224, 224, 3) and not np.array_equal(out, base), kw
    a = np.array([[0.1, 0, 0, 0, 0, 0, 0.0], [0.1, 0, 0, 0, 0, 0, 0.8]])  # close, open (training convention)
    assert postprocess_gripper(a)[:, 6].tolist() == [1.0, -1.0]          # LIBERO: +1 close, -1 open
    assert postprocess_gripper(a, "no_invert")[:, 6].tolist() == [-1.0, 1.0]
    assert np.allclose(postprocess_gripper(a, "no_binarize")[:, 6], [1.0, -0.6])


def test_unknown_fault_on_the_cli_lists_the_valid_ones_and_writes_nothing(tmp_path, cli_run):
    out = tmp_path / "run"
    for cmd in ("drill", "sweep", "run"):
        r = cli_run(cmd, "--policy", "tiny", "--fault", "no_crop,nope", "--out", out)
        assert r.returncode == 2 and "unknown fault 'nope'; valid: all, no_flip" in r.stderr, (cmd, r.stderr)
        assert "Traceback" not in r.stderr
    assert not out.exists()


def test_decoding_faults_are_refused_on_the_remote_code_backend():
    from vla_eval.policies.openvla.policy import OpenVLAPolicy

    class RemoteLike:  # the remote-code backend's surface: predict only
        norm_stats: dict = {}
        confidence = False

        def predict(self, images, prompts, unnorm_key):
            raise AssertionError("not reached")

    for name, fault in FAULTS.items():
        if fault.native_only:
            with pytest.raises(Exception, match="only the native backend exposes"):
                OpenVLAPolicy(RemoteLike(), fault.toggles, "libero_object")
        else:
            OpenVLAPolicy(RemoteLike(), fault.toggles, "libero_object")


def test_run_tags_are_valid_manifest_tags():
    from vla_eval.sweep import SweepConfig, toggles_for as sweep_toggles

    cfg = SweepConfig("libero_object", (0,), 1, "tiny", tags=RUN_TAGS)
    assert [sweep_toggles(t).tag for t in cfg.tags] == list(RUN_TAGS)


@pytest.fixture(scope="module")
def tiny_policies():
    """The shipped tiny OpenVLA (native backend, CPU) once per run tag: the baseline and every fault."""
    from vla_eval.policies.factory import make_policies, model_options

    return dict(zip(RUN_TAGS, make_policies("tiny", "libero_object", [toggles_for(t) for t in RUN_TAGS],
                                            model_options("tiny"))))


def test_preflight_passes_the_baseline_and_catches_every_fault_it_claims(tiny_policies):
    from vla_eval.preflight import check_policy, preflight

    assert check_policy(tiny_policies["baseline"], "libero_object") == []
    assert preflight(tiny_policies["baseline"], native=True, suite="libero_object") == []  # no finding, no raise
    assert any("float16" in w for w in preflight(tiny_policies["float16"], native=True, suite="libero_object"))
    for tag, fault in FAULTS.items():
        found = {f.check for f in check_policy(tiny_policies[tag], "libero_object")}
        claimed = {layer.split(":", 1)[1] for layer in fault.caught_by if layer.startswith("preflight:")}
        assert claimed and claimed <= found, (tag, claimed, found)


def test_preflight_names_the_image_variant_and_stops_a_broken_baseline(tiny_policies):
    from vla_eval.errors import UsageError
    from vla_eval.preflight import check_policy, preflight

    said = {tag: " ".join(f.message for f in check_policy(tiny_policies[tag], "libero_object"))
            for tag in ("no_flip", "mirror_flip", "no_crop", "no_jpeg", "bicubic_resize", "blind", "vocab_32064")}
    for tag, words in (("no_flip", "not rotated"), ("mirror_flip", "mirrored"), ("no_crop", "centre crop"),
                       ("no_jpeg", "JPEG"), ("bicubic_resize", "bicubic"), ("blind", "blank frame"),
                       ("vocab_32064", "every bin shifts by 64")):
        assert words in said[tag], (tag, said[tag])
    with pytest.raises(UsageError, match="pre-flight: gripper"):
        preflight(tiny_policies["gripper_no_invert"], native=True, suite="libero_object")
