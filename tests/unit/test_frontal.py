"""Frontalization: reference shape, rolling the pose with the image, and the two crop rotations."""
import numpy as np
import pytest

from stages.face.frontal import (crop_quality, crop_warps, fitted_crop_warps, landmark_problem, pnp_roll,
                                 reference_shape, rotate_pose_in_plane)
from stages.face.warp import MIN_CORRELATION, apply_warp, similarity
from stages.wcpa.camera import euler_from_rt, rt_from_euler
from tests.conftest import face_points, random_poses
from tests.stages.tiny_data import toy_mesh


def test_reference_shape_fits_the_whole_mesh_with_the_margin():
    verts, kpt_ind = toy_mesh(np.random.default_rng(0))
    everything = reference_shape(verts, np.arange(len(verts)), 128, 1.25)
    extent = everything.max(0) - everything.min(0)
    assert np.isclose(extent.max(), 128 / 1.25)
    assert np.allclose((everything.max(0) + everything.min(0)) / 2, 64.0)
    right_eye, left_eye = everything[kpt_ind[36:42]].mean(0), everything[kpt_ind[42:48]].mean(0)
    assert right_eye[0] < left_eye[0]   # the subject's right eye on the image left


def test_rolling_the_pose_turns_the_projection_about_the_principal_point(camera):
    rng = np.random.default_rng(1)
    poses = random_poses(rng, 4)
    points = face_points(rng, 50)
    angle = rng.uniform(-0.5, 0.5, 4)
    turned = camera.project(points, rotate_pose_in_plane(poses, angle))
    centre = np.array([camera.cx, camera.cy])
    expected = apply_warp(similarity(angle, np.ones(4), np.tile(centre, (4, 1)), np.tile(centre, (4, 1))),
                          camera.project(points, poses))
    assert np.allclose(turned, expected, atol=1e-6)
    assert np.allclose(euler_from_rt(rotate_pose_in_plane(poses, angle))[:, 2],
                       euler_from_rt(poses)[:, 2] + angle)


def test_pose_rotation_zeroes_the_roll_and_eye_line_rotation_levels_the_eyes(camera):
    rng = np.random.default_rng(2)
    verts, kpt_ind = toy_mesh(rng)
    poses = rt_from_euler(np.column_stack([rng.uniform(-0.4, 0.4, 6), rng.uniform(-0.4, 0.4, 6),
                                           rng.uniform(-0.3, 0.3, 6)]), np.tile([0.0, 0.0, -0.5], (6, 1)))
    meshes = np.repeat(verts[None], 6, axis=0)
    landmarks = camera.project(meshes[:, kpt_ind], poses)
    reference = reference_shape(verts, kpt_ind, 128, 1.3)
    by_pose = crop_quality(camera, meshes, poses, crop_warps(landmarks, reference, "pose", camera, verts[kpt_ind]),
                           kpt_ind, 128)
    by_eyes = crop_quality(camera, meshes, poses, crop_warps(landmarks, reference, "eye_line"), kpt_ind, 128)
    assert np.abs(by_pose["roll_deg"]).max() < 1e-4
    assert np.abs(by_eyes["eye_line_deg"]).max() < 1e-6
    assert by_pose["inside"].all() and by_eyes["inside"].all()



@pytest.mark.parametrize("rotation", ["pose", "eye_line"])
def test_rows_no_warp_fits_are_nan_with_their_problem_and_leave_the_others_as_they_are(camera, rotation):
    """Coincident landmarks: their row is NaN with its problem, every other row the warp of a
    call on the good rows alone; a batch without such rows is crop_warps itself; an error that is
    not the data's (a reference of the wrong length) propagates."""
    rng = np.random.default_rng(3)
    verts, kpt_ind = toy_mesh(rng)
    poses = rt_from_euler(rng.uniform(-0.3, 0.3, (5, 3)), np.tile([0.0, 0.0, -0.5], (5, 1)))
    landmarks = camera.project(np.repeat(verts[None], 5, axis=0)[:, kpt_ind], poses)
    reference = reference_shape(verts, kpt_ind, 128, 1.3)
    spoiled = landmarks.copy()
    spoiled[2] = landmarks[2, 0]
    args = (reference, rotation, camera, verts[kpt_ind])
    warps, problems = fitted_crop_warps(spoiled, *args)
    assert list(problems) == [2] and "degenerate landmarks" in problems[2]
    assert np.isnan(warps[2]).all()
    good = [0, 1, 3, 4]
    assert np.array_equal(warps[good], crop_warps(landmarks[good], *args))
    whole, none = fitted_crop_warps(landmarks, *args)
    assert none == {} and np.array_equal(whole, crop_warps(landmarks, *args))
    with pytest.raises(ValueError, match="broadcast"):
        fitted_crop_warps(spoiled, reference[:60], rotation, camera, verts[kpt_ind])


def test_a_collapsed_detection_fails_the_spread_check():
    """68 points within a few px (as a detector can give on a hard image) are no face: under 1 %
    of the image's shorter side (8 px at 800 x 800)."""
    collapsed = 400 + np.random.default_rng(4).normal(0, 1.0, (68, 2))
    assert "degenerate landmarks: they span" in landmark_problem(collapsed, 800, 800)
    assert landmark_problem(400 + 5 * np.random.default_rng(4).normal(0, 1.0, (68, 2)), 800, 800) == ""


def test_a_near_profile_pitched_face_keeps_half_its_size_in_the_crop(camera):
    """Yaw 90, pitch 60 degrees, 0.35 m away: the landmarks' layout has a correlation near 0 with
    the frontal reference at the crop's rotation, and the least-squares scale would shrink the
    face to nothing (or mirror it); the scale counts the correlation at least MIN_CORRELATION, so
    the face keeps half the size a frontal one of its spread would have. A frontal face's warp is
    the least-squares fit itself."""
    from stages.synthetic.model import build_face_model
    model = build_face_model()
    reference = reference_shape(model.template, model.kpt_ind, 128, 1.4)
    pose = rt_from_euler(np.radians([[90.0, 60.0, 0.0], [0.0, 0.0, 0.0]]), np.array([[0.0, -0.2, -0.35], [0, 0, -0.53]]))
    landmarks = camera.project(np.repeat(model.template[None], 2, axis=0)[:, model.kpt_ind], pose)
    model_points = model.template[model.kpt_ind]
    warps = crop_warps(landmarks, reference, "pose", camera, model_points)
    scale = np.hypot(warps[:, 0, 0], warps[:, 1, 0])
    angle = -pnp_roll(camera, model_points, landmarks)
    rotated = apply_warp(similarity(angle, np.ones(2), np.zeros((2, 2)), np.zeros((2, 2))), landmarks)
    centred, ref_centred = rotated - rotated.mean(1, keepdims=True), reference - reference.mean(0)
    spread = np.sqrt((ref_centred ** 2).sum() / (centred ** 2).sum((1, 2)))
    least_squares = (centred * ref_centred).sum((1, 2)) / (centred ** 2).sum((1, 2))
    assert least_squares[0] < 0.05 * spread[0] and least_squares[1] > 0.95 * spread[1]
    np.testing.assert_allclose(scale, [MIN_CORRELATION * spread[0], least_squares[1]], rtol=1e-12)
