"""Stage manifest: one line a file that a stage may read in the data root's per-image folders,
changed exactly by a file's name, size or content, the same whatever the threads, chunks or the
copy of the data; other files are not listed."""
import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from stages import manifest
from stages.manifest import FOLDERS, write_manifest
from stages.wcpa.layout import SAMPLE_FILES, DataError
from tests.stages.tiny_wcpa import make_tiny_root, write_params

PROJECT = Path(__file__).resolve().parents[2]


def expected_lines(folder: Path, suffix: str = "_ar.jpg") -> list[str]:
    """The manifest by an independent walk: every file <subject>/<action>/<name ending in suffix>,
    sorted by (its folder's parts, its name)."""
    files = sorted((p for p in folder.glob(f"*/*/*{suffix}") if p.is_file()),
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
    (root / "top_ar.jpg").write_text("a file beside the subject folders: no list row names it")
    (root / "001" / "smile" / ".DS_Store").write_bytes(os.urandom(20))
    (root / "001" / "Thumbs.db").write_bytes(os.urandom(20))
    return root


def read_manifest(folder: Path, out: Path, workers: int) -> list[str]:
    write_manifest(folder, out, workers, "_ar.jpg")
    return out.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("workers, chunk", [(1, 256), (3, 2), (2, 1)])
def test_the_manifest_lists_every_file_in_walk_order_whatever_the_threads_and_chunks(folder, tmp_path, monkeypatch,
                                                                                     workers, chunk):
    monkeypatch.setattr(manifest, "CHUNK_FILES", chunk)
    lines = read_manifest(folder, tmp_path / "m.tsv", workers)
    assert lines == expected_lines(folder)
    assert lines[0].startswith("001/blink/0001_ar.jpg\t0\t")
    assert len(lines) == 5


def test_files_no_stage_reads_are_counted_not_listed(folder, tmp_path):
    """A stray file (.DS_Store, Thumbs.db, a file outside <subject>/<action>/) that changes must
    not change the manifest: every stage after it would rerun."""
    metrics = write_manifest(folder, tmp_path / "a.tsv", 1, "_ar.jpg")
    assert metrics["files"] == 5 and metrics["ignored"] == 3
    assert sorted(metrics["ignored_first"]) == ["001/Thumbs.db", "001/smile/.DS_Store", "top_ar.jpg"]
    (folder / "001" / "smile" / ".DS_Store").write_bytes(os.urandom(30))
    (folder / "002" / "z" / "notes.txt").write_text("a file of another name")
    write_manifest(folder, tmp_path / "b.tsv", 1, "_ar.jpg")
    assert (tmp_path / "a.tsv").read_bytes() == (tmp_path / "b.tsv").read_bytes()


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
        write_manifest(tmp_path / "missing", tmp_path / "m.tsv", 1, "_ar.jpg")
    gone = folder / "001" / "smile" / "0009_ar.jpg"
    gone.symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(DataError, match="0009_ar.jpg: cannot read"):
        write_manifest(folder, tmp_path / "m.tsv", 2, "_ar.jpg")
    gone.unlink()
    (folder / "003").symlink_to(folder / "002", target_is_directory=True)
    with pytest.raises(DataError, match="003: a symbolic link to a folder, which DVC does not follow"):
        write_manifest(folder, tmp_path / "m.tsv", 2, "_ar.jpg")
    (folder / "003").unlink()
    linked = tmp_path / "linked_top"
    linked.symlink_to(folder, target_is_directory=True)       # the folder itself may be a link
    assert read_manifest(linked, tmp_path / "l.tsv", 1) == expected_lines(folder)
    tabbed = folder / "001" / "smile" / "a\tb_ar.jpg"
    tabbed.write_bytes(b"x")
    with pytest.raises(DataError, match="a\tb_ar.jpg: a file name with a tab"):
        write_manifest(folder, tmp_path / "m.tsv", 1, "_ar.jpg")
    tabbed.unlink()
    latin1 = os.path.join(os.fsencode(folder / "001" / "smile"), b"l\xe4cheln_ar.jpg")
    with open(latin1, "wb") as handle:
        handle.write(b"x")
    with pytest.raises(DataError, match=r"l\\udce4cheln_ar.jpg.: a file name that is not UTF-8 text"):
        write_manifest(folder, tmp_path / "m.tsv", 1, "_ar.jpg")


def test_the_stage_writes_one_manifest_a_folder_of_the_data_root(tmp_path, monkeypatch):
    make_tiny_root(tmp_path / "root", tmp_path / "test_gt")
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", tmp_path / "root", tmp_path / "test_gt")
    manifest.main([])
    out = tmp_path / "artifacts" / "manifest"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{name}.tsv" for name in FOLDERS] + ["metrics.json"])
    for name in FOLDERS:
        assert (out / f"{name}.tsv").read_text().splitlines(keepends=True) == \
            expected_lines(tmp_path / "root" / name, SAMPLE_FILES[name])
    (tmp_path / "root" / "68landmarks").rename(tmp_path / "root" / "landmarks_elsewhere")
    with pytest.raises(SystemExit, match="manifest: .*68landmarks: not found"):
        manifest.main([])
    assert (out / "image.tsv").exists()                # the previous manifests are left as they were
