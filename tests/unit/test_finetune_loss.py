"""The finetuning stage's PnP terms and pose-carrying batches: crop -> full mapping of mu and
sigma, eq. 5 vanishing (value and gradient) at exact outputs, degenerate samples masked with
finite gradients, and flipped or reframed samples whose pose, camera and warp reproduce their 2D
targets."""
import dataclasses

import numpy as np
import torch

from stages.face.mesh import flip_permutation
from stages.face.warp import apply_warp, invert_warp
from stages.finetuning.batches import PoseBatches
from stages.finetuning.pnp_loss import PnPSettings, crop_to_full, pnp_terms
from stages.nets.dataset import Reframe, TrainBatches
from stages.wcpa.camera import Camera, rt_to_opencv
from tests.conftest import face_points, random_poses
from tests.tiny_project import PROJ, crop_warps, memory_store

CAMERA = Camera(PROJ, 800, 800)
SETTINGS = PnPSettings(mc_samples=64, amis_iters=2, lm_iters=30, points=0, dtype=torch.float64)


def exact_batch(n=4, V=60, size=64, seed=0):
    """Outputs that are exactly the ground truth (mu = projections on the crop, verts = mesh),
    and the batch of labels the PnP terms read."""
    rng = np.random.default_rng(seed)
    verts = np.stack([face_points(rng, V) for _ in range(n)])
    poses = random_poses(rng, n)
    uv_full = CAMERA.project(verts, poses)
    warps = crop_warps(uv_full, size)
    R, t = rt_to_opencv(poses)
    batch = {"verts": torch.tensor(verts), "R_gt": torch.tensor(R), "t_gt": torch.tensor(t),
             "K": torch.tensor(np.repeat(CAMERA.K[None], n, 0)), "pnp_inv_warps": torch.tensor(invert_warp(warps))}
    out = {"mu": torch.tensor(apply_warp(warps, uv_full), requires_grad=True),
           "sigma": torch.full((n, V), 1.5, dtype=torch.float64, requires_grad=True),
           "verts": torch.tensor(verts, requires_grad=True)}
    return out, batch, warps


def test_crop_to_full_maps_points_by_the_inverse_warp_and_sigma_by_its_scale():
    out, batch, warps = exact_batch()
    x2d, w2d = crop_to_full(out["mu"], out["sigma"], batch["pnp_inv_warps"])
    np.testing.assert_allclose(x2d.detach().numpy(), apply_warp(invert_warp(warps), out["mu"].detach().numpy()), atol=1e-9)
    crop_scale = warps[:, 0, 0]      # crop px per full px (crop_warps: no rotation)
    np.testing.assert_allclose(w2d.detach().numpy(), np.broadcast_to((crop_scale / 1.5)[:, None, None], w2d.shape), rtol=1e-12)


