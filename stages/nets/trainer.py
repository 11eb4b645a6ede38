"""Training of the two-branch network (paper sec. 3.1): GNLL + VDC + WPDC, Adam, per-epoch
checkpoints with resume, validation through OpenCV PnP, dvclive curves, DDP under torchrun.

Single process: `python -m stages.train`. Several GPUs or CPU processes:
`torchrun --nproc_per_node N -m stages.train` (nccl on CUDA, gloo on CPU; train.batch_size is
the global batch, split across the processes; rank 0 validates, logs and writes checkpoints).
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from scipy.spatial.transform import Rotation
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from tqdm import tqdm

from stages.common import resume
from stages.common.cropstore import read_rows
from stages.common.code import code_digest
from stages.common.distributed import (Dist, barrier, mean_over_ranks, process_workers, replica, share_cores,
                                       start_distributed)
from stages.common.identity import input_identity
from stages.common.io import save_json, save_torch
from stages.common.params import Params, TrainParams
from stages.common.precision import amp_dtype, autocast, needs_grad_scaler, place_network
from stages.common.threads import single_thread_blas, usable_cores
from stages.face.pca import PCABasis, load_flip_perm
from stages.nets import losses
from stages.nets.color import jitter_images
from stages.nets.pose_frame import camera_to_frame
from stages.nets.dataset import CropStore, Reframe, TrainBatches, crop_targets
from stages.nets.model import FaceNet, NetConfig
from stages.nets.validate import BlockFigures, block_figures, block_rows, predict, summary_of, validation_targets
from stages.wcpa.camera import Camera
from stages.wcpa.layout import labelled_rows, read_list

log = logging.getLogger("train")


@dataclass(frozen=True)
class TrainPaths:
    """Inputs and outputs of a training run."""

    crop: Path      # artifacts/crop (train/ and val/ inside)
    pca: Path       # artifacts/pca
    split: Path     # artifacts/split
    out: Path       # artifacts/train

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"


@dataclass
class SplitData:
    """A split's crops and row-aligned labels."""

    store: CropStore
    verts: np.ndarray    # (N, V, 3) float32 metres
    poses: np.ndarray    # (N, 4, 4) float64
    coeffs: np.ndarray   # (N, C) float32 normalised PCA coefficients of verts


def load_split(paths: TrainPaths, split: str) -> SplitData:
    """Open a split's crop store and the pca stage's label cache; check that their rows agree.
    Rows the pca stage skipped (NaN labels) are marked skipped in the store: never trained on."""
    store = CropStore.open(paths.crop / split)
    store.check_rows(read_list(paths.split / f"{split}.csv"), str(paths.crop / split))
    verts = np.load(paths.pca / f"verts_{split}.npy", mmap_mode="r")
    poses = np.load(paths.pca / f"poses_{split}.npy")
    coeffs = np.load(paths.pca / f"coeffs_{split}.npy", mmap_mode="r")
    if not len(verts) == len(poses) == len(coeffs) == len(store):
        raise ValueError(f"{paths.pca}: {len(verts)} labels for {len(store)} {split} crops (re-run `dvc repro pca`)")
    return SplitData(store=store.skip(~labelled_rows(poses)), verts=verts, poses=poses, coeffs=coeffs)


# May change between resumes (e.g. a run moved to another machine): they change how the same
# computation runs (torch's threads, which follow the loader workers; compiled kernels; the
# device; validation batches), so its floating-point rounding, not what is computed: a resumed run
# ends within rounding of an uninterrupted one, bit-identical only with the same settings.
# (val_pnp_flags changes what validation computes: a run of other flags starts afresh.) epochs is
# free under a constant schedule alone (fingerprint).
RESUME_FREE_KEYS = ("epochs", "workers", "device", "compile", "val_batch_size")
PCA_FILES = ("basis.npz", "verts_train.npy", "verts_val.npy", "poses_train.npy", "poses_val.npy",
             "coeffs_train.npy", "coeffs_val.npy")
SHOW_LOSS_EVERY = 20       # steps between the progress bar's loss reads (each waits for the GPU)


