"""Training loop of the two detector passes (locate, refine), resumable from a per-epoch checkpoint.

Both nets learn together, one batch of each per step on the same images, with one AdamW optimiser
and a one-cycle schedule; on the CPU in a single process the two passes' forward and backward run
side by side on two threads (`pass_threads`). The loss is the L1 distance between predicted and
target landmarks in units of the input size. The images stream through a torch DataLoader with data.workers worker
processes (stages/coarse/sources.py::ViewSet): nothing of the set's pixels is kept. With
coarse_train.decode on the torch path (`auto` on CUDA) the workers only read the files and the
views are decoded, warped and augmented in batches on the GPU (stages/coarse/device_views.py);
with coarse_train.augment on it the workers decode and warp, and only the photometric
augmentation runs in batches on the device.
The step's loss stays on the device until the epoch ends (no wait for the device a step). After each
epoch: validation errors in full-image px (refine on views centred on the GT landmarks, i.e.
without the locate pass, streamed the same way), a dvclive step and a checkpoint.

Under torchrun (`python -m stages.launch coarse_train` with params `gpus` > 1) each process trains
a DDP replica of both nets on its share of every global batch of coarse_train.batch_size, with
its share of the machine's data.workers loader processes; rank 0 validates and writes the
checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from stages.coarse.augment import Jitter
from stages.coarse.device_views import DeviceStream
from stages.coarse.model import LandmarkNet
from stages.coarse.sources import PASSES, Samples, Stream, ViewSet
from stages.common.badinput import BadInputs
from stages.common.device import torch_path
from stages.common.distributed import (Dist, barrier, gathered, mean_over_ranks, replica,
                                       share_cores, start_distributed)
from stages.common.precision import amp_dtype, autocast, needs_grad_scaler, place_network
from stages.common.resume import Checkpoints, capture, restore
from stages.common.threads import usable_cores
from stages.wcpa.layout import DataError

log = logging.getLogger(__name__)
LOADER_NICENESS = 19          # os.nice of the loader processes when the nets train on the CPU (make_stream)


@dataclass(frozen=True)
class TrainConfig:
    """The coarse_train params (see params.yaml) the loop needs."""

    locate_backbone: str
    refine_backbone: str
    pretrained: bool
    locate_size: int
    refine_size: int
    refine_margin: float
    head_width: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    flip_prob: float
    locate_jitter: Jitter
    refine_jitter: Jitter
    seed: int
    decode: str
    augment: str
    compile: bool
    sync_batchnorm: bool = False     # params sync_batchnorm: with several processes, BatchNorm over the global batch


def build_nets(cfg: TrainConfig, n_points: int) -> dict[str, LandmarkNet]:
    """The locate and refine networks (fresh weights)."""
    torch.manual_seed(cfg.seed)
    return {"locate": LandmarkNet(cfg.locate_backbone, n_points, cfg.pretrained, cfg.head_width),
            "refine": LandmarkNet(cfg.refine_backbone, n_points, cfg.pretrained, cfg.head_width)}


def training_amp(dev: torch.device) -> torch.dtype | None:
    """The detector's autocast type: mixed precision on CUDA (stages.common.precision), float32
    on every CPU (the demo's detector is trained and validated in float32)."""
    return amp_dtype(dev, dev.type == "cuda")


def to_tensor(images: np.ndarray | torch.Tensor, dev: torch.device) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float (B, 3, S, S) in [0, 1] on `dev`."""
    if not isinstance(images, torch.Tensor):
        images = torch.from_numpy(np.ascontiguousarray(images))
    tensor = images.to(dev, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The training batches of `epoch`: a seeded permutation cut into full batches (all of it
    when shorter than one batch), as (epoch, index) items."""
    order = np.random.default_rng(seed + epoch).permutation(n)
    batches = [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)] or [order]
    return [[(epoch, int(i)) for i in index] for index in batches]


