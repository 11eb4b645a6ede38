"""Identity of a stage's inputs: content digests that decide whether a checkpoint may be resumed
and whether a trained model fits the crops and the PCA basis it is used with.

A digest reads the bytes, never names or times: moving a data set keeps its identity, any other
data set or any rerun that changed the content gives another. Files up to FULL_BYTES are hashed
whole; a larger .npy array (a crop store's images, a label cache) is hashed by its header and
SAMPLED_ROWS evenly spaced rows, so that the identity of a 70 GB store costs a second, not
minutes. A larger file of another kind is hashed by its size and its first and last FULL_BYTES.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

FULL_BYTES = 64 << 20
SAMPLED_ROWS = 1024
DIGEST_CHARS = 16
BLOCK = 1 << 22


def _hex(digest) -> str:
    return digest.hexdigest()[:DIGEST_CHARS]


def _update_with_file(digest, path: Path, start: int = 0, length: int | None = None) -> None:
    with open(path, "rb") as handle:
        handle.seek(start)
        left = length
        while left is None or left > 0:
            block = handle.read(BLOCK if left is None else min(BLOCK, left))
            if not block:
                break
            digest.update(block)
            left = None if left is None else left - len(block)


def file_digest(path: Path | str) -> str:
    """Digest of a file's bytes (whole up to FULL_BYTES; larger: size, head and tail)."""
    path = Path(path)
    size = path.stat().st_size
    if path.suffix == ".npy" and size > FULL_BYTES:
        return _npy_digest(path)
    digest = hashlib.sha256(str(size).encode())
    if size <= FULL_BYTES:
        _update_with_file(digest, path)
    else:
        _update_with_file(digest, path, 0, FULL_BYTES)
        _update_with_file(digest, path, size - FULL_BYTES, FULL_BYTES)
    return _hex(digest)


def _npy_digest(path: Path) -> str:
    """Digest of a large .npy: dtype, shape and SAMPLED_ROWS evenly spaced rows, read with file
    reads (a memory map would leave the file resident in this process's memory)."""
    with open(path, "rb") as handle:
        major, _ = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        offset = handle.tell()
        digest = hashlib.sha256(f"{dtype.str}{shape}{fortran}".encode())
        count = shape[0] if shape else 1
        row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64)) if shape else dtype.itemsize
        for row in np.unique(np.linspace(0, count - 1, min(SAMPLED_ROWS, count)).astype(np.int64)):
            handle.seek(offset + int(row) * row_bytes)
            digest.update(handle.read(row_bytes))
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


def input_identity(inputs: Mapping[str, Path | str]) -> dict[str, str]:
    """{name: digest} of named input files or folders (names as the caller shows them to users)."""
    return {name: path_digest(path) for name, path in inputs.items()}


def identity_mismatches(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Names of the inputs whose current digest differs from the recorded one (or that the record
    lacks), in `current`'s order."""
    return [name for name, value in current.items() if recorded.get(name) != value]
