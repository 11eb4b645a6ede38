"""Conventions of stages/wcpa/camera.py against OpenCV and scipy."""
import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from stages.face.mesh import flip_mesh, flip_permutation
from stages.wcpa.camera import (Camera, euler_from_rt, flip_rt, opencv_to_rt, rotation_angle_deg,
                                rt_from_euler, rt_to_opencv, to_camera)
from tests.conftest import CHALLENGE_PROJ, face_points, random_poses


def test_intrinsics_of_the_challenge_matrix(camera):
    assert camera.fx == pytest.approx(1.57443701 * 400)
    assert camera.fy == pytest.approx(1.57443701 * 400)
    assert (camera.cx, camera.cy) == (400.0, 400.0)


def test_projection_follows_the_written_formula(camera):
    x_cam = np.array([0.01, 0.02, -0.5])
    clip = np.append(x_cam, 1.0) @ CHALLENGE_PROJ
    ndc = clip[:3] / clip[3]
    expected = [(ndc[0] + 1) * 400, 800 - (ndc[1] + 1) * 400]
    assert np.allclose(camera.project_camera_points(x_cam), expected)
    assert camera.project_camera_points(x_cam)[1] < 400          # +y (up) is above the centre


def test_opencv_project_points_agrees_with_wcpa_projection(camera):
    rng = np.random.default_rng(0)
    for R_t in random_poses(rng, 20):
        verts = face_points(rng, 200)
        R_cv, t_cv = rt_to_opencv(R_t)
        uv_cv, _ = cv2.projectPoints(verts, cv2.Rodrigues(R_cv)[0], t_cv, camera.K, None)
        assert np.abs(uv_cv[:, 0] - camera.project(verts, R_t)).max() < 1e-3


def test_warped_projection_is_the_projection_then_the_warp(camera):
    from stages.face.warp import apply_warp
    rng = np.random.default_rng(7)
    poses = random_poses(rng, 6)
    verts = np.stack([face_points(rng, 150) for _ in range(6)])
    warps = np.concatenate([rng.normal(0, 0.3, (6, 2, 2)) + np.eye(2), rng.normal(0, 50, (6, 2, 1))], axis=2)
    expected = apply_warp(warps, camera.project(verts, poses))
    np.testing.assert_allclose(camera.project_warped(verts, poses, warps), expected, atol=1e-9)
    identity = np.broadcast_to(np.eye(2, 3), (6, 2, 3))
    np.testing.assert_allclose(camera.project_warped(verts, poses, identity), camera.project(verts, poses), atol=1e-9)


def test_opencv_frame_is_gl_frame_with_y_and_z_negated():
    rng = np.random.default_rng(1)
    R_t = random_poses(rng, 1)[0]
    verts = face_points(rng, 10)
    R_cv, t_cv = rt_to_opencv(R_t)
    assert np.allclose(verts @ R_cv.T + t_cv, to_camera(verts, R_t) * [1, -1, -1])
    assert (to_camera(verts, R_t)[:, 2] < 0).all()


def test_round_trips_rt_opencv_euler():
    rng = np.random.default_rng(2)
    poses = random_poses(rng, 100)
    assert np.allclose(opencv_to_rt(*rt_to_opencv(poses)), poses)
    ypr = euler_from_rt(poses)
    assert np.allclose(rt_from_euler(ypr, poses[:, 3, :3]), poses)
    for R_t, angles in zip(poses[:5], ypr[:5]):
        expected = Rotation.from_matrix(R_t[:3, :3].T).as_euler("yxz")
        assert np.allclose(angles, expected)


def test_euler_names_match_head_motion():
    yaw_only = rt_from_euler(np.array([0.3, 0.0, 0.0]), np.array([0, 0, -0.5]))
    nose = np.array([[0.0, 0.0, 0.1]])
    x_cam = to_camera(nose, yaw_only)
    assert x_cam[0, 0] > 0         # positive yaw turns the face towards camera +x


def test_pixel_rays_invert_projection(camera):
    rng = np.random.default_rng(3)
    x_cam = to_camera(face_points(rng, 50), random_poses(rng, 1)[0])
    rays = camera.pixel_rays(camera.project_camera_points(x_cam))
    assert np.allclose(rays * -x_cam[:, 2:3], x_cam)


def test_flipped_mesh_under_flipped_pose_projects_to_mirrored_pixels(camera):
    rng = np.random.default_rng(4)
    half = face_points(rng, 100)
    half[:, 0] = np.abs(half[:, 0]) + 1e-3
    mesh = np.concatenate([half, half * [-1, 1, 1]])          # symmetric by construction
    perm = flip_permutation(mesh)
    assert np.array_equal(perm[perm], np.arange(len(perm)))
    verts = mesh + rng.normal(scale=0.002, size=mesh.shape)  # an asymmetric instance
    for R_t in random_poses(rng, 5):
        uv = camera.project(verts, R_t)
        uv_flip = camera.project(flip_mesh(verts, perm), flip_rt(R_t))
        assert np.allclose(uv_flip, camera.flip_points(uv)[perm], atol=1e-9)


def test_flip_rt_is_an_involution_and_keeps_depth():
    poses = random_poses(np.random.default_rng(5), 10)
    assert np.allclose(flip_rt(flip_rt(poses)), poses)
    assert np.allclose(flip_rt(poses)[:, 3, 2], poses[:, 3, 2])
    assert np.allclose(np.linalg.det(flip_rt(poses)[:, :3, :3]), 1.0)


def test_rotation_angle():
    R = Rotation.from_rotvec([0, 0, np.radians(7)]).as_matrix()
    assert rotation_angle_deg(np.eye(3), R) == pytest.approx(7.0)


def test_camera_rejects_non_perspective_matrix(tmp_path):
    bad = np.eye(4)
    with pytest.raises(ValueError, match="perspective"):
        Camera(bad, 800, 800)
    path = tmp_path / "projection_matrix.txt"
    path.write_text("1 2 3\n")
    with pytest.raises(ValueError, match="projection_matrix.txt"):
        Camera.from_file(path, 800, 800)


@pytest.mark.parametrize("entry, value, problem", [((0, 0), np.nan, "non-finite"), ((3, 2), np.inf, "non-finite"),
                                                   ((0, 0), 0.0, "must be positive"),
                                                   ((1, 1), -1.57443701, "must be positive")])
def test_projection_file_with_nan_or_a_non_positive_focal_is_named(tmp_path, entry, value, problem):
    proj = CHALLENGE_PROJ.copy()
    proj[entry] = value
    path = tmp_path / "resources" / "projection_matrix.txt"
    path.parent.mkdir()
    np.savetxt(path, proj)
    with pytest.raises(ValueError, match=f"resources/projection_matrix.txt: .*{problem}"):
        Camera.from_file(path, 800, 800)


def test_a_projection_file_with_a_byte_order_mark_reads(tmp_path):
    """A projection matrix saved by an editor that writes a UTF-8 BOM reads as the plain file
    does (it stopped on the first number)."""
    text = "\n".join(" ".join(f"{v:.8g}" for v in row) for row in CHALLENGE_PROJ) + "\n"
    (tmp_path / "pm.txt").write_text(text, encoding="utf-8-sig")
    assert Camera.from_file(tmp_path / "pm.txt", 800, 800).fx == pytest.approx(CHALLENGE_PROJ[0][0] * 400)
