"""Stage coarse_train: train the coarse landmark detector (locate + refine passes) on the train split.

Targets are the landmark vertices (resources/kpt_ind.npy) of each info mesh projected with its
R_t. Reads artifacts/split/{train,val}.csv. Writes artifacts/coarse_train/:
  model.pt       both nets, their config and the landmark flip order (stages/coarse/detector.py;
                 None when the landmarks have no known mirror order: then flips are off)
  metrics.json   final validation errors (full-image px, refine on GT-centred views), times
  live/          dvclive metrics and per-epoch curves
  skipped.csv    samples skipped as bad input (with data.skip_bad)
Work in progress lives in artifacts/coarse_train.partial/ (checkpoint after every epoch, dvclive
history): an interrupted run resumes from there when the params (less the speed keys; decode
and augment as they resolve), the processes (and sync_batchnorm), the lists and the data's
identity (resources and a sample of the files' bytes) are unchanged.

Under torchrun (`python -m stages.launch coarse_train` with params `gpus` > 1; docs in
stages/launch.py) every process prepares a slice of the samples (their labels and files), the
processes exchange them, and each trains its DDP replica; rank 0 alone validates and writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from dvclive import Live

from stages.coarse.augment import Jitter
from stages.coarse.detector import save_detector
from stages.coarse.sources import Samples, list_samples
from stages.coarse.targets import landmark_flip_order, load_targets
from stages.coarse.train import TrainConfig, train
from stages.common.badinput import SKIPPED_FILE, BadInputs
from stages.common.code import code_digest
from stages.common.device import torch_path
from stages.common.distributed import Dist, barrier, gathered, process_workers, start_distributed
from stages.common.identity import files_digest, path_digest, stat_digest
from stages.common.io import atomic_dir, save_json
from stages.common.params import Params, without_speed_keys
from stages.common.resume import Checkpoints
from stages.common.resume import fingerprint as content_fingerprint
from stages.common.stage import stage_main
from stages.wcpa.layout import (DataError, Resources, image_path, info_path, load_resources, read_list,
                                sample_files)

log = logging.getLogger("coarse_train")
SPLITS = ("train", "val")
DATA_SAMPLES = 64


def train_config(params: Params) -> TrainConfig:
    cfg = params.coarse_train
    return TrainConfig(
        locate_backbone=cfg.locate_backbone, refine_backbone=cfg.refine_backbone,
        pretrained=cfg.pretrained, locate_size=cfg.locate_size, refine_size=cfg.refine_size,
        refine_margin=cfg.refine_margin, head_width=cfg.head_width, epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, flip_prob=cfg.flip_prob,
        locate_jitter=Jitter(cfg.locate_shift, cfg.locate_scale, cfg.locate_rotate),
        refine_jitter=Jitter(cfg.refine_shift, cfg.refine_scale, cfg.refine_rotate),
        seed=params.seed, decode=cfg.decode, augment=cfg.augment, compile=cfg.compile,
        sync_batchnorm=params.sync_batchnorm)


def data_identity(root: Path | str, tables: dict) -> dict[str, str]:
    """Identity of the data the detector learns from: the resources and the bytes of
    DATA_SAMPLES evenly spaced listed samples' info and image files (names and counts are in the
    lists, which the fingerprint hashes whole)."""
    rows = pd.concat([tables[split] for split in SPLITS], ignore_index=True)
    picked = np.unique(np.linspace(0, len(rows) - 1, min(DATA_SAMPLES, len(rows))).astype(np.int64))
    files = [path for row in rows.iloc[picked].itertuples(index=False)
             for path in (info_path(root, row), image_path(root, row)) if path.is_file()]
    return {"resources": path_digest(Path(root) / "resources"), "samples": files_digest(files)}


def fingerprint(params: Params, tables: dict, data: dict[str, str], processes: int, device: torch.device) -> str:
    """Hash of what the training depends on: its params, the seed, the data root, the lists,
    the data's identity (data_identity, and the stat_digest of every listed image and label file:
    one replaced during an interruption), the number of processes (each takes its share of every
    batch: a run of another world size is not resumed) and with several whether their BatchNorm
    is synchronised (sync_batchnorm), the view paths that `auto` resolves to on
    `device` (their decodes and photometric draws differ: a run moved to another device resumes
    only where they stay, as train's may move) and the digest of this stage's code. Not the speed
    keys (compile: the same arithmetic to rounding), nor decode and augment as written: what
    they resolve to counts."""
    cfg = params.coarse_train
    lists = [tables[split].to_csv(index=False) for split in SPLITS]
    files = stat_digest(path for split in SPLITS for kind in ("image", "info")
                        for path in sample_files(params.data.root, tables[split], kind))
    paths = {"decode": torch_path(cfg.decode, device), "augment": torch_path(cfg.augment, device)}
    settings = {key: value for key, value in without_speed_keys("coarse_train", cfg.as_dict()).items()
                if key not in paths}
    synced = ["sync_batchnorm"] if params.sync_batchnorm and processes > 1 else []
    return content_fingerprint([settings, params.seed, params.data.root, data, lists, processes, *synced, paths,
                                files, code_digest("stages.coarse_train")])


def prepared_samples(root: Path | str, table: pd.DataFrame, resources: Resources, bad: BadInputs, workers: int,
                     ctx: Dist) -> Samples:
    """One split's samples, their landmarks projected and files checked: under torchrun each
    process prepares a slice of the rows on its `workers` and the processes exchange them (each
    reads 1/world of the files, not all), after the labels and again after the files, as one
    process reads them: the same samples, the same bad-input records in `bad` (data.skip_bad) in
    every process, and without skip_bad every process stops with the error one process meets first."""
    if ctx.world == 1:
        landmarks, kept = load_targets(root, table, resources, bad, max(1, workers))
        return list_samples(root, table.iloc[kept], landmarks, resources.camera.size, bad)
    start, stop = len(table) * ctx.rank // ctx.world, len(table) * (ctx.rank + 1) // ctx.world
    part = table.iloc[start:stop]
    landmarks, kept = checked_everywhere(lambda found: load_targets(root, part, resources, found, max(1, workers)),
                                         bad, ctx)
    mine = checked_everywhere(lambda found: list_samples(root, part.iloc[kept], landmarks, resources.camera.size,
                                                         found), bad, ctx)
    return Samples.joined(gathered(mine, ctx))


def checked_everywhere(work, bad: BadInputs, ctx: Dist):
    """This process's `work(found)` (found: a BadInputs of bad's settings), once every process has
    done its own: the bad records of all of them added to `bad` in rank order, and a DataError of
    any raised in all of them (the first in rank order), not left to the others' wait."""
    found = BadInputs(skip=bad.skip, max_fraction=bad.max_fraction)
    try:
        mine, error = work(found), None
    except DataError as err:
        mine, error = None, str(err)
    outcomes = gathered((error, found.records), ctx)
    for error, _ in outcomes:
        if error is not None:
            raise DataError(error)
    bad.merge([record for _, records in outcomes for record in records], "the processes' checks")
    return mine


