"""DDP: two CPU processes (gloo) train a few steps and end with identical weights: the network
(train) and the coarse detector (the coarse_train stage, rank 0 writing). On CUDA, the
collectives of the stages' own code run on an nccl group (nccl reduces CUDA tensors only)."""
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stages import coarse_train, pca
from stages.coarse_train import train_config
from stages.coarse.train import build_nets, first_item, kept_everywhere, shard, share_epoch, share_weight
from stages.common.badinput import BadInputs
from stages.common.distributed import Dist, host_group, mean_over_ranks, process_workers
from stages.finetuning.pnp_loss import masked_mean
from stages.nets.trainer import TrainPaths, make_loader, run_training
from stages.wcpa.camera import Camera
from stages.common.params import apply_overrides, load_params
from stages.wcpa.layout import image_path, write_list
from tests.ddp_worker import (run_agreement_rank, run_coarse_rank, run_epoch_rank, run_finish_rank,
                               run_masked_mean_rank, run_prepare_rank, run_rank, run_share_weight_rank,
                               run_training_rank)
from tests.stages.tiny_data import write_tiny_root
from tests.tiny_project import PROJ, make_tiny_project


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
    assert states[0]["own"] != states[1]["own"]                     # each rank saw its own samples
    assert states[0]["terms"] == states[1]["terms"]                 # the epoch's means are the global ones
    for key, value in states[0]["terms"].items():
        assert value == pytest.approx((states[0]["own"][key] + states[1]["own"][key]) / 2, rel=1e-9), key
    for name, weight in states[0]["model"].items():
        assert torch.equal(weight, states[1]["model"][name]), name
    initial = states[0]["initial"]
    assert not torch.equal(states[0]["model"]["backbone.conv1.weight"], initial["backbone.conv1.weight"])


def test_a_run_of_another_world_size_starts_afresh_instead_of_resuming(tmp_path, monkeypatch):
    """A finished one-process run's checkpoints (persisted by dvc.yaml) are not resumed by the
    same params on 2 processes (`dvc exp run -S gpus=2`): that run trains its own epochs."""
    params = make_tiny_project(tmp_path, subjects=4, crop_size=32)
    params = params.replace(train={"batch_size": 8, "depth": 18, "epochs": 1})
    monkeypatch.chdir(tmp_path)
    pca.run(params)
    paths = TrainPaths(crop=tmp_path / "artifacts/crop", pca=tmp_path / "artifacts/pca",
                       split=tmp_path / "artifacts/split", out=tmp_path / "artifacts/train")
    run_training(params, paths, Camera(PROJ, 800, 800))
    checkpoint = paths.checkpoints / "epoch_000.pt"
    alone = torch.load(checkpoint)
    mp.spawn(run_training_rank, args=(str(tmp_path), params, free_port()), nprocs=2, join=True)
    pair = torch.load(checkpoint)
    assert pair["fingerprint"] != alone["fingerprint"]
    assert not torch.equal(pair["modules"]["model"]["backbone.conv1.weight"],
                           alone["modules"]["model"]["backbone.conv1.weight"])


@pytest.mark.parametrize("case, term, grad", [("some", [4.0, 2.0], [0.2] * 5 + [0.0] * 3),
                                              ("none", [5.0, 0.0], [0.25] * 4 + [0.0] * 4)])
def test_finetunes_pnp_means_weigh_every_accepted_sample_of_the_global_batch_alike(tmp_path, case, term, grad):
    """Under DDP each rank's PnP term is its sum over the accepted count of all the ranks, over 2:
    the averaged gradient is one process's over the whole batch (values 1..8, accepted 1..5 or 1..4)."""
    root = tmp_path / case
    root.mkdir()
    mp.spawn(run_masked_mean_rank, args=(str(root), free_port()), nprocs=2, join=True)
    ranks = [torch.load(root / f"masked{r}.pt") for r in (0, 1)]
    values = torch.arange(1.0, 9.0, requires_grad=True)
    alone = masked_mean(values, torch.tensor(grad) > 0)
    alone.backward()
    assert [r["term"] for r in ranks] == pytest.approx(term)
    assert sum(term) / 2 == pytest.approx(float(alone))
    assert values.grad.tolist() == pytest.approx(grad)
    assert ranks[0]["grad"] + ranks[1]["grad"] == pytest.approx(grad)


