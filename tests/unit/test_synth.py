"""The synthetic data generator: labels vs. pixels, mesh symmetry, layout, determinism, guard,
and the blendshapes' locality and meaning."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages import synth
from stages.common.params import load_params
from stages.face.mesh import flip_mesh, flip_permutation, kpt_flip_permutation
from stages.synthetic.blendshapes import ARKIT_NAMES, build_blendshapes
from stages.synthetic.model import build_face_model
from stages.wcpa.camera import flip_rt
from stages.wcpa.layout import (image_path, info_path, landmarks_path, list_path, load_labels, load_resources,
                                read_image, read_landmarks, read_list)
from tests import tiny_project

REPO = Path(__file__).resolve().parents[2]
# iBUG-68 mirror pairs, written out independently of the generator.
IBUG_PAIRS = ([(k, 16 - k) for k in range(8)] + [(17, 26), (18, 25), (19, 24), (20, 23), (21, 22)]
              + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
              + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)])
IBUG_SELF = [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]


def ibug_mirror() -> np.ndarray:
    mirror = np.arange(68)
    for a, b in IBUG_PAIRS:
        mirror[a], mirror[b] = b, a
    return mirror


def write_params(tmp: Path, name: str, real_root: str | None = None) -> Path:
    out, gt = tmp / name / "synth", tmp / name / "synth_test_gt"
    params = load_params(REPO / "params.yaml").replace(
        data={"root": real_root or str(out), "test_gt": str(gt)},
        synth={"out": str(out), "test_gt_out": str(gt), "train_subjects": 2, "test_subjects": 1,
               "actions_per_subject": 2, "frames_per_action": 1, "workers": 1})
    path = tmp / f"{name}.yaml"
    tiny_project.write_params(path, params)
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synth")
    synth.main(["--params", str(write_params(tmp, "a"))])
    return tmp / "a"


def test_landmark_files_are_rounded_projections_of_the_info(generated):
    root = generated / "synth"
    res = load_resources(root)
    table = read_list(list_path(root, "train"))
    verts, poses = load_labels(root, table, res.n_verts)
    for row, v, R_t in zip(table.itertuples(index=False), verts, poses):
        written = read_landmarks(landmarks_path(root, row), res.n_kpts)
        assert np.abs(res.camera.project(v[res.kpt_ind], R_t) - written).max() <= 0.5 + 1e-6


def test_layout_reader_reads_what_synth_writes_and_test_gt_is_elsewhere(generated):
    root, gt = generated / "synth", generated / "synth_test_gt"
    res = load_resources(root)
    assert (res.n_verts, res.n_kpts) == (1220, 68)
    assert res.camera.fx == pytest.approx(1.57443701 * 400)
    train, test = read_list(list_path(root, "train")), read_list(list_path(root, "test"))
    assert set(train.subject_id).isdisjoint(test.subject_id)
    assert (train.subject_id.str.len() == 6).all() and "neutral" in set(train.facial_action)
    for row in test.itertuples(index=False):
        assert read_image(image_path(root, row)).shape == (800, 800, 3)
        assert landmarks_path(root, row).is_file()
        assert not info_path(root, row).exists()
        assert info_path(gt, row).is_file()
    assert not list((root / "info").rglob("*")) or all(
        p.parts[-3] in set(train.subject_id) for p in (root / "info").rglob("*.npz"))
    submission = np.load(root / "resources" / "example_submission.npy")
    assert submission.shape == (len(test), 1220 * 3 + 12) and submission.dtype == np.float32
    assert sorted(p.stem for p in (root / "blendshapes").glob("*.obj")) == sorted(ARKIT_NAMES)


def test_same_seed_gives_identical_data(generated, tmp_path):
    synth.main(["--params", str(write_params(tmp_path, "b"))])
    for name in ("synth", "synth_test_gt"):
        first = sorted(p.relative_to(generated / name) for p in (generated / name).rglob("*") if p.is_file())
        second = sorted(p.relative_to(tmp_path / "b" / name) for p in (tmp_path / "b" / name).rglob("*") if p.is_file())
        assert first == second
        for rel in first:
            assert (generated / name / rel).read_bytes() == (tmp_path / "b" / name / rel).read_bytes(), rel


def test_real_data_guard_writes_only_the_marker(tmp_path):
    synth.main(["--params", str(write_params(tmp_path, "real", real_root=str(tmp_path / "download")))])
    for name in ("synth", "synth_test_gt"):
        files = [p.name for p in (tmp_path / "real" / name).rglob("*")]
        assert files == [synth.MARKER]


def test_mesh_size_topology_and_symmetry():
    model = build_face_model()
    verts, faces = model.template, model.faces
    assert verts.shape == (1220, 3)
    size_mm = np.ptp(verts, axis=0) * 1000
    assert 140 < size_mm[0] < 175 and 165 < size_mm[1] < 200 and 75 < size_mm[2] < 110
    eyes_mm = np.linalg.norm(verts[model.kpt_ind[36]] - verts[model.kpt_ind[45]]) * 1000
    assert 85 < eyes_mm < 105
    assert len(np.unique(faces)) == 1220 and 2000 < len(faces) < 2600
    perm = flip_permutation(verts)
    assert np.array_equal(perm[perm], np.arange(1220))
    assert np.abs(flip_mesh(verts, perm) - verts).max() < 1e-9
    assert np.array_equal(kpt_flip_permutation(model.kpt_ind, perm), ibug_mirror())
    assert all(perm[model.kpt_ind[k]] == model.kpt_ind[k] for k in IBUG_SELF)


def test_four_boundary_loops():
    faces = build_face_model().faces
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    assert counts.max() == 2
    boundary = unique[counts == 1]
    parent = {int(v): int(v) for v in boundary.ravel()}

    def find(v):
        while parent[v] != v:
            v = parent[v]
        return v
    for a, b in boundary:
        parent[find(int(a))] = find(int(b))
    assert len({find(v) for v in parent}) == 4


def test_flipped_pose_and_mesh_project_to_the_mirrored_landmarks(generated):
    root = generated / "synth"
    res = load_resources(root)
    perm = flip_permutation(res.template)
    kpt_perm = kpt_flip_permutation(res.kpt_ind, perm)
    verts, poses = load_labels(root, read_list(list_path(root, "train")), res.n_verts)
    for v, R_t in zip(verts, poses):
        original = res.camera.project(v[res.kpt_ind], R_t)
        flipped = res.camera.project(flip_mesh(v, perm)[res.kpt_ind], flip_rt(R_t))
        np.testing.assert_allclose(flipped, res.camera.flip_points(original)[kpt_perm], atol=1e-6)


def test_identity_spread_is_a_few_millimetres():
    model = build_face_model()
    coeffs = np.random.default_rng(0).standard_normal((300, len(model.identity_names)))
    shapes = np.stack([model.identity(c) for c in coeffs])
    std_mm = np.linalg.norm(shapes.std(axis=0), axis=1) * 1000
    assert 2.0 < np.median(std_mm) < 8.0 and std_mm.max() < 15.0


def test_blendshapes_are_local_and_nonzero():
    moved = np.linalg.norm(build_blendshapes(), axis=2) > 1e-4
    assert moved.any(axis=1).all()
    assert moved.mean(axis=1).max() < 0.5


def _gap(verts: np.ndarray, upper: int, lower: int, kpt: np.ndarray) -> float:
    return float(verts[kpt[upper], 1] - verts[kpt[lower], 1])


def test_jaw_open_and_blink_do_what_their_names_say():
    model = build_face_model()
    kpt, template = model.kpt_ind, model.template
    shapes = dict(zip(ARKIT_NAMES, build_blendshapes()))
    open_mouth = template + shapes["jawOpen"]
    assert _gap(open_mouth, 62, 66, kpt) > _gap(template, 62, 66, kpt) + 0.01
    blink = template + shapes["eyeBlinkLeft"]
    left_before, left_after = _gap(template, 44, 46, kpt), _gap(blink, 44, 46, kpt)
    assert template[kpt[44], 0] > 0 and left_after < 0.25 * left_before
    assert _gap(blink, 37, 41, kpt) == pytest.approx(_gap(template, 37, 41, kpt))
    smile = template + shapes["mouthSmileLeft"]
    assert smile[kpt[54], 1] > template[kpt[54], 1] + 0.003 and smile[kpt[48], 1] == pytest.approx(template[kpt[48], 1])

