"""Atomic torch files: equal objects give equal bytes, whatever the temporary name was."""
import os

import torch

from stages.common.io import save_torch


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
