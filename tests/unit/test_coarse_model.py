"""Coarse detector pieces: soft-argmax, forward shapes, one training step, view geometry, the
trained detector's host reads."""
import numpy as np
import pytest
import torch

from stages.coarse.augment import Jitter, jitter_warp
from stages.coarse.detector import Detector, save_detector
from stages.coarse.model import BACKBONES, LandmarkNet, soft_argmax
from stages.coarse.sources import source_size
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


def test_the_detector_reads_each_pass_once_also_with_the_flip_test(tmp_path, monkeypatch):
    """The flip test's two forwards are merged on the device: the host reads the landmarks once a
    pass (on a GPU each read waits for the queue), 1 + refine_passes reads a batch on both paths;
    the mirrored pass is still the network on the mirrored input, mapped back."""
    config = {"locate_backbone": "mobilenet_v3_small", "refine_backbone": "mobilenet_v3_small", "locate_size": 64,
              "refine_size": 64, "refine_margin": 1.2, "head_width": 16, "n_points": 68}
    torch.manual_seed(0)
    nets = {name: LandmarkNet("mobilenet_v3_small", 68, False, 16) for name in ("locate", "refine")}
    order = np.r_[np.arange(34)[::-1], np.arange(34, 68)]
    save_detector(tmp_path / "model.pt", nets, config, order, {})
    detector = Detector(tmp_path / "model.pt", torch.device("cpu"), 2)
    images = np.random.default_rng(0).integers(0, 256, (3, 120, 160, 3), dtype=np.uint8)
    reads, cpu = [], torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: reads.append(1) or cpu(self, *a, **k))
    for batch in (list(images), torch.from_numpy(images).permute(0, 3, 1, 2)):
        reads.clear()
        trace = detector.trace(batch, refine_passes=2, flip_test=True)
        assert len(reads) == 3 and trace.shape == (3, 3, 68, 2)
    inputs = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain, mirrored = (detector.nets["refine"](x).double().numpy() for x in (inputs, inputs.flip(-1)))
    mirrored = mirrored[:, order]
    mirrored[..., 0] = 64 - mirrored[..., 0]
    monkeypatch.setattr(detector, "_inputs", lambda *args: inputs)
    merged = detector._run("refine", [], np.tile(np.eye(2, 3), (2, 1, 1)), flip=True)
    np.testing.assert_array_equal(merged, (plain + mirrored) / 2)


@pytest.mark.parametrize("size", [96, 97, 128])
def test_an_unjittered_training_view_centres_the_source_as_the_prediction_view_does(size):
    source = source_size(size)
    warp = jitter_warp(np.random.default_rng(0), Jitter(shift=0.0, scale=1.0, rotate=0.0), source, size)
    np.testing.assert_allclose(apply_warp(warp, np.array([[source / 2, source / 2]])), [[size / 2, size / 2]])
