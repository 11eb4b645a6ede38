"""Atomic output: everything is written to a temporary name and renamed when complete."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_write(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the suffix (np.save and cv2.imwrite look at it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class UnsafeCheckpointError(ValueError):
    """A torch file that is corrupt or holds more than tensors and plain data (its pickle would
    build other objects, possibly run code): refused unread."""


def load_torch(path: Path | str) -> Any:
    """torch.load on the CPU with weights_only=True: tensors, numbers, strings, lists and dicts
    only. A file whose pickle asks for anything else (a function call, a class) or that is not
    a torch archive raises UnsafeCheckpointError naming it; a missing one, FileNotFoundError."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:     # pickle, zip and torch raise several unrelated types
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(f"{path}: refused: not a file of tensors and plain data ({reason})") from None


def save_torch(obj: Any, path: Path | str) -> None:
    """torch.save `obj` to `path` atomically, through a file handle: the archive's records are then
    named 'archive/...' instead of after the temporary file, so equal objects give equal bytes
    (and equal DVC hashes) from run to run."""
    import torch          # lazily: most stages that write through this module never load torch
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder; it replaces `path` (removed first) only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_json(path: Path | str, data: Any) -> None:
    """Write JSON (indented, keys in given order) atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def save_npz(path: Path | str, **arrays: np.ndarray) -> None:
    """np.savez (uncompressed) atomically."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def save_npy(path: Path | str, array: np.ndarray) -> None:
    """np.save atomically."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
