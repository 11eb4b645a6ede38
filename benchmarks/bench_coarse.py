"""coarse_train's streamed training steps against the same batches already in memory (issue 17).

rate (default): reference (same process, same nets, optimiser and batches): the training step of
stage coarse_train (both passes, forward, L1 loss, backward, AdamW, one-cycle) on batches
materialised in memory beforehand, one pass after the other on torch's threads for every core;
measured: the stage's step (on a CPU its two passes side by side on two threads,
stages.coarse.train.pass_threads, and torch's threads beside the loader's,
stages.common.threads.training_threads) with its batch read through the stage's DataLoader and
its data.workers processes (decode, one warp per view, colour augmentation; at the lowest
priority on a CPU), or with coarse_train.decode's torch path (`auto` on CUDA) the views made on
the device from the files its workers read. Also timed: the stage's step in memory, the streamed
step with one pass after the other, and the stream alone (its batches read without a step: the
data path's bound). All run in interleaved rounds, every step timed; the rates come from the
median step times.
The issue's bar: measured / reference >= 0.85.

item: a loader worker's CPU per training item (decode, both views' warps, photometric
augmentation; one thread), and without the augmentation (coarse_train.augment torch: it runs on
the device), against a bare cv2.imread of the same files, interleaved: the cost that bounds the
stream on a machine's cores (16 workers stream at most 16 / item images/s).

stage: the whole stage on the first --images N training images (and N / 4 validation images; each
at most the split's rows: a list names a sample once), for peak memory under /usr/bin/time -v.

    python -m benchmarks.bench_coarse [rate] [--steps 10] [--rounds 5] [--split artifacts/split]
        [--set coarse_train.batch_size=32 data.workers=2 ...]
    python -m benchmarks.bench_coarse item [--images 200] [--rounds 5] [--set coarse_train.locate_size=256 ...]
    /usr/bin/time -v python -m benchmarks.bench_coarse stage --images 1000 [--epochs 1]

Needs the data root (data.root) and the split lists (dvc repro split).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.gpu_probe import sync
from stages import coarse_train
from stages.coarse.device_views import WarpedSet
from stages.coarse.sources import ViewSet, list_samples
from stages.coarse.targets import load_targets
from stages.coarse.train import (TrainConfig, build_nets, compiled, epoch_batches, make_optimizer, make_stream,
                                 pass_threads, step, training_amp)
from stages.common.badinput import BadInputs
from stages.common.device import pick_device, torch_path
from stages.common.distributed import Dist, share_cores
from stages.common.params import Params, apply_overrides, load_params
from stages.common.precision import needs_grad_scaler, place_network
from stages.wcpa.layout import load_resources, read_list, write_list


def timed_steps(run, batches, steps: int) -> tuple[list[float], list[float]]:
    """Seconds of each of `steps` calls of run(batch) with batches from the iterator `batches`,
    the batch's loading included, and of the loading alone."""
    times, loading = [], []
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
        loading.append(loaded - start)
    return times, loading


def streamed(views: ViewSet, cfg: TrainConfig, workers: int, epoch: int, steps: int, device):
    """The first `steps` training batches of `epoch` through the stage's stream (coarse_train.decode's
    and coarse_train.augment's paths on `device`), its workers started afresh and gone once read,
    so that none works in the background of the reference's rounds nor has batches ready at the
    start of a round (the stage keeps its workers across epochs: a round's first steps here wait
    for the start-up; the median leaves them out)."""
    return iter(make_stream(views, workers, cfg.decode, cfg.augment, device).read(
        epoch_batches(len(views), cfg.batch_size, cfg.seed, epoch)[:steps]))


def stream_rate(stream, epoch: int, batches: int, batch_size: int, device) -> float:
    """Images a second of `batches` batches read from stream(epoch) with no step, from the first
    batch's arrival (the workers' start-up left out) to the last's (at least 3 batches a worker,
    so that the workers' first batches, made side by side, do not set the rate)."""
    read = stream(epoch, batches)
    next(read)
    start = time.perf_counter()
    for _ in range(batches - 1):
        next(read)
        sync(device)
    return (batches - 1) * batch_size / (time.perf_counter() - start)


