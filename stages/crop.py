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
                 mesh lies inside the crop, mean offset (x, y px) of the landmarks that placed the
                 crops from the labels' projection (with given68: the files' pixel convention)
  skipped.csv    samples skipped as bad input (with data.skip_bad)
Work in progress lives in artifacts/crop.partial/; an interrupted run resumes there.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm import tqdm

from stages.coarse.targets import project_landmarks
from stages.common.badinput import BadInputs
from stages.common.code import code_digest
from stages.common.cropstore import CropStoreWriter, stamp_run
from stages.common.device import gpu_driver_present, pick_device
from stages.common.identity import stat_digest
from stages.common.io import atomic_dir, save_json
from stages.common.params import Params
from stages.common.stage import stage_main
from stages.face.frontal import crop_quality, fitted_crop_warps, landmark_checks, landmark_problem, reference_shape
from stages.face.cropping import OpenCVCrops, Outcome, TorchCrops
from stages.face.warp import invert_warp
from stages.wcpa.camera import Camera
from stages.wcpa.layout import (DataError, Resources, iter_labels, load_resources, read_info, read_landmarks,
                                sample_files, sample_key, sample_keys, split_tables)

log = logging.getLogger("crop")
SPLITS = ("train", "val", "test")


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
                bad: BadInputs, workers: int) -> tuple[np.ndarray, list[str]]:
    """Landmarks of each row from its 68landmarks file (given68) or its info file (gt: read on
    `workers` processes, stages.wcpa.layout.iter_labels), NaN where bad, and each row's file."""
    if source == "gt":
        landmarks = np.empty((len(table), resources.n_kpts, 2))
        for start, verts, poses in iter_labels(root, table, resources.n_verts, bad, workers):
            landmarks[start:start + len(verts)] = project_landmarks(resources, verts, poses)
        return landmarks, sample_files(root, table, "info")
    landmarks = np.full((len(table), resources.n_kpts, 2), np.nan)
    files = sample_files(root, table, "68landmarks")
    for index, (key, path) in enumerate(zip(sample_keys(table), files)):
        with bad.guard(key):
            landmarks[index] = read_landmarks(path, resources.n_kpts)
    return landmarks, files


def load_landmarks(source: str, split: str, root: Path, table: pd.DataFrame, resources: Resources,
                   coarse_dir: Path, bad: BadInputs, workers: int = 1) -> tuple[np.ndarray, list[str]]:
    """Landmarks (N, L, 2) full px of a split from crop.source (coarse, given68 or gt), and the
    file each row came from."""
    if source == "given68" or (source == "gt" and split == "train"):
        return _from_files(root, table, resources, source, bad, workers)
    return _coarse(coarse_dir, split, table, resources.n_kpts)


def valid_rows(table: pd.DataFrame, landmarks: np.ndarray, files: list[str], width: int, height: int,
               bad: BadInputs) -> np.ndarray:
    """(N,) bool: rows whose landmarks are usable; the others stop the stage or are recorded.
    landmark_checks runs on all rows at once; only the rows it fails go through landmark_problem
    one by one (for the message)."""
    valid = np.logical_and.reduce(list(landmark_checks(landmarks, width, height).values()))
    for index in np.flatnonzero(~valid):
        row = table.iloc[index]
        if not np.isfinite(landmarks[index]).all() and sample_key(row) in bad.keys:
            continue   # already recorded when its landmarks were read
        with bad.guard(sample_key(row)):
            problem = landmark_problem(landmarks[index], width, height)
            if problem:
                raise DataError(f"{files[index]}: {problem} (sample {sample_key(row)})")
            valid[index] = True
    return valid


def warps_of(landmarks: np.ndarray, reference: np.ndarray, rotation: str, camera: Camera,
             model_points: np.ndarray, workers: int, chunk: int = 512) -> tuple[np.ndarray, dict[int, str]]:
    """fitted_crop_warps over chunks of rows on `workers` threads (OpenCV's PnP releases the GIL):
    warps (N, 2, 3), NaN where none fits, and those rows' problems {row: message}; the warps are
    per row, so the result is the same as one call on all rows."""
    starts = range(0, len(landmarks), chunk)
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        done = list(pool.map(lambda start: fitted_crop_warps(landmarks[start:start + chunk], reference, rotation,
                                                             camera, model_points), starts))
    warps = np.concatenate([part for part, _ in done]) if done else np.zeros((0, 2, 3))
    return warps, {start + row: problem for start, (_, problems) in zip(starts, done) for row, problem in problems.items()}


