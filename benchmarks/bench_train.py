"""Training-step throughput against the bare backbone (docs/benchmarks.md "Training step").

Reference (same process, same batch and backbone input size): the torchvision ResNet trunk alone, with
the same input channels, forward + backward of its mean output on random tensors already in
memory. Measured: the full training step of stage train (batch from the crop store through the
DataLoader with flip, targets, colour jitter, forward of both heads, GNLL + VDC + WPDC,
backward, Adam step). Both run in interleaved rounds and every step is timed: the rates come
from the median step times, robust to the bursts of a shared machine. Prints both throughputs,
their ratio, and where the difference goes: the batch loading within the full steps and the
optimiser step timed alone (on CPU it is memory-bound: docs/benchmarks.md "Training step").

    python -m benchmarks.bench_train [--steps 10] [--rounds 5] [--params params.yaml]
        [--profile paper] [--set train.batch_size=32 ...] [--crop artifacts/crop] [--best-reference]

--best-reference makes the reference the fastest bare step (issue 17's GPU bar): channels_last,
bfloat16 autocast where the device has it (float16 on CUDA before Ampere), torch.compile; the
training step is measured as the stage runs it. Compiling takes minutes on a CPU.

--profile measures another profile (stages/profiles/<name>.yaml merged over --params in memory,
e.g. the paper's ResNet50 at 256 px); the initial weights do not change the timing, so
train.pretrained is set to false (no download). When the crop store's side differs from the
profile's crop.size, a store of that side is cut once into artifacts/bench_crop_<size>
(stage crop's code, about 30 s for the demo data at 256 px).
Needs artifacts/crop (or the coarse landmarks to cut one), artifacts/pca and artifacts/split
(dvc repro pca crop).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.gpu_probe import sync
from stages.common.params import Params, apply_overrides, load_params
from stages.common.precision import amp_dtype, autocast
from stages.nets.backbone import build_backbone
from stages.nets.dataset import CropStore
from stages.nets.trainer import Trainer, TrainPaths
from stages.profile import profile_params
from stages.wcpa.layout import load_resources


def reference_steps(net: torch.nn.Module, images: torch.Tensor, steps: int, device: torch.device,
                    amp: torch.dtype | None) -> list[float]:
    """Seconds of each of `steps` forward + backward passes of the bare backbone `net` on the
    random batch `images`, under the training step's autocast type `amp` (None: float32)."""
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        net.zero_grad(set_to_none=True)
        with autocast(device, amp):
            out = net(images)
        out.float().mean().backward()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def best_reference(net: torch.nn.Module, images: torch.Tensor,
                   device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.dtype | None]:
    """The bare backbone in its fastest form: (compiled channels_last module, channels_last
    images, the device's mixed-precision autocast type or None)."""
    net = net.to(memory_format=torch.channels_last)
    return torch.compile(net), images.contiguous(memory_format=torch.channels_last), amp_dtype(device, True)


def full_steps(trainer: Trainer, batches, steps: int) -> tuple[list[float], list[float]]:
    """Seconds of each of `steps` full steps of stage train, the next batch's loading included,
    and of the loading alone within them; `batches` is an endless iterator over the trainer's loader."""
    total = trainer.cfg.epochs * len(trainer.loader)
    times, loading = [], []
    for i in range(steps):
        sync(trainer.ctx.device)
        start = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        trainer.train_step(batch, i, total)
        sync(trainer.ctx.device)
        times.append(time.perf_counter() - start)
        loading.append(loaded - start)
    return times, loading


def optimizer_steps(trainer: Trainer, steps: int) -> list[float]:
    """Seconds of each of `steps` optimiser steps alone, on the gradients of the last full step
    (the weights move; it is a timing)."""
    times = []
    for _ in range(steps):
        sync(trainer.ctx.device)
        start = time.perf_counter()
        trainer.optimizer.step()
        sync(trainer.ctx.device)
        times.append(time.perf_counter() - start)
    return times


def endless(loader):
    """Batches of `loader`, epoch after epoch."""
    while True:
        yield from loader


