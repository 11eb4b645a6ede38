"""Input identities: content digests of every byte, large files in blocks on threads."""
import hashlib
import time

import numpy as np
import pytest

from stages.common import identity
from stages.common.identity import file_digest, identity_mismatches, input_identity, path_digest, stat_digest


def test_a_file_is_known_by_its_bytes_not_its_name_or_time(tmp_path):
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "b.csv").write_text("x\n1\n")
    assert file_digest(tmp_path / "a.csv") == file_digest(tmp_path / "b.csv")
    (tmp_path / "b.csv").write_text("x\n2\n")
    assert file_digest(tmp_path / "a.csv") != file_digest(tmp_path / "b.csv")


def test_a_large_file_is_known_by_every_byte_whatever_the_threads(tmp_path, monkeypatch):
    """Over BLOCK_BYTES a file is hashed in blocks on threads: any byte counts (a sample of rows
    missed a change of the others), the thread count does not."""
    monkeypatch.setattr(identity, "BLOCK_BYTES", 1000)
    data = np.random.default_rng(0).integers(0, 256, 10_500, dtype=np.uint8).tobytes()
    path = tmp_path / "images.npy"
    path.write_bytes(data)
    reference = hashlib.sha256(b"10500")
    for start in range(0, len(data), 1000):
        reference.update(hashlib.sha256(data[start:start + 1000]).digest())
    for cores in (1, 3):
        monkeypatch.setattr(identity, "usable_cores", lambda: cores)
        assert file_digest(path) == reference.hexdigest()[:16]
    for where in (0, 4321, 10_499):                # in the first, a middle and the last (short) block
        changed = bytearray(data)
        changed[where] ^= 1
        path.write_bytes(bytes(changed))
        assert file_digest(path) != reference.hexdigest()[:16]
    path.write_bytes(data + b"\0")
    assert file_digest(path) != reference.hexdigest()[:16]


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


def test_a_stat_digest_changes_when_a_file_is_replaced_even_by_the_same_bytes(tmp_path):
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for path in paths:
        path.write_bytes(b"jpeg")
    first = stat_digest(paths)
    assert stat_digest(paths) == first and stat_digest(paths[::-1]) != first
    time.sleep(0.01)
    paths[1].write_bytes(b"jpeg")
    assert stat_digest(paths) != first
    paths[1].unlink()
    assert stat_digest(paths) != first
