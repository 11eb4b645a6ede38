"""Flip & merge of the network's outputs, and the two PnP paths of inference."""
import cv2
import numpy as np
import pytest
import torch

from stages.face.mesh import flip_mesh, flip_permutation
from stages.nets.flipmerge import merge_outputs, unmirror_outputs
from stages.nets.poses import solve_poses
from stages.wcpa.camera import opencv_to_rt, rotation_angle_deg
from tests.conftest import face_points, random_poses
from tests.unit.pnp_cases import challenge_camera
from tests.tiny_project import symmetric_template

SIZE = 32


def random_outputs(rng, batch, n_verts):
    return {"mu": rng.uniform(0, SIZE, (batch, n_verts, 2)), "sigma": rng.uniform(0.1, 2, (batch, n_verts)),
            "verts": rng.normal(0, 0.05, (batch, n_verts, 3))}


def unmirror(out: dict, perm: np.ndarray) -> dict:
    """unmirror_outputs (torch) on numpy outputs."""
    back = unmirror_outputs({key: torch.from_numpy(value) for key, value in out.items()}, perm, SIZE)
    return {key: value.numpy() for key, value in back.items()}


@pytest.fixture
def perm():
    return flip_permutation(symmetric_template(6, np.random.default_rng(0)))


def test_unmirroring_twice_is_the_identity(perm):
    out = random_outputs(np.random.default_rng(1), 3, len(perm))
    twice = unmirror(unmirror(out, perm), perm)
    for key in out:
        np.testing.assert_allclose(twice[key], out[key])


def test_unmirrored_point_is_where_np_flip_puts_the_pixel(perm):
    """A landmark on pixel (row 5, col c) has u = c + 0.5; in np.flip(image, width) the pixel is at
    column S - 1 - c, i.e. u = S - (c + 0.5), and the mesh is flip_mesh of the original."""
    rng = np.random.default_rng(2)
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    col = 7
    image[5, col] = 255
    mirrored = np.flip(image, axis=1)
    mirrored_col = int(np.flatnonzero(mirrored[5, :, 0])[0])
    out = random_outputs(rng, 1, len(perm))
    out["mu"][0, perm[0]] = (mirrored_col + 0.5, 5.5)      # mirrored-crop landmark of vertex 0
    back = unmirror(out, perm)
    np.testing.assert_allclose(back["mu"][0, 0], (col + 0.5, 5.5))
    np.testing.assert_allclose(back["verts"], flip_mesh(out["verts"], perm))
    np.testing.assert_allclose(back["sigma"][0, 0], out["sigma"][0, perm[0]])


@pytest.mark.parametrize("mode", ["none", "3d", "both"])
def test_merging_with_an_exact_mirror_copy_returns_the_prediction(perm, mode):
    """A perfectly mirror-equivariant network: its output on the mirror is unmirror(output)."""
    out = random_outputs(np.random.default_rng(3), 4, len(perm))
    on_mirror = unmirror(out, perm)
    merged = merge_outputs(out, unmirror(on_mirror, perm), mode)
    for key in ("mu", "sigma", "verts"):
        np.testing.assert_allclose(merged[key], out[key], rtol=1e-12, atol=1e-12)


def test_merge_modes_average_what_they_say(perm):
    rng = np.random.default_rng(4)
    a, b = random_outputs(rng, 2, len(perm)), random_outputs(rng, 2, len(perm))
    three_d = merge_outputs(a, b, "3d")
    np.testing.assert_allclose(three_d["verts"], (a["verts"] + b["verts"]) / 2)
    np.testing.assert_array_equal(three_d["mu"], a["mu"])
    both = merge_outputs(a, b, "both")
    np.testing.assert_allclose(both["mu"], (a["mu"] + b["mu"]) / 2)
    np.testing.assert_allclose(both["sigma"] ** 2, (a["sigma"] ** 2 + b["sigma"] ** 2) / 2)
    with pytest.raises(ValueError, match="infer.flip_merge"):
        merge_outputs(a, b, "2d")


def test_opencv_and_batched_pnp_agree_on_noiseless_landmarks(camera):
    rng = np.random.default_rng(5)
    n = 6
    verts = np.stack([face_points(rng, 200) for _ in range(n)])
    poses = random_poses(rng, n)
    uv = camera.project(verts, poses)
    sigma = rng.uniform(0.5, 2.0, (n, 200))
    opencv = solve_poses("opencv", verts, uv, sigma, camera, "ITERATIVE", workers=2)
    refined = solve_poses("opencv", verts, uv, sigma, camera, "EPNP+ITERATIVE", workers=2)
    batched = solve_poses("batched", verts, uv, sigma, camera)
    for solved in (opencv, refined, batched):
        assert rotation_angle_deg(solved[:, :3, :3], poses[:, :3, :3]).max() < 1e-4
        np.testing.assert_allclose(solved[:, 3, :3], poses[:, 3, :3], atol=1e-7)
    np.testing.assert_allclose(opencv, batched, atol=1e-6)