def take(batch: dict, samples: Samples, bad: BadInputs | None) -> dict | None:
    """A loaded batch without its undecodable samples: a decode error stops with the file's name,
    or with data.skip_bad the sample is recorded once in `bad` and dropped (None: none left)."""
    failed = [i for i, error in enumerate(batch["error"]) if error]
    if not failed:
        return batch
    for i in failed:
        key = samples.key(int(batch["index"][i]))
        if bad is None or not bad.skip:
            raise DataError(batch["error"][i])
        if key not in bad.keys:
            bad.add_error(key, DataError(batch["error"][i]))
    keep = torch.from_numpy(np.array([not e for e in batch["error"]]))
    if not keep.any():
        return None
    return {"index": batch["index"][keep],
            **{name: {k: v[keep] for k, v in batch[name].items()} for name in PASSES}}


def make_stream(views: ViewSet, workers: int, decode: str, augment: str, dev: torch.device) -> Stream | DeviceStream:
    """The stream of `views`' batches: the OpenCV path's loader processes, or the torch path's
    (coarse_train.decode: stages.common.device.torch_path) with the views made on `dev`; on the
    OpenCV path the training views' photometric augmentation runs in the loader processes or, by
    coarse_train.augment (torch_path likewise), in batches on `dev`. When the nets train on the CPU
    the loader processes run at the lowest priority: they take the cores the passes' threads leave
    idle (`pass_threads`) instead of stalling them; on CUDA their batches come in pinned memory (a
    copy from pageable memory waits for the previous step, so the host could not queue ahead)."""
    if torch_path(decode, dev):
        return DeviceStream(views, workers, dev)
    if views.jitters and torch_path(augment, dev):
        return DeviceStream(views, workers, dev, decode_on_device=False)
    return Stream(views, workers, niceness=LOADER_NICENESS if dev.type == "cpu" else 0, pin=dev.type == "cuda")


def pass_loss(net: torch.nn.Module, batch: dict, name: str, size: int, dev: torch.device) -> torch.Tensor:
    """Pass `name`'s L1 loss on a loaded batch, in units of its input size `size` (a 0-d tensor)."""
    with autocast(dev, training_amp(dev)):
        pred = net(to_tensor(batch[name]["image"], dev))
    target = batch[name]["points"].to(dev, torch.float32)
    return (pred.float() - target).abs().mean() / size


def step(nets: dict[str, LandmarkNet], batch: dict, sizes: dict[str, int], optimizer, schedule,
         scaler, passes: ThreadPoolExecutor | None = None, weight: float | None = None) -> torch.Tensor:
    """One training step of both nets on a loaded batch -> its loss (a 0-d tensor on the device,
    detached: read it once an epoch, so that the host does not wait for the device every step).
    Each pass's forward and backward runs on its own term (each net's gradient comes from its own
    term alone): on `pass_threads`' pool side by side, or with passes None one after the other.
    weight: a factor of both terms (share_weight's, under DDP), None for none."""
    dev = next(nets["refine"].parameters()).device
    optimizer.zero_grad(set_to_none=True)

    def backward(name: str) -> torch.Tensor:
        loss = pass_loss(nets[name], batch, name, sizes[name], dev)
        if weight is not None:
            loss = loss * weight
        scaler.scale(loss).backward()
        return loss

    loss = sum((map if passes is None else passes.map)(backward, PASSES))
    scaler.step(optimizer)
    scaler.update()
    schedule.step()
    return loss.detach()


