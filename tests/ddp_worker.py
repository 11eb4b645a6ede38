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
from stages.coarse.train import share_weight
from stages.common.badinput import BadInputs
from stages.common.distributed import start_distributed
from stages.common.params import Params
from stages.common.stage import finish_distributed
from stages.finetuning.pnp_loss import masked_mean
from stages.nets.trainer import Trainer, TrainPaths, run_training
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
    steps, train_step = [], trainer.train_step

    def recording_step(*args, **kwargs):
        terms = train_step(*args, **kwargs)
        steps.append({key: float(value) for key, value in terms.items()})
        return terms

    trainer.train_step = recording_step
    terms = trainer.train_epoch(0)
    own = {key: sum(step[key] for step in steps) / len(steps) for key in steps[0]}
    torch.save({"model": trainer.model.state_dict(), "initial": initial, "terms": terms, "own": own,
                "batches": len(trainer.loader)},
               base / f"rank{rank}.pt")
    dist.destroy_process_group()


def run_training_rank(rank: int, root: str, params: Params, port: int) -> None:
    """The train stage's run_training as rank `rank` of 2 in `root` (outputs in root/artifacts/train)."""
    join_as(rank, port)
    base = Path(root)
    paths = TrainPaths(crop=base / "artifacts/crop", pca=base / "artifacts/pca",
                       split=base / "artifacts/split", out=base / "artifacts/train")
    run_training(params, paths, Camera(PROJ, 800, 800))
    dist.destroy_process_group()


def run_masked_mean_rank(rank: int, root: str, port: int) -> None:
    """finetune's masked_mean of a global batch of 8 values, 4 a rank (rank 0: 4 accepted,
    rank 1: 1, or 0 when root names 'none'), one backward; saves the term and its samples' share
    of the gradient DDP averages."""
    join_as(rank, port)
    start_distributed("cpu")
    values = torch.arange(1.0, 9.0)[4 * rank:4 * rank + 4].requires_grad_(True)
    accepted = [True] * 4 + ([False] * 4 if "none" in root else [True, False, False, False])
    term = masked_mean(values, torch.tensor(accepted[4 * rank:4 * rank + 4]))
    term.backward()
    # DDP averages the ranks' gradients: each of this rank's samples gets its term's gradient / 2
    torch.save({"term": float(term), "grad": (values.grad / 2).tolist()}, Path(root) / f"masked{rank}.pt")
    dist.destroy_process_group()


def run_share_weight_rank(rank: int, root: str, port: int, kept_by_rank: tuple[int, int]) -> None:
    """coarse_train's share_weight of a global batch of 8 items, 4 a rank, with data.skip_bad, where
    the ranks kept kept_by_rank of theirs (the others undecodable); saves the weight and the items kept."""
    join_as(rank, port)
    ctx = start_distributed("cpu")
    kept = kept_by_rank[rank]
    weight = share_weight(kept, 8, ctx, BadInputs(skip=True, max_fraction=1.0))
    torch.save({"weight": float(weight), "kept": kept}, Path(root) / f"share{rank}.pt")
    dist.destroy_process_group()


def run_coarse_rank(rank: int, root: str, params: Params, port: int) -> None:
    """The coarse_train stage as rank `rank` (root/split lists, outputs in root/coarse_train);
    saves the rank's returned metrics, its nets and each of its steps' (sample indices, loss weight)."""
    join_as(rank, port)
    base, trained, steps = Path(root), {}, []
    train, step = coarse_loop.train, coarse_loop.step

    def recording_train(*args, **kwargs):
        trained.update(train(*args, **kwargs))
        return trained

    def recording_step(nets, batch, *args):
        steps.append((batch["index"].tolist(), None if args[-1] is None else float(args[-1])))
        return step(nets, batch, *args)

    coarse_train.train, coarse_loop.step = recording_train, recording_step
    metrics = coarse_train.run(params, base / "coarse_train", base / "split")
    torch.save({"metrics": metrics, "steps": steps,
                "nets": {name: net.state_dict() for name, net in trained.items()}}, base / f"coarse_rank{rank}.pt")
    dist.destroy_process_group()


def run_finish_rank(rank: int, root: str, port: int) -> None:
    """Join, leave through the stages' finish_distributed; saves whether the group is gone."""
    join_as(rank, port)
    start_distributed("cpu")
    finish_distributed()
    torch.save({"initialized": dist.is_initialized()}, Path(root) / f"finish{rank}.pt")