@pytest.mark.parametrize("batch_size, world", [(16, 3), (16, 2), (7, 4), (64, 5)])
def test_uneven_shares_of_a_coarse_batch_weigh_every_item_alike(batch_size, world):
    """Each process's mean loss times share_weight, averaged over the processes by DDP, gives
    every item of the global batch the weight 1 / batch_size."""
    batch = [[(i, 0) for i in range(batch_size)]]
    for rank in range(world):
        ctx = Dist(rank=rank, world=world, device=torch.device("cpu"))
        share = shard(batch, ctx)[0]
        weight = share_weight(len(share), kept_everywhere(len(share), batch_size, ctx, summed=False), ctx)
        assert weight / len(share) / world == pytest.approx(1 / batch_size)
    assert share_weight(5, 5, Dist(rank=0, world=1, device=torch.device("cpu"))) is None


def test_items_dropped_as_undecodable_leave_every_kept_item_of_the_global_batch_alike(tmp_path):
    """With data.skip_bad, rank 0 drops 1 of its 4 items and rank 1 none: DDP's mean of the ranks'
    weighted mean losses gives each of the 7 kept items 1 / 7, as one process's mean over them
    (weights from the nominal batch of 8 gave 1 / 8 each: the batch counted 7 / 8)."""
    mp.spawn(run_share_weight_rank, args=(str(tmp_path), free_port(), (3, 4)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"share{r}.pt") for r in (0, 1)]
    for rank in ranks:
        assert rank["weight"] / rank["kept"] / 2 == pytest.approx(1 / 7)


def test_a_process_without_a_decodable_item_steps_on_a_stand_in_weighted_zero(tmp_path):
    """Rank 0's whole share undecodable: it steps on its share's first item (a black image) with
    the weight 0 and rank 1's 4 items get 1 / 4 each, as in one process; with no item kept
    anywhere every process knows it and none steps, as one process skips the batch (an AdamW
    step on a zero gradient still moves the weights)."""
    for kept, weights, kept_all in (((0, 4), [0.0, 2.0], 4), ((0, 0), [None, None], 0)):
        mp.spawn(run_share_weight_rank, args=(str(tmp_path), free_port(), kept), nprocs=2, join=True)
        ranks = [torch.load(tmp_path / f"share{r}.pt") for r in (0, 1)]
        assert [rank["weight"] for rank in ranks] == weights and [rank["kept_all"] for rank in ranks] == [kept_all] * 2
    loaded = {"index": torch.tensor([7, 9]), **{name: {"image": torch.zeros(2, 4, 4, 3), "points": torch.ones(2, 68, 2)}
                                               for name in ("locate", "refine")}}
    stand_in = first_item(loaded)
    assert stand_in["index"].tolist() == [7] and stand_in["refine"]["points"].shape == (1, 68, 2)


def test_a_global_batch_no_process_kept_is_skipped_and_a_stand_in_moves_no_statistics(tmp_path):
    """coarse_train's epoch on 2 gloo ranks with data.skip_bad: where rank 0 kept none of its
    share, its stand-in step leaves its buffers (every rank's BatchNorm statistics after DDP's
    broadcast) as they were, while rank 1's move; where no rank kept any item, no rank steps (one
    optimiser step in all, the schedule stepped past both batches), and the weights agree."""
    mp.spawn(run_epoch_rank, args=(str(tmp_path), free_port()), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"epoch{r}.pt") for r in (0, 1)]
    assert [rank["buffers_kept"] for rank in ranks] == [True, False]
    assert [rank["steps"] for rank in ranks] == [[1], [1]]
    assert [rank["schedule_steps"] for rank in ranks] == [2, 2]
    for name, weights in ranks[0]["weights"].items():
        for key, value in weights.items():
            if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.equal(value, ranks[1]["weights"][name][key]), (name, key)


