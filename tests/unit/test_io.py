"""Atomic output: equal torch objects give equal bytes, whatever the temporary name was; a killed
run's temporaries are removed by the next write, those of live processes are kept."""
import os
import subprocess
import sys

import numpy as np
import torch

from stages.common.io import atomic_dir, save_npy, save_torch


def test_equal_objects_give_equal_bytes_and_load_back(tmp_path, monkeypatch):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3}
    save_torch(state, tmp_path / "a" / "model.pt")
    monkeypatch.setattr(os, "getpid", lambda: 424242)       # another process: another temporary name
    save_torch(state, tmp_path / "b" / "model.pt")
    first, second = (tmp_path / d / "model.pt" for d in "ab")
    assert first.read_bytes() == second.read_bytes()
    loaded = torch.load(second, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert sorted(p.name for p in second.parent.iterdir()) == ["model.pt"]      # no temporary left


def _dead_pid() -> int:
    """The id of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    orphans = [tmp_path / f".model.tmp{dead}.pt", tmp_path / f".crop.tmp{dead}"]
    orphans[0].write_bytes(b"half a file")
    orphans[1].mkdir()
    (orphans[1] / "images.npy").write_bytes(b"half a crop store")
    neighbours = [tmp_path / f".model.tmp{live}.pt", tmp_path / f".other.tmp{dead}.pt", tmp_path / f".crop.tmp{live}"]
    neighbours[0].write_bytes(b"a live rank writing")
    neighbours[1].write_bytes(b"another output's temporary")
    neighbours[2].mkdir()
    save_npy(tmp_path / "model.pt", np.zeros(3))
    with atomic_dir(tmp_path / "crop") as folder:
        (folder / "x").write_text("done")
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in neighbours)
    assert (tmp_path / "crop" / "x").read_text() == "done"


def test_atomic_dir_keeps_the_named_files_of_the_folder_it_replaces(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("tracked by git")
    (out / "old.npy").write_text("stale")
    with atomic_dir(out, keep=("README.md",)) as tmp:
        (tmp / "new.npy").write_text("fresh")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "new.npy"]
    assert (out / "README.md").read_text() == "tracked by git"
