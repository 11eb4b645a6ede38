"""In-plane frontalization of the face crop (pipeline step 2) and how well a crop achieved it.

The reference shape is the template mesh seen from the front (orthographic, +x to the right,
+y up), scaled so that the whole mesh's longer side is `size / margin` crop px and centred. A
crop warp is the similarity that maps the image landmarks onto the reference landmarks in the
least-squares sense, with its rotation fixed by one of:
  eye_line  the line between the eye centres (iBUG 36-41, 42-47) becomes horizontal;
  pose      the roll of the head pose fitted to the landmarks (OpenCV PnP of the template's
            landmark vertices) is undone, so that the pose's Euler roll is 0 in the crop.
Rotating the image by `a` (counter-clockwise on screen) is rotating the camera points by `a`
about the optical axis, so the pose's roll becomes roll + a ('yxz' Euler: roll is outermost).
"""
from __future__ import annotations

import cv2
import numpy as np

from stages.face.warp import DegenerateLandmarks, apply_warp, eye_line_angle, fit_similarity, rotation_angle
from stages.wcpa.camera import Camera, euler_from_rt, make_rt, opencv_to_rt

ROTATIONS = ("eye_line", "pose")


def reference_shape(template: np.ndarray, kpt_ind: np.ndarray, size: int, margin: float) -> np.ndarray:
    """Template (V, 3) metres -> reference landmarks (L, 2) in crop px."""
    front = np.asarray(template, dtype=np.float64)[:, :2] * [1.0, -1.0]
    low, high = front.min(0), front.max(0)
    scale = size / (margin * (high - low).max())
    return (front[kpt_ind] - (low + high) / 2) * scale + size / 2


