"""The direct 6DoF head's geometry: the 6D rotation map, the geodesic loss (against scipy), the
crop and camera frames (against OpenCV's projections) and the mirror of a pose."""
import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from stages.face.mesh import flip_mesh
from stages.face.warp import apply_warp, invert_warp, similarity
from stages.nets.pose_frame import camera_to_frame, crop_frame, frame_poses, frame_to_camera, mirror_pose
from stages.nets.losses import rotation_deg, translation_mm2
from stages.nets.posehead import PoseHead
from stages.nets.rotation6d import geodesic, rotation_from_6d, rotation_to_6d
from stages.wcpa.camera import rt_to_opencv
from tests.conftest import face_points, random_poses

SIZE = 128


def test_6d_map_gives_proper_rotations_and_round_trips():
    x = torch.randn(500, 6, dtype=torch.float64)
    R = rotation_from_6d(x)
    eye = torch.eye(3, dtype=torch.float64).expand(500, 3, 3)
    assert torch.allclose(R.transpose(-1, -2) @ R, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(500, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(R[..., :, 0], x[:, :3] / x[:, :3].norm(dim=-1, keepdim=True))   # b1 along a1
    truth = torch.from_numpy(Rotation.random(200, random_state=1).as_matrix())
    assert torch.allclose(rotation_from_6d(rotation_to_6d(truth)), truth, atol=1e-12)
    assert torch.allclose(rotation_from_6d(rotation_to_6d(R)), R, atol=1e-12)


def test_geodesic_matches_scipy_from_zero_to_pi():
    rng = np.random.default_rng(2)
    R_a = Rotation.random(300, random_state=3)
    angles = np.concatenate([rng.uniform(0, np.pi, 294), [0.0, 1e-6, 1e-3, np.pi - 1e-3, np.pi - 1e-6, np.pi]])
    axes = rng.normal(size=(300, 3))
    rel = Rotation.from_rotvec(axes / np.linalg.norm(axes, axis=1, keepdims=True) * angles[:, None])
    R_b = R_a * rel
    expected = (R_a.inv() * R_b).magnitude()
    got = geodesic(torch.from_numpy(R_a.as_matrix()), torch.from_numpy(R_b.as_matrix())).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-7)
    deg = rotation_deg(torch.from_numpy(R_a.as_matrix()), torch.from_numpy(R_b.as_matrix()))
    assert float(deg) == pytest.approx(np.degrees(expected).mean(), abs=1e-3)


def test_geodesic_gradient_is_finite_at_a_perfect_prediction():
    x = rotation_to_6d(torch.from_numpy(Rotation.random(4, random_state=5).as_matrix())).requires_grad_()
    rotation_deg(rotation_from_6d(x), rotation_from_6d(x.detach())).backward()
    assert torch.isfinite(x.grad).all()


def random_crops(rng, poses, camera, jitter_px=15.0):
    """Similarity crops around each face's projected origin: random roll, scale and framing error."""
    centre = camera.project(np.zeros((len(poses), 1, 3)), poses)[:, 0] + rng.normal(0, jitter_px, (len(poses), 2))
    angle = rng.uniform(-0.6, 0.6, len(poses))
    scale = rng.uniform(0.3, 0.6, len(poses))
    return similarity(angle, scale, centre, np.full((len(poses), 2), SIZE / 2))


def test_crop_frame_round_trips_any_pose(camera):
    rng = np.random.default_rng(0)
    poses = random_poses(rng, 200)
    warps = random_crops(rng, poses, camera)
    R_frame, codes = camera_to_frame(poses, warps, camera, SIZE, "crop")
    frames, _ = crop_frame(warps, camera, SIZE)
    assert np.allclose(np.swapaxes(frames, 1, 2) @ frames, np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(frames), 1.0)
    np.testing.assert_allclose(frame_to_camera(R_frame, codes, warps, camera, SIZE, "crop"), poses, atol=1e-12)


def test_translation_code_follows_the_opencv_projection_of_the_head_origin(camera):
    """(a, b) is the crop-frame direction of the ray through the origin's pixel (cv2.projectPoints,
    then the warp), z_v * s the crop-frame depth, and the translation keeps its length."""
    rng = np.random.default_rng(1)
    poses = random_poses(rng, 50)
    warps = random_crops(rng, poses, camera)
    _, codes = camera_to_frame(poses, warps, camera, SIZE, "crop")
    frames, scale = crop_frame(warps, camera, SIZE)
    R_cv, t_cv = rt_to_opencv(poses)
    for i in range(len(poses)):
        origin, _ = cv2.projectPoints(np.zeros((1, 3)), cv2.Rodrigues(R_cv[i])[0], t_cv[i], camera.K, None)
        q = apply_warp(warps[i], origin[:, 0])                                   # crop px
        p = apply_warp(invert_warp(warps[i]), q)[0]
        ray = frames[i] @ np.linalg.solve(camera.K, [p[0], p[1], 1.0])
        np.testing.assert_allclose(codes[i, :2], ray[:2] / ray[2], atol=1e-9)
        t_crop = frames[i] @ t_cv[i]
        assert codes[i, 2] * scale[i] == pytest.approx(t_crop[2])
        assert np.linalg.norm(t_crop) == pytest.approx(np.linalg.norm(t_cv[i]))
    # crops centred on the head origin's pixel: (a, b) = 0
    on_ray = similarity(np.zeros(50), scale, camera.project(np.zeros((50, 1, 3)), poses)[:, 0], np.full((50, 2), SIZE / 2))
    np.testing.assert_allclose(camera_to_frame(poses, on_ray, camera, SIZE, "crop")[1][:, :2], 0.0, atol=1e-12)


def centred_crops(rng, n, camera):
    """Crops whose centre is the principal point: the crop is then exactly a pinhole camera rotated
    about the optical axis (focal f s, principal point at the crop centre)."""
    angle = rng.uniform(-0.6, 0.6, n)
    scale = rng.uniform(0.3, 0.6, n)
    return similarity(angle, scale, np.tile([camera.cx, camera.cy], (n, 1)), np.full((n, 2), SIZE / 2)), scale


def test_crop_pose_projects_like_the_warped_opencv_projection(camera):
    rng = np.random.default_rng(4)
    poses = random_poses(rng, 30)
    warps, scale = centred_crops(rng, 30, camera)
    R_frame, codes = camera_to_frame(poses, warps, camera, SIZE, "crop")
    R_cv, t_cv = rt_to_opencv(poses)
    for i in range(len(poses)):
        verts = face_points(rng, 100)
        full, _ = cv2.projectPoints(verts, cv2.Rodrigues(R_cv[i])[0], t_cv[i], camera.K, None)
        K_crop = np.array([[camera.fx * scale[i], 0, SIZE / 2], [0, camera.fy * scale[i], SIZE / 2], [0, 0, 1]])
        t_crop = codes[i, 2] * scale[i] * np.array([codes[i, 0], codes[i, 1], 1.0])
        crop, _ = cv2.projectPoints(verts, cv2.Rodrigues(R_frame[i])[0], t_crop, K_crop, None)
        np.testing.assert_allclose(crop[:, 0], apply_warp(warps[i], full[:, 0]), atol=1e-6)


def test_mirrored_pose_projects_the_mirrored_mesh_to_the_mirrored_crop(camera):
    """For crops centred on the principal point (exactly a rotated pinhole) the mirrored mesh in the
    mirrored pose lands, through the full camera and the same warp, at u -> S - u of the mesh."""
    rng = np.random.default_rng(6)
    poses = random_poses(rng, 10)
    warps, _ = centred_crops(rng, 10, camera)
    mirrored_poses = mirror_pose(poses, warps, camera, SIZE)
    np.testing.assert_allclose(mirror_pose(mirrored_poses, warps, camera, SIZE), poses, atol=1e-12)
    verts = face_points(rng, 50)
    mirrored = flip_mesh(verts, np.arange(50))
    for i in range(10):
        plain = apply_warp(warps[i], camera.project(verts, poses[i]))
        flipped = apply_warp(warps[i], camera.project(mirrored, mirrored_poses[i]))
        np.testing.assert_allclose(flipped[:, 0], SIZE - plain[:, 0], atol=1e-6)
        np.testing.assert_allclose(flipped[:, 1], plain[:, 1], atol=1e-6)


def test_mirror_in_the_crop_frame_flips_x_of_the_rotation_and_a(camera):
    rng = np.random.default_rng(7)
    poses = random_poses(rng, 20)
    warps = random_crops(rng, poses, camera)
    R_frame, codes = camera_to_frame(poses, warps, camera, SIZE, "crop")
    R_m, codes_m = camera_to_frame(mirror_pose(poses, warps, camera, SIZE), warps, camera, SIZE, "crop")
    M = np.diag([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(R_m, M @ R_frame @ M, atol=1e-12)
    np.testing.assert_allclose(codes_m, codes * [-1.0, 1.0, 1.0], atol=1e-12)


def test_camera_frame_codes_are_the_opencv_translation(camera):
    """In the camera frame R is OpenCV's rotation and the code (t_x / t_z, t_y / t_z, t_z), whatever the crop."""
    rng = np.random.default_rng(9)
    poses = random_poses(rng, 30)
    warps = random_crops(rng, poses, camera)
    R_frame, codes = camera_to_frame(poses, warps, camera, SIZE, "camera")
    R_cv, t_cv = rt_to_opencv(poses)
    np.testing.assert_allclose(R_frame, R_cv, atol=1e-12)
    np.testing.assert_allclose(codes, np.concatenate([t_cv[:, :2] / t_cv[:, 2:], t_cv[:, 2:]], axis=1), atol=1e-12)
    np.testing.assert_allclose(frame_to_camera(R_frame, codes, warps, camera, SIZE, "camera"), poses, atol=1e-12)
    inv_warps = invert_warp(warps)
    inv_warps[3] = np.nan                                    # a skipped crop
    got = frame_poses(R_frame, codes, inv_warps, camera, SIZE, "camera")
    assert np.isnan(got[3]).all()
    np.testing.assert_allclose(np.delete(got, 3, 0), np.delete(poses, 3, 0), atol=1e-12)
    with pytest.raises(ValueError, match="pose_frame='image'"):
        camera_to_frame(poses, warps, camera, SIZE, "image")


def test_translation_loss_is_the_camera_frame_distance(camera):
    rng = np.random.default_rng(8)
    poses = random_poses(rng, 20)
    warps = random_crops(rng, poses, camera)
    other = poses.copy()
    other[:, 3, :3] += rng.normal(0, 0.01, (20, 3))
    _, codes = camera_to_frame(poses, warps, camera, SIZE, "crop")
    _, codes_other = camera_to_frame(other, warps, camera, SIZE, "crop")
    _, scale = crop_frame(warps, camera, SIZE)
    expected = (np.linalg.norm((poses - other)[:, 3, :3], axis=-1) ** 2).mean() * 1e6
    got = translation_mm2(torch.from_numpy(codes_other), torch.from_numpy(codes), torch.from_numpy(scale))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_pose_head_starts_at_the_mean_pose():
    head = PoseHead(8)
    R_mean = Rotation.from_rotvec([0.1, -0.2, 0.05]).as_matrix()
    head.init_mean(torch.from_numpy(R_mean), torch.tensor([0.01, -0.02, 1.2]))
    R, code = head(torch.randn(3, 8))
    assert torch.allclose(R, torch.from_numpy(R_mean).float().expand(3, 3, 3), atol=1e-6)
    assert torch.allclose(code, torch.tensor([0.01, -0.02, 1.2]).expand(3, 3))
