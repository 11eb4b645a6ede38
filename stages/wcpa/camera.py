"""Camera and pose conventions of the challenge, and the one bridge to OpenCV.

Challenge conventions (row vectors, OpenGL camera: x right, y up, looking down -z):
  camera point  x_cam = [v, 1] @ R_t          R_t: (4, 4), R_t[:3, :3] = R_row, R_t[3, :3] = t
  clip          = [x_cam, 1] @ M_proj
  pixel         u = (ndc_x + 1) W / 2,  v = H - (ndc_y + 1) H / 2
Pixel coordinates are continuous: the image spans [0, W] x [0, H] and pixel (i, j) of the array
has its centre at (i + 0.5, j + 0.5). A mirrored image maps u to W - u.

OpenCV's camera (x right, y down, looking down +z) is (x, -y, -z) of the OpenGL one, with
column vectors: x_cv = R_cv v + t_cv. `rt_to_opencv` / `opencv_to_rt` are the only place where
the two conventions meet. Every function accepts leading batch dimensions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

GL_TO_CV = np.diag([1.0, -1.0, -1.0])   # OpenGL camera axes -> OpenCV camera axes (self-inverse)
MIRROR = np.diag([-1.0, 1.0, 1.0])      # left-right mirror of the camera and of the head frame
NEAR_M, FAR_M = 0.01, 100.0             # clip planes of Camera.pinhole, metres


def from_opencv_pixels(uv) -> np.ndarray:
    """Pixels (..., 2) in OpenCV's coordinates (pixel (i, j)'s centre at (i, j), as a calibration
    gives a principal point) -> the continuous coordinates used here (centre at (i + 0.5, j + 0.5))."""
    return np.asarray(uv, dtype=np.float64) + 0.5


def focal_from_fov(fov_deg: float, width: int) -> float:
    """Horizontal field of view in degrees of an image `width` px wide -> focal length px."""
    if not 0 < fov_deg < 180:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    return width / 2 / np.tan(np.radians(fov_deg) / 2)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera given by the challenge's 4x4 row-vector projection matrix.

    proj: (4, 4) projection matrix; width, height: image size in pixels.
    """

    proj: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        m = np.asarray(self.proj, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f"projection matrix must be 4x4, got {m.shape}")
        if not np.isfinite(m).all():
            raise ValueError("projection matrix has non-finite entries (NaN or inf)")
        if not (m[0, 0] > 0 and m[1, 1] > 0):
            raise ValueError(f"projection matrix focal terms M[0,0]={m[0, 0]:g}, M[1,1]={m[1, 1]:g} "
                             "must be positive")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size {self.width}x{self.height} must be positive")
        off = [m[0, 1], m[1, 0], m[3, 0], m[3, 1], m[0, 3], m[1, 3], m[3, 3]]
        if not np.allclose(off, 0.0) or not np.isclose(m[2, 3], -1.0):
            raise ValueError("projection matrix is not an OpenGL perspective matrix "
                             "([x,y,z,1] @ M must give w = -z and no skew)")
        object.__setattr__(self, "proj", m)

    @classmethod
    def from_file(cls, path: Path | str, width: int, height: int) -> "Camera":
        """Read resources/projection_matrix.txt (4 rows of 4 numbers)."""
        path = Path(path)
        try:
            m = np.loadtxt(path, dtype=np.float64, encoding="utf-8-sig")
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read a projection matrix: {err}") from None
        try:
            return cls(m.reshape(4, 4) if m.size == 16 else m, width, height)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def pinhole(cls, focal: float, width: int, height: int, principal: tuple[float, float] | None = None,
                near: float = NEAR_M, far: float = FAR_M) -> "Camera":
        """The OpenGL projection matrix of a pinhole camera with square pixels: focal length
        `focal` px, principal point `principal` (u, v) in continuous pixel coordinates (None: the
        image centre), image width x height px, clip planes near / far metres (they do not change
        the pixels)."""
        if not focal > 0:
            raise ValueError(f"focal length must be positive, got {focal} px")
        cx, cy = (width / 2, height / 2) if principal is None else principal
        if not (0 <= cx <= width and 0 <= cy <= height):
            raise ValueError(f"principal point ({cx}, {cy}) outside the {width}x{height} image")
        proj = np.zeros((4, 4))
        proj[0, 0], proj[1, 1] = 2 * focal / width, 2 * focal / height
        proj[2, 0], proj[2, 1] = 1 - 2 * cx / width, 2 * cy / height - 1
        proj[2, 2], proj[3, 2] = -(far + near) / (far - near), -2 * far * near / (far - near)
        proj[2, 3] = -1.0
        return cls(proj, width, height)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the images, in pixels."""
        return self.width, self.height

    @property
    def fx(self) -> float:
        """Focal length along u, in pixels."""
        return float(self.proj[0, 0] * self.width / 2)

    @property
    def fy(self) -> float:
        """Focal length along v, in pixels."""
        return float(self.proj[1, 1] * self.height / 2)

    @property
    def cx(self) -> float:
        """Principal point u, in pixels (continuous coordinates)."""
        return float(self.width / 2 * (1 - self.proj[2, 0]))

    @property
    def cy(self) -> float:
        """Principal point v, in pixels (continuous coordinates)."""
        return float(self.height / 2 * (1 + self.proj[2, 1]))

    @property
    def K(self) -> np.ndarray:
        """(3, 3) OpenCV intrinsic matrix (K[2, 2] = 1) in the same continuous pixel coordinates."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project_camera_points(self, x_cam: np.ndarray) -> np.ndarray:
        """OpenGL camera points (..., 3) in metres -> pixels (..., 2), through the 4x4 matrix."""
        x_cam = np.asarray(x_cam, dtype=np.float64)
        clip = x_cam @ self.proj[:3] + self.proj[3]          # [x, y, z, 1] @ proj
        ndc = clip[..., :3] / clip[..., 3:4]
        u = (ndc[..., 0] + 1) * self.width / 2
        v = self.height - (ndc[..., 1] + 1) * self.height / 2
        return np.stack([u, v], axis=-1)

    def project(self, verts: np.ndarray, R_t: np.ndarray) -> np.ndarray:
        """Canonical vertices (..., V, 3) and poses (..., 4, 4) -> pixels (..., V, 2)."""
        return self.project_camera_points(to_camera(verts, R_t))

    def pixel_matrix(self) -> np.ndarray:
        """(4, 3) row-vector map of homogeneous OpenGL camera points [x, y, z, 1] to homogeneous
        pixels w * [u, v, 1] (w = clip w): the projection and the NDC -> pixel step in one matrix."""
        clip_to_pixel = np.array([[self.width / 2, 0.0, 0.0], [0.0, -self.height / 2, 0.0], [0.0, 0.0, 0.0],
                                  [self.width / 2, self.height / 2, 1.0]])
        return self.proj @ clip_to_pixel

    def project_warped(self, verts: np.ndarray, R_t: np.ndarray, warps: np.ndarray) -> np.ndarray:
        """Canonical vertices (B, V, 3), poses (B, 4, 4) and affine pixel warps (B, 2, 3) ->
        warped pixels (B, V, 2): apply_warp(warps, project(verts, R_t)) in one batched product
        of homogeneous coordinates."""
        warps = np.asarray(warps, dtype=np.float64)
        warp_rows = np.zeros(warps.shape[:-2] + (3, 3))
        warp_rows[..., :, :2] = np.swapaxes(warps, -1, -2)         # [u, v, 1] @ warp_rows = [u', v', 1]
        warp_rows[..., 2, 2] = 1.0
        total = np.asarray(R_t, dtype=np.float64) @ self.pixel_matrix() @ warp_rows      # (B, 4, 3)
        verts = np.asarray(verts, dtype=np.float64)
        out = verts @ total[..., :3, :] + total[..., 3:4, :]
        return out[..., :2] / out[..., 2:]

    def pixel_rays(self, uv: np.ndarray) -> np.ndarray:
        """Pixels (..., 2) -> OpenGL camera-frame ray directions (..., 3) with z = -1."""
        uv = np.asarray(uv, dtype=np.float64)
        x = (uv[..., 0] - self.cx) / self.fx
        y = -(uv[..., 1] - self.cy) / self.fy
        return np.stack([x, y, -np.ones_like(x)], axis=-1)

    def flip_points(self, uv: np.ndarray) -> np.ndarray:
        """Pixels (..., 2) of an image -> the same points in its left-right mirror image."""
        uv = np.array(uv, dtype=np.float64, copy=True)
        uv[..., 0] = self.width - uv[..., 0]
        return uv