def fitted_rows(table: pd.DataFrame, landmarks: np.ndarray, files: list[str], valid: np.ndarray, rotation: str,
                camera: Camera, model_points: np.ndarray, reference: np.ndarray, workers: int,
                bad: BadInputs) -> tuple[np.ndarray, np.ndarray]:
    """The crop warps (N, 2, 3) at crop.rotation `rotation` of the `valid` rows (N,) bool
    (identity elsewhere) and the valid rows a warp was fitted to: landmarks that pass
    `valid_rows` but that no warp fits (a failed PnP of the head pose) stop the stage with their
    file, or are recorded (data.skip_bad)."""
    warps = np.tile(np.eye(2, 3), (len(table), 1, 1))
    rows = np.flatnonzero(valid)
    warps[rows], problems = warps_of(landmarks[rows], reference, rotation, camera, model_points, workers)
    fitted = valid.copy()
    for index, problem in sorted(problems.items()):
        key = sample_key(table.iloc[rows[index]])
        with bad.guard(key):
            raise DataError(f"{files[rows[index]]}: {problem} (sample {key})")
        fitted[rows[index]], warps[rows[index]] = False, np.eye(2, 3)
    return warps, fitted


def decode_device(choice: str):
    """crop.decode -> the torch device of the torch path (torchvision decode, warp_images), or None
    for the OpenCV path. auto: torch on CUDA (stages/common/device.py), else OpenCV, so that a
    machine without CUDA makes the same crops as before the torch path existed; without a GPU
    driver it does not even import torch (nor does the OpenCV path, nor quality()'s workers)."""
    if choice == "opencv" or (choice == "auto" and not gpu_driver_present()):
        return None
    device = pick_device("auto", "crop.decode")
    return device if choice == "torch" or device.type == "cuda" else None


def crop_split(writer: CropStoreWriter, root: Path, table: pd.DataFrame, rows: np.ndarray, size: int,
               image_size: tuple[int, int], chunk: int, workers: int, bad: BadInputs, desc: str,
               device=None) -> np.ndarray:
    """Crop the pending `rows` (images of the data set's (width, height) `image_size` px) into the
    writer -> (N,) bool of rows that failed (recorded in bad).

    device None: the OpenCV path, `workers` threads decode, warp and store each image; a torch
    device: the torch path (TorchCrops), `workers` threads read the files. Either way the main
    thread only commits chunks (flush and done mark) in order, while the next chunk is already
    being cropped (two chunks in flight: the memory does not grow with the split)."""
    failed = np.zeros(len(table), dtype=bool)
    chunks = writer.pending(rows, chunk)
    paths = sample_files(root, table, "image")
    keys = sample_keys(table)

    def commit(part: np.ndarray, outcome: Outcome) -> None:
        good = []
        for index, error in zip(part, outcome()):
            with bad.guard(keys[index]):
                if error is not None:
                    failed[index] = True
                    raise error
                good.append(index)
        writer.write(np.asarray(good, dtype=np.int64))
        bar.update(len(part))

    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(max(workers, 1)))
        if device is None:
            cropper = OpenCVCrops(pool, writer, paths, size, image_size)
        else:   # (entered after the pool: on the way out the device thread finishes before the pool)
            cropper = TorchCrops(pool, stack.enter_context(ThreadPoolExecutor(1)), writer, paths, size,
                                 image_size, device)
        bar = stack.enter_context(tqdm(total=len(rows), initial=len(rows) - sum(map(len, chunks)), desc=desc,
                                       unit="img"))
        flight: deque = deque()
        for part in chunks:
            flight.append((part, cropper.submit(part)))
            if len(flight) > 1:
                commit(*flight.popleft())
        while flight:
            commit(*flight.popleft())
    return failed


def _quality_chunk(paths: list[str], warps: np.ndarray, landmarks: np.ndarray, camera: Camera, kpt_ind: np.ndarray,
                   n_verts: int, size: int) -> tuple[np.ndarray, ...]:
    """Worker process: crop_quality of the rows whose info file reads -> (roll, eye line, inside,
    offset (n, 2): the mean of the landmarks (n, L, 2) that placed the crop less the labels' projected
    ones, full px)."""
    verts, poses, kept = [], [], []
    for index, path in enumerate(paths):
        try:
            mesh, pose = read_info(path, n_verts)
        except DataError:
            continue
        verts.append(mesh)
        poses.append(pose)
        kept.append(index)
    if not kept:
        return np.zeros(0), np.zeros(0), np.zeros(0, bool), np.zeros((0, 2))
    verts, poses = np.stack(verts), np.stack(poses)
    result = crop_quality(camera, verts, poses, warps[kept], kpt_ind, size)
    offset = (landmarks[kept] - camera.project(verts[:, kpt_ind], poses)).mean(1)
    return result["roll_deg"], result["eye_line_deg"], result["inside"], offset


