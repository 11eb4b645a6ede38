"""Losses of eq. 1-3 against torch's GaussianNLLLoss and hand-computed cases."""
import dataclasses

import numpy as np
import pytest
import torch

from stages.face.pca import fit_pca
from stages.nets import losses


def test_gnll_equals_torch_gaussian_nll_with_the_variance_on_both_coordinates():
    gen = torch.Generator().manual_seed(0)
    mu, target = torch.randn(3, 50, 2, generator=gen) * 5, torch.randn(3, 50, 2, generator=gen) * 5
    sigma = torch.rand(3, 50, generator=gen) * 3 + 0.1
    var = (sigma ** 2)[..., None].expand(-1, -1, 2)
    reference = torch.nn.GaussianNLLLoss(full=False, eps=1e-12, reduction="sum")(mu, target, var)
    # torch: 0.5 * (log var + d^2 / var) per coordinate -> eq. 1 per point; sum / batch = ours
    assert losses.gnll(mu, sigma, target).item() == pytest.approx(reference.item() / 3, rel=1e-6)


def test_gnll_hand_case_and_mse_is_gnll_at_unit_sigma():
    mu = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    target = torch.tensor([[[3.0, 4.0], [1.0, 1.0]]])
    sigma = torch.tensor([[2.0, 1.0]])
    assert losses.gnll(mu, sigma, target).item() == pytest.approx(np.log(4) + 25 / 8 + 0.0)
    assert losses.landmark_mse(mu, target).item() == pytest.approx(
        losses.gnll(mu, torch.ones(1, 2), target).item())


def test_vdc_is_the_mean_squared_vertex_distance_in_mm2():
    verts = torch.zeros(2, 4, 3)
    target = torch.zeros(2, 4, 3)
    target[0, 0] = torch.tensor([0.003, 0.0, 0.004])      # 5 mm on one of 4 vertices
    assert losses.vdc(verts, target).item() == pytest.approx(25 / 4 / 2)


def test_wpdc_with_pca_weights_is_the_in_span_vertex_error():
    meshes = np.random.default_rng(1).normal(0, 0.01, (12, 20, 3))
    basis = fit_pca(meshes, 8)
    a, b = basis.project(meshes[:3]), basis.project(meshes[3:6])
    weights = torch.as_tensor(basis.wpdc_weights())
    wpdc = losses.wpdc(torch.as_tensor(a), torch.as_tensor(b), weights).item()
    vdc = losses.vdc(torch.as_tensor(basis.reconstruct(a)), torch.as_tensor(basis.reconstruct(b))).item()
    assert wpdc == pytest.approx(vdc, rel=1e-4)


