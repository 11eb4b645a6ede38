"""EPro-PnP loss, Monte Carlo normaliser and differentiable pose of stages/pnp: gradients against
finite differences, statistics against closed forms, robustness to degenerate problems."""
import math

import numpy as np
import pytest
import torch

from stages.pnp.amis import amis_log_normaliser
from stages.pnp.api import solve_pnp, solve_sanitised
from stages.pnp.cost import planar, residuals, robust_cost
from stages.pnp.diffpose import gauss_newton_pose, pnp_loss
from stages.pnp.epro import epro_pnp, pose_log_normaliser
from stages.pnp.sample_cost import _chunks, default_chunk, sample_costs
from stages.pnp.rotation import so3_exp
from tests.host_syncs import HostSyncs
from tests.unit.pnp_cases import make_problems, rotation_error_rad
from tests.unit.pnp_laplace import laplace_losses

F64 = torch.float64


def small_case(seed, batch=2, n=10, noise_px=1.0):
    """float64 leaf tensors x3d (B, N, 3), x2d (B, N, 2), w2d (B, N, 2), K and truth."""
    rng = np.random.default_rng(seed)
    case = make_problems(rng, batch, n, noise_px=noise_px)
    leaf = lambda a: torch.tensor(a, dtype=F64, requires_grad=True)   # noqa: E731
    w2d = rng.uniform(0.5, 1.5, size=case["x2d"].shape)
    return (leaf(case["x3d"]), leaf(case["x2d"]), leaf(w2d), torch.tensor(case["K"]),
            torch.tensor(case["R"]), torch.tensor(case["t"]))


@pytest.mark.parametrize("huber_delta", [None, 1.5])
def test_sample_costs_forward_and_gradients(huber_delta):
    x3d, x2d, w2d, K, R_true, t_true = small_case(0, n=7, noise_px=2.0)
    gen = torch.Generator().manual_seed(0)
    R = so3_exp(0.02 * torch.randn(2, 5, 3, dtype=F64, generator=gen)) @ R_true[:, None]
    t = t_true[:, None] + 0.002 * torch.randn(2, 5, 3, dtype=F64, generator=gen)
    args = (planar(x3d), planar(x2d), planar(w2d))
    costs = sample_costs(*args, K, R, t, huber_delta, chunk_size=4)
    expected = torch.stack([robust_cost(residuals(R[:, s], t[:, s], *args, K), huber_delta)
                            for s in range(5)], 1)
    assert torch.allclose(costs, expected, rtol=1e-12)
    assert torch.autograd.gradcheck(
        lambda a, b, c: sample_costs(planar(a), planar(b), planar(c), K, R, t, huber_delta, 4),
        (x3d, x2d, w2d))


def test_cpu_default_chunk_keeps_the_eager_temporaries_small():
    """benchmarks.bench_pnp --chunks: on the paper's finetune shapes (64 problems, 128 samples
    per AMIS round, 1,220 points) chunks of 8192 poses (40 MB float32 temporaries) took 7x as
    long as chunks of 256 (1.2 MB)."""
    rows = _chunks(128, 64, default_chunk(torch.device("cpu")))[0]
    assert (rows.stop - rows.start) * 64 * 1220 * 4 <= 2 ** 21


def test_differentiable_pose_gradients_match_finite_differences():
    x3d, x2d, w2d, K, _, _ = small_case(1, batch=1, n=8)
    start = solve_pnp(x3d.detach(), x2d.detach(), K, w2d.detach())

    def pose(a, b, c):
        R, t = gauss_newton_pose(planar(a), planar(b), planar(c), K, start.R, start.t)
        return torch.cat([R.flatten(1), t], 1)

    assert torch.allclose(pose(x3d, x2d, w2d)[:, 9:], start.t, atol=1e-10)
    assert torch.autograd.gradcheck(pose, (x3d, x2d, w2d))


