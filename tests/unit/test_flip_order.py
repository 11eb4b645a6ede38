"""Landmark mirror order: the iBUG-68 table for 68 landmarks, else from the mesh, else None (flips off)."""
import logging

import cv2
import numpy as np
import pytest

from stages.coarse.augment import Jitter
from stages.coarse.sources import Samples, ViewSet
from stages.coarse.targets import landmark_flip_order
from stages.face import ibug68
from stages.face.mesh import flip_permutation, kpt_flip_permutation
from stages.face.pca import fit_pca, load_flip_perm, vertex_flip
from stages.synthetic.model import build_face_model
from stages.wcpa.camera import Camera, make_rt
from stages.wcpa.layout import Resources
from tests.conftest import CHALLENGE_PROJ
from tests.stages.tiny_data import asymmetric_mesh
from tests.stages.tiny_wcpa import KPT_IND, grid_mesh


def _resources(template: np.ndarray, kpt_ind: np.ndarray) -> Resources:
    return Resources(camera=Camera(CHALLENGE_PROJ, 200, 200), template=template,
                     faces=np.zeros((0, 3), np.int64), kpt_ind=kpt_ind)


def test_ibug_table_is_an_involution_with_the_midline_fixed():
    assert np.array_equal(ibug68.MIRROR[ibug68.MIRROR], np.arange(ibug68.N_POINTS))
    assert np.flatnonzero(ibug68.MIRROR == np.arange(ibug68.N_POINTS)).tolist() == [
        8, 27, 28, 29, 30, 33, 51, 57, 62, 66]


def test_ibug_table_mirrors_the_synthetic_face_seen_frontally():
    model = build_face_model()
    camera = Camera(CHALLENGE_PROJ, 800, 800)
    uv = camera.project(model.template[model.kpt_ind], make_rt(np.eye(3), [0.0, 0.0, -0.5]))
    np.testing.assert_allclose(camera.flip_points(uv)[ibug68.MIRROR], uv, atol=1e-6)
    from_mesh = kpt_flip_permutation(model.kpt_ind, flip_permutation(model.template))
    assert np.array_equal(from_mesh, ibug68.MIRROR)


def test_symmetric_mesh_gives_the_order_of_its_flip_permutation():
    template, _ = grid_mesh()
    order = landmark_flip_order(_resources(template, KPT_IND))
    assert np.array_equal(order, kpt_flip_permutation(KPT_IND, flip_permutation(template)))


def test_asymmetric_mesh_with_68_landmarks_gives_the_ibug_order():
    template, kpt_ind = asymmetric_mesh(np.random.default_rng(0))
    with pytest.raises(ValueError):
        flip_permutation(template)
    assert np.array_equal(landmark_flip_order(_resources(template, kpt_ind)), ibug68.MIRROR)


def test_68_landmarks_the_template_pairs_the_wrong_way_round_get_the_ibug_order_and_a_warning(caplog):
    """A closed mouth puts the upper and lower inner lips nearly on top of each other: here the
    vertices of landmarks 63 and 67 trade places, the mesh stays symmetric, and its mirror pairs
    61 with 67 and 63 with 65 (a valid involution that passes every check of the mesh); the
    landmarks' meaning pairs 61 with 63 and 65 with 67."""
    model = build_face_model()
    template = model.template.copy()
    v63, v67 = model.kpt_ind[63], model.kpt_ind[67]
    template[[v63, v67]] = template[[v67, v63]]
    from_mesh = kpt_flip_permutation(model.kpt_ind, flip_permutation(template))
    assert from_mesh[61] == 67 and from_mesh[63] == 65
    with caplog.at_level(logging.WARNING):
        order = landmark_flip_order(_resources(template, model.kpt_ind))
    assert np.array_equal(order, ibug68.MIRROR)
    assert "pairs landmarks [61, 63, 65, 67] with [67, 65, 63, 61]" in caplog.text and "using the table" in caplog.text


