"""Stage manifest: one line a file of the data root's per-image folders, changed exactly by a
file's name, size or content, the same whatever the threads, chunks or the copy of the data."""
import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from stages import manifest
from stages.manifest import FOLDERS, write_manifest
from stages.wcpa.layout import DataError
from tests.stages.tiny_wcpa import make_tiny_root, write_params

PROJECT = Path(__file__).resolve().parents[2]


def expected_lines(folder: Path) -> list[str]:
    """The manifest by an independent walk: every file, sorted by (its folder's parts, its name)."""
    files = sorted((p for p in folder.rglob("*") if p.is_file()),
                   key=lambda p: (p.parent.relative_to(folder).parts, p.name))
    return [f"{p.relative_to(folder).as_posix()}\t{p.stat().st_size}\t"
            f"{hashlib.sha256(p.read_bytes()).hexdigest()[:32]}\n" for p in files]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "image"
    for subject, action, frame, size in [("001", "smile", 1, 10), ("001", "smile", 2, 3000),
                                         ("001", "blink", 1, 0), ("002", "z", 7, 2_500_000), ("010", "a", 1, 5)]:
        path = root / subject / action / f"{frame:04d}_ar.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    (root / "top.txt").write_text("a file beside the subject folders")
    return root


def read_manifest(folder: Path, out: Path, workers: int) -> list[str]:
    write_manifest(folder, out, workers)
    return out.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("workers, chunk", [(1, 256), (3, 2), (2, 1)])
def test_the_manifest_lists_every_file_in_walk_order_whatever_the_threads_and_chunks(folder, tmp_path, monkeypatch,
                                                                                     workers, chunk):
    monkeypatch.setattr(manifest, "CHUNK_FILES", chunk)
    lines = read_manifest(folder, tmp_path / "m.tsv", workers)
    assert lines == expected_lines(folder)
    assert lines[0].startswith("top.txt\t") and lines[1].startswith("001/blink/0001_ar.jpg\t0\t")
    assert len(lines) == 6


def test_a_content_change_changes_the_line_and_a_copy_elsewhere_changes_nothing(folder, tmp_path):
    before = read_manifest(folder, tmp_path / "a.tsv", 2)
    copy = tmp_path / "copy" / "image"
    shutil.copytree(folder, copy)                      # new inodes and times, the same bytes
    time.sleep(0.01)
    os.utime(copy / "001" / "smile" / "0001_ar.jpg")
    assert read_manifest(copy, tmp_path / "b.tsv", 2) == before
    target = folder / "001" / "smile" / "0002_ar.jpg"
    data = bytearray(target.read_bytes())
    data[1234] ^= 1                                    # one bit, the same size
    stat = target.stat()
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # even with the old time
    after = read_manifest(folder, tmp_path / "c.tsv", 2)
    changed = [a for a, b in zip(after, before) if a != b]
    assert len(after) == len(before) and [line.split("\t")[0] for line in changed] == ["001/smile/0002_ar.jpg"]


def test_bad_folders_and_files_stop_with_their_name(folder, tmp_path):
    with pytest.raises(DataError, match="missing.*not found"):
        write_manifest(tmp_path / "missing", tmp_path / "m.tsv", 1)
    (folder / "001" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(DataError, match="gone.jpg: cannot read"):
        write_manifest(folder, tmp_path / "m.tsv", 2)
    (folder / "001" / "gone.jpg").unlink()
    (folder / "003").symlink_to(folder / "002", target_is_directory=True)
    with pytest.raises(DataError, match="003: a symbolic link to a folder, which DVC does not follow"):
        write_manifest(folder, tmp_path / "m.tsv", 2)
    (folder / "003").unlink()
    linked = tmp_path / "linked_top"
    linked.symlink_to(folder, target_is_directory=True)       # the folder itself may be a link
    assert read_manifest(linked, tmp_path / "l.tsv", 1) == expected_lines(folder)
    (folder / "001" / "a\tb.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="a\tb.jpg: a file name with a tab"):
        write_manifest(folder, tmp_path / "m.tsv", 1)


def test_the_stage_writes_one_manifest_a_folder_of_the_data_root(tmp_path, monkeypatch):
    make_tiny_root(tmp_path / "root", tmp_path / "test_gt")
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", tmp_path / "root", tmp_path / "test_gt")
    manifest.main([])
    out = tmp_path / "artifacts" / "manifest"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{name}.tsv" for name in FOLDERS] + ["metrics.json"])
    for name in FOLDERS:
        assert (out / f"{name}.tsv").read_text().splitlines(keepends=True) == expected_lines(tmp_path / "root" / name)
    (tmp_path / "root" / "68landmarks").rename(tmp_path / "root" / "landmarks_elsewhere")
    with pytest.raises(SystemExit, match="manifest: .*68landmarks: not found"):
        manifest.main([])
    assert (out / "image.tsv").exists()                # the previous manifests are left as they were
