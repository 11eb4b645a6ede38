"""The submission format: layout of the columns, validation of each kind of defect, reproducibility."""
import io
import tracemalloc
import zipfile

import numpy as np
import pytest

from stages.common.rowfile import RowReader
from stages.wcpa import submission
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
@pytest.mark.parametrize("block_rows", [512, 3])
def test_each_defect_is_rejected_with_its_reason(predictions, defect, message, block_rows, monkeypatch):
    monkeypatch.setattr(submission, "BLOCK_ROWS", block_rows)     # 3: row 4 is in the second block
    with pytest.raises(SubmissionError, match=message):
        validate_submission(_broken(predictions, defect), N, V, name="sub.npy")


def test_writing_twice_gives_identical_bytes(predictions, tmp_path):
    write_submission(tmp_path / "a" / "sub.npy", tmp_path / "a" / "sub.zip", *predictions, N, V)
    write_submission(tmp_path / "b" / "sub.npy", tmp_path / "b" / "sub.zip", *predictions, N, V)
    for name in ("sub.npy", "sub.zip"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with zipfile.ZipFile(tmp_path / "a" / "sub.zip") as archive:
        assert archive.namelist() == ["sub.npy"]
    expected = to_submission(*predictions)
    assert np.array_equal(read_submission(tmp_path / "a" / "sub.zip", N, V), expected)
    assert np.array_equal(read_submission(tmp_path / "a" / "sub.npy", N, V), expected)


def test_blocks_written_from_row_readers_are_the_bytes_of_one_np_save_and_writestr(predictions, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(submission, "BLOCK_ROWS", 4)
    np.save(tmp_path / "verts.npy", predictions[0])
    np.save(tmp_path / "R_t.npy", predictions[1])
    write_submission(tmp_path / "sub.npy", tmp_path / "sub.zip", RowReader(tmp_path / "verts.npy"),
                     RowReader(tmp_path / "R_t.npy"), N, V)
    buffer = io.BytesIO()
    np.save(buffer, to_submission(*predictions))
    assert (tmp_path / "sub.npy").read_bytes() == buffer.getvalue()
    assert (tmp_path / "sub.zip").read_bytes() == one_zip(tmp_path, buffer.getvalue())


def one_zip(folder, payload: bytes) -> bytes:
    """The bytes of a zip of sub.npy written at once (ZipFile.writestr) with the submission's date
    and mode: what the streamed zip must equal."""
    entry = zipfile.ZipInfo("sub.npy", date_time=submission.ZIP_DATE)
    entry.external_attr = submission.ZIP_MODE << 16
    entry.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(folder / "one.zip", "w") as archive:
        archive.writestr(entry, payload)
    return (folder / "one.zip").read_bytes()


def test_writing_holds_a_block_of_rows_not_the_whole_array(tmp_path, monkeypatch):
    rows, n_verts = 4000, 400
    rng = np.random.default_rng(5)
    verts = np.broadcast_to(face_points(rng, n_verts).astype(np.float32), (rows, n_verts, 3))
    np.save(tmp_path / "verts.npy", verts)
    np.save(tmp_path / "R_t.npy", np.broadcast_to(random_poses(rng, 1)[0], (rows, 4, 4)))
    monkeypatch.setattr(submission, "BLOCK_ROWS", 64)
    tracemalloc.start()
    try:
        write_submission(tmp_path / "sub.npy", tmp_path / "sub.zip", RowReader(tmp_path / "verts.npy"),
                         RowReader(tmp_path / "R_t.npy"), rows, n_verts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    whole = rows * (3 * n_verts + 12) * 4                # the submission array: 19 MB, zipped in 1 MB pieces
    assert peak < whole / 4, f"{peak / 1e6:.1f} MB traced for a {whole / 1e6:.1f} MB submission"
    last = to_submission(verts[-1:], np.load(tmp_path / "R_t.npy")[-1:])[0]
    assert np.array_equal(np.load(tmp_path / "sub.npy", mmap_mode="r")[-1], last)
    assert (tmp_path / "sub.zip").read_bytes() == one_zip(tmp_path, (tmp_path / "sub.npy").read_bytes())


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