def training_views(params: Params, split: Path) -> tuple[TrainConfig, ViewSet]:
    """The stage's config and its training ViewSet over the split's train.csv."""
    cfg, root = coarse_train.train_config(params), params.data.root
    resources = load_resources(root)
    table = read_list(split / "train.csv")
    bad = BadInputs(skip=False, max_fraction=0.0)
    landmarks, kept = load_targets(root, table, resources, bad)
    samples = list_samples(root, table.iloc[kept], landmarks, resources.camera.size, bad)
    sizes = {"locate": cfg.locate_size, "refine": cfg.refine_size}
    return cfg, ViewSet(samples, sizes, cfg.refine_margin, cfg.seed,
                        {"locate": cfg.locate_jitter, "refine": cfg.refine_jitter},
                        coarse_train.landmark_flip_order(resources), cfg.flip_prob)


def item(args: argparse.Namespace, params: Params) -> None:
    """A loader worker's CPU per training item (one thread) on the OpenCV path, with the photometric
    augmentation (coarse_train.augment opencv) and without it (torch: it runs on the device),
    against a bare decode of the item's file: what a core spends per streamed image, in
    interleaved rounds over the same images."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    cfg, views = training_views(params, Path(args.split))
    warped = WarpedSet(views.samples, views.sizes, views.margin, views.seed, views.jitters, views.flip_order,
                       views.flip_prob)
    count = min(args.images, len(views))
    paths = [views.samples.paths[i].decode() for i in range(count)]
    print(f"locate {cfg.locate_size} px, refine {cfg.refine_size} px, {count} training images, one thread")
    times = {"item": [], "warped": [], "decode": []}
    for epoch in range(args.rounds):
        for key, dataset in (("item", views), ("warped", warped)):
            start = time.process_time()
            for index in range(count):
                dataset[(epoch, index)]
            times[key].append((time.process_time() - start) / count)
        start = time.process_time()
        for path in paths:
            cv2.imread(path)
        times["decode"].append((time.process_time() - start) / count)
    ms = {key: np.median(values) * 1e3 for key, values in times.items()}
    print(f"bare cv2.imread: {ms['decode']:.2f} ms CPU")
    for key, label in (("item", "item (decode, 2 views, photometric augmentation)"),
                       ("warped", "item, its augmentation on the device (augment: torch)")):
        print(f"{label:56s} {ms[key]:.2f} ms CPU = {ms[key] / ms['decode']:.2f} decodes; one core streams "
              f"{1e3 / ms[key]:.0f} images/s")


def rate(args: argparse.Namespace, params: Params) -> None:
    workers = params.data.workers
    cfg, views = training_views(params, Path(args.split))
    samples, sizes = views.samples, views.sizes
    nets = build_nets(cfg, samples.landmarks.shape[1])
    device = pick_device("auto")
    for net in nets.values():
        place_network(net, device).train()
    params_ = [p for net in nets.values() for p in net.parameters()]
    optimizer = make_optimizer(params_, cfg, device)
    stepped = compiled(nets, cfg.compile)
    total = (args.rounds * 4 + 1) * args.steps + 2
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=total, pct_start=0.15)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(training_amp(device)))

    passes = pass_threads(Dist(0, 1, device))

    def run(batch, side_by_side: bool = False):
        step(stepped, batch, sizes, optimizer, schedule, scaler, passes if side_by_side else None)
        sync(device)

    def stage_run(batch):
        run(batch, side_by_side=True)

    def stream(epoch: int, steps: int = args.steps):
        return streamed(views, cfg, workers, epoch, steps, device)

    path = ("torch (views made on the device)" if torch_path(cfg.decode, device) else
            "OpenCV (loader processes), augmented on the device" if torch_path(cfg.augment, device) else
            "OpenCV (loader processes)")
    threads = {"all": torch.get_num_threads()}
    share_cores(Dist(0, 1, device), workers)            # the stage's setting, read back
    threads["stage"] = torch.get_num_threads()
    print(f"{cfg.locate_backbone} {cfg.locate_size} px + {cfg.refine_backbone} {cfg.refine_size} px, "
          f"batch {cfg.batch_size}, {len(samples)} training images, workers {workers}, torch threads: "
          f"reference {threads['all']}, the stage's {threads['stage']}, the passes side by side: "
          f"{passes is not None}, device {device}, views: {path}")
    held = list(stream(0))                                   # the reference's batches
    in_memory = itertools.cycle(held)
    timed_steps(run, in_memory, 2)                         # warm-up
    timed_steps(stage_run, in_memory, 2)
    times = {key: [] for key in ("reference", "memory", "sequential", "streamed")}
    loading, alone = [], []
    for epoch in range(args.rounds):        # interleaved, so that all see the same machine load
        torch.set_num_threads(threads["all"])
        times["reference"] += timed_steps(run, in_memory, args.steps)[0]
        torch.set_num_threads(threads["stage"])
        times["memory"] += timed_steps(stage_run, in_memory, args.steps)[0]
        times["sequential"] += timed_steps(run, stream(epoch), args.steps)[0]
        streamed_times, loads = timed_steps(stage_run, stream(epoch), args.steps)
        times["streamed"] += streamed_times
        loading += loads
        alone.append(stream_rate(stream, epoch, max(args.steps, 3 * workers), cfg.batch_size, device))
    median = {key: np.median(values) for key, values in times.items()}
    print(f"{args.rounds} rounds of {args.steps} steps each; rates from the median step time")
    for key, label in (("reference", f"reference: in memory, one pass after the other, {threads['all']} threads"),
                       ("memory", "in memory, the stage's step"),
                       ("sequential", f"streamed, one pass after the other, {threads['stage']} threads"),
                       ("streamed", "streamed, the stage's step")):
        quartiles = np.percentile(times[key], [25, 75]) * 1e3
        print(f"{label:60s} {cfg.batch_size / median[key]:7.1f} img/s "
              f"(step {median[key] * 1e3:.1f} ms, quartiles {quartiles[0]:.1f}-{quartiles[1]:.1f})")
    print(f"{'the stream alone, no step (its bound)':60s} {np.median(alone):7.1f} img/s")
    print(f"ratio streamed / reference: {median['reference'] / median['streamed']:.3f}  (mean-time ratio "
          f"{np.mean(times['reference']) / np.mean(times['streamed']):.3f}; against the stage's step in "
          f"memory {median['memory'] / median['streamed']:.3f}); the streamed step waits "
          f"{np.median(loading) * 1e3:.1f} ms for its batch")


def stage(args: argparse.Namespace, params: Params) -> None:
    lists = Path(f"artifacts/bench_coarse/lists_{args.images}")
    counts = {}
    for split, count in (("train", args.images), ("val", max(args.images // 4, 1))):
        table = read_list(Path(args.split) / f"{split}.csv").iloc[:count]
        write_list(lists / f"{split}.csv", table)
        counts[split] = len(table)
    params = params.replace(coarse_train={"epochs": args.epochs})
    start = time.perf_counter()
    metrics = coarse_train.run(params, Path(f"artifacts/bench_coarse/out_{args.images}"), lists)
    seconds = time.perf_counter() - start
    print(f"{counts['train']} training images, {counts['val']} val, {args.epochs} epoch(s), views: "
          f"{params.coarse_train.decode}: {seconds:.1f} s ({counts['train'] * args.epochs / seconds:.1f} training "
          f"images/s, start-up and val included), val refine median {metrics['val/refine_median_px']:.2f} px")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="rate", choices=["rate", "item", "stage"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="section.key=value overrides")
    parser.add_argument("--split", default="artifacts/split", help="folder of train.csv and val.csv")
    parser.add_argument("--steps", type=int, default=10, help="rate: steps of each per round")
    parser.add_argument("--rounds", type=int, default=5, help="rate: interleaved rounds")
    parser.add_argument("--images", type=int, default=1000, help="stage, item: training images")
    parser.add_argument("--epochs", type=int, default=1, help="stage: epochs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = apply_overrides(load_params(args.params), args.set)
    {"rate": rate, "item": item, "stage": stage}[args.mode](args, params)


if __name__ == "__main__":
    main()