def test_monte_carlo_loss_gradients_match_finite_differences():
    """Fixed samples: a given LM solution, one proposal, a re-seeded generator."""
    x3d, x2d, w2d, K, R_gt, t_gt = small_case(2, batch=1, n=8)
    solution = solve_sanitised(planar(x3d.detach()), planar(x2d.detach()),
                               planar(w2d.detach()), K)

    def loss(a, b, c):
        out = epro_pnp(a, b, c, K, R_gt, t_gt, n_samples=32, n_iters=1, chunk_size=16,
                       generator=torch.Generator().manual_seed(3), solution=solution)
        return out.loss

    assert torch.autograd.gradcheck(loss, (x3d, x2d, w2d), atol=1e-5)


def test_pnp_loss_is_eq5_and_differentiable():
    rng = np.random.default_rng(4)
    x_gt = torch.tensor(rng.normal(size=(2, 30, 3)) * 0.05, requires_grad=True)
    x_pred = (x_gt.detach() + 0.001).requires_grad_()
    R_gt = so3_exp(torch.tensor(rng.normal(size=(2, 3)), dtype=F64))
    t_gt = torch.tensor([[0.0, 0.0, 0.5]] * 2, dtype=F64)
    R_pred = (so3_exp(torch.full((2, 3), 0.01, dtype=F64)) @ R_gt).requires_grad_()
    t_pred = (t_gt + 0.002).requires_grad_()
    value = pnp_loss(R_pred, t_pred, R_gt, t_gt, x_gt, x_pred)
    target = x_gt @ R_gt.transpose(1, 2) + t_gt[:, None]
    first = (x_gt @ R_pred.transpose(1, 2) + t_pred[:, None] - target).norm(dim=-1).mean(-1)
    second = (x_pred @ R_pred.transpose(1, 2) + t_pred[:, None] - target).norm(dim=-1).mean(-1)
    assert torch.allclose(value, first + second)
    assert torch.autograd.gradcheck(lambda R, t, x: pnp_loss(R, t, R_gt, t_gt, x_gt, x),
                                    (R_pred, t_pred, x_pred))
    same = pnp_loss(R_gt, t_gt, R_gt, t_gt, x_gt, x_gt)
    assert same.max() < 1e-11


def test_cost_at_the_true_pose_averages_the_number_of_points():
    """With w = 1 / sigma of the added noise, cost = chi2(2N) / 2: mean N."""
    rng = np.random.default_rng(5)
    sigma = rng.uniform(0.5, 3.0, size=(64, 1220, 2))
    case = make_problems(rng, 64, 1220, sigma=sigma)
    cost = robust_cost(residuals(torch.tensor(case["R"]), torch.tensor(case["t"]),
                                 planar(torch.tensor(case["x3d"])),
                                 planar(torch.tensor(case["x2d"])),
                                 planar(torch.tensor(1 / sigma)), torch.tensor(case["K"])))
    assert abs(cost.mean().item() / 1220 - 1) < 0.02


def test_normaliser_of_a_quadratic_cost_is_exact_within_005():
    """A linearised Gaussian: cost = (y - m)^T A (y - m) / 2 on R^6, log Z = 3 log 2pi -
    log det A / 2; the proposal starts off-centre and too wide, AMIS refits it."""
    gen = torch.Generator().manual_seed(6)
    M = torch.randn(4, 6, 6, dtype=F64, generator=gen)
    A = M @ M.transpose(1, 2) + 0.5 * torch.eye(6, dtype=F64)
    m = 0.3 * torch.randn(4, 6, dtype=F64, generator=gen)

    def cost(y):
        d = y - m[:, None]
        return 0.5 * torch.einsum("bsi,bij,bsj->bs", d, A, d)

    estimate = amis_log_normaliser(cost, torch.zeros(4, 6, dtype=F64), 2 * torch.linalg.inv(A),
                                   n_samples=2048, n_iters=4, generator=gen)
    exact = 3 * math.log(2 * math.pi) - 0.5 * torch.logdet(A)
    assert (estimate.log_z - exact).abs().max() < 0.05
    assert estimate.ess.shape == (4,) and (estimate.ess > 2048 / 8).all()


