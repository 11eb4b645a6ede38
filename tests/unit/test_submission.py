"""The submission format: layout of the columns, validation of each kind of defect, reproducibility."""
import zipfile

import numpy as np
import pytest

from stages.wcpa.submission import (SubmissionError, from_submission, read_submission, to_submission,
                                    validate_submission, write_submission)
from tests.conftest import face_points, random_poses

N, V = 6, 50


@pytest.fixture
def predictions():
    rng = np.random.default_rng(3)
    verts = np.stack([face_points(rng, V) for _ in range(N)]).astype(np.float32)
    return verts, random_poses(rng, N)


def test_columns_are_vertices_then_row_vector_rotation_then_translation(predictions):
    verts, R_t = predictions
    array = to_submission(verts, R_t)
    assert array.shape == (N, 3 * V + 12) and array.dtype == np.float32
    assert array[2, 3:6].tolist() == verts[2, 1].tolist()
    assert np.allclose(array[2, 3 * V:3 * V + 3], R_t[2, 0, :3])           # first row of R_t, not of R^T
    assert np.allclose(array[2, 3 * V + 3:3 * V + 6], R_t[2, 1, :3])
    assert np.allclose(array[2, -3:], R_t[2, 3, :3])
    back_verts, back_R_t = from_submission(array)
    assert np.array_equal(back_verts, verts)
    assert np.allclose(back_R_t, R_t, atol=1e-6)


def test_a_valid_submission_passes(predictions):
    validate_submission(to_submission(*predictions), N, V)


def _broken(predictions, defect):
    verts, R_t = predictions
    array = to_submission(verts, R_t)
    R_t = R_t.copy()
    if defect == "nan":
        array[4, 7] = np.nan
    elif defect == "scaled":
        R_t[4, :3, :3] *= 1.01
        array = to_submission(verts, R_t)
    elif defect == "reflection":
        R_t[4, :3, 0] *= -1
        array = to_submission(verts, R_t)
    elif defect == "behind":
        R_t[4, 3, 2] = 0.3
        array = to_submission(verts, R_t)
    elif defect == "micrometres":
        array = to_submission(verts * 1e6, R_t)
    elif defect == "far":
        R_t[4, 3, :3] = [0.0, 0.0, -50.0]
        array = to_submission(verts, R_t)
    elif defect == "float64":
        array = array.astype(np.float64)
    elif defect == "columns":
        array = array[:, 1:]
    elif defect == "rows":
        array = array[:-1]
    elif defect == "flat":
        array = array.ravel()
    return array


@pytest.mark.parametrize("defect, message", [
    ("nan", r"sub\.npy: row 4 has NaN"),
    ("scaled", r"sub\.npy: row 4 rotation is not orthonormal"),
    ("reflection", r"sub\.npy: row 4 rotation has det -1"),
    ("behind", r"sub\.npy: row 4 has tz = 0.3000 m >= 0"),
    ("micrometres", r"sub\.npy: row 0 has a vertex .* m from the origin, more than MAX_VERTEX_RADIUS_M = 0.5 m"),
    ("far", r"sub\.npy: row 4 has \|t\| = 50 m, not below MAX_DISTANCE_M = 10.0 m"),
    ("float64", r"sub\.npy: dtype float64, expected float32"),
    ("columns", r"sub\.npy: 161 columns, expected 162"),
    ("rows", r"sub\.npy: 5 rows, expected 6"),
    ("flat", r"sub\.npy: expected a 2-D array"),
])
def test_each_defect_is_rejected_with_its_reason(predictions, defect, message):
    with pytest.raises(SubmissionError, match=message):
        validate_submission(_broken(predictions, defect), N, V, name="sub.npy")


def test_writing_twice_gives_identical_bytes(predictions, tmp_path):
    first = write_submission(tmp_path / "a" / "sub.npy", tmp_path / "a" / "sub.zip", *predictions, N, V)
    write_submission(tmp_path / "b" / "sub.npy", tmp_path / "b" / "sub.zip", *predictions, N, V)
    for name in ("sub.npy", "sub.zip"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with zipfile.ZipFile(tmp_path / "a" / "sub.zip") as archive:
        assert archive.namelist() == ["sub.npy"]
    assert np.array_equal(read_submission(tmp_path / "a" / "sub.zip", N, V), first)
    assert np.array_equal(read_submission(tmp_path / "a" / "sub.npy", N, V), first)


def test_invalid_predictions_write_nothing(predictions, tmp_path):
    verts, R_t = predictions
    verts = verts.copy()
    verts[1, 2, 0] = np.inf
    with pytest.raises(SubmissionError, match="row 1 has NaN or inf"):
        write_submission(tmp_path / "sub.npy", tmp_path / "sub.zip", verts, R_t, N, V)
    assert list(tmp_path.iterdir()) == []


def test_reading_a_missing_or_foreign_file_names_it(tmp_path):
    with pytest.raises(SubmissionError, match="missing.npy: submission file not found"):
        read_submission(tmp_path / "missing.npy", N, V)
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(SubmissionError, match="text.npy: not a readable submission"):
        read_submission(tmp_path / "text.npy", N, V)
