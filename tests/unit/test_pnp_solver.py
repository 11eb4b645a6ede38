"""The batched PnP solver of stages/pnp against the truth, OpenCV and finite differences."""
import cv2
import numpy as np
import pytest
import torch

from stages.pnp.api import solve_pnp, solve_sanitised
from stages.pnp.cost import (gauss_newton_system, normal_equations, planar, residuals,
                             residuals_and_jacobian, robust_cost)
from stages.pnp.init import dlt_pose
from stages.pnp.opencv import opencv_flag, pose_from_landmarks, solve_pnp_opencv
from stages.pnp.rotation import apply_increment
from stages.wcpa.camera import rt_to_opencv
from tests.unit.pnp_cases import make_problems, rotation_error_rad

F64 = torch.float64


def tensors(case, dtype=F64):
    return (torch.tensor(case["x3d"], dtype=dtype), torch.tensor(case["x2d"], dtype=dtype),
            torch.tensor(case["K"], dtype=dtype))


def planar_tensors(case):
    x3d, x2d, K = tensors(case)
    return planar(x3d), planar(x2d), K


def test_noiseless_problems_are_solved_exactly():
    case = make_problems(np.random.default_rng(0), 256, 1220)
    result = solve_pnp(*tensors(case))
    assert result.valid.all()
    assert rotation_error_rad(result.R.numpy(), case["R"]).max() < 1e-4
    assert np.abs(result.t.numpy() - case["t"]).max() * 1000 < 0.01
    assert result.cost.max() < 1e-9          # RMS reprojection error < 2e-6 px (stops at cost_rtol 1e-10)


def test_noisy_problems_reach_opencv_iterative_minimum():
    """1,024 problems with 1.5 px noise: same minimum as cv2.solvePnP(ITERATIVE), no failure.

    Where the two differ at all, ours has the lower cost (OpenCV stops early along the weak
    rotation/translation direction)."""
    case = make_problems(np.random.default_rng(1), 1024, 1220, noise_px=1.5)
    x3d, x2d, K = tensors(case)
    result = solve_pnp(x3d, x2d, K)
    R_cv, t_cv = solve_pnp_opencv(case["x3d"], case["x2d"], case["K"], "ITERATIVE")
    assert result.valid.all()
    assert np.degrees(rotation_error_rad(result.R.numpy(), R_cv)).max() < 0.01
    assert np.abs(result.t.numpy() - t_cv).max() * 1000 < 0.01
    assert np.degrees(rotation_error_rad(result.R.numpy(), case["R"])).max() < 1.0
    cv_cost = robust_cost(residuals(torch.from_numpy(R_cv), torch.from_numpy(t_cv), planar(x3d),
                                    planar(x2d), torch.ones_like(planar(x2d)), K))
    assert (result.cost <= cv_cost + 1e-9 * cv_cost).all()


def test_opencv_on_threads_gives_the_one_thread_poses():
    """solve_pnp_opencv on 1, 3 and 8 threads (contiguous shares of the problems, one of them
    failing: NaN points) gives the same poses bit for bit, NaN where OpenCV fails."""
    case = make_problems(np.random.default_rng(5), 7, 300, noise_px=1.0)
    case["x2d"][2, :] = np.nan
    one = solve_pnp_opencv(case["x3d"], case["x2d"], case["K"], "SQPNP")
    assert np.isnan(one[0][2]).all() and np.isfinite(np.delete(one[0], 2, axis=0)).all()
    for workers in (3, 8):
        many = solve_pnp_opencv(case["x3d"], case["x2d"], case["K"], "SQPNP", workers)
        for a, b in zip(one, many):
            np.testing.assert_array_equal(a, b)


def test_float32_solve_agrees_with_float64():
    case = make_problems(np.random.default_rng(2), 64, 1220, noise_px=1.0)
    r64 = solve_pnp(*tensors(case))
    r32 = solve_pnp(*tensors(case, torch.float32))
    assert r32.R.dtype == torch.float32 and r32.valid.all()
    assert np.degrees(rotation_error_rad(r32.R.double().numpy(), r64.R.numpy())).max() < 0.01
    assert (r32.t.double() - r64.t).abs().max() * 1000 < 0.05