def test_pose_normaliser_matches_the_laplace_approximation():
    """1,220 points, 1 px noise: the pose posterior is nearly Gaussian, so log Z is close to
    -cost* + 3 log 2pi + log det(cov) / 2 (the Laplace approximation at the LM solution)."""
    case = make_problems(np.random.default_rng(7), 4, 1220, noise_px=1.0)
    x3d, x2d, K = (torch.tensor(case[k]) for k in ("x3d", "x2d", "K"))
    args = (planar(x3d), planar(x2d), torch.ones_like(planar(x2d)))
    sol = solve_sanitised(*args, K)
    estimate = pose_log_normaliser(*args, K, sol.R, sol.t, sol.cov, n_samples=1024,
                                   generator=torch.Generator().manual_seed(8))
    laplace = -sol.cost + 3 * math.log(2 * math.pi) + 0.5 * torch.logdet(sol.cov)
    assert (estimate.log_z - laplace).abs().max() < 0.05
    assert (estimate.ess > 256).all()


def test_float32_loss_matches_float64_and_the_laplace_closed_form():
    """256 points (finetune.pnp_points), 0.15 px noise: the posterior is nearly Gaussian with a
    rotation spread of about 1e-4 rad, so the loss is close to its Laplace closed form
    (tests.unit.pnp_laplace). The Haar density's cancellation in float32 dropped the samples
    1e-4 to 2.5e-4 rad from the mode and made the float32 loss 0.25 nats low here.
    Near-Gaussian proposals (dof 30) keep the Monte Carlo spread of the batch mean near 0.002."""
    case = make_problems(np.random.default_rng(11), 16, 256, noise_px=0.15)
    w2d = np.full(case["x2d"].shape, 1 / 0.15)
    closed_form = laplace_losses(case, w2d).mean()
    loss = {}
    for dtype in (torch.float32, F64):
        x3d, x2d, w, K, R, t = (torch.tensor(a, dtype=dtype) for a in (
            case["x3d"], case["x2d"], w2d, case["K"], case["R"], case["t"]))
        with torch.no_grad():
            out = epro_pnp(x3d, x2d, w, K, R, t, n_samples=1024, dof=30,
                           generator=torch.Generator().manual_seed(12))
        assert out.mask.all()
        loss[dtype] = out.loss.double().mean().item()
    assert abs(loss[torch.float32] - loss[F64]) < 0.005
    assert abs(loss[torch.float32] - closed_form) < 0.005
    assert abs(loss[F64] - closed_form) < 0.005


@pytest.mark.parametrize("depth", [0.0, 0.01])
def test_planar_problems_keep_the_loss_near_the_closed_form(depth):
    """Planar (depth 0) and near-planar (0.5 mm deep) face-sized point sets, 256 points, 1 px:
    from the closed-form start alone, LM stops in minima 40-60 deg off (costs several times the
    true pose's) and calls them valid. The loss solves from the true pose as well and keeps the
    better solution; a given solution above the true pose's cost is masked out."""
    case = make_problems(np.random.default_rng(10), 16, 256, noise_px=1.0, depth=depth)
    x3d, x2d, K, R, t = (torch.tensor(case[k], dtype=torch.float32)
                         for k in ("x3d", "x2d", "K", "R", "t"))
    closed_form = laplace_losses(case, np.ones_like(case["x2d"]))
    alone = solve_pnp(x3d, x2d, K)
    wrong = alone.valid.numpy() & (np.degrees(rotation_error_rad(
        alone.R.double().numpy(), case["R"])) > 20)
    assert wrong.any(), "the case no longer has a wrong minimum to avoid"
    gen = torch.Generator().manual_seed(13)
    out = epro_pnp(x3d, x2d, None, K, R, t, n_samples=512, generator=gen)
    assert out.mask.all()
    assert np.abs(out.loss.numpy() - closed_form).max() < 0.2
    given = epro_pnp(x3d, x2d, None, K, R, t, n_samples=512, generator=gen, solution=alone)
    assert not given.mask.numpy()[wrong].any()
    assert (given.loss.numpy() > closed_form - 0.2)[given.mask.numpy()].all()


