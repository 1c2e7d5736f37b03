"""SmallPolicy drills: determinism, the measured fault signatures, the bimodal plateau,
the bake-off's mode coverage, and the checks catching planted bugs."""
import numpy as np
import pytest
import torch

from vla_eval.drills.checks import assert_finite, check_alignment, grad_norms, overfit_small_batch, read_curve
from vla_eval.drills.data import DataConfig, load_dataset, mse_floor
from vla_eval.drills.train import TrainConfig, small_policy, train_many

CFG = DataConfig()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from vla_eval.threads import set_torch_threads

    set_torch_threads(torch)  # the cores this test process may use (its share, beside another)
    return load_dataset(CFG, tmp_path_factory.mktemp("drills"))


def test_data_shapes_and_cache(data, tmp_path):
    assert data.obs_train.shape == (10_000, 14) and data.act_train.shape == (10_000, 7)
    assert data.obs_val.shape == (2_000, 14)
    assert 40 < data.obs_train.std() < 60  # raw scale, so skipping normalisation is a real fault
    again = load_dataset(CFG, tmp_path)
    np.testing.assert_array_equal(again.act_train, load_dataset(CFG, tmp_path).act_train)


def test_training_is_deterministic_from_a_seed(data):
    cfg = TrainConfig(epochs=1)
    _, (a,) = train_many(data, [cfg])
    _, (b,) = train_many(data, [cfg])
    assert a.val_loss == b.val_loss and a.train_loss == b.train_loss


def test_lockstep_training_equals_training_alone(data):
    cfg = TrainConfig(epochs=1)
    _, (alone,) = train_many(data, [cfg])
    _, (together, _) = train_many(data, [cfg, TrainConfig(epochs=1, lr=1.0, seed=3)])
    np.testing.assert_allclose(alone.val_loss, together.val_loss, rtol=1e-4)


@pytest.fixture(scope="module")
def readings(data, tmp_path_factory):
    from vla_eval.drills.faults import run_faults

    return run_faults(data, CFG, tmp_path_factory.mktemp("faults"))


def test_every_fault_shows_its_expected_signature(readings):
    assert set(readings) == {"baseline", "big_lr", "tiny_lr", "unnormalized_inputs", "action_outlier",
                             "action_outlier_clipped", "bimodal_labels"}
    for r in readings.values():
        assert r.matches, r.sentence
        assert "training loss" in r.sentence and "gradient norm" in r.sentence and "the diagnosis is" in r.sentence


def test_baseline_curve_shape(readings):
    b = readings["baseline"]
    assert b.train.rel_decrease > 0.9 and not b.train.non_finite
    assert b.val.final >= 0.95 * b.train.final  # val slightly above train
    assert b.val.flattened_at is not None


def test_bimodal_plateau_is_near_its_floor(readings):
    floor = mse_floor(CFG, bimodal=True)
    assert floor == pytest.approx(0.01 + 1 / 7)
    assert "theoretical floor 0.1529" in readings["bimodal_labels"].sentence


def test_bakeoff_denoising_covers_both_modes(data):
    from vla_eval.drills.bakeoff import BakeoffConfig, mode_fractions, run_bakeoff

    r = run_bakeoff(data, CFG, BakeoffConfig(epochs=4))
    mse, ce, den = (r["samples"][f][1, :, :, 0] for f in ("mse", "ce", "denoise"))
    assert mse.std(axis=1).max() < 1e-5 and ce.std(axis=1).max() < 1e-5  # point estimates: zero spread
    assert mode_fractions(mse, r["mode_centre"], CFG.bimodal_offset)[2] > 0.8  # MSE sits between the modes
    low, high, _ = mode_fractions(den, r["mode_centre"], CFG.bimodal_offset)
    assert low > 0.15 and high > 0.15


def test_checks_catch_planted_bugs(data):
    obs, act = data.normalize(data.obs_train[:2000]), data.act_train[:2000]
    assert check_alignment(obs, act) == 0
    assert check_alignment(obs[:-1], act[1:]) != 0  # pairs shifted by one step are caught
    with pytest.raises(FloatingPointError, match="loss holds NaN"):
        assert_finite(loss=torch.tensor([1.0, float("nan")]))
    model = small_policy()
    x, y = torch.randn(4, 14), torch.randn(4, 7)
    first, last = overfit_small_batch(model, torch.nn.functional.mse_loss, x, y)
    assert last < 0.2 * first  # a healthy loop overfits 4 samples in 10 steps
    broken_first, broken_last = overfit_small_batch(model, lambda out, t: ((out.detach() - t) ** 2).mean()
                                                    + 0 * out.sum(), x, y)
    assert broken_last == pytest.approx(broken_first, rel=1e-3)  # detached target: nothing learns
    model.zero_grad()
    (model(x).detach().requires_grad_() - y).pow(2).mean().backward()
    assert max(grad_norms(model).values()) == 0.0  # dead gradients are visible
    f = read_curve(np.arange(5), np.array([1.0, 0.5, np.nan, 0.2, 0.1]))
    assert f.non_finite
