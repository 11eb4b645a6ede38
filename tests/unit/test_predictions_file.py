"""The predictions file read a block of rows at a time: np.savez's and PredictionWriter's (zip64)
layouts, a compressed file, and the errors that name the file."""
import os

import numpy as np
import pandas as pd
import pytest

from stages.common.rowfile import RowReader
from stages.wcpa.layout import DataError
from stages.wcpa.predictions import PredictionWriter, load_predictions, open_predictions, save_predictions

N, V = 7, 5


@pytest.fixture
def table():
    return pd.DataFrame({"subject_id": [f"s{i % 2}" for i in range(N)], "facial_action": ["a"] * N,
                         "img_id": [str(i) for i in range(N)]})


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {"verts": rng.normal(size=(N, V, 3)).astype(np.float32), "R_t": rng.normal(size=(N, 4, 4)),
            "skipped": np.arange(N) % 3 == 0}


def written(path, table, arrays, how):
    if how == "savez":
        save_predictions(path, table, **arrays)
    else:
        rows = {key: (value.shape[1:], value.dtype) for key, value in arrays.items()}
        with PredictionWriter(path, table, rows) as out:
            out.write(4, **{key: value[4:] for key, value in arrays.items()})
            out.write(0, **{key: value[:4] for key, value in arrays.items()})
    return path


@pytest.mark.parametrize("how", ["savez", "writer"])
def test_each_stored_array_is_read_by_rows_from_the_file(tmp_path, table, arrays, how):
    opened = open_predictions(written(tmp_path / "p.npz", table, arrays, how), table)
    assert set(opened) == {"ids", "verts", "R_t", "skipped"}
    for key, value in arrays.items():
        reader = opened[key]
        assert isinstance(reader, RowReader) and len(reader) == N
        np.testing.assert_array_equal(reader[2:6], value[2:6])
        np.testing.assert_array_equal(reader[np.array([6, 0, 1])], value[[6, 0, 1]])
        np.testing.assert_array_equal(reader[3], value[3])
    np.testing.assert_array_equal(opened["ids"], table.to_numpy(dtype=str))
    loaded = load_predictions(tmp_path / "p.npz", table)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)


def test_a_compressed_file_is_read_into_memory(tmp_path, table, arrays):
    np.savez_compressed(tmp_path / "p.npz", ids=table.to_numpy(dtype=str), **arrays)
    opened = open_predictions(tmp_path / "p.npz", table)
    assert isinstance(opened["verts"], np.ndarray)
    np.testing.assert_array_equal(opened["verts"][2:6], arrays["verts"][2:6])


def test_bad_files_are_named(tmp_path, table, arrays):
    with pytest.raises(DataError, match="missing.npz: predictions file not found"):
        open_predictions(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match="text.npz: not a readable predictions .npz"):
        open_predictions(tmp_path / "text.npz")
    np.savez(tmp_path / "partial.npz", ids=table.to_numpy(dtype=str), verts=arrays["verts"])
    with pytest.raises(DataError, match="partial.npz: missing 'R_t'"):
        open_predictions(tmp_path / "partial.npz")
    path = written(tmp_path / "p.npz", table, arrays, "savez")
    with pytest.raises(DataError, match="p.npz: rows do not match the list"):
        open_predictions(path, table.iloc[::-1])


def test_a_member_whose_header_claims_more_rows_than_it_holds_is_named(tmp_path, table, arrays):
    path = written(tmp_path / "p.npz", table, arrays, "savez")
    data = path.read_bytes()
    assert data.count(b"(7, 5, 3)") == 1
    path.write_bytes(data.replace(b"(7, 5, 3)", b"(9, 5, 3)"))      # the same length: the offsets hold
    with pytest.raises(DataError, match="p.npz: 'verts.npy' holds 548 bytes, its header says 668"):
        open_predictions(path)


def test_the_writers_row_folder_goes_and_a_killed_runs_goes_at_the_next_entry(tmp_path, table, arrays):
    """A killed process leaves its `.<stem>.rows<pid>` folder (GBs on the real data): the next
    writer of that file removes it, and its own on exit, with an error too."""
    dead = 2 ** 22 + 1                                    # above Linux's pid_max default: no such process
    (tmp_path / f".p.rows{dead}").mkdir()
    (tmp_path / f".p.rows{dead}" / "verts.npy").write_bytes(b"x" * 100)
    written(tmp_path / "p.npz", table, arrays, "writer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]
    rows = {key: (value.shape[1:], value.dtype) for key, value in arrays.items()}
    with pytest.raises(RuntimeError), PredictionWriter(tmp_path / "q.npz", table, rows):
        raise RuntimeError("a failed block")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]
    (tmp_path / f".p.rows{os.getpid()}").mkdir()         # a killed run of the same pid (after a restart)
    written(tmp_path / "p.npz", table, arrays, "writer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]