def test_a_refined_solution_is_opencvs_lm_from_the_methods_pose(camera):
    """'EPNP+ITERATIVE': per face OpenCV's EPnP, then its iterative LM from that pose (the same
    calls made here directly: the same poses to rounding); rows that are NaN stay NaN."""
    rng = np.random.default_rng(7)
    verts = np.stack([face_points(rng, 150) for _ in range(4)])
    poses = random_poses(rng, 4)
    uv = camera.project(verts, poses) + rng.normal(0, 2.0, (4, 150, 2))
    uv[2] = np.nan
    refined = solve_poses("opencv", verts, uv, np.ones((4, 150)), camera, "EPNP+ITERATIVE", workers=2)
    epnp = solve_poses("opencv", verts, uv, np.ones((4, 150)), camera, "EPNP", workers=2)
    assert np.isnan(refined[2]).all()
    for i in (0, 1, 3):
        _, rvec, tvec = cv2.solvePnP(verts[i], uv[i], camera.K, None, flags=cv2.SOLVEPNP_EPNP)
        _, rvec, tvec = cv2.solvePnP(verts[i], uv[i], camera.K, None, rvec, tvec, useExtrinsicGuess=True,
                                     flags=cv2.SOLVEPNP_ITERATIVE)
        np.testing.assert_allclose(refined[i], opencv_to_rt(cv2.Rodrigues(rvec)[0], tvec.ravel()), atol=1e-12)
        assert not np.allclose(refined[i], epnp[i], atol=1e-6)


@pytest.mark.parametrize("failure", ["raises", "writes NaN into its start"])
def test_a_refinement_that_fails_keeps_the_methods_pose(camera, monkeypatch, failure):
    """An LM that raises, or one that reports success with NaN written into the vectors it was
    given (OpenCV writes its answer into them), leaves EPnP's pose."""
    rng = np.random.default_rng(8)
    verts = np.stack([face_points(rng, 150) for _ in range(2)])
    uv = camera.project(verts, random_poses(rng, 2)) + rng.normal(0, 2.0, (2, 150, 2))
    solve = cv2.solvePnP

    def failing_lm(*args, flags, **kwargs):
        if flags != cv2.SOLVEPNP_ITERATIVE:
            return solve(*args, flags=flags, **kwargs)
        if failure == "raises":
            raise cv2.error("LM failed")
        rvec, tvec = args[4], args[5]
        rvec[:], tvec[:] = np.nan, np.nan
        return True, rvec, tvec

    epnp = solve_poses("opencv", verts, uv, np.ones((2, 150)), camera, "EPNP")
    monkeypatch.setattr(cv2, "solvePnP", failing_lm)
    assert np.array_equal(solve_poses("opencv", verts, uv, np.ones((2, 150)), camera, "EPNP+ITERATIVE"), epnp)


def test_pnp_of_nan_input_is_nan_and_other_rows_are_solved(camera):
    rng = np.random.default_rng(6)
    verts = np.stack([face_points(rng, 100) for _ in range(3)])
    poses = random_poses(rng, 3)
    uv = camera.project(verts, poses)
    uv[1] = np.nan
    for method in ("opencv", "batched"):
        solved = solve_poses(method, verts, uv, np.ones((3, 100)), camera)
        assert np.isnan(solved[1]).all()
        np.testing.assert_allclose(solved[[0, 2], 3, :3], poses[[0, 2], 3, :3], atol=1e-7)


def test_unknown_pnp_settings_name_the_param(camera):
    verts, uv, sigma = np.zeros((1, 8, 3)), np.zeros((1, 8, 2)), np.ones((1, 8))
    with pytest.raises(ValueError, match="infer.pnp_flags"):
        solve_poses("opencv", verts, uv, sigma, camera, "MAGIC")
    with pytest.raises(ValueError, match="only ITERATIVE can refine"):
        solve_poses("opencv", verts, uv, sigma, camera, "EPNP+SQPNP")
    with pytest.raises(ValueError, match="infer.pnp="):
        solve_poses("dlt", verts, uv, sigma, camera)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_poses_on_cuda_are_the_cpus():
    """infer.pnp: batched on a GPU solves each batch in one task on its own CUDA stream (masked
    LM): the poses are the CPU solver's (float64, 1 / sigma weights), NaN rows kept NaN."""
    rng = np.random.default_rng(7)
    verts = np.stack([face_points(rng, 400) for _ in range(24)]).astype(np.float32)
    camera = challenge_camera()
    R_t = random_poses(rng, 24)
    uv = np.stack([camera.project(v, p) for v, p in zip(verts, R_t)]) + rng.normal(0, 1.0, (24, 400, 2))
    sigma = rng.uniform(0.5, 2.0, (24, 400)).astype(np.float32)
    uv[3] = np.nan
    cpu = solve_poses("batched", verts, uv, sigma, camera, workers=2)
    cuda = solve_poses("batched", verts, uv, sigma, camera, workers=2, device=torch.device("cuda"))
    assert np.isnan(cuda[3]).all() and np.isfinite(np.delete(cuda, 3, 0)).all()
    np.testing.assert_allclose(np.delete(cuda, 3, 0), np.delete(cpu, 3, 0), atol=1e-7)