def test_weights_and_huber_reject_outliers():
    rng = np.random.default_rng(3)
    case = make_problems(rng, 32, 500, noise_px=0.5)
    x3d, x2d, K = tensors(case)
    x2d[:, :50] += torch.from_numpy(rng.uniform(30, 60, size=(32, 50, 2)))
    plain = solve_pnp(x3d, x2d, K)
    robust = solve_pnp(x3d, x2d, K, huber_delta=1.0)
    weights = torch.ones_like(x2d)
    weights[:, :50] = 0
    weighted = solve_pnp(x3d, x2d, K, weights)
    err = {name: np.degrees(rotation_error_rad(r.R.numpy(), case["R"])).mean()
           for name, r in [("plain", plain), ("robust", robust), ("weighted", weighted)]}
    assert err["robust"] < 0.5 * err["plain"]
    assert err["weighted"] < 0.5 * err["plain"]


def test_second_start_escapes_the_wrong_minima_of_planar_points():
    """Planar face-sized points: LM from the closed-form start alone stops 40-60 deg off in
    some problems; with the true pose as a second start every problem reaches the minimum near
    it. A start row that is not finite falls back to the closed-form start alone."""
    case = make_problems(np.random.default_rng(10), 16, 256, noise_px=1.0, depth=0.0)
    x3d, x2d, K = planar_tensors(case)
    w2d = torch.ones_like(x2d)
    R, t = torch.from_numpy(case["R"]), torch.from_numpy(case["t"])
    alone = solve_sanitised(x3d, x2d, w2d, K)
    err_alone = np.degrees(rotation_error_rad(alone.R.numpy(), case["R"]))
    assert (alone.valid.numpy() & (err_alone > 20)).any()
    R_start, t_start = R.clone(), t.clone()
    R_start[1] = float("nan")
    both = solve_sanitised(x3d, x2d, w2d, K, start=(R_start, t_start))
    err = np.degrees(rotation_error_rad(both.R.numpy(), case["R"]))
    assert both.valid[2:].all() and err[2:].max() < 5
    assert (both.cost <= alone.cost * (1 + 1e-9)).all()
    assert torch.allclose(both.R[1], alone.R[1], atol=1e-9)


def test_dlt_start_is_close_on_noisy_data():
    case = make_problems(np.random.default_rng(4), 128, 1220, noise_px=2.0)
    x3d, x2d, K = tensors(case)
    R, t = dlt_pose(planar(x3d), planar(x2d), torch.ones_like(planar(x2d)), K)
    assert np.degrees(rotation_error_rad(R.numpy(), case["R"])).max() < 5.0
    assert np.abs(t.numpy() - case["t"]).max() < 0.02


@pytest.mark.parametrize("huber_delta", [None, 2.0])
def test_moment_normal_equations_match_the_explicit_jacobian(huber_delta):
    case = make_problems(np.random.default_rng(5), 4, 50, noise_px=3.0)
    x3d, x2d, K = planar_tensors(case)
    w2d = torch.rand_like(x2d) + 0.1
    R, t = torch.from_numpy(case["R"]), torch.from_numpy(case["t"])
    r, J = residuals_and_jacobian(R, t, x3d, x2d, w2d, K)
    H, g = normal_equations(r, J, huber_delta)
    cost, H2, g2 = gauss_newton_system(R, t, x3d, x2d, w2d, K, huber_delta)
    assert torch.allclose(H2, H, rtol=1e-10, atol=1e-10 * H.abs().max().item())
    assert torch.allclose(g2, g, rtol=1e-10, atol=1e-10 * g.abs().max().item())
    assert torch.allclose(cost, robust_cost(r, huber_delta))


def test_cpu_chunks_of_the_batch_give_the_whole_batch_system(monkeypatch):
    case = make_problems(np.random.default_rng(6), 7, 50, noise_px=2.0)
    x3d, x2d, K = planar_tensors(case)
    w2d = torch.rand_like(x2d) + 0.1
    R, t = torch.from_numpy(case["R"]), torch.from_numpy(case["t"])
    whole = gauss_newton_system(R, t, x3d, x2d, w2d, K, 2.0)
    monkeypatch.setattr("stages.pnp.cost.CPU_CHUNK_POINTS", 3 * 50)     # chunks of 3, 3, 1 problems
    chunked = gauss_newton_system(R, t, x3d, x2d, w2d, K.expand(7, 3, 3), 2.0)
    for a, b in zip(chunked, whole):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-12, atol=0)


def test_jacobian_matches_finite_differences_of_the_left_increment():
    case = make_problems(np.random.default_rng(6), 2, 20, noise_px=1.0)
    x3d, x2d, K = planar_tensors(case)
    w2d = torch.rand_like(x2d) + 0.5
    R, t = torch.from_numpy(case["R"]), torch.from_numpy(case["t"])
    _, J = residuals_and_jacobian(R, t, x3d, x2d, w2d, K)
    for k in range(6):
        step = torch.zeros(2, 6, dtype=F64)
        step[:, k] = 1e-6
        plus = residuals(*apply_increment(R, t, step), x3d, x2d, w2d, K)
        minus = residuals(*apply_increment(R, t, -step), x3d, x2d, w2d, K)
        numeric = (plus - minus) / 2e-6
        assert torch.allclose(J[:, k], numeric, rtol=1e-5, atol=1e-5 * numeric.abs().max())


