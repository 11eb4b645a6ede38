"""The crop frame of the direct 6DoF head: the one place where a pose regressed on a crop and the
camera's pose meet.

A crop (stage crop) is a similarity warp W of the full image (full px -> crop px: a rotation by
the crop's roll, a scale s in crop px per full px, a shift). The direct head predicts the pose
in the crop's frame, OpenCV's camera frame (x right, y down, z forward) turned to look through
the crop:
  C = R_roll R_ray
  R_ray   the smallest rotation taking the ray through the crop centre's full-image pixel
          W^-1(S/2, S/2) onto the optical axis, so that the frame looks at the face as the crop does
  R_roll  the rotation about the optical axis by W's rotation, so that the frame's x axis is the
          crop's x axis (the crops are roll-frontalised: this undoes the frontalisation)
A camera pose x_cv = R_cv v + t_cv (stages.wcpa.camera) is R_crop = C R_cv, t_crop = C t_cv in it.
The translation is coded by
  (a, b) = (t_crop_x, t_crop_y) / t_crop_z   where the head origin lies off the crop centre's ray
                                            (about f s (a, b) crop px; 0 on the ray)
  z_v = t_crop_z / s                        the depth over the crop's scale, metres
The crop stage scales every face to the same size in the crop, so z_v stays near f H / (face size
in crop px) and (a, b) near 0: what is left to regress (the face's size, the framing error) is
visible in the crop, unlike the depth itself. In this frame the face's look in the crop depends on
R_crop alone (up to the affine crop's small departure from a perspective view), not on where the
face lay in the full image, so the head needs no full-image coordinates as input.
Arrays are float64; a leading batch dimension B everywhere.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from stages.face.warp import apply_warp, invert_warp
from stages.wcpa.camera import Camera, opencv_to_rt, rt_to_opencv

MIRROR = np.diag([-1.0, 1.0, 1.0])    # x -> -x: the crop mirrored left-right, and the mirrored mesh


def ray_rotation(directions: np.ndarray) -> np.ndarray:
    """Directions (B, 3) in front of the camera -> the smallest rotations (B, 3, 3) taking each
    onto +z (about the axis d x z)."""
    d = np.asarray(directions, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    axis = np.cross(d, [0.0, 0.0, 1.0])
    sin = np.linalg.norm(axis, axis=-1)
    angle = np.arctan2(sin, d[..., 2])
    return Rotation.from_rotvec(axis * (angle / np.maximum(sin, 1e-300))[..., None]).as_matrix()


def crop_scale(warps: np.ndarray) -> np.ndarray:
    """Similarity warps (B, 2, 3) -> their scales s (B,), crop px per full px."""
    return np.sqrt(np.abs(np.linalg.det(np.asarray(warps, dtype=np.float64)[:, :, :2])))


def crop_frame(warps: np.ndarray, camera: Camera, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop warps (B, 2, 3) full px -> crop px of S = `size` px crops -> the frames C (B, 3, 3)
    (x_crop = C x_cv) and the crops' scales s (B,) crop px per full px."""
    warps = np.asarray(warps, dtype=np.float64)
    scale = crop_scale(warps)
    centre = apply_warp(invert_warp(warps), np.full((len(warps), 1, 2), size / 2.0))[:, 0]
    rays = np.stack([(centre[:, 0] - camera.cx) / camera.fx, (centre[:, 1] - camera.cy) / camera.fy,
                     np.ones(len(warps))], axis=-1)
    roll = np.zeros((len(warps), 3, 3))
    roll[:, :2, :2] = warps[:, :, :2] / scale[:, None, None]
    roll[:, 2, 2] = 1.0
    return roll @ ray_rotation(rays), scale


def translation_from_codes(codes, scale):
    """Codes (..., 3) = (a, b, z_v) and crop scales (...,) -> t_crop (..., 3) metres. Elementwise
    arithmetic only: numpy arrays or torch tensors (the training loss uses it on tensors)."""
    depth = codes[..., 2] * scale
    t = codes * depth[..., None]
    t[..., 2] = depth
    return t


def camera_to_crop(R_t: np.ndarray, warps: np.ndarray, camera: Camera, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Poses R_t (B, 4, 4) (challenge convention) of faces in crops `warps` (B, 2, 3) of side
    `size` -> the crop-frame rotations R_crop (B, 3, 3) and translation codes (B, 3) (a, b, z_v m)."""
    frame, scale = crop_frame(warps, camera, size)
    R_cv, t_cv = rt_to_opencv(R_t)
    t_crop = np.einsum("bij,bj->bi", frame, t_cv)
    codes = np.concatenate([t_crop[:, :2] / t_crop[:, 2:], t_crop[:, 2:] / scale[:, None]], axis=-1)
    return frame @ R_cv, codes


def crop_to_camera(R_crop: np.ndarray, codes: np.ndarray, warps: np.ndarray, camera: Camera,
                   size: int) -> np.ndarray:
    """The inverse of `camera_to_crop`: R_crop (B, 3, 3), codes (B, 3), warps (B, 2, 3) -> R_t (B, 4, 4)."""
    frame, scale = crop_frame(warps, camera, size)
    t_crop = translation_from_codes(np.asarray(codes, dtype=np.float64), scale)
    back = np.swapaxes(frame, -1, -2)
    return opencv_to_rt(back @ np.asarray(R_crop, dtype=np.float64), np.einsum("bij,bj->bi", back, t_crop))


def mirror_crop_pose(R_crop: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The crop-frame pose (B, 3, 3), (B, 3) of the mirrored mesh (stages.face.mesh.flip_mesh)
    in the crop mirrored left-right (u -> S - u, as stages.nets.dataset.flip_targets): x -> -x in
    both the frame and the head, a -> -a. An involution."""
    codes = np.array(codes, dtype=np.float64, copy=True)
    codes[:, 0] = -codes[:, 0]
    return MIRROR @ np.asarray(R_crop, dtype=np.float64) @ MIRROR, codes
