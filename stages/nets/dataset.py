"""Training samples from the crop store: crops, 2D targets on the crop, meshes and PCA targets.

The crop store (stage crop) holds artifacts/crop/<split>/images.npy (N, S, S, 3) uint8 RGB,
warps.npy (N, 2, 3) full image px -> crop px, inv_warps.npy and index.csv. Labels come from
the pca stage's cache (verts_<split>.npy, poses_<split>.npy, coeffs_<split>.npy), row-aligned.

The dataset is indexed by *batches* (a list of row indices, from a BatchSampler): the rows of
the memory-mapped store and label caches are read from their files in one sorted gather
(stages.common.cropstore.read_rows: a process's resident memory stays one batch's, not the
store's, as an epoch goes over it) and the targets are computed with array operations.
Augmentation: a random reframing of each crop (a small shift, scale and rotation about its centre,
`reframe_warps`: the network learns to find the face in a crop the coarse landmarks placed
imperfectly, instead of trusting the framing), a horizontal flip consistent with the geometry (see
`flip_targets`) and colour jitter, whose parameters are drawn here and applied to the whole batch on
the training device (stages.nets.color).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from stages.common.cropstore import RUN_FILE, MappedFile, read_rows, read_run
from stages.face.mesh import flip_mesh
from stages.face.pca import PCABasis
from stages.face.warp import apply_warp, compose, invert_warp, similarity, warp_image
from stages.nets.color import draw_jitter
from stages.nets.pose_frame import camera_to_frame, frame_scale, mirror_pose
from stages.wcpa.camera import Camera
from stages.wcpa.layout import ID_COLUMNS, DataError


@dataclass(frozen=True)
class CropStore:
    """One split of the crop store: images (N, S, S, 3) uint8 memmap, warps / inv_warps (N, 2, 3),
    and `run`, the identity of the crop run that wrote it (the same in its train, val and test
    splits; stages.common.cropstore.RUN_FILE)."""

    images: np.ndarray
    warps: np.ndarray
    inv_warps: np.ndarray
    index: pd.DataFrame
    run: str = ""

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def open(cls, folder: Path | str) -> "CropStore":
        folder = Path(folder)
        paths = {name: folder / name for name in ("images.npy", "warps.npy", "inv_warps.npy", "index.csv", RUN_FILE)}
        for path in paths.values():
            if not path.is_file():
                raise DataError(f"{path}: not found (run `dvc repro crop`)")
        images = np.load(paths["images.npy"], mmap_mode="r")
        warps = np.load(paths["warps.npy"])
        inv_warps = np.load(paths["inv_warps.npy"])
        index = pd.read_csv(paths["index.csv"], dtype=str, keep_default_na=False)
        n = len(images)
        if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
            raise DataError(f"{paths['images.npy']}: shape {images.shape}, expected (N, S, S, 3)")
        for name, array in (("warps.npy", warps), ("inv_warps.npy", inv_warps)):
            if array.shape != (n, 2, 3):
                raise DataError(f"{paths[name]}: shape {array.shape}, expected ({n}, 2, 3)")
        if len(index) != n:
            raise DataError(f"{paths['index.csv']}: {len(index)} rows for {n} crops")
        return cls(images=images, warps=warps, inv_warps=inv_warps, index=index, run=read_run(paths[RUN_FILE]))

    @property
    def usable(self) -> np.ndarray:
        """(N,) bool: rows the crop stage did not skip (index.csv 'skipped', NaN warps)."""
        skipped = self.index["skipped"].astype(int).to_numpy() == 1 if "skipped" in self.index else np.zeros(len(self), bool)
        return ~skipped & np.isfinite(self.warps).all(axis=(1, 2))

    def skip(self, rows: np.ndarray) -> "CropStore":
        """This store with rows (N,) bool marked skipped, e.g. the samples without a label."""
        skipped = ~self.usable | rows
        return replace(self, index=self.index.assign(skipped=skipped.astype(int).astype(str)))

    def check_rows(self, table: pd.DataFrame, where: str) -> None:
        """Stop unless the store's rows are the list `table`'s rows, in order."""
        ours = self.index[ID_COLUMNS].to_numpy(dtype=str)
        theirs = table[ID_COLUMNS].to_numpy(dtype=str)
        if ours.shape != theirs.shape or not (ours == theirs).all():
            raise DataError(f"{where}: crop store rows differ from the split list (re-run `dvc repro crop`)")


def crop_targets(camera: Camera, verts: np.ndarray, poses: np.ndarray, warps: np.ndarray) -> np.ndarray:
    """2D targets: every vertex projected (Camera.project) then warped to the crop -> (B, V, 2) px."""
    return camera.project_warped(verts, poses, warps).astype(np.float32)


def flip_targets(images: np.ndarray, uv: np.ndarray, verts: np.ndarray, perm: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror crops (B, S, S, 3), their targets (B, V, 2) crop px and meshes (B, V, 3).

    u -> S - u (continuous coordinates) and the points are reordered by the flip permutation,
    so that point i is again vertex i of the mirrored mesh flip_mesh(verts, perm). This is the
    mirrored pose's projection (camera.flip_rt) seen through the mirrored crop warp.
    """
    size = images.shape[2]
    uv = uv[:, perm].copy()
    uv[..., 0] = size - uv[..., 0]
    return images[:, :, ::-1], uv, flip_mesh(verts, perm)