def test_asymmetric_mesh_with_other_landmarks_gives_none_and_says_why(caplog):
    template, _ = grid_mesh()
    template[[1, 7], 0] += 0.02
    with caplog.at_level(logging.WARNING):
        order = landmark_flip_order(_resources(template, KPT_IND))
    assert order is None
    assert "6 landmarks are not the iBUG-68 set" in caplog.text and "flips are off" in caplog.text


def test_training_views_without_an_order_refuse_flips_and_run_without(tmp_path):
    path = tmp_path / "0.jpg"
    cv2.imwrite(str(path), np.zeros((64, 64, 3), np.uint8))
    samples = Samples(np.array([str(path).encode()]), np.array([b"s/a/0"]),
                      np.random.default_rng(0).uniform(20, 44, (1, 6, 2)), (64, 64))
    jitters = {name: Jitter(0.0, 1.0, 0.0) for name in ("locate", "refine")}
    sizes = {"locate": 32, "refine": 32}
    with pytest.raises(ValueError, match="flip order"):
        ViewSet(samples, sizes, 1.2, 0, jitters, None, 0.5)
    item = ViewSet(samples, sizes, 1.2, 0, jitters, None, 0.0)[(0, 0)]
    assert item["error"] == "" and item["refine"]["image"].shape == (32, 32, 3)
    assert item["refine"]["points"].shape == (6, 2)


def _basis(template: np.ndarray):
    """A 2-component PCA basis of three noisy copies of `template` (V, 3)."""
    noise = np.random.default_rng(1).normal(0.0, 1e-3, (3,) + template.shape)
    return fit_pca(template + noise, 2)


def test_basis_of_asymmetric_meshes_records_why_and_flips_stop_naming_the_param(tmp_path, caplog):
    template, _ = asymmetric_mesh(np.random.default_rng(0))
    with caplog.at_level(logging.WARNING):
        entry = vertex_flip(template[None])
    assert set(entry) == {"flip_problem"} and "infer.flip_merge" in caplog.text
    _basis(template).save(tmp_path / "basis.npz", **entry)
    with pytest.raises(ValueError, match=r"basis.npz: no vertex flip permutation \(.*not symmetric\); "
                                         r"set infer.flip_merge: none"):
        load_flip_perm(tmp_path / "basis.npz", "set infer.flip_merge: none")


def test_basis_of_symmetric_meshes_keeps_its_flip_permutation(tmp_path):
    template, _ = grid_mesh()
    entry = vertex_flip(template[None])
    _basis(template).save(tmp_path / "basis.npz", **entry)
    assert np.array_equal(load_flip_perm(tmp_path / "basis.npz", "unused"), flip_permutation(template))


def test_the_flip_check_measures_the_mean_meshs_asymmetry_and_the_landmark_pairs(caplog):
    """pca's metrics: a symmetric mesh mirrors onto itself (0 mm) with its landmarks paired as
    the iBUG-68 table pairs them; its symmetry plane moved 1 mm off x = 0, the mirror misses
    every vertex by 2 mm; two inner-lip vertices traded (a valid involution of the mesh), the
    landmarks disagree with the table and a warning names them."""
    from stages.pca import flip_check
    model = build_face_model()
    perm = flip_permutation(model.template)
    check = flip_check(model.template, perm, model.kpt_ind)
    assert check["asymmetry_max_mm"] < 1e-9 and check["landmark_pairs_as_ibug68"]
    moved = flip_check(model.template + [0.001, 0.0, 0.0], perm, model.kpt_ind)
    assert moved["asymmetry_mean_mm"] == pytest.approx(2.0) and moved["asymmetry_max_mm"] == pytest.approx(2.0)
    template = model.template.copy()
    v63, v67 = model.kpt_ind[63], model.kpt_ind[67]
    template[[v63, v67]] = template[[v67, v63]]
    with caplog.at_level(logging.WARNING):
        swapped = flip_check(template, flip_permutation(template), model.kpt_ind)
    assert not swapped["landmark_pairs_as_ibug68"] and "pairs landmarks [61, 63, 65, 67]" in caplog.text
