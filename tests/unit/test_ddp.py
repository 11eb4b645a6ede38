"""DDP: two CPU processes (gloo) train a few steps and end with identical weights: the network
(train) and the coarse detector (the coarse_train stage, rank 0 writing). On CUDA, the
collectives of the stages' own code run on an nccl group (nccl reduces CUDA tensors only)."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stages import pca
from stages.coarse_train import train_config
from stages.coarse.train import build_nets, mean_over_ranks, share_epoch
from stages.common.distributed import Dist
from stages.common.params import load_params
from stages.wcpa.layout import write_list
from tests.ddp_worker import run_coarse_rank, run_rank
from tests.stages.tiny_data import write_tiny_root
from tests.tiny_project import make_tiny_project


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_end_with_identical_weights(tmp_path, monkeypatch):
    params = make_tiny_project(tmp_path, subjects=4, crop_size=32)
    params = params.replace(train={"batch_size": 8, "depth": 18})
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


@pytest.mark.parametrize("decode", ["opencv", "torch"])
def test_two_gloo_ranks_train_the_coarse_detector_on_halves_of_each_batch(tmp_path, decode):
    tables = write_tiny_root(tmp_path / "data", n_train=10, n_test=3)
    write_list(tmp_path / "split/train.csv", tables["train"].iloc[:8])
    write_list(tmp_path / "split/val.csv", tables["train"].iloc[8:])
    params = load_params("params.yaml").replace(
        data={"root": str(tmp_path / "data"), "workers": 1},
        coarse_train={"locate_backbone": "mobilenet_v3_small", "refine_backbone": "mobilenet_v3_small",
                      "locate_size": 64, "refine_size": 64, "epochs": 1, "batch_size": 4, "head_width": 16,
                      "decode": decode})
    mp.spawn(run_coarse_rank, args=(str(tmp_path), params, free_port()), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"coarse_rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["metrics"]["processes"] == 2 and ranks[1]["metrics"] == {}      # rank 0 alone writes
    assert (tmp_path / "coarse_train/model.pt").is_file() and not (tmp_path / "coarse_train.partial").exists()
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 2                    # 8 images / global batch 4
    for mine, theirs in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert len(mine) == len(theirs) == 2 and not set(mine) & set(theirs)       # each its half of the batch
    initial = build_nets(train_config(params), 68)
    for name, state in ranks[0]["nets"].items():
        for key, value in state.items():
            assert torch.equal(value, ranks[1]["nets"][name][key]), (name, key)
        assert not torch.equal(state["heatmaps.weight"], initial[name].state_dict()["heatmaps.weight"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_coarse_detectors_collectives_run_on_an_nccl_group_on_cuda(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        device = torch.device("cuda", torch.cuda.current_device())
        one_rank = Dist(rank=0, world=1, device=device)
        nets = {name: net.to(device) for name, net in build_nets(train_config(load_params("params.yaml")), 68).items()}
        share_epoch(nets, None, Dist(rank=0, world=2, device=device))     # broadcasts from rank 0: its own buffers
        assert mean_over_ranks(3.0, Dist(rank=0, world=2, device=device)) == 1.5   # one rank's sum over two
        assert mean_over_ranks(3.0, one_rank) == 3.0
    finally:
        dist.destroy_process_group()
