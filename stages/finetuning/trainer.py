"""Finetuning of the trained two-branch network through the differentiable PnP layer
(paper sec. 2.4, eq. 6): L = l_gnll GNLL + l_vdc VDC + l_wpdc WPDC + l_pnp L_pnp + l_mc NLL_mc.

It reuses stages.nets.trainer.Trainer (data, DDP, AMP, checkpoints, validation) with three
changes: the network starts from artifacts/train/model.pt, the batches carry the true poses
(stages.finetuning.batches) and the loss adds the PnP terms (stages.finetuning.pnp_loss).
The run's fingerprint includes the start model's identity (its weights, network, inputs and
params: start_identity) and the inputs' identity, so a new train model or new crops restart it;
a start model trained on other inputs stops it.
Validation runs on the start model first, so metrics.json shows the effect of finetuning.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from stages.common.cuda_graph import graph_on
from stages.common.distributed import barrier
from stages.common.identity import identity_mismatches
from stages.common.io import load_torch, save_json
from stages.common.params import (FinetuneParams, Params, ParamsError, TrainParams, check_section,
                                  without_speed_keys)
from stages.common.resume import fingerprint
from stages.common.schema import OPTIMIZATION
from stages.finetuning.batches import PoseBatches
from stages.finetuning.pnp_loss import PnPSettings, pnp_layer, pnp_terms
from stages.nets.trainer import Trainer, TrainPaths, log_epoch, reframe_limits, replay_live
from stages.wcpa.camera import Camera

log = logging.getLogger("finetune")
# finetune keys that replace the start model's train keys: the optimisation (the keys the schema's
# train and finetune sections share), not the network
TRAIN_KEYS = ("epochs", *OPTIMIZATION)
BEFORE_KEYS = {"pose_head": "pnp", "wpdc_weights": "fixed"}   # train keys newer than some models: their value before
PNP_DTYPES = {"float32": torch.float32, "float64": torch.float64}
STEP_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class FinetunePaths:
    """start: the train stage's model.pt; data: crop/pca/split inputs and out = artifacts/finetune."""

    start: Path
    data: TrainPaths