@pytest.mark.parametrize("decode, corrupt", [("opencv", False), ("torch", False), ("opencv", True)])
def test_two_gloo_ranks_train_the_coarse_detector_on_halves_of_each_batch(tmp_path, decode, corrupt):
    """corrupt: one training image is not a JPEG, and data.skip_bad drops it from its process's
    share: the step's kept items still weigh alike (DDP's mean of the weighted losses)."""
    tables = write_tiny_root(tmp_path / "data", n_train=10, n_test=3)
    write_list(tmp_path / "split/train.csv", tables["train"].iloc[:8])
    write_list(tmp_path / "split/val.csv", tables["train"].iloc[8:])
    if corrupt:
        Path(image_path(tmp_path / "data", next(tables["train"].itertuples(index=False)))).write_bytes(b"no JPEG" * 9)
    params = load_params("params.yaml").replace(
        data={"root": str(tmp_path / "data"), "workers": 2, "skip_bad": corrupt, "max_bad_fraction": 0.5},
        coarse_train={"locate_backbone": "mobilenet_v3_small", "refine_backbone": "mobilenet_v3_small",
                      "locate_size": 64, "refine_size": 64, "epochs": 1, "batch_size": 4, "head_width": 16,
                      "decode": decode})
    mp.spawn(run_coarse_rank, args=(str(tmp_path), params, free_port()), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"coarse_rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["metrics"]["processes"] == 2 and ranks[1]["metrics"] == {}      # rank 0 alone writes
    assert [rank["workers"] for rank in ranks] == [[1, 2], [1, 2]]     # the machine's 2 shared; rank 0's val: both
    assert (tmp_path / "coarse_train/model.pt").is_file() and not (tmp_path / "coarse_train.partial").exists()
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 2                    # 8 images / global batch 4
    kept = []
    for (mine, weight), (theirs, their_weight) in zip(ranks[0]["steps"], ranks[1]["steps"]):
        assert not set(mine) & set(theirs)                                         # each its half of the batch
        assert (weight + their_weight) / 2 == pytest.approx(1.0)                  # each kept item: 1 / kept
        kept.append(len(mine) + len(theirs))
    assert sorted(kept) == ([3, 4] if corrupt else [4, 4])
    initial = build_nets(train_config(params), 68)
    for name, state in ranks[0]["nets"].items():
        for key, value in state.items():
            assert torch.equal(value, ranks[1]["nets"][name][key]), (name, key)
        assert not torch.equal(state["heatmaps.weight"], initial[name].state_dict()["heatmaps.weight"])


@pytest.mark.parametrize("skip_bad", [True, False])
def test_processes_prepare_the_detectors_samples_a_slice_each_and_share_them(tmp_path, skip_bad):
    """coarse_train's samples under torchrun: each process reads the labels of half the rows, and
    both end with what one process prepares alone: the samples and, with data.skip_bad, the bad
    records in its order (every bad label before every missing image: here a missing image in the
    first half and a bad label file in the second); without skip_bad both stop with the error one
    process meets first (the label file's), where the other would have waited for it."""
    from stages.wcpa.layout import DataError, info_path, load_resources, read_list
    tables = write_tiny_root(tmp_path / "data", n_train=10, n_test=3)
    write_list(tmp_path / "split/train.csv", tables["train"].iloc[:8])
    rows = list(tables["train"].iloc[:8].itertuples(index=False))
    Path(image_path(tmp_path / "data", rows[1])).unlink()
    info_path(tmp_path / "data", rows[6]).write_bytes(b"no labels")
    params = load_params("params.yaml").replace(data={"root": str(tmp_path / "data"), "skip_bad": skip_bad})
    mp.spawn(run_prepare_rank, args=(str(tmp_path), params, free_port()), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"prepare{r}.pt") for r in (0, 1)]
    assert [rank["read"] for rank in ranks] == [[row.img_id for row in rows[:4]], [row.img_id for row in rows[4:]]]
    bad, alone = BadInputs(skip=skip_bad, max_fraction=1.0), None
    try:
        alone = coarse_train.prepared_samples(params.data.root, read_list(tmp_path / "split/train.csv"),
                                              load_resources(params.data.root), bad, 1, Dist(0, 1, torch.device("cpu")))
    except DataError as err:
        assert not skip_bad and [rank["error"] for rank in ranks] == [str(err)] * 2
        assert str(err).startswith(str(info_path(tmp_path / "data", rows[6])))
        return
    assert len(alone) == 6 and [record["file"] for record in bad.records] == [
        str(info_path(tmp_path / "data", rows[6])), str(image_path(tmp_path / "data", rows[1]))]
    for rank in ranks:
        assert rank["keys"] == alone.keys.tolist() and rank["paths"] == alone.paths.tolist()
        assert np.array_equal(rank["landmarks"].numpy(), alone.landmarks)
        assert rank["bad"] == bad.records


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
        three = torch.tensor([3.0], dtype=torch.float64, device=device)
        assert float(mean_over_ranks(three, Dist(rank=0, world=2, device=device))) == 1.5   # one rank's sum over two
        assert float(mean_over_ranks(three, one_rank)) == 3.0
        assert host_group(one_rank) is None
        two = Dist(rank=0, world=2, device=device)
        two = Dist(rank=0, world=2, device=device, host=host_group(two))     # gloo beside the nccl default group
        assert kept_everywhere(3, 8, two, summed=True) == 3        # one rank's 3 kept, summed on the host
    finally:
        dist.destroy_process_group()