@dataclass(frozen=True)
class Reframe:
    """Largest random reframing of a crop: shift (fraction of the crop side, per axis),
    scale (|log| of the zoom factor) and rotate (degrees). All 0: off."""

    shift: float = 0.0
    scale: float = 0.0
    rotate: float = 0.0

    @property
    def active(self) -> bool:
        return max(self.shift, self.scale, self.rotate) > 0


def reframe_warps(rng: np.random.Generator, count: int, size: int, limits: Reframe) -> np.ndarray:
    """Random similarity warps (count, 2, 3), crop px -> reframed crop px (continuous coordinates):
    the reframed crop is centred on a point shifted by up to limits.shift * size from the crop's
    centre, zoomed by exp(U(-scale, scale)) and rotated by U(-rotate, rotate) degrees."""
    centre = np.full(2, size / 2.0)
    shift = rng.uniform(-limits.shift, limits.shift, (count, 2)) * size
    zoom = np.exp(rng.uniform(-limits.scale, limits.scale, count))
    angle = np.deg2rad(rng.uniform(-limits.rotate, limits.rotate, count))
    return similarity(angle, zoom, centre + shift, np.broadcast_to(centre, (count, 2)))


class TrainBatches(Dataset):
    """Item = one batch (a list of positions among the store's usable rows) -> dict of tensors:

    images (B, 3, S, S) uint8, uv (B, V, 2) crop px, verts (B, V, 3) metres, coeffs (B, C),
    off_span (B,) mm^2: each mesh's mean squared vertex distance from the basis' span,
    reframe (B, 2, 3) float64: the warp from the stored crop to the returned one (identity when
    the reframing is off), inv_warps (B, 2, 3) float32: the returned crop -> full-image px (a
    mirrored crop keeps its crop's), jitter (B, 8) float32: colour jitter parameters for
    stages.nets.color.jitter_images (the identity when off). Rows the crop stage skipped are left out.
    With a pose_frame (the direct 6DoF head: stages.nets.pose_frame.FRAMES) also the pose in that
    frame: R_frame (B, 3, 3), t_code (B, 3) and the frame's scale frame_scale (B,), float32.
    """

    def __init__(self, store: CropStore, verts: np.ndarray, poses: np.ndarray, camera: Camera,
                 basis: PCABasis, flip_perm: np.ndarray | None, flip_prob: float, color_jitter: float,
                 seed: int, augment: bool = True, reframe: Reframe = Reframe(), coeffs: np.ndarray | None = None,
                 pose_frame: str | None = None):
        self.store, self.verts, self.poses = store, verts, poses
        self.pose_frame = pose_frame
        self.camera, self.basis, self.perm = camera, basis, flip_perm
        self.coeffs = coeffs            # (N, C) basis.project(verts) (the pca stage's cache), or None: per batch
        self.flip_prob = flip_prob if augment else 0.0
        self.reframe = reframe if augment else Reframe()
        self.jitter = color_jitter if augment else 0.0
        self.seed, self.epoch = seed, 0
        self.rows = np.flatnonzero(store.usable)

    def __getstate__(self) -> dict:
        """Pickled (for a loader process started by spawn or forkserver): the memory-mapped store
        and label caches as references to their files (MappedFile), not their data."""
        state = dict(self.__dict__)
        state["store"] = replace(self.store, images=MappedFile.of(self.store.images))
        state["verts"], state["coeffs"] = MappedFile.of(self.verts), MappedFile.of(self.coeffs)
        return state

    def __setstate__(self, state: dict) -> None:
        state["store"] = replace(state["store"], images=MappedFile.reopened(state["store"].images))
        state["verts"], state["coeffs"] = MappedFile.reopened(state["verts"]), MappedFile.reopened(state["coeffs"])
        self.__dict__.update(state)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws depend on (seed, epoch, batch): reproducible, distinct per epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions) -> dict[str, torch.Tensor]:
        rows = np.sort(self.rows[np.asarray(positions, dtype=np.int64)])
        rng = np.random.default_rng([self.seed, self.epoch, int(rows[0]), len(rows)])
        images = read_rows(self.store.images, rows)
        verts = read_rows(self.verts, rows).astype(np.float32, copy=False)
        uv = crop_targets(self.camera, verts, self.poses[rows], self.store.warps[rows])
        reframe = np.broadcast_to(np.eye(2, 3), (len(rows), 2, 3)).copy()
        if self.reframe.active:
            reframe = reframe_warps(rng, len(rows), self.store.size, self.reframe)
            images = np.stack([warp_image(image, warp, self.store.size) for image, warp in zip(images, reframe)])
            uv = apply_warp(reframe, uv).astype(np.float32)
        flip = rng.random(len(rows)) < self.flip_prob
        coeffs = self.basis.project(verts) if self.coeffs is None else read_rows(self.coeffs, rows).astype(np.float32)
        if flip.any():
            images[flip], uv[flip], verts[flip] = flip_targets(images[flip], uv[flip], verts[flip], self.perm)
            coeffs[flip] = self.basis.project(verts[flip])
        warps = compose(reframe, self.store.warps[rows])
        pose = self.frame_poses(rows, warps, flip) if self.pose_frame else {}
        return {**pose,
            "images": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
            "uv": torch.from_numpy(uv),
            "verts": torch.from_numpy(verts),
            "coeffs": torch.from_numpy(coeffs),
            "off_span": torch.from_numpy(self.basis.off_span_mm2(verts, coeffs).astype(np.float32)),
            "reframe": torch.from_numpy(reframe),
            "inv_warps": torch.from_numpy(invert_warp(warps).astype(np.float32)),
            "jitter": torch.from_numpy(draw_jitter(rng, len(rows), self.jitter)),
        }

    def frame_poses(self, rows: np.ndarray, warps: np.ndarray, flip: np.ndarray) -> dict[str, torch.Tensor]:
        """The poses of store rows (B,) in the frames (self.pose_frame) of their returned crops,
        whose warps are `warps` (B, 2, 3) full px -> crop px, mirrored where `flip` (B,) bool."""
        poses = self.poses[rows].copy()
        if flip.any():
            poses[flip] = mirror_pose(poses[flip], warps[flip], self.camera, self.store.size)
        R_frame, codes = camera_to_frame(poses, warps, self.camera, self.store.size, self.pose_frame)
        scale = frame_scale(warps, self.pose_frame)
        return {"R_frame": torch.from_numpy(R_frame.astype(np.float32)), "t_code": torch.from_numpy(codes.astype(np.float32)),
                "frame_scale": torch.from_numpy(scale.astype(np.float32))}