def pass_threads(ctx: Dist) -> ThreadPoolExecutor | None:
    """On the CPU in a single process: two threads that run the two passes of a step side by side
    (`step`), each on its share of the cores for torch's operators (at least one). The locate
    pass is the cheaper one; the loader's workers, at the lowest priority on the CPU
    (`make_stream`), fill its core while the refine pass goes on. On 2 cores this steps as fast as
    one pass after the other on both cores' threads, and streamed it leaves no core waiting for a
    thread the kernel gave to a worker (docs/benchmarks.md, "Data path at scale"). None on a GPU
    (the passes queue on one stream) and under DDP (both passes' gradient reductions must start in
    the same order in every process)."""
    if ctx.device.type != "cpu" or ctx.world > 1:
        return None
    threads = max(1, usable_cores() // len(PASSES))
    return ThreadPoolExecutor(len(PASSES), thread_name_prefix="coarse-pass", initializer=torch.set_num_threads,
                              initargs=(threads,))


@torch.no_grad()
def view_errors(nets: dict[str, LandmarkNet], stream: Stream, batch_size: int,
                bad: BadInputs | None = None) -> dict[str, np.ndarray]:
    """{pass: per-point errors (N, L) in full-image px of its net on the plain views of `stream`}."""
    for net in nets.values():
        net.eval()
    dev = next(nets["refine"].parameters()).device
    n = len(stream.views)
    batches = [[(0, i) for i in range(start, min(start + batch_size, n))] for start in range(0, n, batch_size)]
    errors = {name: [] for name in PASSES}
    for batch in stream.read(batches):
        batch = take(batch, stream.views.samples, bad)
        if batch is None:
            continue
        for name in PASSES:
            with autocast(dev, training_amp(dev)):
                pred = nets[name](to_tensor(batch[name]["image"], dev)).float().cpu().numpy()
            target = batch[name]["points"].numpy()
            scale = batch[name]["scale"].numpy()
            errors[name].append(np.linalg.norm(pred - target, axis=-1) / scale[:, None])
    return {name: np.concatenate(e) for name, e in errors.items()}


def train(cfg: TrainConfig, train_samples: Samples, val_samples: Samples, flip_order: np.ndarray | None,
          checkpoints: Checkpoints, live, workers: int = 0, bad: BadInputs | None = None,
          ctx: Dist | None = None) -> dict[str, LandmarkNet]:
    """Train both passes for cfg.epochs, resuming from `checkpoints` (stages.common.resume) when they match.

    train_samples / val_samples: the splits' images and GT landmarks (stages/coarse/sources.py),
    streamed through `workers` loader processes (this process's; the val pass, which rank 0 runs
    while the others wait, through `workers` x world). flip_order: (L,) landmark mirror
    order, passed through to the augmentation (None when cfg.flip_prob is 0). bad: where
    undecodable images go with data.skip_bad (None: they stop); its records, those of every
    process, are kept in the checkpoint. live: a dvclive.Live of no steps (or None): a resumed
    run first logs the finished epochs' metrics, kept in the checkpoint. ctx: this process's
    place under torchrun (stages.common.distributed; None: start_distributed's): each of the
    `world` processes trains a DDP replica on its share of every batch of cfg.batch_size (the
    global batch), rank 0 validates and writes the checkpoint.
    Returns the nets, on the training device, in eval mode.
    """
    ctx = ctx or start_distributed("auto", "coarse_train")
    share_cores(ctx, workers)
    if cfg.batch_size < ctx.world:
        raise ValueError(f"coarse_train.batch_size={cfg.batch_size} is smaller than the {ctx.world} processes")
    nets = build_nets(cfg, train_samples.landmarks.shape[1])
    for net in nets.values():
        place_network(net, ctx.device)
    params = [p for net in nets.values() for p in net.parameters()]
    optimizer = make_optimizer(params, cfg, ctx.device)
    steps = cfg.epochs * max(len(train_samples) // cfg.batch_size, 1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=steps, pct_start=0.15)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=needs_grad_scaler(training_amp(ctx.device)))
    first_epoch, history = _resume(checkpoints, cfg.epochs, nets, (optimizer, scaler, schedule), bad)
    checkpoints.agree(first_epoch, ctx)
    for metrics in history:
        log_step(live, metrics)
    sizes = {"locate": cfg.locate_size, "refine": cfg.refine_size}
    jitters = {"locate": cfg.locate_jitter, "refine": cfg.refine_jitter}
    train_stream = make_stream(ViewSet(train_samples, sizes, cfg.refine_margin, cfg.seed, jitters, flip_order,
                                       cfg.flip_prob), workers, cfg.decode, cfg.augment, ctx.device)
    val_stream = make_stream(ViewSet(val_samples, sizes, cfg.refine_margin, cfg.seed), workers * ctx.world,
                             cfg.decode, cfg.augment, ctx.device)      # rank 0 alone reads it: the machine's
    replicas = compiled(data_parallel(nets, ctx, cfg.sync_batchnorm), cfg.compile)
    passes = pass_threads(ctx)
    for epoch in range(first_epoch, cfg.epochs):
        started = time.perf_counter()
        loss = _epoch(replicas, train_stream, sizes, cfg, (optimizer, schedule, scaler, passes), epoch, bad=bad,
                      ctx=ctx)
        loss = float(mean_over_ranks(loss, ctx))
        share_epoch(nets, bad, ctx)
        if ctx.main:
            metrics = {"train/loss": loss, "lr": schedule.get_last_lr()[0],
                       "epoch_seconds": time.perf_counter() - started}
            history.append(metrics)
            _validate_and_save(nets, val_stream, cfg, epoch, history, live, bad, checkpoints,
                               capture(epoch, nets, optimizer, scaler, schedule))
        barrier(ctx)                        # the others wait while rank 0 validates
    if passes is not None:
        passes.shutdown()
    for net in nets.values():
        net.eval()
    return nets


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, dev: torch.device) -> torch.optim.AdamW:
    """AdamW over both nets; on CUDA its fused kernel (one launch for all the weights), elsewhere
    the default (the CPU demo's weights stay as they were)."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=dev.type == "cuda" or None)


def compiled(nets: dict[str, torch.nn.Module], compile_: bool) -> dict[str, torch.nn.Module]:
    """The training step's nets, each compiled with torch.compile when asked (the step's shapes
    are fixed: every training batch is full; validation runs the uncompiled nets)."""
    return {name: torch.compile(net) for name, net in nets.items()} if compile_ else nets


def data_parallel(nets: dict[str, LandmarkNet], ctx: Dist, sync_batchnorm: bool = False) -> dict[str, torch.nn.Module]:
    """The nets as DDP replicas (gradients averaged over the processes; with sync_batchnorm their
    BatchNorm over the global batch: stages.common.distributed.replica) when world > 1, else themselves."""
    return {name: replica(net, ctx, sync_batchnorm) for name, net in nets.items()}


def shard(batches: list[list[tuple[int, int]]], ctx: Dist) -> list[list[tuple[int, int]]]:
    """This process's share of every batch: items rank, rank + world, ... (the global batches are
    the same on every process, so every process takes the same number of steps)."""
    return [batch[ctx.rank::ctx.world] for batch in batches]


def share_epoch(nets: dict[str, LandmarkNet], bad: BadInputs | None, ctx: Dist) -> None:
    """After an epoch under DDP: every process gets rank 0's buffers (BatchNorm statistics drift
    apart between DDP's broadcasts) and the bad-input records every process found."""
    if ctx.world == 1:
        return
    for net in nets.values():
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)
    if bad is not None:
        bad.merge([record for records in gathered(list(bad.records), ctx) for record in records], "the other processes")


