"""One rank of the DDP tests (tests/unit/test_ddp.py): a short epoch of train on the tiny project,
or the coarse_train stage on a tiny data root; then its weights are saved for comparison with
the other rank's."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from stages import coarse_train
from stages.coarse_train import train_config
from stages.coarse import train as coarse_loop
from stages.coarse.train import kept_everywhere, share_weight
from stages.common.badinput import BadInputs
from stages.common.distributed import same_everywhere, start_distributed
from stages.common.params import Params, load_params
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
    """coarse_train's kept_everywhere (summed on the host group, as under data.skip_bad) and share_weight of a
    global batch of 8 items, 4 a rank, where the ranks kept kept_by_rank of theirs (the others undecodable); saves the
    items kept here and everywhere and the weight (None where no process steps)."""
    join_as(rank, port)
    ctx = start_distributed("cpu")
    kept = kept_by_rank[rank]
    kept_all = kept_everywhere(kept, 8, ctx, summed=True)
    weight = share_weight(kept, kept_all, ctx) if kept_all else None
    torch.save({"weight": weight, "kept": kept, "kept_all": kept_all}, Path(root) / f"share{rank}.pt")
    dist.destroy_process_group()


class _Views:
    """The views of a stream of `n` items, keyed k<index>."""

    def __init__(self, n: int):
        self.n, self.samples = n, SimpleNamespace(key=lambda index: f"k{index}")

    def __len__(self) -> int:
        return self.n


class _FailingStream:
    """coarse_train's Stream of random views (64 px, 5 points) of `n` items, those in `bad`
    undecodable (their "error" set, as a loader process sets it)."""

    def __init__(self, n: int, bad: set[int]):
        self.views, self.bad = _Views(n), bad

    def read(self, batches: list[list[tuple[int, int]]]):
        for batch in batches:
            index = [i for _, i in batch]
            generator = torch.Generator().manual_seed(sum(index))
            yield {"index": torch.tensor(index),
                   "error": [f"/data/{i}.jpg: not a decodable image" if i in self.bad else "" for i in index],
                   **{name: {"image": torch.randint(0, 255, (len(index), 64, 64, 3), dtype=torch.uint8,
                                                    generator=generator),
                             "points": 8 + 48 * torch.rand(len(index), 5, 2, generator=generator)}
                      for name in ("locate", "refine")}}


def run_epoch_rank(rank: int, root: str, port: int) -> None:
    """coarse_train's _epoch over 8 items in global batches of 4 (2 a rank) with data.skip_bad:
    in batch 1 rank 0's share does not decode, in batch 2 no item does. Saves whether the rank's
    buffers are those it started with, its optimiser's step counts, the schedule's and its weights."""
    join_as(rank, port)
    ctx = start_distributed("cpu")
    cfg = train_config(load_params("params.yaml").replace(coarse_train={
        "locate_size": 64, "refine_size": 64, "head_width": 16, "batch_size": 4}))
    torch.manual_seed(0)
    nets = coarse_loop.build_nets(cfg, 5)
    whole = coarse_loop.epoch_batches(8, 4, cfg.seed, 0)
    bad_items = {whole[0][0][1], whole[0][2][1], *(i for _, i in whole[1])}      # rank 0 takes items 0, 2, ...
    optimizer = coarse_loop.make_optimizer([p for net in nets.values() for p in net.parameters()], cfg, ctx.device)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=2, pct_start=0.15)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    start = [buffer.clone() for net in nets.values() for buffer in net.buffers()]
    coarse_loop._epoch(coarse_loop.data_parallel(nets, ctx), _FailingStream(8, bad_items),
                       {"locate": 64, "refine": 64}, cfg, (optimizer, schedule, scaler, None), 0,
                       BadInputs(skip=True, max_fraction=1.0), ctx)
    buffers = [buffer for net in nets.values() for buffer in net.buffers()]
    torch.save({"buffers_kept": all(torch.equal(a, b) for a, b in zip(start, buffers)),
                "steps": sorted({int(state["step"]) for state in optimizer.state.values()}),
                "schedule_steps": schedule.last_epoch,
                "weights": {name: net.state_dict() for name, net in nets.items()}}, Path(root) / f"epoch{rank}.pt")
    dist.destroy_process_group()


def run_coarse_rank(rank: int, root: str, params: Params, port: int) -> None:
    """The coarse_train stage as rank `rank` (root/split lists, outputs in root/coarse_train);
    saves the rank's returned metrics, its nets, the loader workers of its train and val streams
    and each of its steps' (sample indices, loss weight)."""
    join_as(rank, port)
    base, trained, steps, workers = Path(root), {}, [], []
    train, step, make_stream = coarse_loop.train, coarse_loop.step, coarse_loop.make_stream

    def recording_train(*args, **kwargs):
        trained.update(train(*args, **kwargs))
        return trained

    def recording_stream(views, n_workers, *args):
        workers.append(n_workers)
        return make_stream(views, n_workers, *args)

    def recording_step(nets, batch, *args):
        steps.append((batch["index"].tolist(), None if args[-1] is None else float(args[-1])))
        return step(nets, batch, *args)

    coarse_train.train, coarse_loop.step, coarse_loop.make_stream = recording_train, recording_step, recording_stream
    metrics = coarse_train.run(params, base / "coarse_train", base / "split")
    torch.save({"metrics": metrics, "steps": steps, "workers": workers,
                "nets": {name: net.state_dict() for name, net in trained.items()}}, base / f"coarse_rank{rank}.pt")
    dist.destroy_process_group()


def run_finish_rank(rank: int, root: str, port: int) -> None:
    """Join, leave through the stages' finish_distributed; saves whether the group is gone."""
    join_as(rank, port)
    start_distributed("cpu")
    finish_distributed()
    torch.save({"initialized": dist.is_initialized()}, Path(root) / f"finish{rank}.pt")


def run_agreement_rank(rank: int, root: str, port: int) -> None:
    """Agree on 3 in both processes, then offer 3 + rank: saves what each process raised."""
    join_as(rank, port)
    ctx = start_distributed("cpu")
    same_everywhere(3, ctx, "the epochs done")
    try:
        same_everywhere(3 + rank, ctx, "the epochs done")
        message = ""
    except RuntimeError as err:
        message = str(err)
    torch.save({"message": message}, Path(root) / f"agree{rank}.pt")
    dist.destroy_process_group()


def run_prepare_rank(rank: int, root: str, params: Params, port: int) -> None:
    """coarse_train's prepared_samples of the train list as rank `rank`: saves the samples (or the
    DataError's message), the bad records and the rows this process read labels of."""
    from stages.wcpa.layout import DataError, load_resources, read_list
    join_as(rank, port)
    ctx = start_distributed("cpu")
    base, read = Path(root), []
    load = coarse_train.load_targets
    coarse_train.load_targets = lambda root, table, *args: read.extend(table.img_id) or load(root, table, *args)
    bad = BadInputs(skip=params.data.skip_bad, max_fraction=1.0)
    try:
        samples = coarse_train.prepared_samples(params.data.root, read_list(base / "split/train.csv"),
                                                load_resources(params.data.root), bad, 1, ctx)
        result = {"keys": samples.keys.tolist(), "paths": samples.paths.tolist(),
                  "landmarks": torch.from_numpy(samples.landmarks)}
    except DataError as err:
        result = {"error": str(err)}
    torch.save({**result, "bad": bad.records, "read": read}, base / f"prepare{rank}.pt")
    dist.destroy_process_group()
