"""Backbone, CoordConv, heads and the paper-size network (one CPU training step)."""
import urllib.error

import numpy as np
import pytest
import torch

from stages.common.pretrained import WeightsUnavailable
from stages.face.pca import fit_pca
from stages.nets import backbone, losses
from stages.face.warp import apply_warp, similarity
from stages.nets.coordconv import add_coord_channels, image_coord_maps
from stages.nets.heads import LandmarkHead, ShapeHead
from stages.nets.model import FaceNet, NetConfig


def test_coord_maps_scale_pixel_indices_to_minus_one_one():
    out = add_coord_channels(torch.zeros(2, 3, 5, 5))
    assert out.shape == (2, 5, 5, 5)
    np.testing.assert_allclose(out[0, 3, 0].numpy(), [-1, -0.5, 0, 0.5, 1])     # X along a row
    np.testing.assert_allclose(out[1, 4, :, 2].numpy(), [-1, -0.5, 0, 0.5, 1])  # Y down a column
    assert (out[:, 3, :, 4] == 1).all() and (out[:, 4, 0] == -1).all()


def test_image_coord_maps_place_each_pixel_centre_in_the_full_image():
    """Against apply_warp of the pixel centres, for the crop itself (S = 16) and for an input
    resized to 8 px (pixel k's centre at crop px (k + 0.5) * 2)."""
    rng = np.random.default_rng(0)
    warps = similarity(rng.uniform(-0.5, 0.5, 3), rng.uniform(0.2, 0.5, 3), rng.uniform(200, 600, (3, 2)),
                       np.full((3, 2), 8.0))
    inv_warps = np.linalg.inv(np.concatenate([warps, np.tile([[[0.0, 0.0, 1.0]]], (3, 1, 1))], 1))[:, :2]
    for size in (16, 8):
        centres = (np.arange(size) + 0.5) * 16 / size
        u, v = np.meshgrid(centres, centres)                  # (size, size): u along x, v along y
        full = apply_warp(inv_warps, np.stack([u.ravel(), v.ravel()], -1)[None].repeat(3, 0))
        expected = (full / np.array([800.0, 600.0]) * 2 - 1).reshape(3, size, size, 2).transpose(0, 3, 1, 2)
        got = image_coord_maps(torch.from_numpy(inv_warps), 16, size, (800, 600))
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_image_coord_maps_need_the_warps_and_change_the_output():
    config = NetConfig(depth=18, coordconv=True, shape_head="pca", crop_size=32, n_verts=10, n_components=4,
                       coord_maps="image", image_size=(800, 800))
    model = FaceNet(config).eval()
    model.shape.set_basis(np.zeros((10, 3)), np.eye(4, 30).reshape(4, 10, 3), np.ones(4))
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs each crop's inv_warps"):
        model(images)
    shift = torch.tensor([[1.0, 0.0, 100.0], [0.0, 1.0, 300.0]]).expand(2, 2, 3)
    with torch.no_grad():
        for weight in model.parameters():           # the heads start at their means: give them some weight
            weight.add_(0.01 * torch.randn_like(weight))
        a, b = model(images, inv_warps=shift)["mu"], model(images, inv_warps=shift + torch.tensor([0.0, 0.0, 200.0]))["mu"]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="needs the full images' size"):
        FaceNet(NetConfig(depth=18, coordconv=True, shape_head="pca", crop_size=32, n_verts=10, n_components=4,
                          coord_maps="image"))


def test_widened_first_conv_keeps_rgb_weights_and_zeroes_the_coordinate_channels():
    conv = torch.nn.Conv2d(3, 8, 3, bias=False)
    wide = backbone.widen_input(conv, 5)
    assert torch.equal(wide.weight[:, :3], conv.weight) and (wide.weight[:, 3:] == 0).all()
    image = torch.randn(1, 3, 9, 9)
    assert torch.allclose(wide(add_coord_channels(image)), conv(image), atol=1e-6)


def test_unavailable_imagenet_weights_say_where_to_put_the_file(monkeypatch):
    def offline(weights=None):
        raise urllib.error.URLError("no network")
    monkeypatch.setitem(backbone.RESNETS, 18, (offline, backbone.RESNETS[18][1]))
    with pytest.raises(WeightsUnavailable, match=r"no network.*resnet18-.*\.pth.*hub.*checkpoints.*train.pretrained"):
        backbone.build_backbone(18, 5, pretrained=True)


