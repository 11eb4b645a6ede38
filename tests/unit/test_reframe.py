"""Crop reframing augmentation: warps within their limits, images and targets moved together."""
import numpy as np

from stages.face.warp import apply_warp, invert_warp, warp_image
from stages.nets.dataset import Reframe, TrainBatches, reframe_warps
from stages.wcpa.camera import Camera
from tests.tiny_project import PROJ, memory_store

CAMERA = Camera(PROJ, 800, 800)


def test_reframe_warps_stay_within_their_limits_and_are_the_identity_when_off():
    rng = np.random.default_rng(0)
    size, limits = 100, Reframe(shift=0.05, scale=0.1, rotate=8.0)
    warps = reframe_warps(rng, 2000, size, limits)
    zoom = np.sqrt(np.abs(np.linalg.det(warps[:, :, :2])))
    angle = np.degrees(np.arctan2(warps[:, 0, 1], warps[:, 0, 0]))
    source_centre = apply_warp(invert_warp(warps), np.full((2000, 1, 2), size / 2))[:, 0]
    assert np.exp(-0.1) - 1e-9 <= zoom.min() and zoom.max() <= np.exp(0.1) + 1e-9
    assert np.abs(angle).max() <= 8.0 + 1e-9 and np.abs(angle).max() > 7.0
    assert np.abs(source_centre - size / 2).max() <= 5.0 + 1e-9
    assert np.abs(source_centre - size / 2).max() > 4.5
    np.testing.assert_allclose(reframe_warps(rng, 3, size, Reframe()), np.broadcast_to(np.eye(2, 3), (3, 2, 3)))


def test_reframed_batch_moves_the_image_and_the_targets_by_the_same_warp():
    n, size = 4, 48
    _, verts, poses, store, basis = memory_store(np.random.default_rng(1), n, size, CAMERA)
    images = store.images
    common = (store, verts, poses, CAMERA, basis, np.arange(verts.shape[1]), 0.0, 0.0, 0)
    plain = TrainBatches(*common)[list(range(n))]
    moved = TrainBatches(*common, reframe=Reframe(0.1, 0.1, 10))[list(range(n))]
    reframe = moved["reframe"].numpy()
    assert not np.allclose(reframe, np.eye(2, 3))
    np.testing.assert_allclose(np.eye(2, 3)[None].repeat(n, 0), plain["reframe"].numpy())
    np.testing.assert_allclose(moved["uv"].numpy(), apply_warp(reframe, plain["uv"].numpy()), atol=1e-3)
    for k in range(n):
        expected = warp_image(images[k], reframe[k], size)
        np.testing.assert_array_equal(moved["images"][k].numpy().transpose(1, 2, 0), expected)
    np.testing.assert_array_equal(moved["verts"].numpy(), plain["verts"].numpy())