def without_flips(cfg: TrainConfig, flip_order: np.ndarray | None) -> TrainConfig:
    """cfg with flip_prob 0 (and a warning) when there is no landmark flip order."""
    if flip_order is not None or cfg.flip_prob == 0:
        return cfg
    log.warning("coarse_train.flip_prob=%g ignored: no landmark flip order, training without flips",
                cfg.flip_prob)
    return dataclasses.replace(cfg, flip_prob=0.0)


def run(params: Params, out: Path = Path("artifacts/coarse_train"),
        split_dir: Path = Path("artifacts/split")) -> dict:
    """Train the detector into `out` -> its metrics ({} in a process other than rank 0 under torchrun)."""
    started = time.perf_counter()
    ctx = start_distributed("auto", "coarse_train")
    cfg, data = train_config(params), params.data
    resources = load_resources(data.root)
    flip_order = landmark_flip_order(resources)
    cfg = without_flips(cfg, flip_order)
    tables = {s: read_list(split_dir / f"{s}.csv") for s in SPLITS}
    total = sum(len(t) for t in tables.values())
    bad = BadInputs(skip=data.skip_bad, max_fraction=data.max_bad_fraction)
    workers = process_workers(data.workers, ctx)       # the machine's, shared by the processes
    samples = {}
    for split in SPLITS:
        log.info("%s: %d samples", split, len(tables[split]))
        samples[split] = prepared_samples(data.root, tables[split], resources, bad, workers, ctx)
    partial = out.with_name(out.name + ".partial")
    if ctx.main:
        bad.finish(partial, total=total)
    prepared = time.perf_counter()
    identity = data_identity(data.root, tables)
    checkpoints = Checkpoints(partial / "checkpoints", fingerprint(params, tables, identity, ctx.world, ctx.device), keep=1)
    resuming = checkpoints.latest(cfg.epochs) is not None
    barrier(ctx)                         # every process has read its checkpoint before any is removed
    if ctx.main:
        clear_stale(partial, resuming)
    barrier(ctx)                         # and none reads them again (train resumes) before they are
    with open_live(partial / "live", ctx.main) as live:
        nets = train(cfg, samples["train"], samples["val"], flip_order, checkpoints, live, workers, bad, ctx)
    if not ctx.main:
        return {}
    bad.finish(partial, total=total)     # with the images found undecodable
    last = checkpoints.latest(cfg.epochs)["history"][-1]
    metrics = {**{k: v for k, v in last.items() if k.startswith("val/")},
               "train_samples": len(samples["train"]) - len(bad.keys & {key.decode() for key in samples["train"].keys}),
               "processes": ctx.world, "prepare_seconds": prepared - started,
               "total_seconds": time.perf_counter() - started}
    write_outputs(out, partial, nets, {**params.coarse_train.as_dict(), "n_points": resources.n_kpts},
                  flip_order, identity, metrics)
    return metrics


def clear_stale(partial: Path, resuming: bool) -> None:
    """Before training: the curves go (a resumed run logs its finished epochs again, from the
    checkpoint, so that an epoch logged before a kill in its checkpoint's write is not logged
    twice), and without a checkpoint to resume the checkpoints of other runs too (their epoch
    numbers would outrank this run's)."""
    shutil.rmtree(partial / "live", ignore_errors=True)
    if not resuming:
        shutil.rmtree(partial / "checkpoints", ignore_errors=True)


def open_live(folder: Path, main: bool):
    """The dvclive logger of rank 0, of no steps (an empty context, yielding None, in the other
    processes)."""
    if not main:
        return contextlib.nullcontext()
    return Live(dir=str(folder), resume=False, dvcyaml=None, save_dvc_exp=False, report=None)


def write_outputs(out: Path, partial: Path, nets: dict, config: dict, flip_order: np.ndarray | None,
                  identity: dict[str, str], metrics: dict) -> None:
    """`out` (model.pt, live/, metrics.json, skipped.csv) in one atomic step; the partial folder goes."""
    with atomic_dir(out) as tmp:
        save_detector(tmp / "model.pt", nets, config, flip_order, identity)
        shutil.copytree(partial / "live", tmp / "live")
        save_json(tmp / "metrics.json", metrics)
        shutil.copy(partial / SKIPPED_FILE, tmp / SKIPPED_FILE)
    shutil.rmtree(partial)


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