def training_inputs(paths: TrainPaths, data_root: Path | str) -> dict[str, Path]:
    """Every input a training run reads besides the crop store, by the names its records and
    messages use: the PCA basis and label caches, the split lists and the data root's resources.
    (The crop store is known by its run record, `crop_run`: the crop stage's digest of every
    split's warps, rows and crops, read once when it wrote them.)"""
    inputs = {f"pca/{name}": paths.pca / name for name in PCA_FILES}
    inputs.update({f"split/{split}.csv": paths.split / f"{split}.csv" for split in ("train", "val")})
    inputs["resources"] = Path(data_root) / "resources"
    return inputs


def fingerprint(cfg: TrainParams, lambdas: dict, seed: int, extra: dict) -> str:
    """Hash of everything a checkpoint's validity depends on (resume only when it matches):
    the params and `extra` (the inputs' identity, the network's layout, ...).

    Under a constant schedule train.epochs is left out: every step's learning rate is then the
    same whatever the epochs, so raising them continues a finished run to the model a longer run
    from scratch gives, and a longer run's checkpoint ends a run one epoch shorter (the newest two
    are kept; a shorter run starts afresh). A cosine schedule's
    every step depends on the epochs: another number of them starts afresh."""
    free = RESUME_FREE_KEYS if cfg.schedule == "constant" else tuple(k for k in RESUME_FREE_KEYS if k != "epochs")
    train = {k: v for k, v in cfg.as_dict().items() if k not in free}
    return resume.fingerprint({"train": train, "lambda": lambdas, "seed": seed, **extra})


def state_layout(model: torch.nn.Module) -> list:
    """[name, shape, trained] of every parameter and buffer: what a checkpoint's model and
    optimiser state must match (part of the fingerprint, so that a checkpoint written by a
    network of another layout, e.g. by older code, is not resumed)."""
    params = [[name, list(p.shape), p.requires_grad] for name, p in model.named_parameters()]
    return params + [[name, list(b.shape), False] for name, b in model.named_buffers()]


def build_model(cfg: TrainParams, basis: PCABasis, crop_size: int, camera: Camera, mean_uv: np.ndarray,
                mean_pose: tuple[np.ndarray, np.ndarray] | None = None) -> FaceNet:
    """The network of a train section for crops of side crop_size px cut from the camera's images;
    mean_pose (R (3, 3), code (3,), train.pose_frame) starts a direct pose head."""
    config = NetConfig(depth=cfg.depth, coordconv=cfg.coordconv, shape_head=cfg.shape_head,
                       crop_size=crop_size, n_verts=basis.n_verts, n_components=basis.n_components,
                       input_size=cfg.input_size, pose_head=cfg.pose_head, pose_frame=cfg.pose_frame,
                       coord_maps=cfg.coord_maps, image_size=(camera.width, camera.height))
    model = FaceNet(config, pretrained=cfg.pretrained)
    model.shape.set_basis(basis.mean, basis.components, basis.std)
    model.landmarks.init_mean(torch.as_tensor(mean_uv))
    if model.pose is not None:
        model.pose.init_mean(*map(torch.as_tensor, mean_pose))
    return model


def reframe_limits(cfg: TrainParams) -> Reframe:
    """The crop reframing augmentation of a train (or finetune) section."""
    return Reframe(shift=cfg.reframe_shift, scale=cfg.reframe_scale, rotate=cfg.reframe_rotate)


def mean_target(camera: Camera, data: SplitData, limit: int = 512) -> np.ndarray:
    """Mean 2D target (V, 2) crop px over the first `limit` usable training samples."""
    rows = np.flatnonzero(data.store.usable)[:limit]
    return crop_targets(camera, np.asarray(data.verts[rows]), data.poses[rows], data.store.warps[rows]).mean(0)


