"""Horizontal flip augmentation: an involution, and consistent with the camera and the crop warp."""
import cv2
import numpy as np

from stages.face.mesh import flip_mesh, flip_permutation
from stages.face.warp import compose, to_opencv
from stages.nets.dataset import crop_targets, flip_targets
from stages.wcpa.camera import Camera, flip_rt, rt_from_euler
from tests.tiny_project import PROJ, symmetric_template

CAMERA = Camera(PROJ, 800, 800)
S = 48


def sample(seed=0):
    rng = np.random.default_rng(seed)
    template = symmetric_template(20, rng)
    verts = template[None] + rng.normal(0, 0.002, (3,) + template.shape)
    poses = rt_from_euler(rng.normal(0, 0.3, (3, 3)), np.column_stack([rng.normal(0, 0.03, (3, 2)), [-0.45, -0.5, -0.6]]))
    warps = np.zeros((3, 2, 3))
    warps[:, 0, 0] = warps[:, 1, 1] = 0.2
    warps[:, :, 2] = rng.uniform(-40, -20, (3, 2))
    return verts, poses, warps, flip_permutation(template)


def mirror(width):
    """The warp u -> width - u (continuous coordinates)."""
    return np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0]])


def test_flipping_twice_is_the_identity():
    verts, poses, warps, perm = sample()
    images = np.random.default_rng(1).integers(0, 256, (3, S, S, 3), dtype=np.uint8)
    uv = crop_targets(CAMERA, verts, poses, warps)
    back = flip_targets(*flip_targets(images, uv, verts, perm), perm)
    np.testing.assert_array_equal(back[0], images)
    np.testing.assert_allclose(back[1], uv, atol=1e-4)
    np.testing.assert_allclose(back[2], verts)


def test_flipped_landmarks_are_the_flipped_mesh_projected_with_the_flipped_pose():
    verts, poses, warps, perm = sample()
    full = CAMERA.project(verts, poses)
    flipped_full = CAMERA.project(flip_mesh(verts, perm), flip_rt(poses))
    np.testing.assert_allclose(flipped_full, CAMERA.flip_points(full)[:, perm], atol=1e-6)
    # in the crop: the mirrored crop's warp is mirror(S) . warp . mirror(W)
    mirrored_warps = compose(mirror(S), compose(warps, mirror(CAMERA.width)))
    _, uv_flipped, verts_flipped = flip_targets(np.zeros((3, S, S, 3), np.uint8),
                                                crop_targets(CAMERA, verts, poses, warps), verts, perm)
    expected = crop_targets(CAMERA, verts_flipped, flip_rt(poses), mirrored_warps)
    np.testing.assert_allclose(uv_flipped, expected, atol=1e-3)


def test_mirrored_crop_is_the_crop_of_the_mirrored_image_under_the_mirrored_warp():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    warp = np.array([[0.7, 0.1, -5.0], [-0.1, 0.7, 3.0]])
    crop = cv2.warpAffine(image, to_opencv(warp), (S, S), flags=cv2.INTER_LINEAR)
    mirrored_warp = compose(mirror(S), compose(warp, mirror(80)))
    crop_of_mirror = cv2.warpAffine(np.ascontiguousarray(image[:, ::-1]), to_opencv(mirrored_warp), (S, S),
                                    flags=cv2.INTER_LINEAR)
    assert np.abs(crop_of_mirror.astype(int) - crop[:, ::-1].astype(int)).max() <= 1
