"""Input identities: content digests, whole for small files, sampled rows for large arrays."""
import numpy as np
import pytest

from stages.common import identity
from stages.common.identity import file_digest, identity_mismatches, input_identity, path_digest


@pytest.fixture
def small_full_bytes(monkeypatch):
    monkeypatch.setattr(identity, "FULL_BYTES", 1 << 16)


def test_a_file_is_known_by_its_bytes_not_its_name_or_time(tmp_path):
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "b.csv").write_text("x\n1\n")
    assert file_digest(tmp_path / "a.csv") == file_digest(tmp_path / "b.csv")
    (tmp_path / "b.csv").write_text("x\n2\n")
    assert file_digest(tmp_path / "a.csv") != file_digest(tmp_path / "b.csv")


def test_a_large_array_is_known_by_its_header_and_sampled_rows(tmp_path, small_full_bytes):
    images = np.random.default_rng(0).integers(0, 256, (3000, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    first = file_digest(path)
    changed = images.copy()
    changed[-1, 0, 0, 0] ^= 1                     # the last row is always sampled
    np.save(path, changed)
    assert file_digest(path) != first
    np.save(path, images.reshape(3000, 8, 24, 1))   # same bytes, another shape
    assert file_digest(path) != first
    np.save(path, images)
    assert file_digest(path) == first


def test_a_folder_is_known_by_its_files_names_and_contents(tmp_path):
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "warps.npy").write_bytes(b"abc")
    assert path_digest(tmp_path / "one") == path_digest(tmp_path / "two")
    (tmp_path / "two" / "run.json").write_text("{}")
    assert path_digest(tmp_path / "one") != path_digest(tmp_path / "two")


def test_mismatches_name_the_inputs_that_differ_or_were_not_recorded(tmp_path):
    (tmp_path / "basis.npz").write_bytes(b"1")
    (tmp_path / "train.csv").write_bytes(b"2")
    current = input_identity({"pca/basis.npz": tmp_path / "basis.npz", "split/train.csv": tmp_path / "train.csv"})
    assert identity_mismatches(current, current) == []
    recorded = {**current, "pca/basis.npz": "other"}
    assert identity_mismatches(recorded, current) == ["pca/basis.npz"]
    assert identity_mismatches({}, current) == ["pca/basis.npz", "split/train.csv"]
    with pytest.raises(FileNotFoundError, match="nowhere: not found"):
        path_digest(tmp_path / "nowhere")
