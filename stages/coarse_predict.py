"""Stage coarse_predict: the coarse detector's 68 landmarks on every train, val and test image.

Reads artifacts/coarse_train/model.pt, artifacts/split/{train,val}.csv and the data root's test
list. Writes artifacts/coarse_predict/:
  {train,val,test}.npy   (N, L, 2) float64 landmarks in full-image px, rows aligned with the lists
                         (NaN rows for samples skipped as bad input)
  metrics.json           landmark errors against the projected GT (train, val): median and 95th
                         percentile over all points and over per-image means, in full-image px
  skipped.csv            samples skipped as bad input (with data.skip_bad)
Work in progress lives in artifacts/coarse_predict.partial/ (each batch's landmarks as they come,
stages.common.cropstore.ResumableRows): an interrupted run resumes there with the same detector,
rows, settings (its batch size aside) and autocast type, and starts afresh with any other.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from stages.coarse.detector import Detector
from stages.coarse.targets import load_targets
from stages.common.badinput import BadInputs
from stages.common.code import code_digest
from stages.common.cropstore import ResumableRows
from stages.common.device import pick_device, torch_path
from stages.common.identity import file_digest, stat_digest
from stages.common.io import atomic_dir, save_json
from stages.common.params import CoarsePredictParams, Params, without_speed_keys
from stages.common.resume import fingerprint
from stages.common.stage import stage_main
from stages.wcpa.decode import device_images, load_for_device
from stages.wcpa.layout import (ID_COLUMNS, DataError, load_resources, read_image, sample_files, sample_key,
                                split_tables)

log = logging.getLogger("coarse_predict")
SPLITS = ("train", "val", "test")
FOLDER_README = "README.md"   # in git: crop's dep on this folder must exist without the detector (dvc.yaml)


def _read_or_error(path: Path, size: tuple[int, int]) -> np.ndarray | DataError:
    """The BGR image (the detector converts its small crops) or the DataError."""
    try:
        return read_image(path, size, rgb=False)
    except DataError as err:
        return err


def predict_split(detector: Detector, root: Path | str, table: pd.DataFrame, size: tuple[int, int],
                  cfg: CoarsePredictParams, workers: int, bad: BadInputs, desc: str,
                  store: ResumableRows) -> np.ndarray:
    """Landmarks (N, L, 2) full px for every listed image (NaN rows where skipped); size: the data
    set's (width, height) px, which every image must have. Each batch's landmarks go to `store`
    (N, L, 2) float64 as they come, and the rows it holds already are not predicted again. The
    `workers` threads read (OpenCV path: decode) the next batch's images while the detector runs;
    on the torch path (coarse_predict.decode) each batch is decoded in one call on the detector's
    device and every pass warps there."""
    rows = list(table.itertuples(index=False))
    paths = sample_files(root, table, "image")
    on_device = torch_path(cfg.decode, detector.device)
    read = partial(load_for_device, device=detector.device, image_size=size) if on_device else partial(
        _read_or_error, size=size)
    batches = store.pending(np.arange(len(rows)), cfg.batch_size)
    with ThreadPoolExecutor(max(workers, 1)) as pool, \
            tqdm(total=len(rows), initial=len(rows) - sum(map(len, batches)), desc=desc, unit="img") as bar:
        def load(batch: np.ndarray) -> list:
            """Futures of one batch's images: the threads read them while the network runs."""
            return [pool.submit(read, paths[i]) for i in batch]

        pending = load(batches[0]) if batches else []
        for k, batch in enumerate(batches):
            futures, pending = pending, load(batches[k + 1]) if k + 1 < len(batches) else []
            loaded = [future.result() for future in futures]
            if on_device:
                loaded = device_images(loaded, [paths[i] for i in batch], detector.device, size)
            images, where = [], []
            for i, image in zip(batch, loaded):
                with bad.guard(sample_key(rows[i])):
                    if isinstance(image, DataError):
                        raise image
                    images.append(image)
                    where.append(i)
            if images:
                batch_images = torch.stack(images) if on_device else images
                store.values[where] = detector(batch_images, cfg.refine_passes, cfg.flip_test,
                                                  bgr=not on_device, settle=cfg.settle)
                store.write(np.asarray(where))
            bar.update(len(futures))
    landmarks = np.array(store.values)
    landmarks[~np.asarray(store.done)] = np.nan
    return landmarks