def test_unknown_depth_is_an_error():
    with pytest.raises(ValueError, match="train.depth=20"):
        backbone.build_backbone(20)


def test_landmark_head_starts_at_the_mean_position_with_positive_sigma():
    head = LandmarkHead(16, 7, crop_size=64)
    mean_uv = torch.rand(7, 2) * 64
    head.init_mean(mean_uv)
    mu, sigma = head(torch.randn(3, 16))
    assert torch.allclose(mu, mean_uv.expand(3, -1, -1), atol=1e-4)
    assert (sigma > 0).all()


def test_sigma_without_the_backbone_keeps_its_values_and_sends_no_gradient_to_the_features():
    head = LandmarkHead(16, 7, crop_size=64)
    torch.nn.init.normal_(head.sigma.weight)
    features = torch.randn(3, 16, requires_grad=True)
    _, sigma = head(features)
    through, = torch.autograd.grad(sigma.sum(), features)
    head.sigma_trains_backbone = False
    mu, sigma_detached = head(features)
    torch.testing.assert_close(sigma_detached, sigma)
    assert through.abs().sum() > 0
    assert torch.autograd.grad(sigma_detached.sum(), features, allow_unused=True)[0] is None
    assert torch.autograd.grad(mu.sum() + sigma_detached.sum(), head.sigma.weight)[0].abs().sum() > 0


def test_shape_head_coefficients_round_trip_and_direct_mode_projects():
    meshes = np.random.default_rng(0).normal(0, 0.01, (10, 6, 3))
    basis = fit_pca(meshes, 9)
    for mode in ("pca", "direct"):
        head = ShapeHead(4, 6, 9, mode)
        torch.nn.init.normal_(head.fc.weight)
        head.set_basis(basis.mean, basis.components, basis.std)
        verts, coeffs = head(torch.randn(2, 4))
        assert verts.shape == (2, 6, 3) and coeffs.shape == (2, 9)
        target = torch.as_tensor(basis.project(meshes[:2]))
        assert torch.allclose(head.to_coeffs(head.to_verts(target)), target, atol=1e-3)
    np.testing.assert_allclose(head.to_verts(target).numpy(), basis.reconstruct(target.numpy()), atol=1e-6)


def test_paper_network_runs_one_training_step_on_cpu():
    """ResNet50, 256 x 256, 5 channels, 1220 x 3 landmark outputs + 250 coefficients."""
    torch.manual_seed(0)
    config = NetConfig(depth=50, coordconv=True, shape_head="pca", crop_size=256, n_verts=1220, n_components=250)
    model = FaceNet(config, pretrained=False)
    model.shape.set_basis(torch.zeros(1220, 3), torch.randn(250, 1220, 3) * 1e-3, torch.ones(250))
    assert model.backbone.conv1.in_channels == 5
    assert model.landmarks.mu.out_features == 1220 * 2 and model.landmarks.sigma.out_features == 1220
    assert model.shape.fc.out_features == 250
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    out = model(images)
    loss = (0.01 * losses.gnll(out["mu"], out["sigma"], torch.rand(2, 1220, 2) * 256)
            + 20 * losses.vdc(out["verts"], torch.randn(2, 1220, 3) * 0.01)
            + 10 * losses.wpdc(out["coeffs"], torch.zeros(2, 250), torch.ones(250)))
    fcs = (model.landmarks.mu, model.landmarks.sigma, model.shape.fc)
    before = [fc.weight.detach().clone() for fc in fcs]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not any(torch.equal(b, fc.weight) for b, fc in zip(before, fcs))


def test_the_coarse_detectors_unavailable_weights_say_where_to_put_the_file_and_the_key(monkeypatch):
    from stages.coarse import model as coarse_model

    def offline(weights=None):
        if weights is not None:
            raise urllib.error.URLError("no network")
    monkeypatch.setattr(coarse_model.torchvision.models, "resnet18", offline)
    with pytest.raises(WeightsUnavailable, match=r"no network.*resnet18-.*\.pth.*hub.*checkpoints.*coarse_train.pretrained"):
        coarse_model._backbone_blocks("resnet18", pretrained=True)
