"""Bad input in the data layout stops with a message naming the file and the problem."""
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from stages.wcpa.layout import (DataError, data_image_size, image_path, info_path, landmarks_path,
                                list_path, load_labels, read_image, read_info, read_landmarks, read_list,
                                write_landmarks, write_list)

ROW = pd.DataFrame({"subject_id": ["007"], "facial_action": ["01"], "img_id": ["0042"]})


def _named(path, problem: str) -> str:
    """Regex matching 'path: problem' literally."""
    return re.escape(f"{path}: {problem}")


def _write_sample(root, row, n_verts=5, n_kpts=68):
    """One sample's image, info and landmark files under `root`."""
    for path in (image_path(root, row), info_path(root, row)):
        path.parent.mkdir(parents=True, exist_ok=True)
    ok, jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    image_path(root, row).write_bytes(jpeg.tobytes())
    R_t = np.eye(4)
    R_t[3, 2] = -0.5
    np.savez(info_path(root, row), verts=np.zeros((n_verts, 3), np.float32), R_t=R_t)
    write_landmarks(landmarks_path(root, row), np.full((n_kpts, 2), 8.0))


@pytest.fixture
def root(tmp_path):
    _write_sample(tmp_path, next(ROW.itertuples(index=False)))
    return tmp_path


@pytest.fixture
def row():
    return next(ROW.itertuples(index=False))


def test_a_good_sample_reads(root, row):
    assert read_image(image_path(root, row)).shape == (16, 16, 3)
    verts, R_t = read_info(info_path(root, row), 5)
    assert verts.shape == (5, 3) and R_t[3, 2] == -0.5
    assert read_landmarks(landmarks_path(root, row), 68).shape == (68, 2)


def test_ids_keep_leading_zeros(tmp_path):
    write_list(tmp_path / "list.csv", ROW)
    assert read_list(tmp_path / "list.csv").iloc[0].tolist() == ["007", "01", "0042"]


@pytest.mark.parametrize("kept", [20, 0.9])
def test_corrupt_jpeg_names_the_file(root, row, kept):
    """A file cut in its header, or one cut late (a download that stopped: libjpeg would fill the
    missing rows with grey and warn), is no image."""
    path = image_path(root, row)
    data = path.read_bytes()
    path.write_bytes(data[:kept if isinstance(kept, int) else int(len(data) * kept)])
    with pytest.raises(DataError, match=_named(path, "not a decodable image")):
        read_image(path)


def test_missing_npz_names_the_file(root, row):
    path = info_path(root, row)
    path.unlink()
    with pytest.raises(DataError, match=_named(path, "info file not found")):
        read_info(path)


def test_npz_without_R_t_names_the_file_and_the_key(root, row):
    path = info_path(root, row)
    np.savez(path, verts=np.zeros((5, 3)))
    with pytest.raises(DataError, match=_named(path, "missing key 'R_t'")):
        read_info(path)


def test_truncated_npz_names_the_file(root, row):
    path = info_path(root, row)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match=_named(path, "not a readable npz")):
        read_info(path)


def test_npz_with_other_vertex_count_names_the_file(root, row):
    with pytest.raises(DataError, match=_named(info_path(root, row), "verts has shape (5, 3), expected (6, 3)")):
        read_info(info_path(root, row), 6)


def test_landmarks_of_67_lines_name_the_file(root, row):
    path = landmarks_path(root, row)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:67]))
    with pytest.raises(DataError, match=_named(path, "67 lines, expected 68")):
        read_landmarks(path, 68)


def test_landmarks_with_words_name_the_file(root, row):
    path = landmarks_path(root, row)
    path.write_text("x y\n" * 68)
    with pytest.raises(DataError, match=_named(path, "each line must be two")):
        read_landmarks(path, 68)


def test_list_row_pointing_at_nothing_stops_reading_naming_each_file(root):
    ghost = pd.DataFrame({"subject_id": ["007"], "facial_action": ["01"], "img_id": ["9999"]})
    ghost_row = next(ghost.itertuples(index=False))
    with pytest.raises(DataError, match=_named(image_path(root, ghost_row), "image not found")):
        read_image(image_path(root, ghost_row))
    with pytest.raises(DataError, match=_named(landmarks_path(root, ghost_row), "landmarks file not found")):
        read_landmarks(landmarks_path(root, ghost_row), 68)
    with pytest.raises(DataError, match=_named(info_path(root, ghost_row), "info file not found")):
        load_labels(root, ghost, 5)