def quality(root: Path, table: pd.DataFrame, warps: np.ndarray, landmarks: np.ndarray, valid: np.ndarray,
            resources: Resources, size: int, workers: int = 1, chunk: int = 1024) -> dict:
    """GT roll / eye line in the crop, inside fraction, and the mean offset (x, y) of the landmarks
    (N, L, 2) that placed the crops from the labels' projected ones, over the valid rows with
    readable info. With crop.source given68 the offset tells the files' pixel convention: about
    0 where they round continuous coordinates (as read_landmarks takes them), about -0.5 where
    they hold OpenCV's pixel indices or truncate (the crops then sit half a pixel off). The info
    files are read in chunks on `workers` processes, which return five numbers per row (the
    meshes never gather in this process)."""
    rows = np.flatnonzero(valid)
    paths = sample_files(root, table, "info")
    parts = [rows[i:i + chunk] for i in range(0, len(rows), chunk)]
    jobs = (delayed(_quality_chunk)([paths[i] for i in part], warps[part], landmarks[part], resources.camera,
                                    resources.kpt_ind, resources.n_verts, size) for part in parts)
    results = Parallel(n_jobs=max(workers, 1) if len(parts) > 1 else 1)(jobs)
    if not results or not sum(len(r[0]) for r in results):
        return {"images": 0}
    roll, eyes, inside, offset = (np.concatenate(column) for column in zip(*results))
    roll, eyes = np.abs(roll), np.abs(eyes)
    return {"images": len(roll), "roll_abs_median_deg": float(np.median(roll)),
            "roll_abs_p95_deg": float(np.percentile(roll, 95)), "eye_line_abs_median_deg": float(np.median(eyes)),
            "eye_line_abs_p95_deg": float(np.percentile(eyes, 95)),
            "inside_fraction": float(inside.mean()), "landmark_offset_mean_px": offset.mean(0).tolist()}


def run(params: Params, out: Path = Path("artifacts/crop"), coarse_dir: Path = Path("artifacts/coarse_predict"),
        split_dir: Path = Path("artifacts/split")) -> dict:
    cfg, data = params.crop, params.data
    root = Path(data.root)
    resources = load_resources(root)
    camera = resources.camera
    tables = split_tables(root, split_dir)
    reference = reference_shape(resources.template, resources.kpt_ind, cfg.size, cfg.margin)
    model_points = resources.template[resources.kpt_ind]
    bad = BadInputs(skip=data.skip_bad, max_fraction=data.max_bad_fraction)
    partial = out.with_name(out.name + ".partial")
    device = decode_device(cfg.decode)
    log.info("decode and warp: %s", "OpenCV" if device is None else f"torch on {device}")
    writers, skipped, metrics = {}, {}, {}
    for split in SPLITS:
        started = time.perf_counter()
        table = tables[split]
        landmarks, files = load_landmarks(cfg.source, split, root, table, resources, coarse_dir, bad, data.workers)
        valid = valid_rows(table, landmarks, files, camera.width, camera.height, bad)
        warps, valid = fitted_rows(table, landmarks, files, valid, cfg.rotation, camera, model_points, reference,
                                   data.workers, bad)
        writers[split] = CropStoreWriter(partial / split, table, warps, cfg.size,
                                         "opencv" if device is None else f"torch-{device.type}",
                                         stat_digest(sample_files(root, table, "image")), code_digest("stages.crop"))
        failed = crop_split(writers[split], root, table, np.flatnonzero(valid), cfg.size,
                            camera.size, cfg.chunk, data.workers, bad, split, device)
        skipped[split] = ~valid | failed
        seconds = time.perf_counter() - started
        metrics[split] = {"seconds": seconds, "images_per_second": writers[split].made / max(seconds, 1e-9),
                          "resumed": writers[split].resumed, "skipped": int(skipped[split].sum())}
        if split != "test":
            metrics[split].update(quality(root, table, warps, landmarks, ~skipped[split], resources, cfg.size,
                                          data.workers))
    with atomic_dir(out) as tmp:
        bad.finish(tmp, total=sum(len(t) for t in tables.values()))
        for split in SPLITS:
            writers[split].finish(tmp / split, skipped[split], invert_warp(writers[split].warps))
        stamp_run([tmp / split for split in SPLITS])
        save_json(tmp / "metrics.json", metrics)
    shutil.rmtree(partial, ignore_errors=True)
    return metrics


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