def test_per_sample_wpdc_weighs_each_coefficient_by_its_share_of_the_largest_displacement():
    """3DDFA's weights by hand: coefficient errors (0.5, -1, 0.25) with weights (1, 2, 4) move the
    mesh (0.5, 2, 1): shares (0.25, 1, 0.5) of the largest; a sample without error adds 0; the
    shares carry no gradient, so d/da = 2 share delta / B."""
    pred = torch.tensor([[0.5, -1.0, 0.25], [1.0, 2.0, 3.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    value = losses.wpdc_per_sample(pred, target, torch.tensor([1.0, 2.0, 4.0]))
    assert value.item() == pytest.approx((0.25 * 0.25 + 1.0 * 1.0 + 0.5 * 0.0625) / 2)
    grad, = torch.autograd.grad(value, pred)
    torch.testing.assert_close(grad, torch.tensor([[0.125, -1.0, 0.125], [0.0, 0.0, 0.0]]))


def test_per_sample_wpdc_weights_are_the_decoded_displacement_of_each_coefficients_error():
    """Against 3DDFA's definition on a fitted basis: w_k is the norm of the mesh change when only
    coefficient k of the target takes its predicted value (decoded), over the largest."""
    meshes = np.random.default_rng(3).normal(0, 0.01, (12, 20, 3))
    basis = fit_pca(meshes, 8)
    pred, target = basis.project(meshes[:3]), basis.project(meshes[3:6])
    expected = []
    for p, t in zip(pred, target):
        moved = []
        for k in range(8):
            changed = t.copy()
            changed[k] = p[k]
            moved.append(np.linalg.norm(basis.reconstruct(changed[None]) - basis.reconstruct(t[None])))
        moved = np.array(moved)
        expected.append((moved / moved.max() * (p - t) ** 2).sum())
    value = losses.wpdc_per_sample(torch.as_tensor(pred), torch.as_tensor(target), torch.as_tensor(basis.wpdc_weights()))
    assert value.item() == pytest.approx(np.mean(expected), rel=1e-4)


def _off_span_case():
    """A 6-component basis of 20-vertex meshes and targets with parts outside its span."""
    rng = np.random.default_rng(2)
    basis = fit_pca(rng.normal(0, 0.01, (7, 20, 3)), 6)
    targets = rng.normal(0, 0.01, (4, 20, 3)).astype(np.float32)        # not in the span
    return basis, targets, basis.project(targets)


def test_off_span_distance_is_the_distance_to_the_projection():
    basis, targets, coeffs = _off_span_case()
    direct = ((targets.astype(np.float64) - basis.reconstruct(coeffs)) ** 2).sum(-1).mean(-1) * 1e6
    np.testing.assert_allclose(basis.off_span_mm2(targets, coeffs), direct, rtol=1e-4)
    assert basis.off_span_mm2(targets, coeffs).min() > 10          # the case has something off the span


def test_vdc_from_coefficients_equals_vdc_on_the_decoded_mesh_value_and_gradient():
    basis, targets, target_coeffs = _off_span_case()
    weights = torch.as_tensor(basis.wpdc_weights())
    components = torch.as_tensor(basis.components.reshape(6, -1), dtype=torch.float64)
    mean, std = torch.as_tensor(basis.mean.reshape(-1)), torch.as_tensor(basis.std)
    pred = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    decoded = (mean + (pred * std) @ components).view(4, 20, 3)
    on_mesh = losses.vdc(decoded, torch.as_tensor(targets, dtype=torch.float64))
    gt = torch.as_tensor(target_coeffs, dtype=torch.float64)
    off_span = torch.as_tensor(basis.off_span_mm2(targets, target_coeffs))
    from_coeffs = losses.vdc_from_coeffs(losses.wpdc(pred, gt, weights.double()), off_span)
    assert from_coeffs.item() == pytest.approx(on_mesh.item(), rel=1e-5)
    grad_mesh, = torch.autograd.grad(on_mesh, pred)
    grad_coeffs, = torch.autograd.grad(from_coeffs, pred)
    # the Pythagoras form subtracts two squared norms: absolute rounding ~1e-6 of the largest entry
    torch.testing.assert_close(grad_coeffs, grad_mesh, rtol=1e-5, atol=1e-6 * grad_mesh.abs().max().item())


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_beta_weighting_keeps_the_value_and_scales_each_points_gradient_by_sigma_to_2beta(beta):
    gen = torch.Generator().manual_seed(3)
    mu = (torch.randn(2, 30, 2, generator=gen) * 3).requires_grad_()
    sigma = (torch.rand(2, 30, generator=gen) * 4 + 0.2).requires_grad_()
    target = torch.randn(2, 30, 2, generator=gen) * 3
    plain, weighted = losses.gnll(mu, sigma, target), losses.gnll(mu, sigma, target, beta)
    assert weighted.item() == pytest.approx(plain.item(), rel=1e-7)
    g_mu, g_sigma = torch.autograd.grad(plain, (mu, sigma))
    w_mu, w_sigma = torch.autograd.grad(weighted, (mu, sigma))
    scale = sigma.detach() ** (2 * beta)
    torch.testing.assert_close(w_mu, g_mu * scale[..., None])
    torch.testing.assert_close(w_sigma, g_sigma * scale)
    # closed form of eq. 1's derivatives: (mu - x) / sigma^2 and 2 / sigma - |mu - x|^2 / sigma^3, over B
    err, s = (mu - target).detach(), sigma.detach()
    torch.testing.assert_close(g_mu, err / s[..., None] ** 2 / 2)
    torch.testing.assert_close(g_sigma, (2 / s - (err ** 2).sum(-1) / s ** 3) / 2)


def test_beta_one_moves_the_means_as_mse_does():
    gen = torch.Generator().manual_seed(4)
    mu = torch.randn(2, 20, 2, generator=gen).requires_grad_()
    sigma, target = torch.rand(2, 20, generator=gen) + 0.5, torch.randn(2, 20, generator=gen)[..., None].expand(-1, -1, 2)
    g_gnll, = torch.autograd.grad(losses.gnll(mu, sigma, target, beta=1.0), mu)
    g_mse, = torch.autograd.grad(losses.landmark_mse(mu, target), mu)
    torch.testing.assert_close(g_gnll, g_mse)


def test_mean_gain_is_the_factor_on_the_means_gradient():
    sigma = torch.tensor([[0.5, 2.0]])
    assert losses.mean_gain(sigma).item() == pytest.approx((4 + 0.25) / 2)
    assert losses.mean_gain(sigma, beta=0.5).item() == pytest.approx((2 + 0.5) / 2)
    assert losses.mean_gain(sigma, beta=1.0).item() == pytest.approx(1.0)


@pytest.mark.parametrize("loss", ["gnll", "mse"])
def test_every_landmark_term_and_diagnostic_is_on_the_outputs_device(loss):
    """The epoch stacks the terms for one all-reduce: a term on another device (the MSE's
    mu_gain was a CPU tensor) stops a CUDA run. The meta device stands in for CUDA."""
    from stages.common.params import load_params
    from stages.nets.trainer import landmark_terms
    cfg = load_params("params.yaml").replace(train={"landmark_loss": loss}).train
    out = {"mu": torch.zeros(2, 5, 2, device="meta"), "sigma": torch.ones(2, 5, device="meta")}
    terms, diagnostics = landmark_terms(out, {"uv": torch.zeros(2, 5, 2, device="meta")}, cfg)
    assert {value.device.type for value in {**terms, **diagnostics}.values()} == {"meta"}


def test_the_trainers_wpdc_follows_train_wpdc_weights_and_its_vdc_stays_the_in_span_error():
    """loss_terms: per_sample replaces the WPDC term only; the VDC a PCA head takes from its
    coefficients is the fixed weights' in-span error either way (Pythagoras needs them)."""
    from stages.common.params import load_params
    from stages.nets.trainer import loss_terms
    basis, targets, target_coeffs = _off_span_case()
    weights = torch.as_tensor(basis.wpdc_weights(), dtype=torch.float32)
    pred = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    out = {"coeffs": pred, "mu": torch.zeros(4, 20, 2), "sigma": torch.ones(4, 20)}
    batch = {"coeffs": torch.as_tensor(target_coeffs, dtype=torch.float32), "uv": torch.zeros(4, 20, 2),
             "off_span": torch.as_tensor(basis.off_span_mm2(targets, target_coeffs))}
    cfg = load_params("params.yaml").train
    fixed = loss_terms(out, batch, cfg, weights)
    per_sample = loss_terms(out, batch, dataclasses.replace(cfg, wpdc_weights="per_sample"), weights)
    assert fixed["wpdc"].item() == pytest.approx(losses.wpdc(pred, batch["coeffs"], weights).item())
    assert per_sample["wpdc"].item() == pytest.approx(losses.wpdc_per_sample(pred, batch["coeffs"], weights).item())
    assert per_sample["vdc"].item() == fixed["vdc"].item() and per_sample["wpdc"].item() != fixed["wpdc"].item()
