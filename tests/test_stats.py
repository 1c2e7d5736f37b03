"""Success-rate statistics and the verdict against the published number."""
import math

import pytest

from vla_eval.reports.stats import Rate, published_number, rate_of, verdict


def test_standard_error_and_wilson_interval():
    r = Rate(44, 50)
    assert r.p == pytest.approx(0.88)
    assert r.se == pytest.approx(math.sqrt(0.88 * 0.12 / 50))
    lo, hi = r.wilson95
    assert lo == pytest.approx(0.7617, abs=1e-3) and hi == pytest.approx(0.9438, abs=1e-3)


def test_wilson_is_sane_at_the_edges():
    lo, hi = Rate(50, 50).wilson95
    assert hi == pytest.approx(1.0) and 0.92 < lo < 0.94
    lo, hi = Rate(0, 50).wilson95
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.06 < hi < 0.08


def test_errors_are_counted_apart():
    r = rate_of(["success", "failure", "error", "success"])
    assert (r.successes, r.n, r.errors) == (2, 3, 1)


def test_published_numbers_carry_the_paper_values():
    assert published_number("openvla", "libero_object") == 88.4
    assert published_number("openvla", "libero_10") == 53.7
    assert published_number("scripted", "libero_object") is None


@pytest.mark.parametrize("successes, level", [(44, "healthy"), (40, "bug"), (42, "inconclusive"), (46, "inconclusive")])
def test_verdict_bands(successes, level):
    v = verdict(Rate(successes, 50), 88.4)
    assert v.level == level
    assert "95% CI" in v.text


def test_verdict_without_a_reference():
    assert verdict(Rate(3, 4), None, "policy 'scripted'").level == "n/a"