def test_coarse_train_resumes_only_a_run_of_the_same_world_size():
    params = load_params("params.yaml")
    tables = {split: pd.DataFrame({"subject_id": ["001"], "facial_action": ["smile"], "img_id": ["1"]})
              for split in coarse_train.SPLITS}
    data = {"resources": "r", "samples": "s"}
    cpu = torch.device("cpu")
    fingerprints = {world: coarse_train.fingerprint(params, tables, data, world, cpu) for world in (1, 2, 4)}
    assert len(set(fingerprints.values())) == 3
    assert coarse_train.fingerprint(params, tables, data, 2, cpu) == fingerprints[2]


def test_coarse_train_resumes_only_a_run_of_the_same_view_paths():
    params = load_params("params.yaml")
    tables = {split: pd.DataFrame({"subject_id": ["001"], "facial_action": ["smile"], "img_id": ["1"]})
              for split in coarse_train.SPLITS}
    data = {"resources": "r", "samples": "s"}
    auto = apply_overrides(params, ["coarse_train.decode=auto", "coarse_train.augment=auto"])
    key = {dev: coarse_train.fingerprint(auto, tables, data, 1, torch.device(dev)) for dev in ("cpu", "cuda")}
    assert key["cpu"] != key["cuda"]          # auto: OpenCV views on the CPU, the torch path's on CUDA
    forced = apply_overrides(params, ["coarse_train.decode=torch", "coarse_train.augment=auto"])
    assert coarse_train.fingerprint(forced, tables, data, 1, torch.device("cpu")) != key["cpu"]
    opencv = apply_overrides(params, ["coarse_train.decode=opencv", "coarse_train.augment=opencv"])
    moved = {coarse_train.fingerprint(opencv, tables, data, 1, torch.device(dev)) for dev in ("cpu", "cuda")}
    assert len(moved) == 1                    # the same views on either device: a moved run resumes


def test_a_batch_that_does_not_split_over_the_processes_torchrun_started_stops():
    """torchrun --nproc_per_node 3 -m stages.train leaves params gpus at 1: the loader checks the
    batch against the processes themselves (batch 8 took 2 a process: a global batch of 6)."""
    cfg = load_params("params.yaml").replace(train={"batch_size": 8}).train
    with pytest.raises(ValueError, match="batch_size 8 does not split evenly over 3 processes"):
        make_loader(None, Dist(rank=0, world=3, device=torch.device("cpu")), cfg, seed=0)


def test_the_machines_loader_workers_are_shared_by_its_processes():
    """data.workers, train.workers and finetune.workers are the machine's: 16 on 4 processes
    start 4 loader processes each (16 each would put 64 on 16 cores); a process keeps at least
    one, and 0 (loading in the process) stays 0."""
    cfg = load_params("params.yaml").replace(train={"batch_size": 8, "workers": 4}).train
    loader = make_loader(list(range(64)), Dist(rank=1, world=2, device=torch.device("cpu")), cfg, seed=0)
    assert loader.num_workers == 2
    assert [process_workers(w, Dist(0, n, torch.device("cpu"))) for w, n in ((16, 1), (2, 4), (0, 4))] == [16, 1, 0]


def test_every_process_leaves_the_group_after_a_stage(tmp_path):
    mp.spawn(run_finish_rank, args=(str(tmp_path), free_port()), nprocs=2, join=True)
    assert [torch.load(tmp_path / f"finish{r}.pt")["initialized"] for r in (0, 1)] == [False, False]


def test_processes_on_gpus_leave_a_stage_through_a_gloo_barrier(monkeypatch):
    """finish_distributed under nccl: the processes wait for rank 0's writes on a gloo group."""
    from stages.common.stage import finish_distributed
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(dist, "new_group", lambda backend: calls.append(backend) or "host")
    monkeypatch.setattr(dist, "barrier", lambda group=None: calls.append(("barrier", group)))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("left"))
    finish_distributed()
    assert calls == ["gloo", ("barrier", "host"), "left"]


def test_the_process_group_waits_an_hour_for_rank_zeros_validation(monkeypatch):
    """Between epochs the other processes wait at a barrier while rank 0 validates and writes the
    checkpoint: the group's collectives wait COLLECTIVE_TIMEOUT (NCCL's default of 10 minutes
    would stop a run whose val pass reads 71,000 images from slow storage)."""
    from datetime import timedelta
    from stages.common import distributed
    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: joined.update(backend=backend, **kwargs))
    ctx = distributed.start_distributed("cpu")
    assert (ctx.rank, ctx.world) == (1, 2)
    assert joined == {"backend": "gloo", "rank": 1, "world_size": 2, "timeout": timedelta(hours=1)}


