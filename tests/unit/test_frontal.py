"""Frontalization: reference shape, rolling the pose with the image, and the two crop rotations."""
import numpy as np

from stages.face.frontal import crop_quality, crop_warps, reference_shape, rotate_pose_in_plane
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