def mean_frame_pose(camera: Camera, data: SplitData, frame: str, limit: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Mean pose in `frame` (stages.nets.pose_frame) over the first `limit` usable training
    samples: chordal mean rotation (3, 3) and mean translation code (3,)."""
    rows = np.flatnonzero(data.store.usable)[:limit]
    R_frame, codes = camera_to_frame(data.poses[rows], data.store.warps[rows], camera, data.store.size, frame)
    return Rotation.from_matrix(R_frame).mean().as_matrix(), codes.mean(0)


def loss_terms(out: dict, batch: dict, cfg: TrainParams, weights_mm: torch.Tensor) -> dict:
    """Loss terms (eq. 1-3) of one batch; see stages.nets.losses for their units (WPDC's weights:
    cfg.wpdc_weights, fixed or 3DDFA's per sample). Without
    out["verts"] (a PCA head run with with_verts=False) the VDC comes from the coefficients:
    weights_mm must then be the basis' own WPDC weights (PCABasis.wpdc_weights). The direct
    6DoF head (train.pose_head) has its terms rot, trans (stages.nets.losses) in
    place of the landmark term. Diagnostics of the landmark head, without a weight: sigma_px
    (mean sigma, crop px) and mu_gain (losses.mean_gain; 1 under MSE)."""
    landmark, diagnostics = landmark_terms(out, batch, cfg)
    in_span = losses.wpdc(out["coeffs"], batch["coeffs"], weights_mm)
    wpdc = (in_span if cfg.wpdc_weights == "fixed"
            else losses.wpdc_per_sample(out["coeffs"], batch["coeffs"], weights_mm))
    vdc = (losses.vdc(out["verts"], batch["verts"]) if "verts" in out
           else losses.vdc_from_coeffs(in_span, batch["off_span"]))
    return {**landmark, "vdc": vdc, "wpdc": wpdc, **diagnostics}


def landmark_terms(out: dict, batch: dict, cfg: TrainParams) -> tuple[dict, dict]:
    """The landmark term of loss_terms (the direct 6DoF head: its rot and trans terms) and their
    diagnostics."""
    if cfg.pose_head == "direct6dof":
        return {"rot": losses.rotation_deg(out["R_frame"], batch["R_frame"]),
                "trans": losses.translation_mm2(out["t_code"], batch["t_code"], batch["frame_scale"])}, {}
    if cfg.landmark_loss == "gnll":
        value = losses.gnll(out["mu"], out["sigma"], batch["uv"], cfg.gnll_beta)
        gain = losses.mean_gain(out["sigma"], cfg.gnll_beta)
    else:                               # mse (the schema's other choice)
        value, gain = losses.landmark_mse(out["mu"], batch["uv"]), torch.ones((), device=out["mu"].device)
    return {"landmarks": value}, {"sigma_px": out["sigma"].detach().float().mean(), "mu_gain": gain}


def lr_factor(cfg: TrainParams, step: int, total: int) -> float:
    """Multiplier of train.lr at optimiser step `step` of `total`: a linear warm-up over the first
    warmup_epochs (step k of W at (k + 1) / W) times the schedule, 1 (constant) or a cosine from
    1 to min_lr_ratio over the whole run (`total` is cfg.epochs x the steps an epoch). The warm-up
    is counted from the steps an epoch alone, so that under a constant schedule every step's rate
    is the same float whatever the epochs (fingerprint: raising them resumes)."""
    warm = total // cfg.epochs * cfg.warmup_epochs
    ramp = min((step + 1) / warm, 1.0) if warm > 0 else 1.0
    if cfg.schedule == "constant":
        return ramp
    progress = min(step / max(total, 1), 1.0)           # cosine (the schema's other choice)
    return ramp * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_loader(dataset: TrainBatches, ctx: Dist, cfg: TrainParams, seed: int) -> DataLoader:
    """Shuffled batches of train.batch_size / world rows per process (the global batch is fixed;
    a batch size that does not split evenly over the processes stops with a message)."""
    if cfg.batch_size % ctx.world:
        raise ValueError(f"batch_size {cfg.batch_size} does not split evenly over {ctx.world} processes: make it a "
                         f"multiple of {ctx.world} (params gpus, or torchrun's --nproc_per_node)")
    per_rank = cfg.batch_size // ctx.world
    sampler = DistributedSampler(range(len(dataset)), num_replicas=ctx.world, rank=ctx.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    batches = BatchSampler(sampler, per_rank, drop_last=True)
    if len(batches) == 0:
        raise ValueError(f"{len(dataset)} training crops are fewer than one batch of {per_rank}")
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=process_workers(cfg.workers, ctx),
                      pin_memory=ctx.device.type == "cuda")


class Trainer:
    """One training run: model, optimiser, scaler, data and the epoch loop. A variant (finetune)
    overrides the hooks: LOSS_WEIGHTS, config, make_dataset, step_terms, fingerprint_extra,
    saved_params, trains_sigma, needs_verts."""
    STAGE = "stages.train"          # the stage module whose code the checkpoints are bound to

    LOSS_WEIGHTS = ("landmarks", "vdc", "wpdc", "rot", "trans")   # params.lambda keys of the loss

    def __init__(self, params: Params, paths: TrainPaths, camera: Camera):
        self.cfg = self.config(params)
        self.lambdas = {k: getattr(params.lambda_, k) for k in self.LOSS_WEIGHTS}
        self.seed, self.paths, self.camera = params.seed, paths, camera
        self.ctx = start_distributed(self.cfg.device, f"{self.STAGE.removeprefix('stages.')}.device")
        share_cores(self.ctx, process_workers(self.cfg.workers, self.ctx))
        single_thread_blas()        # the batches are prepared in this process: see stages.common.threads
        torch.manual_seed(self.seed)
        self.basis = PCABasis.load(paths.pca / "basis.npz")
        flip_perm = (load_flip_perm(paths.pca / "basis.npz", "set train.flip (finetune.flip) to 0")
                     if self.cfg.flip > 0 else None)
        self.train_data, self.val_data = load_split(paths, "train"), load_split(paths, "val")
        self.model = self.make_model()
        self.sync_batchnorm = params.sync_batchnorm and self.ctx.world > 1
        self.net = replica(self.model, self.ctx, self.sync_batchnorm)
        if self.cfg.compile:        # the step's forward compiled; self.model stays the module that is saved
            self.net = torch.compile(self.net)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                          fused=True)
        self.amp = amp_dtype(self.ctx.device, self.cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(self.amp))
        self.weights_mm = torch.as_tensor(self.basis.wpdc_weights(), device=self.ctx.device)
        self.dataset = self.make_dataset(flip_perm)
        self.loader = make_loader(self.dataset, self.ctx, self.cfg, self.seed)
        self.inputs = {"crop_run": self.train_data.store.run,
                       **input_identity(training_inputs(paths, params.data.root))}
        self.fp = fingerprint(self.cfg, self.lambdas, self.seed, self.fingerprint_extra())
        self.start_epoch, self.history = 0, []

    def config(self, params: Params) -> TrainParams:
        """Hook: the train section this run trains with (the network and the optimisation)."""
        return params.train

    def make_model(self) -> FaceNet:
        """The network on the training device, its landmark head's trained parts set (trains_sigma;
        the direct pose head trains no landmarks)."""
        data, camera, direct = self.train_data, self.camera, self.cfg.pose_head == "direct6dof"
        mean_pose = mean_frame_pose(camera, data, self.cfg.pose_frame) if direct else None
        model = place_network(build_model(self.cfg, self.basis, data.store.size, camera, mean_target(camera, data),
                                          mean_pose), self.ctx.device)
        model.landmarks.sigma.requires_grad_(self.trains_sigma())
        model.landmarks.mu.requires_grad_(not direct)
        model.landmarks.sigma_trains_backbone = self.cfg.sigma_backbone
        return model

    def make_dataset(self, flip_perm: np.ndarray | None) -> TrainBatches:
        """Hook: the training batches (flip_perm: the basis' vertex flip order, None with flips off)."""
        data = self.train_data
        return TrainBatches(data.store, data.verts, data.poses, self.camera, self.basis, flip_perm, self.cfg.flip,
                            self.cfg.color_jitter, self.seed, reframe=reframe_limits(self.cfg), coeffs=data.coeffs,
                            pose_frame=self.cfg.pose_frame if self.cfg.pose_head == "direct6dof" else None)

    def fingerprint_extra(self) -> dict:
        """Hook: what the fingerprint holds besides the params: the inputs' identity, the layout,
        the number of processes (a run of another world size takes other steps; with them, whether
        BatchNorm normalises over the global batch: sync_batchnorm) and the digest of
        the stage's code (stages.common.code: after a change to it, dvc repro reruns the stage,
        which must then train, not load the finished run of the old code)."""
        return {"inputs": self.inputs, "layout": state_layout(self.model), "processes": self.ctx.world,
                **({"sync_batchnorm": True} if self.sync_batchnorm else {}), "code": code_digest(self.STAGE)}

    def saved_params(self) -> dict:
        """Hook: the params saved in checkpoints and model.pt (plain data: the train section)."""
        return self.cfg.as_dict()

    def resume(self) -> bool:
        """Load the latest matching checkpoint; False when training starts from scratch."""
        state = self.checkpoints().latest(self.cfg.epochs)
        if state is not None:
            self.start_epoch = resume.restore(state, {"model": self.model}, self.optimizer, self.scaler)
            self.history = state["history"]
        self.checkpoints().agree(self.start_epoch, self.ctx)
        return state is not None

    def checkpoints(self) -> resume.Checkpoints:
        """This run's epoch files (stages.common.resume), under its fingerprint."""
        return resume.Checkpoints(self.paths.checkpoints, self.fp)

    def trains_sigma(self) -> bool:
        """Whether sigma's FC is trained: only the GNLL uses it here (under MSE or with the direct
        pose head it keeps its start, and is left out of the backward, the optimiser and DDP)."""
        return self.cfg.landmark_loss == "gnll" and self.cfg.pose_head == "pnp"

    def needs_verts(self) -> bool:
        """Whether the loss needs the decoded mesh (a PCA head's VDC comes from its coefficients)."""
        return self.cfg.shape_head != "pca"

    def step_terms(self, out: dict, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """The loss terms of one batch (eq. 1-3); subclasses add theirs (finetune: eq. 5, MC)."""
        return loss_terms(out, batch, self.cfg, self.weights_mm)

    def train_step(self, batch: dict, step: int, total: int, step_terms=None) -> dict[str, torch.Tensor]:
        """Forward, loss, backward and optimiser step on one batch -> the loss terms (0-d float64
        tensors on the training device: reading them is left to the caller, since each read
        waits for the GPU to finish the step).

        The loss is sum_k lambda_k term_k over the terms that have a weight in self.lambdas;
        other terms are diagnostics, reported only. step_terms: another terms function with
        step_terms' signature (default self.step_terms)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * lr_factor(self.cfg, step, total)
        batch = {k: v.to(self.ctx.device, non_blocking=True) for k, v in batch.items()}
        images = jitter_images(batch["images"], batch["jitter"])
        with autocast(self.ctx.device, self.amp):
            out = self.net(images, with_verts=self.needs_verts(), inv_warps=batch["inv_warps"])
        terms = (step_terms or self.step_terms)(out, batch, step)
        total_loss = sum(self.lambdas[k] * value for k, value in terms.items() if k in self.lambdas)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total_loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {key: value.detach().double() for key, value in {"loss": total_loss, **terms}.items()}

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training crops -> mean loss terms (floats; under DDP the mean over
        every process's batches, the same in all of them). The terms are summed on
        the device and read at the end; the progress bar shows the loss every SHOW_LOSS_EVERY
        steps (a read of the device waits for its queue: every step, it would keep the host
        from queueing the next step while the GPU runs this one)."""
        self.loader.sampler.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.net.train()
        per_epoch = len(self.loader)
        sums: dict[str, torch.Tensor] = {}
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", disable=not self.ctx.main)
        for i, batch in enumerate(bar):
            terms = self.train_step(batch, epoch * per_epoch + i, self.cfg.epochs * per_epoch)
            for key, value in terms.items():
                sums[key] = sums[key] + value if key in sums else value
            if self.ctx.main and i % SHOW_LOSS_EVERY == 0:
                bar.set_postfix(loss=f"{float(terms['loss']):.1f}")
        self.sync_buffers()
        means = mean_over_ranks(torch.stack(list(sums.values())), self.ctx)
        return {key: float(value) / per_epoch for key, value in zip(sums, means)}

    def sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics are updated per rank between
        DDP's broadcasts at each forward), so that all ranks hold one and the same model."""
        if self.ctx.world > 1:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    def validate(self) -> dict:
        """Challenge score and landmark/mesh errors on the val split's usable crops (rank 0), a
        block of about validate.BLOCK samples at a time (their labels, predictions and poses;
        the real val split's 71k at once held 10 GB). The per-sample PnP and errors run on a
        thread per usable core: between epochs the loader processes wait, and at the real val
        split's size one thread would take a third of an H200 train epoch (docs/benchmarks.md,
        "Per-epoch validation")."""
        data = self.val_data
        rows = np.flatnonzero(data.store.usable)
        if not len(rows):
            raise ValueError(f"{self.paths.crop / 'val'}: every val crop was skipped")
        workers = usable_cores()
        blocks = [self.validate_block(block, workers) for block in block_rows(rows, self.cfg.val_batch_size)]
        return {**summary_of(blocks, workers), "skipped": float(len(data.store) - len(rows))}

    def validate_block(self, rows: np.ndarray, workers: int) -> BlockFigures:
        """The validation figures of the val store's rows (M,) (stages.nets.validate.block_figures)."""
        data = self.val_data
        verts, poses, warps = read_rows(data.verts, rows), data.poses[rows], data.store.warps[rows]
        inv_warps = data.store.inv_warps[rows]
        pred = predict(self.model, data.store.images, inv_warps, self.cfg.val_batch_size, self.ctx.device, self.amp,
                       rows)
        return block_figures(pred, inv_warps, self.camera, verts, poses,
                             validation_targets(self.camera, verts, poses, warps, workers), self.cfg.val_pnp_flags,
                             data.store.size, self.cfg.pose_frame, workers)

    def validation_record(self, epoch: int, train_terms: dict) -> dict:
        """History entry of an epoch: its mean train terms and the val metrics (rank 0)."""
        return {"epoch": epoch, **{f"train_{k}": v for k, v in train_terms.items()},
                **{f"val_{k}": v for k, v in self.validate().items()}}

    def run_epochs(self, live) -> float:
        """Train from start_epoch to cfg.epochs; after each epoch rank 0 validates, logs to `live`
        and writes a checkpoint. Returns the seconds taken."""
        started = time.perf_counter()
        for epoch in range(self.start_epoch, self.cfg.epochs):
            train_terms = self.train_epoch(epoch)
            if self.ctx.main:
                record = self.validation_record(epoch + 1, train_terms)
                self.history.append(record)
                log_epoch(live, record)
                self.checkpoint(epoch)
                log.info("epoch %d: %s", epoch + 1, json.dumps({k: round(v, 3) for k, v in record.items()}))
            barrier(self.ctx)               # the others wait while rank 0 validates
        return time.perf_counter() - started

    def checkpoint(self, epoch: int) -> None:
        """The resumable state after 0-based `epoch`, with the params, network config and history."""
        self.checkpoints().save({**resume.capture(epoch, {"model": self.model}, self.optimizer, self.scaler),
                                 "params": self.saved_params(), "config": self.model.config.to_dict(),
                                 "basis_shape": list(self.basis.components.shape), "history": self.history})

    def save_model(self) -> None:
        """artifacts/train/model.pt: config, weights (with the PCA basis buffers), params and the
        identity of the inputs it was trained on (checked by finetune and infer)."""
        save_torch({"config": self.model.config.to_dict(), "model": self.model.state_dict(),
                    "params": self.saved_params(), "basis_shape": list(self.basis.components.shape),
                    "inputs": self.inputs}, self.paths.out / "model.pt")


def run_training(params: Params, paths: TrainPaths, camera: Camera) -> dict:
    """Train (or resume) to train.epochs; returns the final metrics (rank 0) or {} (other ranks)."""
    trainer = Trainer(params, paths, camera)
    resumed = trainer.resume()
    barrier(trainer.ctx)                 # every process has read its checkpoint before any is removed
    if not resumed and trainer.ctx.main:
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
    live = replay_live(paths.out / "live", trainer.history) if trainer.ctx.main else None
    seconds = trainer.run_epochs(live)
    if not trainer.ctx.main:
        return {}
    trainer.save_model()
    metrics = {"final": trainer.history[-1] if trainer.history else {},
               "train_seconds_this_run": round(seconds, 1),
               "epochs": trainer.history}
    save_json(paths.out / "metrics.json", metrics)
    if live is not None:
        live.end()
    return metrics


def replay_live(folder: Path, history: list[dict]):
    """A new dvclive logger in `folder` (which it empties) that never touches dvc.yaml (plots are
    declared there by hand), with a step for each record of the finished epochs' `history`: a
    resumed run's curves are those of an uninterrupted one (dvclive's own resume numbers the
    steps 0, 0, 1 after one epoch, and an epoch logged before a kill in its checkpoint's write
    would be logged twice)."""
    from dvclive import Live
    shutil.rmtree(folder, ignore_errors=True)
    live = Live(dir=str(folder), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
    for record in history:
        log_epoch(live, record)
    return live


def log_epoch(live, record: dict) -> None:
    for key, value in record.items():
        if key not in ("epoch", "val_n", "val_skipped", "val_pnp_failed"):
            live.log_metric(key.replace("_", "/", 1), value)
    live.next_step()
