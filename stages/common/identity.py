"""Identity of a stage's inputs: content digests that decide whether a checkpoint may be resumed
and whether a trained model fits the crops and the PCA basis it is used with.

A digest reads every byte, never names or times: moving a data set keeps its identity, any other
data set or any rerun that changed the content gives another (a sample of rows missed a change
of some rows: a resumed training then loaded the finished run of the old inputs). A file up to
BLOCK_BYTES is hashed whole; a larger one as the digest of its size and its blocks' digests,
the blocks read and hashed on the usable cores (file reads and hashlib release the GIL): the
real data's 88 GB crop store is read once, by the crop stage, in its run record.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Mapping

from stages.common.threads import usable_cores

BLOCK_BYTES = 64 << 20
DIGEST_CHARS = 16
READ_BYTES = 1 << 22


def _hex(digest) -> str:
    return digest.hexdigest()[:DIGEST_CHARS]


def range_sha256(path: Path | str, start: int, length: int) -> bytes:
    """sha256 of `length` bytes of `path` from `start`."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(start)
        while length > 0:
            block = handle.read(min(READ_BYTES, length))
            if not block:
                raise OSError(f"{path}: shorter than {start + length} bytes while it was read")
            digest.update(block)
            length -= len(block)
    return digest.digest()


def file_digest(path: Path | str) -> str:
    """Digest of a file's size and bytes (over BLOCK_BYTES: of its blocks' digests, hashed on
    the usable cores)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    if size <= BLOCK_BYTES:
        digest.update(range_sha256(path, 0, size))
        return _hex(digest)
    starts = range(0, size, BLOCK_BYTES)
    with ThreadPoolExecutor(min(usable_cores(), len(starts))) as pool:
        for block in pool.map(lambda start: range_sha256(path, start, min(BLOCK_BYTES, size - start)), starts):
            digest.update(block)
    return _hex(digest)


def path_digest(path: Path | str) -> str:
    """Digest of a file, or of a folder: its files' relative names and digests, in name order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (an input whose identity is needed)")
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}={file_digest(file)};".encode())
    return _hex(digest)


def files_digest(paths: Iterable[Path | str]) -> str:
    """One digest over several files (their digests in the given order)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{file_digest(path)};".encode())
    return _hex(digest)


def stat_digest(paths: Iterable[Path | str]) -> str:
    """Digest of each file's path, size and modification time (ns), in order ('-' for a missing
    one): what tells a job resumed after an interruption that a file it reads was replaced
    meanwhile (as DVC itself tells a changed file), without reading every byte again."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns};".encode())
        except FileNotFoundError:
            digest.update(f"{path}\0-;".encode())
    return _hex(digest)


def input_identity(inputs: Mapping[str, Path | str]) -> dict[str, str]:
    """{name: digest} of named input files or folders (names as the caller shows them to users)."""
    return {name: path_digest(path) for name, path in inputs.items()}


def identity_mismatches(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Names of the inputs whose current digest differs from the recorded one (or that the record
    lacks), in `current`'s order."""
    return [name for name, value in current.items() if recorded.get(name) != value]
