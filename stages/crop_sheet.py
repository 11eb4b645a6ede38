"""Stage crop_sheet: a contact sheet of 16 val crops with the ground truth drawn through the warps.

Each tile is a crop of artifacts/crop/val with every mesh vertex of the sample's info file
(projected with Camera.project, then mapped by the crop's warp) as small white dots, the 68
landmark vertices in green, and the GT roll inside the crop and the sample id as a label. With
data.skip_bad a drawn sample whose info file is bad leaves its tile out (crop skips no row for
it when its landmarks come from the detector).
Writes artifacts/crop_sheet/contact_sheet.png.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from stages.common.badinput import BadInputs
from stages.common.params import Params
from stages.common.stage import stage_main
from stages.face.frontal import crop_quality
from stages.face.warp import apply_warp
from stages.viz.draw import contact_sheet, draw_points, put_label, save_png
from stages.wcpa.layout import DataError, labelled_rows, load_labels, load_resources, read_list

log = logging.getLogger("crop_sheet")
TILES = 16
COLUMNS = 4
TILE_SIZE = 256


def pick_rows(index_skipped: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` random rows (sorted) among the rows that were not skipped."""
    usable = np.flatnonzero(index_skipped == 0)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(usable, size=min(count, len(usable)), replace=False))


def draw_tile(crop: np.ndarray, uv: np.ndarray, kpt_ind: np.ndarray, label: str) -> np.ndarray:
    """A crop (S, S, 3) upscaled to the tile size with vertices uv (V, 2) crop px drawn on it."""
    scale = TILE_SIZE / crop.shape[0]
    tile = cv2.resize(np.ascontiguousarray(crop), (TILE_SIZE, TILE_SIZE), interpolation=cv2.INTER_LINEAR)
    tile = draw_points(tile, uv * scale, color=(255, 255, 255), radius=0.8)
    tile = draw_points(tile, uv[kpt_ind] * scale, color=(0, 255, 0), radius=1.6)
    return put_label(tile, label)


def run(params: Params, out: Path = Path("artifacts/crop_sheet"), crop_dir: Path = Path("artifacts/crop/val"),
        split_dir: Path = Path("artifacts/split")) -> Path:
    root = params.data.root
    resources = load_resources(root)
    table = read_list(split_dir / "val.csv")
    images = np.load(crop_dir / "images.npy", mmap_mode="r")
    warps = np.load(crop_dir / "warps.npy")
    skipped = pd.read_csv(crop_dir / "index.csv").skipped.to_numpy()
    rows = pick_rows(skipped, TILES, params.seed)
    bad = BadInputs(skip=params.data.skip_bad, max_fraction=1.0)     # a picture: a bad label costs its tile
    verts, poses = load_labels(root, table.iloc[rows], resources.n_verts, bad)
    labelled = labelled_rows(verts) & labelled_rows(poses)
    rows, verts, poses = rows[labelled], verts[labelled], poses[labelled]
    if not len(rows):
        raise DataError(f"{split_dir / 'val.csv'}: no val row with a crop and a readable label to draw")
    uv = apply_warp(warps[rows], resources.camera.project(verts, poses))
    roll = crop_quality(resources.camera, verts, poses, warps[rows], resources.kpt_ind, images.shape[1])["roll_deg"]
    tiles = [draw_tile(np.asarray(images[r]), uv[k], resources.kpt_ind, f"roll {roll[k]:+.1f} deg  #{r}")
             for k, r in enumerate(rows)]
    path = out / "contact_sheet.png"
    save_png(path, contact_sheet(tiles, COLUMNS, TILE_SIZE))
    log.info("wrote %s (%d crops)", path, len(tiles))
    return path


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
