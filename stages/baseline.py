"""Stage baseline: the mean training mesh in the mean training pose, for every val and test image.

The lower bound every learned predictor must beat, and a check of the predictions -> submit /
evaluate path. Mean mesh: per-vertex mean of the train split's meshes. Mean pose: mean
translation and the chordal L2 mean rotation (the SVD projection of the summed rotation
matrices onto SO(3), the same mean as scipy's Rotation.mean). Labels are streamed in chunks,
so the whole training set never sits in memory. Writes artifacts/baseline/predictions_val.npz,
predictions_test.npz (stages/wcpa/predictions.py), mean_pose.json and skipped.csv.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from tqdm import tqdm

from stages.common.badinput import BadInputs
from stages.common.io import atomic_dir, save_json
from stages.common.params import Params
from stages.common.stage import stage_main
from stages.wcpa.camera import euler_from_rt, make_rt
from stages.wcpa.layout import DataError, info_path, list_path, load_resources, read_info, read_list, sample_key
from stages.wcpa.predictions import save_predictions

log = logging.getLogger(__name__)
SPLIT = Path("artifacts/split")
OUT = Path("artifacts/baseline")
CHUNK = 512


def label_sums(root: Path, rows: list, n_verts: int) -> dict:
    """Sums over readable samples of `rows`: verts (V, 3), t (3,), R (3, 3), count; plus errors.

    Bad samples are returned as (key, DataError) pairs, for the caller's BadInputs.
    """
    sums = {"verts": np.zeros((n_verts, 3)), "t": np.zeros(3), "R": np.zeros((3, 3)), "count": 0, "errors": []}
    for row in rows:
        try:
            verts, R_t = read_info(info_path(root, row), n_verts)
        except DataError as err:
            sums["errors"].append((sample_key(row), err))
            continue
        sums["verts"] += verts
        sums["t"] += R_t[3, :3]
        sums["R"] += R_t[:3, :3]
        sums["count"] += 1
    return sums


def chordal_mean(rotation_sum: np.ndarray) -> np.ndarray:
    """Sum of rotation matrices (3, 3) -> the nearest rotation (Frobenius), det +1."""
    u, _, vt = np.linalg.svd(rotation_sum)
    fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return u @ fix @ vt


def mean_shape_and_pose(root: Path, table, n_verts: int, bad: BadInputs, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean mesh (V, 3) float32 and mean pose R_t (4, 4) of the listed training samples."""
    rows = list(table.itertuples(index=False))
    chunks = [rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK)]
    jobs = Parallel(n_jobs=workers, return_as="generator")(delayed(label_sums)(root, chunk, n_verts)
                                                           for chunk in chunks)
    parts = list(tqdm(jobs, total=len(chunks), desc="baseline labels", unit="chunk"))
    for part in parts:
        for key, err in part["errors"]:
            if not bad.skip:
                raise err
            bad.add_error(key, err)
    count = sum(p["count"] for p in parts)
    if count == 0:
        raise DataError(f"{root / 'info'}: no readable training labels")
    verts = sum(p["verts"] for p in parts) / count
    t = sum(p["t"] for p in parts) / count
    return verts.astype(np.float32), make_rt(chordal_mean(sum(p["R"] for p in parts)), t)


def constant_predictions(path: Path, table, verts: np.ndarray, R_t: np.ndarray) -> None:
    """Write the same mesh and pose for every row of `table`."""
    n = len(table)
    save_predictions(path, table, np.broadcast_to(verts, (n,) + verts.shape), np.broadcast_to(R_t, (n, 4, 4)))


def run(params: Params) -> None:
    data = params.data
    root = Path(data.root)
    resources = load_resources(root)
    train = read_list(SPLIT / "train.csv")
    bad = BadInputs(skip=data.skip_bad, max_fraction=data.max_bad_fraction)
    verts, R_t = mean_shape_and_pose(root, train, resources.n_verts, bad, data.workers)
    yaw, pitch, roll = np.degrees(euler_from_rt(R_t))
    log.info("mean pose of %d training samples: yaw %.2f pitch %.2f roll %.2f deg, t = %s mm",
             len(train) - len(bad), yaw, pitch, roll, np.round(R_t[3, :3] * 1000, 1).tolist())
    with atomic_dir(OUT) as tmp:
        constant_predictions(tmp / "predictions_val.npz", read_list(SPLIT / "val.csv"), verts, R_t)
        constant_predictions(tmp / "predictions_test.npz", read_list(list_path(root, "test")), verts, R_t)
        save_json(tmp / "mean_pose.json", {"samples": len(train) - len(bad), "R_t": R_t,
                                           "yaw_pitch_roll_deg": [yaw, pitch, roll]})
        bad.finish(tmp, total=len(train))


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
