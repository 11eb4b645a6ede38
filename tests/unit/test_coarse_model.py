"""Coarse detector pieces: soft-argmax, forward shapes, one training step, view geometry."""
import numpy as np
import pytest
import torch

from stages.coarse.model import BACKBONES, LandmarkNet, soft_argmax
from stages.coarse.views import locate_warp, refine_warp
from stages.common.schema import SCHEMA
from stages.face.warp import apply_warp


def test_the_params_schema_offers_exactly_the_backbones_the_detector_builds():
    for key in ("locate_backbone", "refine_backbone"):
        assert SCHEMA["coarse_train"][key].values == BACKBONES


def test_soft_argmax_of_a_peaked_map_is_the_cell_centre():
    logits = torch.full((1, 2, 8, 8), -1e4)
    logits[0, 0, 2, 5] = 0.0
    logits[0, 1, 7, 0] = 0.0
    assert torch.allclose(soft_argmax(logits, 4.0), torch.tensor([[[22.0, 10.0], [2.0, 30.0]]]))


def test_soft_argmax_of_two_equal_peaks_is_their_midpoint():
    logits = torch.full((1, 1, 4, 4), -1e4)
    logits[0, 0, 1, 1] = logits[0, 0, 1, 3] = 0.0
    assert torch.allclose(soft_argmax(logits, 1.0), torch.tensor([[[2.5, 1.5]]]))


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "resnet18"])
def test_forward_shapes_and_one_training_step_lowers_the_loss(backbone):
    torch.manual_seed(0)
    net = LandmarkNet(backbone, 68, width=16)
    images = torch.rand(4, 3, 64, 64)
    target = torch.rand(4, 68, 2) * 64
    assert net(images).shape == (4, 68, 2)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    losses = []
    for _ in range(4):
        loss = (net(images) - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="vgg11"):
        LandmarkNet("vgg11", 68)


def test_views_map_the_face_into_the_input():
    warp = locate_warp(800, 600, 100)
    assert np.allclose(apply_warp(warp, np.array([[0.0, 100.0], [800.0, 700.0]])), [[0.0, 25.0], [100.0, 100.0]])
    landmarks = np.array([[[300.0, 300.0], [500.0, 400.0]]])
    inside = apply_warp(refine_warp(landmarks, 128, 2.0), landmarks)
    assert np.allclose(inside, [[[32.0, 48.0], [96.0, 80.0]]])