def test_degenerate_samples_are_masked_and_gradients_stay_finite():
    rng = np.random.default_rng(9)
    case = make_problems(rng, 6, 200, noise_px=1.0)
    x3d = torch.tensor(case["x3d"], dtype=torch.float32)
    x2d = torch.tensor(case["x2d"], dtype=torch.float32)
    w2d = torch.ones_like(x2d)
    x3d[0] = torch.linspace(0, 1, 200)[:, None] * torch.tensor([0.1, 0.05, 0.02])
    w2d[1] = 0
    x2d[2, 5, 0] = float("nan")
    leaves = [x.requires_grad_() for x in (x3d, x2d, w2d)]
    out = epro_pnp(*leaves, torch.tensor(case["K"]), torch.tensor(case["R"]),
                   torch.tensor(case["t"]), n_samples=128,
                   generator=torch.Generator().manual_seed(0))
    assert out.mask.tolist() == [False, False, False, True, True, True]
    assert torch.isfinite(out.loss).all() and (out.loss[:3] == 0).all()
    total = out.loss[out.mask].mean() + pnp_loss(
        out.R, out.t, torch.tensor(case["R"], dtype=torch.float32),
        torch.tensor(case["t"], dtype=torch.float32), x3d, x3d)[out.mask].mean()
    total.backward()
    for leaf in leaves:
        assert torch.isfinite(leaf.grad).all()
        assert (leaf.grad[:3] == 0).all() and leaf.grad[3:].abs().sum() > 0
    good = out.R[3:].detach().double().numpy()
    assert np.degrees(rotation_error_rad(good, case["R"][3:])).max() < 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    case = make_problems(np.random.default_rng(10), 16, 1220, noise_px=1.0)
    x3d, x2d, K = (torch.tensor(case[k]) for k in ("x3d", "x2d", "K"))
    cpu = solve_pnp(x3d, x2d, K)
    gpu = solve_pnp(x3d.cuda(), x2d.cuda(), K.cuda())
    assert torch.allclose(gpu.R.cpu(), cpu.R, atol=1e-9)
    out = epro_pnp(x3d.float().cuda().requires_grad_(), x2d.float().cuda(), None, K.cuda(),
                   torch.tensor(case["R"]).cuda(), torch.tensor(case["t"]).cuda())
    out.loss[out.mask].mean().backward()
    assert out.mask.all() and torch.isfinite(out.loss).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_masked_and_compiled_loss_matches_the_cpu():
    """On CUDA the LM runs masked, and with compiled=True (finetune.compile) the LM iteration and
    the sample costs run through torch.compile: the loss and its gradients match the CPU's eager
    ones (Monte Carlo samples differ between devices: the loss within 0.05 nats; the gradients of
    eq. 5's pose, which has no sampling, within 1 % in norm: a float32 Gauss-Newton step, whose
    rounding differs between devices, measured 3.9e-6 at most where the largest is 5e-4)."""
    case = make_problems(np.random.default_rng(16), 64, 1220, noise_px=1.0)
    outs, grads = {}, {}
    for device, compiled in (("cpu", False), ("cuda", False), ("cuda", True)):
        x3d = torch.tensor(case["x3d"], dtype=torch.float32, device=device, requires_grad=True)
        x2d = torch.tensor(case["x2d"], dtype=torch.float32, device=device)
        R, t = (torch.tensor(case[k], device=device) for k in ("R", "t"))
        out = epro_pnp(x3d, x2d, None, torch.tensor(case["K"], device=device), R, t, n_samples=512,
                       compiled=compiled, generator=torch.Generator(device).manual_seed(0), max_iters=20)
        pose = pnp_loss(out.R, out.t, R.float(), t.float(), x3d.detach(), x3d)
        pose.mean().backward()
        outs[device, compiled], grads[device, compiled] = out, x3d.grad.cpu()
    cpu = outs["cpu", False]
    for key in (("cuda", False), ("cuda", True)):
        assert outs[key].mask.all() and outs[key].solution.iterations <= 20
        assert np.degrees(rotation_error_rad(outs[key].R.detach().double().cpu().numpy(),
                                             cpu.R.detach().double().numpy())).max() < 1e-3
        assert (outs[key].loss.cpu() - cpu.loss).abs().mean() < 0.05
        error = (grads[key] - grads["cpu", False]).norm() / grads["cpu", False].norm()
        assert error < 0.01, f"{key}: gradient {error:.2e} off the CPU's (relative norm)"