def test_list_without_an_id_column_names_the_file(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("subject_id,img_id\n1,2\n")
    with pytest.raises(DataError, match=_named(path, "missing column")):
        read_list(path)
    path.write_text("subject_id, facial_action, img_id\n1,a,2\n")          # spaces after the commas
    with pytest.raises(DataError, match=re.escape("its columns: ['subject_id', ' facial_action', ' img_id']")):
        read_list(path)


def test_read_list_stops_on_a_duplicate_row(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("subject_id,facial_action,img_id\n007,01,0042\n007,01,0043\n007,01,0042\n")
    with pytest.raises(DataError, match=_named(path, "line 4 repeats sample 007/01/0042")):
        read_list(path)


@pytest.mark.parametrize("bad_id", ["../etc", "..", "/abs", "a/b", "a\\b", "C:x", "."])
def test_read_list_stops_on_an_id_that_could_leave_the_data_root(tmp_path, bad_id):
    path = tmp_path / "list.csv"
    pd.DataFrame({"subject_id": ["007", "007"], "facial_action": ["01", bad_id],
                  "img_id": ["0042", "0043"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=_named(path, f"line 3: facial_action {bad_id!r} is not a plain name")):
        read_list(path)


def _train_root(tmp_path, sizes):
    """A data root whose train list has one image per (width, height) in `sizes` -> the table."""
    table = pd.DataFrame({"subject_id": ["001"] * len(sizes), "facial_action": ["01"] * len(sizes),
                          "img_id": [f"{k:04d}" for k in range(len(sizes))]})
    write_list(list_path(tmp_path, "train"), table)
    for row, (width, height) in zip(table.itertuples(index=False), sizes):
        image_path(tmp_path, row).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_path(tmp_path, row)), np.zeros((height, width, 3), np.uint8))
    return table


def test_image_of_another_size_names_the_file_and_both_sizes(root, row):
    path = image_path(root, row)
    with pytest.raises(DataError, match=_named(path, "image is 16x16, the data set's images are 640x480")):
        read_image(path, (640, 480))
    assert read_image(path, (16, 16)).shape == (16, 16, 3)


def test_an_odd_first_image_does_not_set_the_data_set_size(tmp_path):
    table = _train_root(tmp_path, [(640, 480)] + [(200, 200)] * 3)
    assert data_image_size(tmp_path) == (200, 200)
    first = image_path(tmp_path, next(table.itertuples(index=False)))
    with pytest.raises(DataError, match=_named(first, "image is 640x480, the data set's images are 200x200")):
        read_image(first, data_image_size(tmp_path))


def test_an_unreadable_first_image_does_not_stop_the_size(tmp_path):
    table = _train_root(tmp_path, [(200, 200)] * 3)
    image_path(tmp_path, next(table.itertuples(index=False))).write_bytes(b"")
    assert data_image_size(tmp_path) == (200, 200)


def test_first_images_without_a_majority_size_are_all_named(tmp_path):
    table = _train_root(tmp_path, [(640, 480), (200, 200)])
    paths = [str(image_path(tmp_path, row)) for row in table.itertuples(index=False)]
    with pytest.raises(DataError, match=f"no majority.*{re.escape(paths[0])}.*{re.escape(paths[1])}"):
        data_image_size(tmp_path)


@pytest.mark.filterwarnings("ignore::pandas.errors.ParserWarning")      # pandas on the empty field past the header
def test_a_trailing_comma_on_the_rows_keeps_the_ids_in_their_columns(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("subject_id,facial_action,img_id\n007,01,0042,\n007,01,0043,\n")
    assert read_list(path).values.tolist() == [["007", "01", "0042"], ["007", "01", "0043"]]


def test_an_id_with_spaces_around_it_stops_naming_the_row(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("subject_id,facial_action,img_id\n007,01,0042\n007,neutral ,0043\n")
    with pytest.raises(DataError, match=_named(path, "row 3 has an id with spaces around it")):
        read_list(path)


@pytest.mark.parametrize("change, problem", [
    ("transposed", "is not [[R, 0], [t, 1]]"),
    ("mirror", "has no rotation in its upper 3 x 3 (det -1.0000)"),
    ("behind", "puts the face behind the camera (tz = 0.5000 m"),
])
def test_an_info_pose_that_is_no_challenge_pose_names_the_file(root, row, change, problem):
    """A column-vector (transposed) R_t, a reflection, or a face behind the camera (a flipped sign):
    the labels would misplace every crop and projection."""
    path = info_path(root, row)
    R_t = np.eye(4)
    R_t[3, :3] = [0.01, 0.02, -0.5]
    if change == "transposed":
        R_t = R_t.T
    elif change == "mirror":
        R_t[0, 0] = -1
    else:
        R_t[3, 2] = 0.5
    np.savez(path, verts=np.zeros((5, 3), np.float32), R_t=R_t)
    with pytest.raises(DataError, match=_named(path, "R_t " + problem)):
        read_info(path)


def test_a_byte_order_mark_before_the_numbers_is_skipped(tmp_path):
    """A landmark file saved by an editor that writes a UTF-8 BOM reads as the plain file does
    (it stopped on the first number)."""
    (tmp_path / "lm.txt").write_text("".join(f"{i} {2 * i}\n" for i in range(68)), encoding="utf-8-sig")
    assert read_landmarks(tmp_path / "lm.txt", 68)[1].tolist() == [1.0, 2.0]