def _validate_and_save(nets, val_stream: Stream, cfg: TrainConfig, epoch: int, history: list[dict], live,
                       bad: BadInputs | None, checkpoints: Checkpoints, state: dict) -> None:
    """Rank 0 after an epoch: val errors into its metrics (history[-1]), the log, a dvclive step
    and the checkpoint (state: stages.common.resume.capture's, to which the history of every
    epoch's metrics and the skipped inputs are added)."""
    metrics = history[-1]
    errors = view_errors(nets, val_stream, 2 * cfg.batch_size, bad)
    for name in PASSES:
        metrics[f"val/{name}_median_px"] = float(np.median(errors[name]))
        metrics[f"val/{name}_p95_px"] = float(np.percentile(errors[name], 95))
    log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    log_step(live, metrics)
    checkpoints.save({**state, "history": history, "bad": list(bad.records) if bad is not None else []})


def log_step(live, metrics: dict[str, float]) -> None:
    """One dvclive step of an epoch's metrics (live None: nothing)."""
    if live is None:
        return
    for key, value in metrics.items():
        live.log_metric(key, value)
    live.next_step()


def _resume(checkpoints: Checkpoints, epochs: int, nets, optimization: tuple,
            bad: BadInputs | None = None) -> tuple[int, list[dict]]:
    """Load the latest matching state into the nets and optimization (optimizer, scaler, schedule),
    and the images found undecodable before it into `bad` -> (the 0-based epoch to start from, the
    finished epochs' metrics)."""
    state = checkpoints.latest(epochs)
    if state is None:
        return 0, []
    if bad is not None:
        bad.merge(state["bad"], f"the checkpoint of epoch {state['epoch'] + 1}")
    return restore(state, nets, *optimization), state["history"]


