"""One rank of the DDP tests (tests/unit/test_ddp.py): a short epoch of train on the tiny project,
or the coarse_train stage on a tiny data root; then its weights are saved for comparison with
the other rank's."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from stages import coarse_train
from stages.coarse import train as coarse_loop
from stages.common.params import Params
from stages.nets.trainer import Trainer, TrainPaths
from stages.wcpa.camera import Camera
from tests.tiny_project import PROJ


def join_as(rank: int, port: int) -> None:
    """The environment torchrun gives rank `rank` of 2 on this machine, one torch thread."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def run_rank(rank: int, root: str, params: Params, port: int) -> None:
    join_as(rank, port)
    base = Path(root)
    paths = TrainPaths(crop=base / "artifacts/crop", pca=base / "artifacts/pca",
                       split=base / "artifacts/split", out=base / "artifacts/train")
    trainer = Trainer(params, paths, Camera(PROJ, 800, 800))
    assert dist.get_backend() == "gloo" and dist.get_world_size() == 2
    initial = {name: weight.clone() for name, weight in trainer.model.state_dict().items()}
    terms = trainer.train_epoch(0)
    torch.save({"model": trainer.model.state_dict(), "initial": initial, "terms": terms,
                "batches": len(trainer.loader)},
               base / f"rank{rank}.pt")
    dist.destroy_process_group()


def run_coarse_rank(rank: int, root: str, params: Params, port: int) -> None:
    """The coarse_train stage as rank `rank` (root/split lists, outputs in root/coarse_train);
    saves the rank's returned metrics, its nets and the sample indices of each of its steps."""
    join_as(rank, port)
    base, trained, steps = Path(root), {}, []
    train, step = coarse_loop.train, coarse_loop.step

    def recording_train(*args, **kwargs):
        trained.update(train(*args, **kwargs))
        return trained

    def recording_step(nets, batch, *args):
        steps.append(batch["index"].tolist())
        return step(nets, batch, *args)

    coarse_train.train, coarse_loop.step = recording_train, recording_step
    metrics = coarse_train.run(params, base / "coarse_train", base / "split")
    torch.save({"metrics": metrics, "steps": steps,
                "nets": {name: net.state_dict() for name, net in trained.items()}}, base / f"coarse_rank{rank}.pt")
    dist.destroy_process_group()
