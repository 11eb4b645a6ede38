"""Coarse detector pieces: soft-argmax, forward shapes, one training step, augmentation geometry."""
import numpy as np
import pytest
import torch

from stages.coarse.augment import Augmenter, Jitter
from stages.coarse.model import LandmarkNet, soft_argmax
from stages.coarse.views import locate_warp, refine_warp
from stages.face.warp import apply_warp


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
    optimiser = torch.optim.Adam(net.parameters(), 1e-3)
    losses = []
    for _ in range(4):
        loss = (net(images) - target).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
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


def _dots(points: np.ndarray, size: int) -> np.ndarray:
    """An image with a 2x2 white block centred on each point (integer continuous coordinates)."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    for x, y in points.astype(int):
        image[y - 1:y + 1, x - 1:x + 1] = 255
    return image


def test_augmentation_keeps_landmarks_on_their_pixels_and_reorders_on_flip():
    points = np.array([[40.0, 50.0], [100.0, 60.0], [50.0, 100.0]])
    order = np.array([1, 0, 2])
    augment = Augmenter(96, Jitter(0.05, 1.2, 20.0), order, flip_prob=0.5, seed=0)
    augment.colour = lambda image: {"image": image}
    flips = 0
    for _ in range(8):
        image, moved = augment(_dots(points, 144), points)
        weight = image[..., 0].astype(np.float64)
        for x, y in moved:
            rows, cols = np.mgrid[int(y) - 4:int(y) + 5, int(x) - 4:int(x) + 5]
            w = weight[rows, cols]
            centre = np.array([((cols + 0.5) * w).sum(), ((rows + 0.5) * w).sum()]) / w.sum()
            assert np.allclose(centre, [x, y], atol=0.15)
        flipped = moved[2, 0] > 48           # the self-mirrored point 2 went to the other side
        flips += flipped
        assert moved[0, 0] < moved[1, 0]    # mirror pair re-ordered: point 0 stays the left one
    assert 0 < flips < 8