def job_key(model: Path, root: Path | str, table: pd.DataFrame, size: tuple[int, int], cfg: CoarsePredictParams,
            device: torch.device, amp: torch.dtype | None = None) -> str:
    """Identity of one split's landmarks, which a resumed run must share: the detector's bytes, the
    data root, the list's rows and their images' stat_digest (an image replaced during an
    interruption), the image size, the settings that change the landmarks (not the speed keys:
    the batch size), where they are computed and in what precision (`amp`, the detector's
    autocast type: a CPU with native bfloat16 or not) and the digest of the stage's code (a fix
    to it: dvc repro reruns the stage, which must not keep the old code's rows)."""
    ids = hashlib.sha256(table[ID_COLUMNS].to_csv(index=False).encode()).hexdigest()
    files = stat_digest(sample_files(root, table, "image"))
    settings = without_speed_keys("coarse_predict", dataclasses.asdict(cfg))
    return fingerprint({"model": file_digest(model), "root": str(Path(root).resolve()), "rows": ids, "files": files,
                        "size": list(size), "settings": settings, "device": device.type, "amp": str(amp),
                        "code": code_digest("stages.coarse_predict")})


def error_summary(pred: np.ndarray, target: np.ndarray) -> dict:
    """Landmark errors in full-image px: over all points, and over per-image means."""
    errors = np.linalg.norm(pred - target, axis=-1)
    per_image = errors.mean(-1)
    return {"median_px": float(np.median(errors)), "p95_px": float(np.percentile(errors, 95)),
            "mean_px": float(errors.mean()), "image_mean_median_px": float(np.median(per_image)),
            "image_mean_p95_px": float(np.percentile(per_image, 95)),
            "image_mean_max_px": float(per_image.max()), "images": int(len(per_image))}


def run(params: Params, out: Path = Path("artifacts/coarse_predict"),
        model: Path = Path("artifacts/coarse_train/model.pt"), split_dir: Path = Path("artifacts/split")) -> dict:
    cfg, data = params.coarse_predict, params.data
    resources = load_resources(data.root)
    tables = split_tables(data.root, split_dir)
    detector = Detector(model, pick_device("auto"), data.workers, cfg.amp)
    cfg = dataclasses.replace(cfg, flip_test=detector.usable_flip_test(cfg.flip_test))
    bad = BadInputs(skip=data.skip_bad, max_fraction=data.max_bad_fraction)
    metrics, landmarks = {}, {}
    partial_dir = out.with_name(out.name + ".partial")
    for split in SPLITS:
        started = time.perf_counter()
        table, size = tables[split], resources.camera.size
        key = job_key(model, data.root, table, size, cfg, detector.device, detector.amp)
        store = ResumableRows(partial_dir / split, key, (len(table), detector.config["n_points"], 2), np.float64)
        landmarks[split] = predict_split(detector, data.root, table, size, cfg, data.workers, bad, split, store)
        seconds = time.perf_counter() - started
        metrics[f"{split}_seconds"] = seconds
        metrics[f"{split}_resumed"] = store.resumed
        metrics[f"{split}_images_per_second"] = (len(table) - store.resumed) / max(seconds, 1e-9)
    for split in ("train", "val"):
        target, kept = load_targets(data.root, tables[split], resources, bad, data.workers)
        pred = landmarks[split][kept]
        valid = np.isfinite(pred).all((-1, -2))
        metrics[split] = error_summary(pred[valid], target[valid])
    with atomic_dir(out, keep=(FOLDER_README,)) as tmp:
        for split in SPLITS:
            np.save(tmp / f"{split}.npy", landmarks[split])
        save_json(tmp / "metrics.json", metrics)
        bad.finish(tmp, total=sum(len(t) for t in tables.values()))
    shutil.rmtree(partial_dir, ignore_errors=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
