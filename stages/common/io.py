"""Atomic output: everything is written to a temporary name and renamed when complete.

The temporary name carries the writer's PID (`.<stem>.tmp<pid><suffix>`, `.<name>.tmp<pid>`), so
that processes writing side by side (torchrun ranks) never share one. A killed run leaves its
temporary behind: the next write of the same output removes those whose process is gone.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temporaries(folder: Path, prefix: str, suffix: str = "") -> list[Path]:
    """Remove `<prefix><pid><suffix>` files or folders in `folder` whose process is gone; returns them."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix))
    stale = []
    for entry in os.scandir(folder):
        match = pattern.fullmatch(entry.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            stale.append(Path(entry.path))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)         # another run may be cleaning up too
    return stale


def fresh_temporary_dir(folder: Path, prefix: str) -> Path:
    """An empty folder `folder/<prefix><pid>` for this process, made after removing the
    `<prefix><pid>` entries of processes that are gone and this pid's own leftover (a killed run's
    whose pid came back after a restart)."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder, prefix)
    tmp = folder / f"{prefix}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def atomic_write(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the suffix (np.save and cv2.imwrite look at it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, f".{path.stem}.tmp", path.suffix)
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
def atomic_dir(path: Path | str, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary folder; it replaces `path` (removed first) only if the block succeeds.
    keep: names of files of the old folder carried into the new one (a README that git tracks
    in a folder a stage writes)."""
    path = Path(path)
    tmp = fresh_temporary_dir(path.parent, f".{path.name}.tmp")
    try:
        yield tmp
        for name in keep:
            if (path / name).is_file() and not (tmp / name).exists():
                shutil.copy2(path / name, tmp / name)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_target(path: Path | str) -> Path:
    """The output an atomic_dir temporary `.<name>.tmp<pid>` stands for; any other path itself."""
    path = Path(path)
    match = re.fullmatch(r"\.(.+)\.tmp\d+", path.name)
    return path.with_name(match.group(1)) if match else path


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