def _epoch(nets, stream: Stream, sizes, cfg: TrainConfig, stepping: tuple, epoch: int,
           bad: BadInputs | None, ctx: Dist) -> torch.Tensor:
    """One pass over this process's share of the training set -> its mean loss (a float64 0-d
    tensor on the device). stepping: `step`'s (optimizer, schedule, scaler, passes)."""
    optimizer, schedule, scaler, passes = stepping
    summed = bad is not None and bad.skip
    for net in nets.values():
        net.train()
    whole = epoch_batches(len(stream.views), cfg.batch_size, cfg.seed, epoch)
    batches = shard(whole, ctx)
    total, count = torch.zeros((), dtype=torch.float64, device=ctx.device), 0
    loaded = tqdm(stream.read(batches), total=len(batches), desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                  disable=not ctx.main)
    for loaded_batch, batch_size in zip(loaded, map(len, whole)):
        batch = take(loaded_batch, stream.views.samples, bad)
        kept = 0 if batch is None else len(batch["index"])
        kept_all = kept_everywhere(kept, batch_size, ctx, summed)
        if kept_all == 0:        # no item of the global batch decodes: no process steps
            schedule.step()
            continue
        weight = share_weight(kept, kept_all, ctx)
        if batch is None:        # others kept items: this process steps on a stand-in, weighted 0
            with statistics_kept(nets):
                total += step(nets, first_item(loaded_batch), sizes, optimizer, schedule, scaler, passes, weight)
        else:
            total += step(nets, batch, sizes, optimizer, schedule, scaler, passes, weight)
        count += 1
    return total / max(count, 1)


@contextlib.contextmanager
def statistics_kept(nets: dict[str, torch.nn.Module]) -> Iterator[None]:
    """The nets' buffers (BatchNorm's running statistics) as they were before the block: a
    stand-in's forward must not move them (rank 0's are every process's after DDP's broadcast)."""
    saved = [[buffer.clone() for buffer in net.buffers()] for net in nets.values()]
    yield
    with torch.no_grad():
        for net, buffers in zip(nets.values(), saved):
            for buffer, before in zip(net.buffers(), buffers):
                buffer.copy_(before)


def first_item(batch: dict) -> dict:
    """A loaded batch's first item as a batch of one (an undecodable item is a black image with
    its finite landmark targets: a stand-in whose loss share_weight weighs 0)."""
    return {"index": batch["index"][:1], **{name: {k: v[:1] for k, v in batch[name].items()} for name in PASSES}}


def kept_everywhere(kept: int, batch_size: int, ctx: Dist, summed: bool) -> int:
    """The items of a global batch of `batch_size` that the processes kept, where this one kept
    `kept`: `kept` in one process; the whole batch unless `summed` (no data.skip_bad: an
    undecodable item stops the run); summed (under data.skip_bad), the sum over the processes,
    all-reduced on the host group (ctx.host: gloo, which waits for no device queue). Every
    process then agrees whether the step is taken: an optimiser step on a zero gradient is no
    skipped step (AdamW's moments and weight decay move the weights)."""
    if ctx.world == 1:
        return kept
    if not summed:
        return batch_size
    total = torch.tensor([kept], dtype=torch.int64)
    dist.all_reduce(total, group=ctx.host)
    return int(total[0])


def share_weight(kept: int, kept_all: int, ctx: Dist) -> float | None:
    """The weight of this process's mean loss on its `kept` items of a global batch whose
    processes kept `kept_all` (> 0; kept_everywhere's): kept x world / kept_all, so that DDP's
    mean of the processes' gradients weighs every item alike when the batch does not divide
    evenly (16 on 3 processes: 6, 5, 5) or some were dropped as undecodable (0 for a process that
    kept none). None in one process (no weight)."""
    return None if ctx.world == 1 else kept * ctx.world / kept_all
