"""Helpers of benchmarks/score_floor.py: size normalisation, the ridge regression and the
recovered share of the deviation from the mean mesh."""
import numpy as np

from benchmarks.score_floor import mesh_error_mm, recovered_share, rescaled_to, ridge_predict


def test_rescaled_to_gives_the_reference_size_and_keeps_the_centroid():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 3))
    meshes = np.stack([1.3 * reference + 0.2, 0.8 * reference - 0.1])
    out = rescaled_to(meshes, reference)
    np.testing.assert_allclose(out - out.mean(1, keepdims=True), np.stack([reference - reference.mean(0)] * 2), atol=1e-12)
    np.testing.assert_allclose(out.mean(1), meshes.mean(1), atol=1e-12)


def test_ridge_recovers_a_linear_map_and_mesh_error_is_in_mm():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6))
    weights = rng.normal(size=(6, 3))
    y = x @ weights + 0.5
    np.testing.assert_allclose(ridge_predict(x, y, x[:5], 1e-9), y[:5], atol=1e-6)
    assert abs(mesh_error_mm(np.zeros((1, 2, 3)), np.full((1, 2, 3), [0.003, 0.004, 0.0])) - 5.0) < 1e-9


def test_recovered_share_is_the_slope_of_the_predicted_deviation_on_the_true_one():
    rng = np.random.default_rng(2)
    mean = rng.normal(size=(40, 3))
    true = mean + rng.normal(size=(5, 40, 3))
    assert abs(recovered_share(mean + 0.3 * (true - mean), true, mean) - 0.3) < 1e-12
    assert recovered_share(np.broadcast_to(mean, true.shape), true, mean) == 0.0
    assert abs(recovered_share(true, true, mean) - 1.0) < 1e-12
