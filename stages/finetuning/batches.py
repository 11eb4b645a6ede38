"""Training batches with what the PnP layer needs: each sample's true pose in OpenCV's frame,
the camera K and the crop -> full-image warp, consistent with the horizontal flip.

A flipped sample is the crop of the mirrored full image (u -> W - u): its mesh is the mirrored
mesh (flip permutation), its pose camera.flip_rt of the true one, its crop -> full warp
mirror(W) . inv_warp . mirror(S), and its camera has the principal point cx' = W - cx (the same
camera when cx = W / 2, as in the challenge). The flip is drawn here, so that these geometric labels
follow it (the colour jitter, applied later on the device, commutes with it).
"""
from __future__ import annotations

import numpy as np
import torch

from stages.face.warp import compose, invert_warp
from stages.nets.dataset import TrainBatches, flip_targets
from stages.wcpa.camera import flip_rt, rt_to_opencv

FLIP_STREAM = 1   # extra entry of the random seed: flip draws independent of TrainBatches' draws


def mirror_warp(width: float) -> np.ndarray:
    """The (2, 3) warp u -> width - u (continuous coordinates)."""
    return np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0]])


class PoseBatches(TrainBatches):
    """Item = one batch (positions among the usable rows) -> TrainBatches' dict (images, uv, verts, coeffs) plus
    R_gt (B, 3, 3), t_gt (B, 3) metres (OpenCV pose, x_cv = R v + t), K (B, 3, 3) and
    pnp_inv_warps (B, 2, 3) crop px (of the returned, possibly reframed crop) -> full-image px,
    all float64: of the mirrored image where the sample is flipped, which the flipped pose and
    K describe. TrainBatches' inv_warps stays the network's input (CoordConv's image maps): the
    crop's own, as in train and infer, where a mirrored crop keeps the maps of where it was cut."""

    def __init__(self, *args, flip_prob: float, augment: bool = True, **kwargs):
        super().__init__(*args, flip_prob=0.0, augment=augment, **kwargs)
        self.pose_flip_prob = flip_prob if augment else 0.0

    def __getitem__(self, positions) -> dict[str, torch.Tensor]:
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        item = super().__getitem__(positions)
        rows = self.rows[positions]       # the store rows of the item, in its order
        rng = np.random.default_rng([self.seed, self.epoch, int(rows[0]), len(rows), FLIP_STREAM])
        flip = rng.random(len(rows)) < self.pose_flip_prob
        poses = np.array(self.poses[rows], dtype=np.float64)
        inv_warps = compose(self.store.inv_warps[rows], invert_warp(item["reframe"].numpy()))
        K = np.repeat(self.camera.K[None], len(rows), 0)
        if flip.any():
            self._mirror(item, torch.from_numpy(flip))
            size, width = self.store.size, self.camera.width
            poses[flip] = flip_rt(poses[flip])
            inv_warps[flip] = compose(mirror_warp(width), compose(inv_warps[flip], mirror_warp(size)))
            K[flip, 0, 2] = width - K[flip, 0, 2]
        R_gt, t_gt = rt_to_opencv(poses)
        item.update(R_gt=torch.from_numpy(R_gt), t_gt=torch.from_numpy(t_gt), K=torch.from_numpy(K),
                    pnp_inv_warps=torch.from_numpy(inv_warps))
        return item

    def _mirror(self, item: dict[str, torch.Tensor], flip: torch.Tensor) -> None:
        """Mirror the flagged samples of item in place: image, 2D targets, mesh, coefficients."""
        images = item["images"][flip].numpy().transpose(0, 2, 3, 1)
        images, uv, verts = flip_targets(images, item["uv"][flip].numpy(), item["verts"][flip].numpy(), self.perm)
        item["images"][flip] = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        item["uv"][flip] = torch.from_numpy(uv)
        item["verts"][flip] = torch.from_numpy(verts)
        coeffs = self.basis.project(verts)
        item["coeffs"][flip] = torch.from_numpy(coeffs)
        item["off_span"][flip] = torch.from_numpy(self.basis.off_span_mm2(verts, coeffs).astype(np.float32))
