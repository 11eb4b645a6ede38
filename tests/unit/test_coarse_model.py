"""Coarse detector pieces: soft-argmax, forward shapes, one training step, view geometry, the
trained detector's host reads."""
import numpy as np
import pytest
import torch

from stages.coarse.augment import Jitter, jitter_warp
from stages.coarse.confidence import last_shift
from stages.coarse import detector as detector_module
from stages.coarse.detector import SHAPE_STEP, Detector, save_detector
from stages.coarse.model import BACKBONES, LandmarkNet, soft_argmax
from stages.coarse.sources import source_size
from stages.coarse.views import landmark_shift, locate_warp, refine_warp
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


def _random_detector(path) -> Detector:
    config = {"locate_backbone": "mobilenet_v3_small", "refine_backbone": "mobilenet_v3_small", "locate_size": 64,
              "refine_size": 64, "refine_margin": 1.2, "head_width": 16, "n_points": 68}
    torch.manual_seed(0)
    nets = {name: LandmarkNet("mobilenet_v3_small", 68, False, 16) for name in ("locate", "refine")}
    save_detector(path, nets, config, None, {})
    return Detector(path, torch.device("cpu"), 2)


def test_settled_images_take_no_further_refine_pass_and_keep_their_landmarks(tmp_path, monkeypatch):
    """Image i's refine pass k moves its landmarks by step[i] / 2^k of the face: with settle 0.03
    image 0 (step 0.02) stops after its second refine pass, image 1 (step 0.2) after its fourth,
    image 2 (step 1) never; the passes run on the active images only, and the gate's shift is
    that of each image's last pass."""
    detector = _random_detector(tmp_path / "model.pt")
    face = np.stack(np.meshgrid(np.arange(0.0, 100.0, 10.0), np.arange(0.0, 100.0, 10.0)), -1).reshape(-1, 2)[:68]
    step = np.array([0.02, 0.2, 1.0])
    seen = []

    def run(name, images, warps, flip, bgr=False):
        rows = [int(image[0, 0, 0]) for image in images]
        seen.append(rows)
        done = len(seen) - 1                # refine passes with this one; pass j moves by 100 step 2^-j px
        return np.stack([face + 100 * step[i] * (1 - 0.5 ** done) for i in rows])

    monkeypatch.setattr(detector, "_run", run)
    monkeypatch.setattr(detector_module, "SHAPE_STEP", 1)          # no padding: the passes' own images
    images = [np.full((8, 8, 3), i, np.uint8) for i in range(3)]
    trace = detector.trace(images, refine_passes=5, settle=0.03)
    assert seen == [[0, 1, 2], [0, 1, 2], [0, 1, 2], [1, 2], [1, 2], [2]]
    np.testing.assert_array_equal(trace[3:, 0], np.broadcast_to(trace[2, 0], (3, 68, 2)))
    np.testing.assert_array_equal(trace[5:, 1], trace[4:5, 1])
    expected = [landmark_shift(trace[a, i], trace[a + 1, i]) for i, a in ((0, 1), (1, 3), (2, 4))]
    np.testing.assert_allclose(last_shift(trace), expected)
    assert expected[0] < 0.03 <= expected[2]


def test_settle_zero_runs_every_pass_and_a_large_settle_stops_after_the_second(tmp_path):
    detector = _random_detector(tmp_path / "model.pt")
    images = list(np.random.default_rng(0).integers(0, 256, (3, 120, 160, 3), dtype=np.uint8))
    full = detector.trace(images, refine_passes=4)
    np.testing.assert_array_equal(detector.trace(images, refine_passes=4, settle=0.0), full)
    stopped = detector.trace(images, refine_passes=4, settle=1e9)
    np.testing.assert_array_equal(stopped[:3], full[:3])
    np.testing.assert_array_equal(stopped[3:], np.broadcast_to(full[2], (2, 3, 68, 2)))


def test_a_partial_refine_pass_runs_on_a_few_batch_shapes(tmp_path):
    """The active images first, padded with finished ones to a multiple of SHAPE_STEP (at most the
    batch), each image once; the padding's landmarks are not kept (the settle test above)."""
    rows = Detector._rows(np.array([5, 9, 30]), 40)
    assert len(rows) == SHAPE_STEP and rows[:3].tolist() == [5, 9, 30] and len(set(rows)) == SHAPE_STEP
    assert len(Detector._rows(np.arange(33), 40)) == 40
    assert Detector._rows(np.array([2, 0]), 3).tolist() == [2, 0, 1]
