"""One rank of the DDP test (tests/unit/test_ddp.py): a short epoch on the tiny project, then its
weights are saved for comparison with the other rank's."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from stages.nets.trainer import Trainer, TrainPaths
from stages.wcpa.camera import Camera
from tests.tiny_project import PROJ


def run_rank(rank: int, root: str, params: dict, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
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
