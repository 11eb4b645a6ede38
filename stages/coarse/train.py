"""Training loop of the two detector passes (locate, refine), resumable from a per-epoch checkpoint.

Both nets learn together, one batch of each per step, with one AdamW optimiser and a one-cycle
schedule. The loss is the L1 distance between predicted and target landmarks in units of the
input size. After each epoch: validation errors in full-image px (refine on views centred on
the GT landmarks, i.e. without the locate pass), a dvclive step and a checkpoint.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from stages.coarse.augment import Augmenter, Jitter
from stages.coarse.model import LandmarkNet
from stages.coarse.sources import Views
from stages.common.io import UnsafeCheckpointError, load_torch, save_torch

log = logging.getLogger(__name__)
PASSES = ("locate", "refine")


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


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_nets(cfg: TrainConfig, n_points: int) -> dict[str, LandmarkNet]:
    """The locate and refine networks (fresh weights)."""
    torch.manual_seed(cfg.seed)
    return {"locate": LandmarkNet(cfg.locate_backbone, n_points, cfg.pretrained, cfg.head_width),
            "refine": LandmarkNet(cfg.refine_backbone, n_points, cfg.pretrained, cfg.head_width)}


def to_tensor(images: np.ndarray, dev: torch.device) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float (B, 3, S, S) in [0, 1] on `dev`."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(dev, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def _batch(views: Views, index: np.ndarray, augment: Augmenter) -> tuple[np.ndarray, np.ndarray]:
    pairs = [augment(views.images[i], views.landmarks[i]) for i in index]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@torch.no_grad()
def view_errors(net: LandmarkNet, views: Views, size: int, batch_size: int) -> np.ndarray:
    """Per-point errors (N, K) in full-image px of `net` on the centre (size x size) of `views`."""
    net.eval()
    dev = next(net.parameters()).device
    offset = (views.images.shape[1] - size) // 2
    errors = []
    for start in range(0, len(views.images), batch_size):
        chunk = slice(start, start + batch_size)
        images = views.images[chunk, offset:offset + size, offset:offset + size]
        with torch.autocast(dev.type, enabled=dev.type == "cuda"):
            pred = net(to_tensor(images, dev)).float().cpu().numpy()
        target = views.landmarks[chunk] - offset
        errors.append(np.linalg.norm(pred - target, axis=-1) / views.scale[chunk, None])
    return np.concatenate(errors)


class Checkpoint:
    """The resumable state at `path`: nets, optimiser, schedule, scaler, epoch, metric history."""

    def __init__(self, path: Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def load(self) -> dict[str, Any] | None:
        """The saved state when it exists, holds tensors and plain data only and carries this
        run's fingerprint (checked before anything else is read); else None."""
        if not self.path.exists():
            return None
        try:
            state = load_torch(self.path)
        except UnsafeCheckpointError as err:
            log.warning("%s: ignored, starting afresh", err)
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            log.info("%s: made with other params or data, starting afresh", self.path)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        save_torch({**state, "fingerprint": self.fingerprint}, self.path)


def train(cfg: TrainConfig, train_views: dict[str, Views], val_views: dict[str, Views],
          flip_order: np.ndarray | None, checkpoint: Checkpoint, live) -> dict[str, LandmarkNet]:
    """Train both passes for cfg.epochs, resuming from `checkpoint` when it matches.

    train_views / val_views: {'locate': Views, 'refine': Views} (refine = wider source views).
    flip_order: (K,) landmark mirror order, or None when cfg.flip_prob is 0.
    live: a dvclive.Live (or None). Returns the nets, on the training device, in eval mode.
    """
    dev = device()
    n_points = train_views["refine"].landmarks.shape[1]
    nets = build_nets(cfg, n_points)
    for net in nets.values():
        net.to(dev)
    params = [p for net in nets.values() for p in net.parameters()]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_train = len(train_views["refine"].images)
    steps = cfg.epochs * max(n_train // cfg.batch_size, 1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, cfg.lr, total_steps=steps, pct_start=0.15)
    scaler = torch.amp.GradScaler(dev.type, enabled=dev.type == "cuda")
    first_epoch = _resume(checkpoint, nets, optimiser, schedule, scaler)
    sizes = {"locate": cfg.locate_size, "refine": cfg.refine_size}
    jitters = {"locate": cfg.locate_jitter, "refine": cfg.refine_jitter}
    for epoch in range(first_epoch, cfg.epochs):
        started = time.perf_counter()
        augment = {name: Augmenter(sizes[name], jitters[name], flip_order, cfg.flip_prob,
                                   cfg.seed + 1000 * epoch + k) for k, name in enumerate(PASSES)}
        loss = _epoch(nets, train_views, augment, sizes, cfg, optimiser, schedule, scaler, epoch)
        metrics = {"train/loss": loss, "lr": schedule.get_last_lr()[0],
                   "epoch_seconds": time.perf_counter() - started}
        for name in PASSES:
            errors = view_errors(nets[name], val_views[name], sizes[name], 2 * cfg.batch_size)
            metrics[f"val/{name}_median_px"] = float(np.median(errors))
            metrics[f"val/{name}_p95_px"] = float(np.percentile(errors, 95))
        log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if live is not None:
            for key, value in metrics.items():
                live.log_metric(key, value)
            live.next_step()
        checkpoint.save({"epoch": epoch + 1, "nets": {k: n.state_dict() for k, n in nets.items()},
                         "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                         "scaler": scaler.state_dict(), "metrics": metrics})
    for net in nets.values():
        net.eval()
    return nets


def _resume(checkpoint: Checkpoint, nets, optimiser, schedule, scaler) -> int:
    """Load the checkpoint's state into the objects -> the epoch to start from."""
    state = checkpoint.load()
    if state is None:
        return 0
    for name, net in nets.items():
        net.load_state_dict(state["nets"][name])
    optimiser.load_state_dict(state["optimiser"])
    schedule.load_state_dict(state["schedule"])
    scaler.load_state_dict(state["scaler"])
    log.info("resuming after epoch %d from %s", state["epoch"], checkpoint.path)
    return int(state["epoch"])


def _epoch(nets, views, augment, sizes, cfg: TrainConfig, optimiser, schedule, scaler, epoch: int) -> float:
    """One pass over the training views -> mean loss."""
    dev = next(nets["refine"].parameters()).device
    for net in nets.values():
        net.train()
    order = np.random.default_rng(cfg.seed + epoch).permutation(len(views["refine"].images))
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
    batches = batches or [order]
    total = 0.0
    for index in tqdm(batches, desc=f"epoch {epoch + 1}", unit="batch", leave=False):
        loss = 0.0
        for name in PASSES:
            images, target = _batch(views[name], index, augment[name])
            with torch.autocast(dev.type, enabled=dev.type == "cuda"):
                pred = nets[name](to_tensor(images, dev))
            target = torch.from_numpy(target).to(dev, torch.float32)
            loss = loss + (pred.float() - target).abs().mean() / sizes[name]
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        schedule.step()
        total += float(loss.detach())
    return total / len(batches)