def test_covariance_is_the_inverse_hessian_of_the_cost():
    case = make_problems(np.random.default_rng(7), 3, 300, noise_px=1.0)
    x3d, x2d, K = tensors(case)
    result = solve_pnp(x3d, x2d, K)
    xp, up = planar(x3d), planar(x2d)
    w = torch.ones_like(up)

    def cost_at(step):
        return robust_cost(residuals(*apply_increment(result.R, result.t, step), xp, up, w, K))

    h = 1e-5
    H = torch.zeros(3, 6, 6, dtype=F64)
    for i in range(6):
        for j in range(6):
            e_i, e_j = torch.zeros(3, 6, dtype=F64), torch.zeros(3, 6, dtype=F64)
            e_i[:, i], e_j[:, j] = h, h
            H[:, i, j] = (cost_at(e_i + e_j) - cost_at(e_i - e_j) - cost_at(e_j - e_i)
                          + cost_at(-e_i - e_j)) / (4 * h * h)
    # Gauss-Newton drops the residual-curvature term: equal to a few percent at 1 px noise
    relative = torch.linalg.inv(H) @ torch.linalg.inv(result.cov) - torch.eye(6, dtype=F64)
    assert relative.abs().max() < 0.05


def test_opencv_wrappers_and_pose_from_landmarks():
    case = make_problems(np.random.default_rng(8), 8, 1220)
    camera = case["camera"]
    uv = camera.project(case["x3d"], case["R_t"])
    for method in ("opencv", "batched"):
        R_t = pose_from_landmarks(case["x3d"], uv, camera, method=method)
        assert R_t.shape == (8, 4, 4) and R_t.dtype == np.float64
        assert np.abs(camera.project(case["x3d"], R_t) - uv).max() < 1e-3
        R, _ = rt_to_opencv(R_t)
        assert rotation_error_rad(R, case["R"]).max() < 1e-5
    sigma = np.full(uv.shape, 2.0)
    weighted = pose_from_landmarks(case["x3d"], uv, camera, method="batched", sigma=sigma)
    assert np.abs(camera.project(case["x3d"], weighted) - uv).max() < 1e-3
    with pytest.raises(ValueError, match="no per-point weights"):
        pose_from_landmarks(case["x3d"], uv, camera, method="opencv", sigma=sigma)
    with pytest.raises(ValueError, match="SOLVEPNP_NOPE"):
        opencv_flag("nope")
    assert opencv_flag("sqpnp") == cv2.SOLVEPNP_SQPNP


def test_every_schema_pnp_flag_solves_through_the_validations_pnp():
    """train/finetune val_pnp_flags take infer's flags, '<METHOD>+ITERATIVE' too (the paper
    profile's inference): each gives the exact pose of noiseless points."""
    from stages.common.params import load_params
    from stages.common.schema import PNP_FLAGS
    from stages.nets.validate import validation_poses
    case = make_problems(np.random.default_rng(9), 4, 1220)
    uv = case["camera"].project(case["x3d"], case["R_t"])
    for flags in PNP_FLAGS.values:
        assert load_params("params.yaml").replace(train={"val_pnp_flags": flags}).train.val_pnp_flags == flags
        poses = validation_poses(case["x3d"], uv, case["camera"], flags, workers=2)
        assert rotation_error_rad(rt_to_opencv(poses)[0], case["R"]).max() < 1e-5, flags


def test_degenerate_problems_are_flagged_not_fatal():
    case = make_problems(np.random.default_rng(9), 5, 100, noise_px=0.5)
    x3d, x2d, K = tensors(case)
    w2d = torch.ones_like(x2d)
    x3d[0] = torch.linspace(0, 1, 100, dtype=F64)[:, None] * torch.tensor([0.1, 0.05, 0.02],
                                                                            dtype=F64)
    w2d[1] = 0
    x2d[2, 17, 1] = float("nan")
    result = solve_pnp(x3d, x2d, K, w2d)
    assert result.valid.tolist() == [False, False, False, True, True]
    assert torch.isnan(result.R[:3]).all() and torch.isfinite(result.R[3:]).all()
    assert rotation_error_rad(result.R[3:].numpy(), case["R"][3:]).max() < 1e-2