def test_device_path_of_the_loss_waits_for_the_host_a_few_times_only(monkeypatch):
    """Off the CPU the LM runs masked (stages.pnp.solver) and nothing else branches on values:
    the loss, forward and backward, reads values on the host a few times, where the CPU's
    compacting LM reads them every iteration. Both paths give the same loss and gradients."""
    from functools import partial

    from stages.pnp import api, solver
    case = make_problems(np.random.default_rng(14), 32, 300, noise_px=1.0)
    results = {}
    for masked in (False, True):
        monkeypatch.setattr(api, "levenberg_marquardt", partial(solver.levenberg_marquardt, masked=masked))
        x3d, x2d = (torch.tensor(case[k], dtype=torch.float32, requires_grad=True) for k in ("x3d", "x2d"))
        with HostSyncs() as syncs:
            out = epro_pnp(x3d, x2d, None, torch.tensor(case["K"]), torch.tensor(case["R"]),
                           torch.tensor(case["t"]), n_samples=128, generator=torch.Generator().manual_seed(3),
                           max_iters=20)
            out.loss[out.mask].mean().backward()
        results[masked] = (syncs.count, out.loss.detach(), x3d.grad, x2d.grad)
    print("host syncs, masked and compacting:", results[True][0], results[False][0])
    assert results[True][0] <= 1 + 20 // solver.CHECK_EVERY + 1 and results[True][0] < results[False][0]
    for a, b in zip(results[True][1:], results[False][1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_lm_iteration_gives_the_eager_solutions():
    """The masked LM iteration through torch.compile (finetune.compile on a GPU) against eager:
    the same poses to float32 rounding and the same iteration count."""
    from stages.pnp.init import dlt_pose
    from stages.pnp.solver import levenberg_marquardt
    case = make_problems(np.random.default_rng(15), 24, 400, noise_px=1.0)
    x3d, x2d, K = (torch.tensor(case[k], dtype=torch.float32) for k in ("x3d", "x2d", "K"))
    x3d, x2d = planar(x3d), planar(x2d)
    w2d = torch.ones_like(x2d)
    start = dlt_pose(x3d, x2d, w2d, K)
    eager = levenberg_marquardt(x3d, x2d, w2d, K, *start, max_iters=20, masked=True)
    fused = levenberg_marquardt(x3d, x2d, w2d, K, *start, max_iters=20, masked=True, compiled=True)
    assert fused[4] == eager[4]
    assert np.degrees(rotation_error_rad(fused[0].double().numpy(), eager[0].double().numpy())).max() < 1e-3
    assert (fused[1] - eager[1]).abs().max() * 1000 < 0.01        # mm
    torch.testing.assert_close(fused[2], eager[2], rtol=1e-4, atol=1e-4)


def _layer_pass(case: dict, compiled: bool):
    """One forward and backward of the layer (the MC loss and eq. 5's pose) on float32 copies of
    case, weights 0.8 -> the output and the gradients w.r.t. x3d, x2d and w2d."""
    from stages.finetuning.pnp_loss import masked_mean
    x3d, x2d = (torch.tensor(case[k], dtype=torch.float32, requires_grad=True) for k in ("x3d", "x2d"))
    w2d = torch.full_like(x2d, 0.8).requires_grad_()
    R, t = torch.tensor(case["R"]), torch.tensor(case["t"])
    out = epro_pnp(x3d, x2d, w2d, torch.tensor(case["K"]), R, t, n_samples=128, compiled=compiled,
                   generator=torch.Generator().manual_seed(4), max_iters=20)
    pose = pnp_loss(out.R, out.t, R.float(), t.float(), x3d.detach(), x3d)
    (masked_mean(out.loss, out.mask) + pose.mean()).backward()
    return out, [g.grad for g in (x3d, x2d, w2d)]


@pytest.fixture
def device_path_lm(monkeypatch):
    """The LM on its device path (masked), as on a GPU."""
    from functools import partial

    from stages.pnp import api, solver
    monkeypatch.setattr(api, "levenberg_marquardt", partial(solver.levenberg_marquardt, masked=True))


def test_compiled_layer_gives_the_eager_loss_and_gradients(device_path_lm):
    """finetune.compile on the CPU, with the LM on the device path: the sanitising checks, the
    closed-form start, the LM iteration, the solution's checks, the AMIS draws and refits, the
    sampled poses, their costs and gradients and the differentiable pose all run through
    torch.compile. The loss, the gradients of both terms and the pose match the eager layer's
    to float32 rounding (the same random numbers drive both; the compiled start differs, the
    LM's minimum does not)."""
    case = make_problems(np.random.default_rng(17), 12, 200, noise_px=1.0)
    (eager, eager_grads), (fused, fused_grads) = (_layer_pass(case, c) for c in (False, True))
    assert fused.mask.tolist() == eager.mask.tolist() and eager.mask.all()
    torch.testing.assert_close(fused.loss, eager.loss, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fused.t, eager.t, rtol=1e-5, atol=1e-6)
    for a, b in zip(fused_grads, eager_grads):
        assert (a - b).norm() < 1e-3 * b.norm()


def test_compiled_layer_waits_for_the_host_nowhere(device_path_lm):
    """finetune.compile with the LM on the device path: one forward and backward of the layer
    reads no value on the host (torch.profiler: no item, no nonzero, which on the CPU also
    shows the linear algebra library's error checks), where the eager layer reads several; and
    the compiled calls make no 0-dim host tensor of a float (lift_fresh: no more than the eager
    pass makes for its inputs), which a GPU would copy at every call
    (stages.pnp.compiled.FLOATS_AS_CONSTANTS)."""
    from torch.profiler import ProfilerActivity, profile
    case = make_problems(np.random.default_rng(18), 12, 200, noise_px=1.0)
    syncs, lifts = {}, {}
    for compiled in (False, True):
        _layer_pass(case, compiled)            # compiles (or finds the compiled code)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _layer_pass(case, compiled)
        syncs[compiled] = sum(e.name in ("aten::_local_scalar_dense", "aten::nonzero") for e in prof.events())
        lifts[compiled] = sum(e.name == "aten::lift_fresh" for e in prof.events())
    assert syncs[True] == 0 and syncs[False] > 0, syncs
    assert lifts[True] <= lifts[False], lifts


def test_compiled_layer_dispatches_few_operators(device_path_lm):
    """finetune.compile with the LM on the device path: on a GPU every operator the host
    dispatches is a launch, and the layer's pass is bound by them (docs/benchmarks.md, "One
    GPU"). The compiled pass makes no more than 30 matrix-multiply calls (184 when the LM
    iteration's small products were the library's: stages.pnp.smallmat), no more than 200
    operators outside the compiled calls (359 before the sample costs' point terms, the AMIS
    estimate and the loss's glue moved into them) and no more than 50 backward nodes (76)."""
    from torch.profiler import ProfilerActivity, profile
    case = make_problems(np.random.default_rng(18), 12, 200, noise_px=1.0)
    _layer_pass(case, True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _layer_pass(case, True)
    events = prof.events()
    products = sum(e.name in ("aten::bmm", "aten::mm") for e in events)
    outside = sum(e.cpu_parent is None and e.name.startswith("aten::") for e in events)
    nodes = sum(e.name.startswith("autograd::engine::evaluate_function") for e in events)
    assert products <= 30 and outside <= 200 and nodes <= 50, (products, outside, nodes)
