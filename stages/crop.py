"""Stage crop: the roll-frontalized face crop of every train, val and test image (the crop store).

Landmarks place the crops (crop.source): coarse = artifacts/coarse_predict (the paper's way),
given68 = the data's 68landmarks files, gt = projections of the info files for train (val and
test then use coarse: an ablation of training on ideal crops). Each crop is a similarity warp
(stages/face/frontal.py) that levels the face (crop.rotation) and fits the landmarks to the
template's frontal shape with crop.margin around the whole mesh.

Writes artifacts/crop/:
  {train,val,test}/images.npy, warps.npy, inv_warps.npy, index.csv   (stages/common/cropstore.py)
  metrics.json   per split: time and throughput; train/val: roll of the GT pose and angle of the
                 GT eye line inside the crop (degrees), fraction of images whose whole projected
                 mesh lies inside the crop
  skipped.csv    samples skipped as bad input (with data.skip_bad)
Work in progress lives in artifacts/crop.partial/; an interrupted run resumes there.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm import tqdm

from stages.coarse.targets import project_landmarks
from stages.common.badinput import BadInputs
from stages.common.cropstore import CropStoreWriter, stamp_run
from stages.common.io import atomic_dir, save_json
from stages.common.params import load_params, section, stage_args
from stages.face.frontal import crop_quality, crop_warps, landmark_problem, reference_shape
from stages.face.warp import warp_image
from stages.wcpa.layout import (DataError, Resources, image_path, info_path, landmarks_path,
                                load_resources, read_image, read_info, read_landmarks, sample_key,
                                split_tables)

log = logging.getLogger("crop")
SPLITS = ("train", "val", "test")
SOURCES = ("coarse", "given68", "gt")


def _coarse(coarse_dir: Path, split: str, table: pd.DataFrame, n_points: int) -> tuple[np.ndarray, list[str]]:
    path = coarse_dir / f"{split}.npy"
    try:
        landmarks = np.load(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read coarse landmarks ({err}); run `dvc repro coarse_predict`") from None
    if landmarks.shape != (len(table), n_points, 2):
        raise DataError(f"{path}: shape {landmarks.shape}, expected ({len(table)}, {n_points}, 2) "
                        "(the list changed? run `dvc repro coarse_predict`)")
    return landmarks.astype(np.float64), [f"{path} row {i}" for i in range(len(table))]


def _from_files(root: Path, table: pd.DataFrame, resources: Resources, source: str,
                bad: BadInputs) -> tuple[np.ndarray, list[str]]:
    """Landmarks of each row from its 68landmarks file or its info file (NaN where bad)."""
    landmarks = np.full((len(table), resources.n_kpts, 2), np.nan)
    files = []
    for index, row in enumerate(table.itertuples(index=False)):
        path = landmarks_path(root, row) if source == "given68" else info_path(root, row)
        files.append(str(path))
        with bad.guard(sample_key(row)):
            if source == "given68":
                landmarks[index] = read_landmarks(path, resources.n_kpts)
            else:
                verts, pose = read_info(path, resources.n_verts)
                landmarks[index] = project_landmarks(resources, verts[None], pose[None])[0]
    return landmarks, files


def load_landmarks(source: str, split: str, root: Path, table: pd.DataFrame, resources: Resources,
                   coarse_dir: Path, bad: BadInputs) -> tuple[np.ndarray, list[str]]:
    """Landmarks (N, K, 2) full px of a split from crop.source, and the file each row came from."""
    if source not in SOURCES:
        raise ValueError(f"crop.source = {source!r}: choose one of {', '.join(SOURCES)}")
    if source == "given68" or (source == "gt" and split == "train"):
        return _from_files(root, table, resources, source, bad)
    return _coarse(coarse_dir, split, table, resources.n_kpts)


def valid_rows(table: pd.DataFrame, landmarks: np.ndarray, files: list[str], width: int, height: int,
               bad: BadInputs) -> np.ndarray:
    """(N,) bool: rows whose landmarks are usable; the others stop the stage or are recorded."""
    valid = np.zeros(len(table), dtype=bool)
    for index, row in enumerate(table.itertuples(index=False)):
        if not np.isfinite(landmarks[index]).all() and sample_key(row) in bad.keys:
            continue   # already recorded when its landmarks were read
        with bad.guard(sample_key(row)):
            problem = landmark_problem(landmarks[index], width, height)
            if problem:
                raise DataError(f"{files[index]}: {problem} (sample {sample_key(row)})")
            valid[index] = True
    return valid


def _crop_one(path: Path, warp: np.ndarray, size: int, image_size: tuple[int, int]) -> np.ndarray | DataError:
    try:
        return warp_image(read_image(path, image_size), warp, size)
    except DataError as err:
        return err


def crop_split(writer: CropStoreWriter, root: Path, table: pd.DataFrame, rows: np.ndarray, size: int,
               image_size: tuple[int, int], chunk: int, workers: int, bad: BadInputs, desc: str) -> np.ndarray:
    """Crop the pending `rows` (images of the data set's (width, height) `image_size` px) into the
    writer -> (N,) bool of rows that failed (recorded in bad)."""
    failed = np.zeros(len(table), dtype=bool)
    chunks = writer.pending(rows, chunk)
    paths = [image_path(root, row) for row in table.itertuples(index=False)]
    keys = [sample_key(row) for row in table.itertuples(index=False)]
    with Parallel(n_jobs=workers, prefer="threads") as parallel:
        with tqdm(total=len(rows), initial=len(rows) - sum(map(len, chunks)), desc=desc, unit="img") as bar:
            for part in chunks:
                results = parallel(delayed(_crop_one)(paths[i], writer.warps[i], size, image_size) for i in part)
                good, crops = [], []
                for index, result in zip(part, results):
                    with bad.guard(keys[index]):
                        if isinstance(result, DataError):
                            failed[index] = True
                            raise result
                        good.append(index)
                        crops.append(result)
                writer.write(np.asarray(good, dtype=np.int64), np.asarray(crops).reshape(-1, size, size, 3))
                bar.update(len(part))
    return failed


def quality(root: Path, table: pd.DataFrame, warps: np.ndarray, valid: np.ndarray,
            resources: Resources, size: int) -> dict:
    """GT roll / eye line in the crop and inside fraction over the valid rows with readable info."""
    verts, poses, kept = [], [], []
    for index in np.flatnonzero(valid):
        try:
            mesh, pose = read_info(info_path(root, table.iloc[index]), resources.n_verts)
        except DataError:
            continue
        verts.append(mesh)
        poses.append(pose)
        kept.append(index)
    if not kept:
        return {"images": 0}
    result = crop_quality(resources.camera, np.stack(verts), np.stack(poses), warps[kept], resources.kpt_ind, size)
    roll, eyes = np.abs(result["roll_deg"]), np.abs(result["eye_line_deg"])
    return {"images": len(kept), "roll_abs_median_deg": float(np.median(roll)),
            "roll_abs_p95_deg": float(np.percentile(roll, 95)), "eye_line_abs_median_deg": float(np.median(eyes)),
            "eye_line_abs_p95_deg": float(np.percentile(eyes, 95)),
            "inside_fraction": float(result["inside"].mean())}


def run(params: dict, out: Path = Path("artifacts/crop"), coarse_dir: Path = Path("artifacts/coarse_predict"),
        split_dir: Path = Path("artifacts/split")) -> dict:
    cfg, data = section(params, "crop"), section(params, "data")
    root = Path(data.root)
    resources = load_resources(root)
    camera = resources.camera
    tables = split_tables(root, split_dir)
    reference = reference_shape(resources.template, resources.kpt_ind, cfg.size, cfg.margin)
    model_points = resources.template[resources.kpt_ind]
    bad = BadInputs(skip=data.skip_bad, max_fraction=data.max_bad_fraction)
    partial = out.with_name(out.name + ".partial")
    writers, skipped, metrics = {}, {}, {}
    for split in SPLITS:
        started = time.perf_counter()
        table = tables[split]
        landmarks, files = load_landmarks(cfg.source, split, root, table, resources, coarse_dir, bad)
        valid = valid_rows(table, landmarks, files, camera.width, camera.height, bad)
        warps = np.tile(np.eye(2, 3), (len(table), 1, 1))
        if valid.any():
            warps[valid] = crop_warps(landmarks[valid], reference, cfg.rotation, camera, model_points)
        writers[split] = CropStoreWriter(partial / split, table, warps, cfg.size)
        failed = crop_split(writers[split], root, table, np.flatnonzero(valid), cfg.size,
                            camera.size, cfg.chunk, data.workers, bad, split)
        skipped[split] = ~valid | failed
        seconds = time.perf_counter() - started
        metrics[split] = {"seconds": seconds, "images_per_second": len(table) / max(seconds, 1e-9),
                          "skipped": int(skipped[split].sum())}
        if split != "test":
            metrics[split].update(quality(root, table, warps, ~skipped[split], resources, cfg.size))
    with atomic_dir(out) as tmp:
        bad.finish(tmp, total=sum(len(t) for t in tables.values()))
        for split in SPLITS:
            writers[split].finish(tmp / split, skipped[split])
        stamp_run([tmp / split for split in SPLITS])
        save_json(tmp / "metrics.json", metrics)
    shutil.rmtree(partial, ignore_errors=True)
    log.info("metrics: %s", metrics)
    return metrics


def main() -> None:
    args = stage_args(__doc__.splitlines()[0])
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run(load_params(args.params))


if __name__ == "__main__":
    main()