def bench_params(args: argparse.Namespace) -> Params:
    """--params, with --profile merged in (pretrained weights off: no download) and --set applied."""
    if args.profile:
        params = profile_params(args.profile, Path(args.params)).replace(train={"pretrained": False})
    else:
        params = load_params(args.params)
    return apply_overrides(params, args.set)


def crop_folder(params: Params, crop: Path) -> Path:
    """`crop` when its crops have the side params crop.size asks for; otherwise a store of that
    side cut once into artifacts/bench_crop_<size> by stage crop's code."""
    size = params.crop.size
    if (crop / "train").is_dir() and CropStore.open(crop / "train").size == size:
        return crop
    folder = Path(f"artifacts/bench_crop_{size}")
    if not (folder / "train").is_dir():
        from stages.crop import run as cut_crops
        print(f"{crop} does not hold {size}px crops: cutting them into {folder} (once)")
        cut_crops(params, out=folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", help="merge stages/profiles/<name>.yaml over --params, e.g. paper")
    parser.add_argument("--set", nargs="*", default=[], help="section.key=value overrides")
    parser.add_argument("--steps", type=int, default=10, help="steps of each per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of reference and full steps")
    parser.add_argument("--crop", default="artifacts/crop", help="crop store folder (train/ and val/ inside)")
    parser.add_argument("--best-reference", action="store_true",
                        help="reference: the backbone compiled, channels_last, in the device's mixed precision")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = bench_params(args)
    paths = TrainPaths(crop=crop_folder(params, Path(args.crop)), pca=Path("artifacts/pca"),
                       split=Path("artifacts/split"), out=Path("artifacts/bench_train"))
    trainer = Trainer(params, paths, load_resources(params.data.root).camera)
    cfg, crop = trainer.cfg, trainer.train_data.store.size
    size = cfg.input_size or crop          # what the backbone sees
    channels = 5 if cfg.coordconv else 3
    print(f"ResNet{cfg.depth}, batch {cfg.batch_size}, crops {crop}px, backbone input {size}px, {channels} channels, "
          f"workers {cfg.workers}, threads {torch.get_num_threads()}, device {trainer.ctx.device}, "
          f"autocast {trainer.amp or 'off (float32)'}")
    net, _ = build_backbone(cfg.depth, channels)
    net.to(trainer.ctx.device).train()
    images = torch.randn(cfg.batch_size, channels, size, size, device=trainer.ctx.device)
    reference_amp = trainer.amp
    if args.best_reference:
        net, images, reference_amp = best_reference(net, images, trainer.ctx.device)
        print(f"reference: compiled, channels_last, autocast {reference_amp or 'off (float32)'}")
    batches = endless(trainer.loader)
    reference_steps(net, images, 2, trainer.ctx.device, reference_amp)         # warm-up (and compile)
    full_steps(trainer, batches, 2)
    reference, full, loading, optimizer = [], [], [], []
    for _ in range(args.rounds):        # interleaved, so that all see the same machine load
        reference += reference_steps(net, images, args.steps, trainer.ctx.device, reference_amp)
        times, loads = full_steps(trainer, batches, args.steps)
        full += times
        loading += loads
        optimizer += optimizer_steps(trainer, args.steps)
    reference_rate, full_rate = cfg.batch_size / np.median(reference), cfg.batch_size / np.median(full)
    print(f"{args.rounds} rounds of {args.steps} steps each; rates from the median step time "
          f"(quartiles: reference {np.percentile(reference, 25) * 1e3:.1f}-{np.percentile(reference, 75) * 1e3:.1f} ms, "
          f"full {np.percentile(full, 25) * 1e3:.1f}-{np.percentile(full, 75) * 1e3:.1f} ms)")
    print(f"reference (bare backbone fwd+bwd, random tensors): {reference_rate:7.1f} img/s")
    print(f"full training step (load, augment, fwd, bwd, Adam):  {full_rate:7.1f} img/s")
    print(f"ratio full / reference: {full_rate / reference_rate:.3f}")
    print(f"medians: full step {np.median(full) * 1e3:.1f} ms, of which batch loading {np.median(loading) * 1e3:.1f} ms; "
          f"optimizer step alone {np.median(optimizer) * 1e3:.1f} ms; reference {np.median(reference) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
