"""Training-step throughput against the bare backbone (README "Training").

Reference (same process, same batch and backbone input size): the torchvision ResNet trunk alone, with
the same input channels, forward + backward of its mean output on random tensors already in
memory. Measured: the full training step of stage train (batch from the crop store through the
DataLoader with flip + colour jitter, targets, forward of both heads, GNLL + VDC + WPDC,
backward, Adam step). Prints both throughputs and their ratio.

    python -m benchmarks.bench_train [--steps 8] [--params params.yaml] [--crop artifacts/crop]
Needs artifacts/crop, artifacts/pca and artifacts/split (dvc repro pca crop).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from stages.common.params import load_params
from stages.common.precision import autocast
from stages.nets.backbone import build_backbone
from stages.nets.trainer import Trainer, TrainPaths
from stages.wcpa.layout import load_resources


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_rate(depth: int, channels: int, batch: int, size: int, steps: int, device: torch.device,
                   amp: torch.dtype | None) -> float:
    """Images per second of the bare backbone's forward + backward on random tensors, under the
    training step's autocast type `amp` (stages.common.precision; None: float32)."""
    net, _ = build_backbone(depth, channels)
    net.to(device).train()
    images = torch.randn(batch, channels, size, size, device=device)
    for i in range(steps + 2):
        if i == 2:
            sync(device)
            start = time.perf_counter()
        net.zero_grad(set_to_none=True)
        with autocast(device, amp):
            out = net(images)
        out.float().mean().backward()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def full_step_rate(trainer: Trainer, steps: int) -> float:
    """Images per second of stage train's full step, loading included."""
    total = trainer.cfg.epochs * len(trainer.loader)
    done, start, images = 0, None, 0
    while done < steps + 2:
        for batch in trainer.loader:
            if done == 2:
                sync(trainer.ctx.device)
                start, images = time.perf_counter(), 0
            trainer.train_step(batch, done, total)
            images += len(batch["images"])
            done += 1
            if done == steps + 2:
                break
    sync(trainer.ctx.device)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--crop", default="artifacts/crop", help="crop store folder (train/ and val/ inside)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    paths = TrainPaths(crop=Path(args.crop), pca=Path("artifacts/pca"), split=Path("artifacts/split"),
                       out=Path("artifacts/bench_train"))
    trainer = Trainer(params, paths, load_resources(params["data"]["root"]).camera)
    cfg, crop = trainer.cfg, trainer.train_data.store.size
    size = cfg.input_size or crop          # what the backbone sees
    channels = 5 if cfg.coordconv else 3
    print(f"ResNet{cfg.depth}, batch {cfg.batch_size}, crops {crop}px, backbone input {size}px, {channels} channels, "
          f"workers {cfg.workers}, threads {torch.get_num_threads()}, device {trainer.ctx.device}, "
          f"autocast {trainer.amp or 'off (float32)'}")
    reference = reference_rate(cfg.depth, channels, cfg.batch_size, size, args.steps, trainer.ctx.device, trainer.amp)
    full = full_step_rate(trainer, args.steps)
    print(f"reference (bare backbone fwd+bwd, random tensors): {reference:7.1f} img/s")
    print(f"full training step (load, augment, fwd, bwd, Adam):  {full:7.1f} img/s")
    print(f"ratio full / reference: {full / reference:.3f}")


if __name__ == "__main__":
    main()
