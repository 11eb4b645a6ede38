"""The frame of the direct 6DoF head: the one place where a pose regressed on a crop and the
camera's pose meet. train.pose_frame picks it:

camera  the camera's own frame (OpenCV's axes: x right, y down, z forward), as the paper's Direct
        6DoF (sec. 3.2.1) regresses Rt; the crop alone does not show where it was cut from the
        800 x 800 image, which its CoordConv maps of image positions (train.coord_maps: image) tell.
crop    OpenCV's camera frame turned to look through the crop.

A crop (stage crop) is a similarity warp W of the full image (full px -> crop px: a rotation by
the crop's roll, a scale s in crop px per full px, a shift). The crop frame is
  C = R_roll R_ray
  R_ray   the smallest rotation taking the ray through the crop centre's full-image pixel
          W^-1(S/2, S/2) onto the optical axis, so that the frame looks at the face as the crop does
  R_roll  the rotation about the optical axis by W's rotation, so that the frame's x axis is the
          crop's x axis (the crops are roll-frontalised: this undoes the frontalisation)
and the camera frame is C = I, s = 1. A camera pose x_cv = R_cv v + t_cv (stages.wcpa.camera) is
R_frame = C R_cv, t_frame = C t_cv in a frame. The translation is coded by
  (a, b) = (t_frame_x, t_frame_y) / t_frame_z  where the head origin lies off the frame's optical
                                            axis (in the crop frame about f s (a, b) crop px off
                                            the crop centre)
  z_v = t_frame_z / s                       the depth over the crop's scale, metres (the depth
                                            itself in the camera frame)
The crop stage scales every face to the same size in the crop, so in the crop frame z_v stays near
f H / (face size in crop px) and (a, b) near 0: what is left to regress (the face's size, the
framing error) is visible in the crop, unlike the depth itself. In that frame the face's look in
the crop depends on R_frame alone (up to the affine crop's small departure from a perspective
view), not on where the face lay in the full image, so the head needs no full-image coordinates.
Arrays are float64; a leading batch dimension B everywhere.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from stages.face.warp import apply_warp, invert_warp
from stages.wcpa.camera import MIRROR, Camera, opencv_to_rt, rt_to_opencv

FRAMES = ("crop", "camera")      # train.pose_frame


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


def frame_scale(warps: np.ndarray, frame: str) -> np.ndarray:
    """The scales s (B,) of `frame` (FRAMES) for crops `warps` (B, 2, 3): the crops' scales, or 1
    for the camera."""
    if frame not in FRAMES:
        raise ValueError(f"train.pose_frame={frame!r}: expected one of {FRAMES}")
    return crop_scale(warps) if frame == "crop" else np.ones(len(warps))


def pose_frame(warps: np.ndarray, camera: Camera, size: int, frame: str) -> tuple[np.ndarray, np.ndarray]:
    """The frames C (B, 3, 3) (x_frame = C x_cv) and scales s (B,) of `frame` (FRAMES) for crops
    `warps` (B, 2, 3) of side `size` px: crop_frame's, or the identity and 1 for the camera."""
    if frame == "crop":
        return crop_frame(warps, camera, size)
    return np.broadcast_to(np.eye(3), (len(warps), 3, 3)).copy(), frame_scale(warps, frame)


def camera_to_frame(R_t: np.ndarray, warps: np.ndarray, camera: Camera, size: int,
                    frame: str) -> tuple[np.ndarray, np.ndarray]:
    """Poses R_t (B, 4, 4) (challenge convention) of faces in crops `warps` (B, 2, 3) of side
    `size` -> the rotations R_frame (B, 3, 3) in `frame` and translation codes (B, 3) (a, b, z_v m)."""
    C, scale = pose_frame(warps, camera, size, frame)
    R_cv, t_cv = rt_to_opencv(R_t)
    t_frame = np.einsum("bij,bj->bi", C, t_cv)
    codes = np.concatenate([t_frame[:, :2] / t_frame[:, 2:], t_frame[:, 2:] / scale[:, None]], axis=-1)
    return C @ R_cv, codes


def frame_to_camera(R_frame: np.ndarray, codes: np.ndarray, warps: np.ndarray, camera: Camera,
                    size: int, frame: str) -> np.ndarray:
    """The inverse of `camera_to_frame`: R_frame (B, 3, 3), codes (B, 3), warps (B, 2, 3) -> R_t (B, 4, 4)."""
    C, scale = pose_frame(warps, camera, size, frame)
    t_frame = translation_from_codes(np.asarray(codes, dtype=np.float64), scale)
    back = np.swapaxes(C, -1, -2)
    return opencv_to_rt(back @ np.asarray(R_frame, dtype=np.float64), np.einsum("bij,bj->bi", back, t_frame))


def mirror_pose(R_t: np.ndarray, warps: np.ndarray, camera: Camera, size: int) -> np.ndarray:
    """The camera pose (B, 4, 4) of the mirrored mesh (stages.face.mesh.flip_mesh) that the crop
    mirrored left-right (u -> S - u, as stages.nets.dataset.flip_targets) shows, for poses R_t
    (B, 4, 4) in crops `warps` (B, 2, 3): the mirror x -> -x of the crop frame (C) applied to the
    scene and to the head, R' = C^T M C R_cv M, t' = C^T M C t_cv. The mirrored crop stays where
    the crop was cut: its full-image positions (CoordConv's image maps) are the crop's. In the
    crop frame this is R -> M R M, a -> -a; an involution."""
    C, _ = crop_frame(warps, camera, size)
    reflect = np.swapaxes(C, -1, -2) @ MIRROR @ C
    R_cv, t_cv = rt_to_opencv(R_t)
    return opencv_to_rt(reflect @ R_cv @ MIRROR, np.einsum("bij,bj->bi", reflect, t_cv))


def frame_poses(R_frame: np.ndarray, codes: np.ndarray, inv_warps: np.ndarray, camera: Camera, size: int,
                frame: str) -> np.ndarray:
    """The direct head's outputs R_frame (B, 3, 3), codes (B, 3) in `frame` for crops of side
    `size` with crop -> full-image warps inv_warps (B, 2, 3) -> R_t (B, 4, 4); NaN for rows
    with NaN warps (crops the crop stage skipped)."""
    out = np.full((len(R_frame), 4, 4), np.nan)
    rows = np.flatnonzero(np.isfinite(inv_warps).all((1, 2)))
    if len(rows):
        out[rows] = frame_to_camera(R_frame[rows], codes[rows], invert_warp(inv_warps[rows]), camera, size, frame)
    return out
