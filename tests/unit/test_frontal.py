"""Frontalization: reference shape, rolling the pose with the image, and the two crop rotations."""
import numpy as np
import pytest

from stages.face.frontal import (crop_quality, crop_warps, fitted_crop_warps, landmark_problem, reference_shape,
                                 rotate_pose_in_plane)
from stages.face.warp import apply_warp, similarity
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
    """A collapsed detection (the 68 points within a few px, as a detector can give on a hard
    image) passes the crop's landmark checks, but the similarity that maps it onto the reference
    at its rotation has a negative scale: its row is NaN with its problem, every other row the
    warp of a call on the good rows alone; a batch without such rows is crop_warps itself."""
    rng = np.random.default_rng(3)
    verts, kpt_ind = toy_mesh(rng)
    poses = rt_from_euler(rng.uniform(-0.3, 0.3, (5, 3)), np.tile([0.0, 0.0, -0.5], (5, 1)))
    landmarks = camera.project(np.repeat(verts[None], 5, axis=0)[:, kpt_ind], poses)
    reference = reference_shape(verts, kpt_ind, 128, 1.3)
    spoiled = landmarks.copy()
    spoiled[2] = landmarks[2].mean(0) + np.random.default_rng(1).normal(0, 1.0, (len(kpt_ind), 2))
    assert landmark_problem(spoiled[2], camera.width, camera.height) == ""
    args = (reference, rotation, camera, verts[kpt_ind])
    warps, problems = fitted_crop_warps(spoiled, *args)
    assert list(problems) == [2] and "degenerate landmarks" in problems[2]
    assert np.isnan(warps[2]).all()
    good = [0, 1, 3, 4]
    assert np.array_equal(warps[good], crop_warps(landmarks[good], *args))
    whole, none = fitted_crop_warps(landmarks, *args)
    assert none == {} and np.array_equal(whole, crop_warps(landmarks, *args))
    with pytest.raises(ValueError, match="broadcast"):       # not the data's fault: not a row's problem
        fitted_crop_warps(spoiled, reference[:60], rotation, camera, verts[kpt_ind])