def pnp_term_and_gradients(noise_px: float):
    out, batch, _ = exact_batch()
    with torch.no_grad():
        out["mu"] += noise_px * torch.randn(out["mu"].shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    terms = pnp_terms(out, batch, SETTINGS, torch.Generator().manual_seed(0))
    assert terms["valid"].all()
    terms["pnp"].backward()
    return float(terms["pnp"].detach()), {name: float(out[name].grad.abs().max()) for name in ("mu", "sigma", "verts")}


def test_pnp_term_is_zero_with_zero_gradient_at_the_exact_outputs():
    """Zero up to the norm's smoothing (1e-12 m per distance, 2e-9 mm in all); the gradient is
    below 1e-3 of its size at a 0.5 px landmark error (the norm is not smooth at 0: its gradient
    is a unit vector until the distance falls under the smoothing)."""
    exact, exact_grads = pnp_term_and_gradients(0.0)
    noisy, noisy_grads = pnp_term_and_gradients(0.5)
    assert exact < 1e-8 and noisy > 1.0         # mm
    for name, grad in exact_grads.items():
        assert grad <= 1e-3 * noisy_grads[name], name


def test_pnp_term_grows_with_a_wrong_mesh_and_its_gradient_points_back():
    out, batch, _ = exact_batch()
    with torch.no_grad():
        out["verts"] += 0.002                   # every vertex 2 mm off along each axis
    terms = pnp_terms(out, batch, SETTINGS, torch.Generator().manual_seed(0))
    assert float(terms["pnp"].detach()) > 1.0   # mm
    terms["pnp"].backward()
    assert float((out["verts"].grad.sum((0, 1)))[0]) > 0      # descent lowers x back


def test_degenerate_sample_is_masked_and_gradients_stay_finite():
    out, batch, _ = exact_batch()
    with torch.no_grad():
        out["mu"] += torch.randn_like(out["mu"])
        out["sigma"][1, 3] = float("nan")
    terms = pnp_terms(out, batch, SETTINGS, torch.Generator().manual_seed(0))
    assert terms["valid"].tolist() == [True, False, True, True]
    loss = terms["pnp"] + 0.01 * terms["mc"]
    assert torch.isfinite(loss)
    loss.backward()
    for name in ("mu", "sigma", "verts"):
        assert torch.isfinite(out[name].grad).all(), name
        assert float(out[name].grad[1].abs().max()) == 0.0, name
        assert float(out[name].grad[0].abs().max()) > 0.0, name


def test_compiled_terms_match_the_eager_ones_and_mask_the_same_sample():
    """finetune.compile: the layer's inputs, the layer and eq. 5 through torch.compile give the
    eager terms and gradients (to the LM's stopping tolerance: the compiled start differs), and the
    degenerate sample gets exactly zero gradient there too. The inputs' checks and eq. 5 run
    inside compiled calls: the crop warps' determinant and eq. 5's means are not eager operators."""
    from torch.profiler import ProfilerActivity, profile
    results = []
    for compiled in (False, True):
        out, batch, _ = exact_batch()
        with torch.no_grad():
            out["mu"] += torch.randn(out["mu"].shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            out["sigma"][1, 3] = float("nan")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            terms = pnp_terms(out, batch, dataclasses.replace(SETTINGS, compiled=compiled), torch.Generator().manual_seed(0))
        eager_ops = {e.name for e in prof.events() if e.cpu_parent is None}
        assert ("aten::linalg_det" in eager_ops) != compiled and ("aten::mean" in eager_ops) != compiled, eager_ops
        (terms["pnp"] + 0.01 * terms["mc"]).backward()
        results.append((terms, {name: out[name].grad for name in ("mu", "sigma", "verts")}))
    (eager, eager_grads), (fused, fused_grads) = results
    assert fused["valid"].tolist() == eager["valid"].tolist() == [True, False, True, True]
    for key in ("pnp", "mc"):
        torch.testing.assert_close(fused[key], eager[key], rtol=1e-6, atol=1e-9)
    for name, grad in fused_grads.items():
        assert float(grad[1].abs().max()) == 0.0, name
        assert (grad - eager_grads[name]).norm() < 1e-4 * eager_grads[name].norm(), name   # the LM's stop


def test_mc_term_trains_sigma_towards_the_residuals():
    """With 1 px noise and sigma = 3 px, the NLL's gradient shrinks sigma; at 0.3 px it grows it."""
    out, batch, _ = exact_batch(seed=3)
    noise = torch.randn(out["mu"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for sigma, sign in ((3.0, 1.0), (0.3, -1.0)):
        mu = (out["mu"].detach() + noise).requires_grad_()
        sig = torch.full_like(out["sigma"], sigma, requires_grad=True)
        terms = pnp_terms({"mu": mu, "sigma": sig, "verts": out["verts"]}, batch, SETTINGS, torch.Generator().manual_seed(0))
        terms["mc"].backward()
        assert sign * float(sig.grad.sum()) > 0, sigma


def test_batches_carry_a_pose_camera_and_warp_that_reproduce_the_targets_also_when_flipped_or_reframed():
    # row 2: a crop the crop stage skipped, never in a batch
    template, verts, poses, store, basis = memory_store(np.random.default_rng(4), 6, 48, CAMERA, skipped=(2,))
    usable = [0, 1, 3, 4, 5]
    for flip_prob, reframe in ((0.0, Reframe()), (1.0, Reframe()), (0.0, Reframe(0.1, 0.1, 10)),
                               (1.0, Reframe(0.1, 0.1, 10))):
        batches = PoseBatches(store, verts, poses, CAMERA, basis, flip_permutation(template),
                              flip_prob=flip_prob, color_jitter=0.0, seed=0, reframe=reframe)
        item = batches[list(range(len(usable)))]
        x_cv = item["verts"].double() @ item["R_gt"].transpose(1, 2) + item["t_gt"][:, None]
        full = (x_cv @ item["K"].transpose(1, 2))
        full = (full[..., :2] / full[..., 2:]).numpy()
        np.testing.assert_allclose(apply_warp(invert_warp(item["pnp_inv_warps"].numpy()), full), item["uv"].numpy(),
                                   atol=1e-3)
        plain = TrainBatches(store, verts, poses, CAMERA, basis, None, flip_prob=0.0, color_jitter=0.0, seed=0,
                             reframe=reframe)[list(range(len(usable)))]
        assert torch.equal(item["inv_warps"], plain["inv_warps"])      # CoordConv's maps: where the crop was cut
        np.testing.assert_allclose(item["coeffs"].numpy(), basis.project(item["verts"].numpy()), atol=1e-5)
        if not reframe.active:
            flipped_images = np.array_equal(item["images"].numpy(), store.images[usable].transpose(0, 3, 1, 2)[..., ::-1])
            assert flipped_images == (flip_prob == 1.0)
