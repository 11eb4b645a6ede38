"""Row files: the bytes np.save writes, blocks in any order, reads by slice and by rows, and
nothing left at the path when the writer fails."""
import os
import pickle

import numpy as np
import pytest

from stages.common.rowfile import RowReader, RowWriter


@pytest.mark.parametrize("shape,dtype", [((10, 4, 3), np.float32), ((7, 4, 4), np.float64),
                                         ((0, 5), np.float32), ((3,), np.int64)])
def test_written_file_is_the_file_np_save_writes(tmp_path, shape, dtype):
    array = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    with RowWriter(tmp_path / "a.npy", shape, dtype) as out:
        out.write(0, array)
    np.save(tmp_path / "b.npy", array)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


def test_blocks_in_any_order_and_scattered_rows(tmp_path):
    array = np.random.default_rng(0).normal(size=(9, 5, 2)).astype(np.float32)
    with RowWriter(tmp_path / "a.npy", array.shape, np.float32) as out:
        out.write(6, array[6:])
        out.write(0, array[:3])
        out.write_rows(np.array([4, 3, 5]), array[[4, 3, 5]])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    reader = RowReader(tmp_path / "a.npy")
    assert len(reader) == 9 and reader.shape == array.shape
    np.testing.assert_array_equal(reader[2:7], array[2:7])
    np.testing.assert_array_equal(reader[np.array([8, 0, 8])], array[[8, 0, 8]])
    np.testing.assert_array_equal(np.concatenate([block for _, block in reader.blocks(4)]), array)
    assert reader[np.array([], dtype=int)].shape == (0, 5, 2)


def test_a_block_that_does_not_fit_is_refused_and_a_failed_writer_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        with RowWriter(tmp_path / "a.npy", (4, 3), np.float32) as out:
            out.write(3, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="do not fit"):
        with RowWriter(tmp_path / "a.npy", (4, 3), np.float32) as out:
            out.write(0, np.zeros((2, 4)))
    assert list(tmp_path.iterdir()) == []


def test_reader_names_a_truncated_file(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 3), np.float32))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[:-20])
    with pytest.raises(ValueError, match="a.npy: truncated"):
        RowReader(tmp_path / "a.npy")[5:10]


def test_reader_of_an_array_stored_inside_a_larger_file_and_of_single_rows(tmp_path):
    array = np.arange(24, dtype=np.float64).reshape(6, 2, 2)
    np.save(tmp_path / "a.npy", array)
    prefix = b"0123456789"
    (tmp_path / "b.bin").write_bytes(prefix + (tmp_path / "a.npy").read_bytes() + b"tail")
    reader = RowReader(tmp_path / "b.bin", len(prefix))
    assert reader.shape == array.shape
    np.testing.assert_array_equal(reader[1:4], array[1:4])
    np.testing.assert_array_equal(reader[5], array[5])
    np.testing.assert_array_equal(reader[np.int64(0)], array[0])
    with pytest.raises(IndexError, match="b.bin: rows 6..6 of 6"):
        reader[6]


def test_reader_keeps_reading_the_file_it_opened_and_pickles_as_its_path(tmp_path):
    array = np.arange(12, dtype=np.int64).reshape(4, 3)
    np.save(tmp_path / "a.npy", array)
    reader = RowReader(tmp_path / "a.npy")
    np.save(tmp_path / "b.npy", -array)
    os.replace(tmp_path / "b.npy", tmp_path / "a.npy")           # an atomic rewrite of the file
    np.testing.assert_array_equal(reader[1:3], array[1:3])
    np.testing.assert_array_equal(reader[-1], array[-1])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(reader))[:], -array)


def test_reads_longer_than_one_system_read_are_completed(tmp_path, monkeypatch):
    array = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "a.npy", array)
    preadv = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: preadv(fd, [buffers[0][:7]], offset))
    np.testing.assert_array_equal(RowReader(tmp_path / "a.npy")[2:9], array[2:9])