def load_start(path: Path) -> dict:
    """The train stage's model.pt {config, model, params, basis_shape, inputs}, read as tensors and
    plain data only; stops naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `dvc repro train` first)")
    state = load_torch(path)
    missing = {"config", "model", "params", "basis_shape", "inputs"} - set(state if isinstance(state, dict) else {})
    if missing:
        raise ValueError(f"{path}: not a train model file (missing {', '.join(sorted(missing))}; "
                         "re-run `dvc repro train`)")
    return state


def start_identity(start: dict) -> str:
    """The identity of a start model (load_start's dict) that finetune's checkpoints hold: its
    weights' bytes, network, basis, inputs and the train params it was made with, less the speed
    keys. Not the file's bytes: a train rerun that finished nothing new but wrote other workers
    into model.pt restarted finetuning."""
    weights = hashlib.sha256()
    for name, tensor in sorted(start["model"].items()):
        weights.update(name.encode() + str(tensor.dtype).encode())
        weights.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    params = without_speed_keys("train", start["params"])
    return fingerprint({"weights": weights.hexdigest(), "config": start["config"], "basis": start["basis_shape"],
                        "inputs": start["inputs"], "params": params})


def check_start_inputs(path: Path, start: dict, inputs: dict[str, str]) -> None:
    """Stop unless the start model was trained on the same inputs (crops, basis, labels, lists)."""
    differ = identity_mismatches(start["inputs"], inputs)
    if differ:
        raise ValueError(f"{path}: trained on other inputs than finetune reads ({', '.join(differ)} differ): "
                         "re-run `dvc repro train`")


def start_config(path: Path, start: dict) -> TrainParams:
    """The train section the start model was trained with, checked against the schema;
    pose_head is pnp and wpdc_weights fixed for models from before those keys."""
    try:
        return check_section("train", {**BEFORE_KEYS, **start["params"]}, path)
    except ParamsError as err:
        raise ValueError(f"{err} (a train model of older code: re-run `dvc repro train`)") from None


def finetune_config(train: TrainParams, finetune: FinetuneParams) -> TrainParams:
    """The start model's train section with finetune's optimisation keys. pretrained is off:
    the weights come from the start model."""
    return dataclasses.replace(train, **{key: getattr(finetune, key) for key in TRAIN_KEYS}, pretrained=False)


def check_start_head(path: Path, train: TrainParams) -> None:
    """Stop unless the start model's pose comes from PnP (the direct 6DoF head has no landmarks
    for the PnP layer)."""
    if train.pose_head != "pnp":
        raise ValueError(f"{path}: trained with train.pose_head={train.pose_head}, which finetune (EPro-PnP) cannot "
                         "start from: set infer.checkpoint=train and run `dvc repro evaluate@infer submit@infer`")


def pnp_settings(finetune: FinetuneParams) -> PnPSettings:
    """How the PnP layer runs, from the finetune section."""
    return PnPSettings(mc_samples=finetune.mc_samples, amis_iters=finetune.amis_iters, lm_iters=finetune.lm_iters,
                       points=finetune.pnp_points, dtype=PNP_DTYPES[finetune.pnp_dtype], compiled=finetune.compile)


class FinetuneTrainer(Trainer):
    """Trainer started from the train stage's model, with the PnP terms in the loss (the hooks
    LOSS_WEIGHTS, config, make_dataset, step_terms, fingerprint_extra, saved_params, trains_sigma,
    needs_verts)."""
    STAGE = "stages.finetune"

    LOSS_WEIGHTS = ("landmarks", "vdc", "wpdc", "pnp", "mc")

    def __init__(self, params: Params, paths: FinetunePaths, camera: Camera):
        start = load_start(paths.start)
        self.start_params, self.start_cfg = start["params"], start_config(paths.start, start)
        check_start_head(paths.start, self.start_cfg)
        self.start_path, self.pnp = paths.start, pnp_settings(params.finetune)
        self.start_id = start_identity(start)
        super().__init__(params, paths.data, camera)
        self.check_start(start)
        self.model.load_state_dict(start["model"])
        self.generator = torch.Generator(device=self.ctx.device)
        graphs = graph_on(params.finetune.cuda_graph, self.ctx.device, "finetune.cuda_graph")
        self.layer = pnp_layer(self.pnp, self.generator, graphs)

    def config(self, params: Params) -> TrainParams:
        """The start model's train section with finetune's optimisation keys (finetune_config)."""
        return finetune_config(self.start_cfg, params.finetune)

    def saved_params(self) -> dict:
        """The train section finetuning ran with, built as finetune's model.pt files have always
        held it: the start model's own saved dict, pose_head first, updated with this run's values.
        (Its key order and the very key strings, which the pickle shares with the config's when
        they are the same objects, decide the file's bytes; the content is cfg.as_dict()'s.)"""
        return {"pose_head": "pnp", **self.start_params, **self.cfg.as_dict()}

    def check_start(self, start: dict) -> None:
        """Stop unless the start model has this network, basis and inputs."""
        if self.model.config.to_dict() != start["config"] or list(self.basis.components.shape) != start["basis_shape"]:
            raise ValueError(f"{self.start_path}: network {start['config']} / basis {start['basis_shape']} do not "
                             "match this crop store and PCA basis (re-run `dvc repro train`)")
        check_start_inputs(self.start_path, start, self.inputs)

    def make_dataset(self, flip_perm: np.ndarray | None) -> PoseBatches:
        """Batches with the true pose, camera and warps the PnP terms need."""
        data = self.train_data
        return PoseBatches(data.store, data.verts, data.poses, self.camera, self.basis, flip_perm,
                           flip_prob=self.cfg.flip, color_jitter=self.cfg.color_jitter, seed=self.seed,
                           reframe=reframe_limits(self.cfg), coeffs=data.coeffs)

    def fingerprint_extra(self) -> dict:
        """Also the PnP settings and the start model's identity (start_identity): a new train model
        restarts finetuning. Whether the layer is compiled is left out (a speed key: the same
        arithmetic to rounding)."""
        pnp = {k: str(v) for k, v in asdict(self.pnp).items() if k != "compiled"}
        return {**super().fingerprint_extra(), "pnp": pnp, "start": self.start_id}

    def trains_sigma(self) -> bool:
        """sigma weights the PnP residuals (eq. 5 and the MC loss): always trained here."""
        return True

    def needs_verts(self) -> bool:
        """The PnP layer solves against the predicted mesh."""
        return True

    def step_terms(self, out: dict, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """Eq. 6 terms (keys of self.lambdas) and the PnP diagnostics pnp_valid (the accepted share)
        and pnp_ess (the accepted samples' mean effective sample size), without weight."""
        terms = super().step_terms(out, batch, step)
        self.generator.manual_seed(self.seed * STEP_SEED_STRIDE + step * self.ctx.world + self.ctx.rank)
        pnp = pnp_terms(out, batch, self.pnp, self.generator, self.layer)
        return {**terms, "pnp": pnp["pnp"], "mc": pnp["mc"], "pnp_valid": pnp["valid"].float().mean(),
                "pnp_ess": pnp["ess"]}


def run_finetune(params: Params, paths: FinetunePaths, camera: Camera) -> dict:
    """Finetune (or resume) to finetune.epochs; returns the metrics (rank 0) or {} (other ranks)."""
    trainer = FinetuneTrainer(params, paths, camera)
    out = paths.data.out
    resumed = trainer.resume()
    barrier(trainer.ctx)                 # every process has read its checkpoint before any is removed
    main = trainer.ctx.main
    if not resumed and main:
        shutil.rmtree(paths.data.checkpoints, ignore_errors=True)
    live = replay_live(out / "live", trainer.history) if main else None
    if not resumed and main:
        record = trainer.validation_record(0, {})
        trainer.history.append(record)
        log_epoch(live, record)
        log.info("start model: %s", json.dumps({k: round(v, 3) for k, v in record.items()}))
    barrier(trainer.ctx)                 # the others wait (on the host group) while rank 0 validates
    seconds = trainer.run_epochs(live)
    if not main:
        return {}
    trainer.save_model()
    metrics = summary(trainer.history, seconds)
    save_json(out / "metrics.json", metrics)
    live.end()
    return metrics


def summary(history: list[dict], seconds: float) -> dict:
    """metrics.json: val metrics of the start model and of the final one, their change
    (final - start; negative = better for errors and the score), and the per-epoch history."""
    start = {k: v for k, v in history[0].items() if k.startswith("val_")}
    final = history[-1]
    change = {k: final[k] - v for k, v in start.items() if np.isfinite(final.get(k, np.nan))}
    return {"start": start, "final": final, "change": change,
            "finetune_seconds_this_run": round(seconds, 1), "epochs": history}