def make_rt(R_row: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Row-vector rotation (..., 3, 3) and translation (..., 3) -> R_t (..., 4, 4)."""
    R_row = np.asarray(R_row, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros(R_row.shape[:-2] + (4, 4))
    out[..., :3, :3] = R_row
    out[..., 3, :3] = t
    out[..., 3, 3] = 1.0
    return out


def to_camera(verts: np.ndarray, R_t: np.ndarray) -> np.ndarray:
    """Canonical vertices (..., V, 3) -> OpenGL camera points (..., V, 3): v @ R + t."""
    R_t = np.asarray(R_t, dtype=np.float64)
    return np.asarray(verts, dtype=np.float64) @ R_t[..., :3, :3] + R_t[..., 3:4, :3]


def rt_to_opencv(R_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R_t (..., 4, 4) -> OpenCV (R_cv (..., 3, 3), t_cv (..., 3)) with x_cv = R_cv v + t_cv."""
    R_t = np.asarray(R_t, dtype=np.float64)
    R_cv = GL_TO_CV @ np.swapaxes(R_t[..., :3, :3], -1, -2)
    t_cv = R_t[..., 3, :3] @ GL_TO_CV
    return R_cv, t_cv


def opencv_to_rt(R_cv: np.ndarray, t_cv: np.ndarray) -> np.ndarray:
    """OpenCV (R_cv (..., 3, 3), t_cv (..., 3)) -> R_t (..., 4, 4). See `rvec_to_matrix`."""
    R_cv = np.asarray(R_cv, dtype=np.float64)
    R_row = np.swapaxes(GL_TO_CV @ R_cv, -1, -2)
    t = np.asarray(t_cv, dtype=np.float64).reshape(R_cv.shape[:-2] + (3,)) @ GL_TO_CV
    return make_rt(R_row, t)


def rvec_to_matrix(rvec: np.ndarray) -> np.ndarray:
    """Rodrigues vectors (..., 3) -> rotation matrices (..., 3, 3)."""
    rvec = np.asarray(rvec, dtype=np.float64)
    return Rotation.from_rotvec(rvec.reshape(-1, 3)).as_matrix().reshape(rvec.shape[:-1] + (3, 3))


def euler_from_rt(R_t: np.ndarray) -> np.ndarray:
    """R_t (..., 4, 4) -> (yaw, pitch, roll) (..., 3) in radians, as the challenge defines them."""
    R_t = np.asarray(R_t, dtype=np.float64)
    R_col = np.swapaxes(R_t[..., :3, :3], -1, -2).reshape(-1, 3, 3)
    return Rotation.from_matrix(R_col).as_euler("yxz").reshape(R_t.shape[:-2] + (3,))


def rt_from_euler(ypr: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) (..., 3) in radians and t (..., 3) in metres -> R_t (..., 4, 4)."""
    ypr = np.asarray(ypr, dtype=np.float64)
    R_col = Rotation.from_euler("yxz", ypr.reshape(-1, 3)).as_matrix().reshape(ypr.shape[:-1] + (3, 3))
    return make_rt(np.swapaxes(R_col, -1, -2), t)


def flip_rt(R_t: np.ndarray) -> np.ndarray:
    """Pose of the mirrored image: R' = S R S, t' = (-tx, ty, tz), S = diag(-1, 1, 1).

    Valid for mirrored vertices (flip permutation applied) when the principal point is at
    the image centre. R_t: (..., 4, 4).
    """
    R_t = np.asarray(R_t, dtype=np.float64)
    return make_rt(MIRROR @ R_t[..., :3, :3] @ MIRROR, R_t[..., 3, :3] @ MIRROR)


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotation matrices (..., 3, 3)."""
    rel = np.swapaxes(np.asarray(R_a), -1, -2) @ np.asarray(R_b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
