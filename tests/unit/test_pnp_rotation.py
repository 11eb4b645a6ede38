"""so(3) maps and helpers of stages/pnp/rotation.py against scipy and finite differences."""
import math

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from stages.pnp.rotation import (apply_increment, haar_log_density, hat, increment_between,
                                 orthogonalise, so3_exp, so3_log)


def test_exp_matches_scipy_for_all_angles():
    rng = np.random.default_rng(0)
    rotvec = rng.normal(size=(200, 3))
    rotvec *= rng.uniform(0, np.pi, size=(200, 1)) / np.linalg.norm(rotvec, axis=1, keepdims=True)
    rotvec[:3] = [[0, 0, 0], [1e-9, 0, 0], [0, 3e-5, 1e-5]]
    expected = Rotation.from_rotvec(rotvec).as_matrix()
    assert np.abs(so3_exp(torch.from_numpy(rotvec)).numpy() - expected).max() < 1e-12


def test_log_inverts_exp_including_near_pi_and_zero():
    rng = np.random.default_rng(1)
    axis = rng.normal(size=(300, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.concatenate([rng.uniform(0, np.pi, 200), np.pi - rng.uniform(0, 1e-3, 50),
                            rng.uniform(0, 1e-5, 50)])
    rotvec = axis * angle[:, None]
    R = Rotation.from_rotvec(rotvec).as_matrix()
    back = so3_log(torch.from_numpy(R)).numpy()
    assert np.abs(Rotation.from_rotvec(back).as_matrix() - R).max() < 1e-10
    assert np.abs(np.linalg.norm(back, axis=1) - angle).max() < 1e-7


def test_exp_float32_and_gradient_finite_at_zero():
    v = torch.zeros(2, 3, dtype=torch.float32, requires_grad=True)
    so3_exp(v).sum().backward()
    assert torch.isfinite(v.grad).all()
    v64 = torch.tensor([[0.3, -0.2, 0.1], [1e-6, 2e-6, 0.0]], dtype=torch.float64,
                       requires_grad=True)
    assert torch.autograd.gradcheck(so3_exp, (v64,))


def test_hat_is_the_cross_product():
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose((hat(a) @ b[..., None])[..., 0], torch.linalg.cross(a, b))


def test_increment_round_trip_and_orthogonalise():
    R0 = so3_exp(torch.randn(4, 3, dtype=torch.float64))
    t0 = torch.randn(4, 3, dtype=torch.float64)
    step = 0.3 * torch.randn(4, 6, dtype=torch.float64)
    R1, t1 = apply_increment(R0, t0, step)
    assert torch.allclose(increment_between(R0, t0, R1, t1), step, atol=1e-12)
    noisy = R1 + 1e-3 * torch.randn(4, 3, 3, dtype=torch.float64)
    assert torch.allclose(orthogonalise(noisy), R1, atol=1e-2)
    Q = orthogonalise(noisy)
    assert torch.allclose(Q @ Q.transpose(1, 2), torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(torch.det(Q), torch.ones(4, dtype=torch.float64))


def test_haar_density_integrates_to_the_volume_of_so3():
    """int_{|v|<pi} 2 (1 - cos|v|) / |v|^2 dv = 8 pi^2, the volume of SO(3) in this measure."""
    theta = torch.linspace(0, np.pi, 200001, dtype=torch.float64)[1:]
    v = torch.zeros(len(theta), 3, dtype=torch.float64)
    v[:, 0] = theta
    density = haar_log_density(v).exp()
    volume = torch.trapezoid(4 * np.pi * theta ** 2 * density, theta)
    assert abs(volume.item() - 8 * np.pi ** 2) < 1e-6
    assert haar_log_density(torch.zeros(1, 3)).abs().item() < 1e-7


def test_haar_density_is_accurate_at_small_angles_in_float32():
    """2 (1 - cos t) / t^2 cancels to 0 in float32 for t between 1e-4 and 2.5e-4 rad. The
    density must follow its float64 series 2 sum_k (-t^2)^k / (2k + 2)! (to t^8; the closed
    form loses eps / t^2 to cancellation) below 0.1 rad and the float64 closed form above."""
    theta = np.concatenate([np.geomspace(1e-7, 0.1, 80), np.linspace(0.1, 3.1, 30)])
    series = 2 * sum((-theta ** 2) ** k / math.factorial(2 * k + 2) for k in range(5))
    closed = 2 * (1 - np.cos(theta)) / theta ** 2
    expected = np.log(np.where(theta < 0.1, series, closed))
    v = np.zeros((len(theta), 3))
    v[:, 1] = theta
    for dtype, tol in ((torch.float32, 2e-7), (torch.float64, 1e-13)):
        got = haar_log_density(torch.tensor(v, dtype=dtype)).double().numpy()
        worst = np.abs(got - expected).argmax()
        assert abs(got[worst] - expected[worst]) < tol, (dtype, theta[worst], got[worst])