def pnp_roll(camera: Camera, model_points: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Euler roll (N,) in radians of the pose that best projects model_points (L, 3) metres onto
    each image's landmarks (N, L, 2) px (OpenCV iterative PnP from an EPnP start). The PnP runs
    per image; the conversion to Euler angles once for all (the same numbers, 40x less time)."""
    model = np.ascontiguousarray(model_points, dtype=np.float64)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    rotations, shifts = np.empty((len(landmarks), 3, 3)), np.empty((len(landmarks), 3))
    for index, points in enumerate(landmarks):
        found, rvec, tvec = cv2.solvePnP(model, np.ascontiguousarray(points), camera.K, None,
                                         flags=cv2.SOLVEPNP_EPNP)
        if found:
            found, rvec, tvec = cv2.solvePnP(model, np.ascontiguousarray(points), camera.K, None, rvec, tvec,
                                             useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if not found:
            raise DegenerateLandmarks("degenerate landmarks: the head pose's PnP failed on them"
                             + (f" (row {index})" if len(landmarks) > 1 else ""))
        rotations[index], shifts[index] = cv2.Rodrigues(rvec)[0], tvec.ravel()
    return euler_from_rt(opencv_to_rt(rotations, shifts))[..., 2] if len(landmarks) else np.empty(0)


def crop_warps(landmarks: np.ndarray, reference: np.ndarray, rotation: str,
               camera: Camera | None = None, model_points: np.ndarray | None = None) -> np.ndarray:
    """Landmarks (N, L, 2) full px -> crop warps (N, 2, 3) full px -> crop px.

    rotation: 'eye_line' or 'pose' (which needs the camera and the model's landmark vertices).
    Raises DegenerateLandmarks for landmarks no warp fits.
    """
    if rotation == "eye_line":
        angle = eye_line_angle(landmarks)
    elif rotation == "pose":
        angle = -pnp_roll(camera, model_points, landmarks)
    else:
        raise ValueError(f"unknown crop rotation {rotation!r}; choose one of {', '.join(ROTATIONS)}")
    return fit_similarity(landmarks, reference, angle)


def fitted_crop_warps(landmarks: np.ndarray, reference: np.ndarray, rotation: str,
                      camera: Camera | None = None, model_points: np.ndarray | None = None
                      ) -> tuple[np.ndarray, dict[int, str]]:
    """crop_warps that fails row by row: warps (N, 2, 3), NaN in the rows whose landmarks
    (N, L, 2) full px no warp fits (DegenerateLandmarks: coincident or non-finite points, a
    failed PnP), and those rows' problems {row: message}; any other error propagates. One call on the whole batch when every row fits; otherwise
    each row alone (the same numbers: a warp depends on its own row only)."""
    if rotation not in ROTATIONS:
        raise ValueError(f"unknown crop rotation {rotation!r}; choose one of {', '.join(ROTATIONS)}")
    try:
        return crop_warps(landmarks, reference, rotation, camera, model_points), {}
    except DegenerateLandmarks:
        pass
    warps, problems = np.full((len(landmarks), 2, 3), np.nan), {}
    for row in range(len(landmarks)):
        try:
            warps[row] = crop_warps(landmarks[row:row + 1], reference, rotation, camera, model_points)[0]
        except DegenerateLandmarks as err:
            problems[row] = str(err)
    return warps, problems


def rotate_pose_in_plane(R_t: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Poses (..., 4, 4) seen by a camera rolled so that the image turns by `angle` (...,) rad
    counter-clockwise on screen: camera points x -> Rz(angle) x."""
    R_t = np.asarray(R_t, dtype=np.float64)
    angle = np.asarray(angle, dtype=np.float64)
    cos, sin = np.cos(angle), np.sin(angle)
    zeros, ones = np.zeros_like(angle), np.ones_like(angle)
    rz = np.stack([np.stack([cos, -sin, zeros], -1), np.stack([sin, cos, zeros], -1),
                   np.stack([zeros, zeros, ones], -1)], -2)
    rz_t = np.swapaxes(rz, -1, -2)
    return make_rt(R_t[..., :3, :3] @ rz_t, np.einsum("...i,...ij->...j", R_t[..., 3, :3], rz_t))


def crop_quality(camera: Camera, verts: np.ndarray, R_t: np.ndarray, warps: np.ndarray,
                 kpt_ind: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Ground truth seen through the crops, per image:
    roll_deg: Euler roll of the GT pose after the crop's in-plane rotation;
    eye_line_deg: angle of the GT eye line in the crop;
    inside: whether every projected mesh vertex lies inside the crop.
    verts (N, V, 3), R_t (N, 4, 4), warps (N, 2, 3)."""
    uv = apply_warp(warps, camera.project(verts, R_t))
    rolled = rotate_pose_in_plane(R_t, rotation_angle(warps))
    return {"roll_deg": np.degrees(euler_from_rt(rolled)[..., 2]),
            "eye_line_deg": np.degrees(eye_line_angle(uv[:, kpt_ind])),
            "inside": ((uv >= 0) & (uv <= size)).all((-1, -2))}


MIN_INSIDE = 0.5     # fraction of the landmarks inside the image that a crop needs
MIN_SPREAD = 0.01    # the least extent of a face's landmarks, as a fraction of the image's shorter side


def landmark_checks(landmarks: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
    """The tests landmarks (..., L, 2) px must pass for a crop, each (...,) bool: 'finite', 'inside'
    (at least MIN_INSIDE of the points in the width x height image) and 'spread' (their extent at
    least MIN_SPREAD of the image's shorter side, 8 px at 800 x 800: a collapsed detection is no
    face, and a crop would blow its few pixels up)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        inside = ((landmarks >= 0) & (landmarks <= [width, height])).all(-1)
        spread = np.ptp(landmarks, axis=-2).max(-1) >= MIN_SPREAD * min(width, height) if landmarks.shape[-2] else \
            np.zeros(landmarks.shape[:-2], bool)
    return {"finite": np.isfinite(landmarks).all((-1, -2)), "inside": inside.mean(-1) >= MIN_INSIDE,
            "spread": spread}


def landmark_problem(landmarks: np.ndarray, width: int, height: int) -> str:
    """What makes landmarks (L, 2) px unusable for a crop ('' when nothing): non-finite values,
    most points outside the width x height image, or an extent too small for a face (landmark_checks)."""
    checks = landmark_checks(landmarks, width, height)
    if not checks["finite"]:
        return "landmarks are not finite"
    if not checks["inside"]:
        outside = int((~((np.asarray(landmarks) >= 0) & (np.asarray(landmarks) <= [width, height])).all(-1)).sum())
        return f"landmarks outside the {width}x{height} image ({outside} of {len(landmarks)} points)"
    if not checks["spread"]:
        return (f"degenerate landmarks: they span {np.ptp(np.asarray(landmarks), axis=0).max():.1f} px, under "
                f"{MIN_SPREAD:.0%} of the image's shorter side ({MIN_SPREAD * min(width, height):.0f} px): no face")
    return ""
