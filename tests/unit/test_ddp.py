"""DDP: two CPU processes (gloo) train a few steps and end with identical weights."""
import socket

import torch
import torch.multiprocessing as mp

from stages import pca
from tests.ddp_worker import run_rank
from tests.tiny_project import make_tiny_project


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_end_with_identical_weights(tmp_path, monkeypatch):
    params = make_tiny_project(tmp_path, subjects=4, crop_size=32)
    params["train"].update(batch_size=8, depth=18)
    monkeypatch.chdir(tmp_path)
    pca.run(params)
    mp.spawn(run_rank, args=(str(tmp_path), params, free_port()), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert states[0]["batches"] == states[1]["batches"] == 2       # 18 train crops / (2 ranks x 4)
    assert states[0]["terms"] != states[1]["terms"]                 # each rank saw its own samples
    for name, weight in states[0]["model"].items():
        assert torch.equal(weight, states[1]["model"][name]), name
    initial = states[0]["initial"]
    assert not torch.equal(states[0]["model"]["backbone.conv1.weight"], initial["backbone.conv1.weight"])