@pytest.mark.parametrize("dtype,huber_delta", [(F64, None), (torch.float32, 2.0)])
def test_masked_loop_gives_the_compacting_loops_solutions(dtype, huber_delta):
    """The device loop (every problem every iteration, the finished ones frozen, the host asked
    every CHECK_EVERY iterations) against the CPU's (active problems only): same poses, costs,
    normal matrices and iteration count, on problems that stop after different iterations
    (starts near and far, noise, one cut short by max_iters)."""
    from stages.pnp.solver import levenberg_marquardt
    case = make_problems(np.random.default_rng(5), 48, 300, noise_px=2.0)
    x3d, x2d, K = (planar(x) if x.dim() == 3 else x for x in tensors(case, dtype))
    w2d = torch.ones_like(x2d)
    R0, t0 = dlt_pose(x3d, x2d, w2d, K)
    R0[::3], t0[::3] = torch.eye(3, dtype=dtype), t0[::3] * 1.3     # far starts need more iterations
    for max_iters in (50, 7):
        compact = levenberg_marquardt(x3d, x2d, w2d, K, R0, t0, huber_delta, max_iters, masked=False)
        masked = levenberg_marquardt(x3d, x2d, w2d, K, R0, t0, huber_delta, max_iters, masked=True)
        assert masked[4] == compact[4] and (max_iters == 7) == (compact[4] == 7)
        for a, b in zip(masked[:4], compact[:4]):
            torch.testing.assert_close(a, b, rtol=1e-12 if dtype == F64 else 1e-6, atol=0)   # equal on the CPU


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_unrolled_cholesky_solve_is_the_librarys(dtype):
    """The written-out 6 x 6 factor and solves (the compiled LM iteration's) against
    torch.linalg, on systems of condition numbers up to 1e6: each solution within the backward
    stable bound cond(A) eps of the float64 truth, as the library's (both measured at most
    0.6 cond(A) eps), and the same failures (indefinite, singular, NaN)."""
    from stages.pnp.solver import library_cholesky_solve, unrolled_cholesky_solve
    rng = np.random.default_rng(8)
    Q = np.linalg.qr(rng.normal(size=(200, 6, 6)))[0]
    A64 = Q @ (10.0 ** rng.uniform(-3, 3, (200, 6, 1)) * np.swapaxes(Q, 1, 2))
    b64 = rng.normal(size=(200, 6))
    truth = np.linalg.solve(A64, b64[..., None])[..., 0]
    bound = np.linalg.cond(A64) * torch.finfo(dtype).eps
    A, b = torch.tensor(A64, dtype=dtype), torch.tensor(b64, dtype=dtype)
    for solve in (unrolled_cholesky_solve, library_cholesky_solve):
        x, ok = solve(A, b)
        error = np.linalg.norm(x.double().numpy() - truth, axis=-1) / np.linalg.norm(truth, axis=-1)
        assert ok.all() and (error <= bound).all(), (solve.__name__, (error / bound).max())
    A[0] = -A[0]                               # negative definite
    A[1, 5, :], A[1, :, 5] = 0.0, 0.0          # singular
    A[2, 3, 3] = float("nan")
    assert unrolled_cholesky_solve(A, b)[1].tolist() == library_cholesky_solve(A, b)[1].tolist() == [False] * 3 + [True] * 197


def test_compiled_lm_iteration_calls_no_linear_algebra_library(monkeypatch):
    """Inside torch.compile the LM step is the unrolled solve: with the library's made to fail,
    the compiled masked loop still solves (the eager one does not)."""
    from stages.pnp import solver

    def fail(*args):
        raise AssertionError("library Cholesky called")

    case = make_problems(np.random.default_rng(16), 16, 200, noise_px=1.0)
    x3d, x2d, K = (planar(x) if x.dim() == 3 else x for x in tensors(case, torch.float32))
    w2d = torch.ones_like(x2d)
    start = dlt_pose(x3d, x2d, w2d, K)
    eager = solver.levenberg_marquardt(x3d, x2d, w2d, K, *start, max_iters=20, masked=True)
    monkeypatch.setattr(solver, "library_cholesky_solve", fail)
    fused = solver.levenberg_marquardt(x3d, x2d, w2d, K, *start, max_iters=20, masked=True, compiled=True)
    torch.testing.assert_close(fused[0], eager[0], rtol=0, atol=1e-4)
    with pytest.raises(AssertionError, match="library Cholesky"):
        solver.levenberg_marquardt(x3d, x2d, w2d, K, *start, max_iters=20, masked=True)