def test_processes_on_gpus_wait_at_a_gloo_barrier_and_on_cpus_at_the_default_one(monkeypatch):
    """With nccl the processes that wait for rank 0 (its validation, say) wait on a gloo group,
    whose waiters sleep (benchmarks/bench_wait.py) where nccl's spin a core each; gloo's default
    group serves CPU processes itself."""
    from datetime import timedelta
    from stages.common import distributed
    groups, barriers = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: groups.append(backend))
    monkeypatch.setattr(dist, "new_group", lambda backend, timeout: groups.append((backend, timeout)) or "host")
    monkeypatch.setattr(dist, "barrier", lambda group=None: barriers.append(group))
    monkeypatch.setattr(distributed, "pick_device", lambda name, key, index: torch.device("cuda", index))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    on_gpus = distributed.start_distributed("cuda")
    assert groups == ["nccl", ("gloo", timedelta(hours=1))] and on_gpus.host == "host"
    monkeypatch.setattr(distributed, "pick_device", lambda name, key, index: torch.device("cpu"))
    on_cpus = distributed.start_distributed("cpu")
    assert groups[2:] == ["gloo"] and on_cpus.host is None
    distributed.barrier(on_gpus)
    distributed.barrier(on_cpus)
    distributed.barrier(Dist(0, 1, torch.device("cpu")))
    assert barriers == ["host", None]


def test_sync_batchnorm_is_in_the_identity_of_a_run_of_several_processes_only():
    """It changes a run of several processes (BatchNorm over the global batch): their
    checkpoints are not resumed across it; one process it leaves as it is."""
    params = load_params("params.yaml")
    tables = {split: pd.DataFrame({"subject_id": ["001"], "facial_action": ["smile"], "img_id": ["1"]})
              for split in coarse_train.SPLITS}
    data, cpu = {"resources": "r", "samples": "s"}, torch.device("cpu")
    synced = params.replace(sync_batchnorm=True)
    assert coarse_train.fingerprint(synced, tables, data, 1, cpu) == coarse_train.fingerprint(params, tables, data, 1, cpu)
    assert coarse_train.fingerprint(synced, tables, data, 2, cpu) != coarse_train.fingerprint(params, tables, data, 2, cpu)
    assert coarse_train.train_config(synced).sync_batchnorm and not coarse_train.train_config(params).sync_batchnorm


def test_a_replica_with_sync_batchnorm_converts_its_batchnorm_in_place_and_saves_as_batchnorm(monkeypatch):
    """replica: the model itself in one process; on CUDA with several its BatchNorm layers become
    SyncBatchNorm in place (the same parameters, so an optimiser made before still steps them,
    and the same state dict, which the plain network loads); on the CPU it stops naming the key."""
    import torchvision
    from stages.common import distributed
    model = torchvision.models.resnet18(num_classes=4)
    params_before, keys = list(model.parameters()), list(model.state_dict())
    assert distributed.replica(model, Dist(0, 1, torch.device("cpu")), True) is model
    with pytest.raises(ValueError, match="sync_batchnorm is true but the 2 processes run on cpu"):
        distributed.replica(model, Dist(0, 2, torch.device("cpu")), True)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    monkeypatch.setattr(distributed, "DistributedDataParallel", lambda module, device_ids: ("ddp", module, device_ids))
    cuda = torch.device("cuda", 1)
    assert distributed.replica(model, Dist(1, 2, cuda), False) == ("ddp", model, [cuda])
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert distributed.replica(model, Dist(1, 2, cuda), True) == ("ddp", model, [cuda])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 20 and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert all(a is b for a, b in zip(model.parameters(), params_before)) and list(model.state_dict()) == keys
    torchvision.models.resnet18(num_classes=4).load_state_dict(model.state_dict())


def test_processes_that_would_resume_from_different_epochs_all_stop(tmp_path):
    """A process that could not read the checkpoint the others resume from would train more
    epochs, its collectives waiting for theirs until the timeout: every process stops at once,
    saying where they disagree (Trainer.resume and the detector's loop check it)."""
    mp.spawn(run_agreement_rank, args=(str(tmp_path), free_port()), nprocs=2, join=True)
    messages = [torch.load(tmp_path / f"agree{rank}.pt")["message"] for rank in (0, 1)]
    assert messages == ["the 2 processes disagree on the epochs done: from 3 to 4"] * 2
