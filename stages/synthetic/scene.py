"""One synthetic sample: expression, head pose, light, and the rendered 800x800 image.

Poses follow the statistics of the challenge's training labels (yaw/pitch/roll, tx/ty/tz means
and standard deviations); a draw that puts part of the face outside the image (with a margin) is
redrawn. Facial actions are named groups of dominant ARKit blendshapes; a frame varies their
weights and adds a few weak random ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from stages.synthetic.appearance import Look, albedo, extend, render_mesh
from stages.synthetic.background import random_background
from stages.synthetic.blendshapes import ARKIT_NAMES, build_blendshapes
from stages.synthetic.model import FaceModel
from stages.synthetic.render import Light, render_region
from stages.wcpa.camera import Camera, rt_from_euler, to_camera

ACTIONS = {
    "neutral": {},
    "smile": {"mouthSmileLeft": 0.8, "mouthSmileRight": 0.8, "cheekSquintLeft": 0.4, "cheekSquintRight": 0.4,
              "eyeSquintLeft": 0.3, "eyeSquintRight": 0.3},
    "mouth_open": {"jawOpen": 0.6, "mouthLowerDownLeft": 0.3, "mouthLowerDownRight": 0.3},
    "surprise": {"browInnerUp": 0.8, "browOuterUpLeft": 0.7, "browOuterUpRight": 0.7, "eyeWideLeft": 0.7,
                 "eyeWideRight": 0.7, "jawOpen": 0.35},
    "frown": {"browDownLeft": 0.7, "browDownRight": 0.7, "mouthFrownLeft": 0.6, "mouthFrownRight": 0.6},
    "pucker": {"mouthPucker": 0.9, "mouthFunnel": 0.2},
    "funnel": {"mouthFunnel": 0.8, "jawOpen": 0.2},
    "blink": {"eyeBlinkLeft": 0.95, "eyeBlinkRight": 0.95},
    "wink_left": {"eyeBlinkLeft": 1.0, "cheekSquintLeft": 0.4, "mouthSmileLeft": 0.3},
    "wink_right": {"eyeBlinkRight": 1.0, "cheekSquintRight": 0.4, "mouthSmileRight": 0.3},
    "sneer": {"noseSneerLeft": 0.7, "noseSneerRight": 0.7, "mouthUpperUpLeft": 0.5, "mouthUpperUpRight": 0.5},
    "cheek_puff": {"cheekPuff": 0.9, "mouthClose": 0.2},
    "jaw_left": {"jawLeft": 0.7, "mouthLeft": 0.4},
    "jaw_right": {"jawRight": 0.7, "mouthRight": 0.4},
    "stretch": {"mouthStretchLeft": 0.7, "mouthStretchRight": 0.7, "jawOpen": 0.15},
    "lips_rolled": {"mouthRollLower": 0.7, "mouthRollUpper": 0.7, "mouthPressLeft": 0.4, "mouthPressRight": 0.4},
    "look_up": {"eyeLookUpLeft": 0.8, "eyeLookUpRight": 0.8, "browInnerUp": 0.3},
    "look_down": {"eyeLookDownLeft": 0.8, "eyeLookDownRight": 0.8},
    "shrug": {"mouthShrugLower": 0.7, "mouthShrugUpper": 0.5, "browInnerUp": 0.4},
}
GAZE_MM = 3.5          # iris shift on the chart at a full eyeLook weight
_INDEX = {name: k for k, name in enumerate(ARKIT_NAMES)}


@dataclass(frozen=True)
class PoseStats:
    """Head pose distribution: (yaw, pitch, roll) mean/std in rad, t mean/std in metres."""

    rot_mean: np.ndarray
    rot_std: np.ndarray
    trans_mean: np.ndarray
    trans_std: np.ndarray
    margin_px: float


@dataclass(frozen=True)
class Frame:
    """A rendered sample: image (H, W, 3) uint8 RGB, verts (V, 3) float32 metres, R_t (4, 4)."""

    image: np.ndarray
    verts: np.ndarray
    R_t: np.ndarray


def action_weights(action: str, rng: np.random.Generator) -> np.ndarray:
    """Blendshape weights (51,) for one frame of a facial action (neutral: all zero)."""
    weights = np.zeros(len(ARKIT_NAMES))
    dominant = ACTIONS[action]
    if not dominant:
        return weights
    for name, w in dominant.items():
        weights[_INDEX[name]] = w * rng.uniform(0.6, 1.15)
    extra = rng.choice(len(ARKIT_NAMES), size=3, replace=False)
    weights[extra] += rng.uniform(0.0, 0.25, 3)
    return np.clip(weights, 0.0, 1.0)


def draw_pose(rng: np.random.Generator, stats: PoseStats, verts: np.ndarray, camera: Camera,
              tries: int = 100) -> np.ndarray:
    """R_t (4, 4) from the pose statistics with every vertex inside the image (with margin)."""
    scale = 1.0
    for attempt in range(tries):
        if attempt and attempt % 25 == 0:
            scale *= 0.7                               # rare: shrink toward the mean pose
        ypr = stats.rot_mean + scale * stats.rot_std * rng.standard_normal(3)
        t = stats.trans_mean + scale * stats.trans_std * rng.standard_normal(3)
        if t[2] > -0.25 or np.abs(ypr[:2]).max() > 1.3:
            continue
        R_t = rt_from_euler(ypr, t)
        uv = camera.project(verts, R_t)
        m = stats.margin_px
        if (uv.min() >= m) and (uv[:, 0].max() <= camera.width - m) and (uv[:, 1].max() <= camera.height - m):
            return R_t
    raise RuntimeError("could not draw a pose with the face inside the image; check the pose statistics")


def random_light(rng: np.random.Generator) -> Light:
    """A light mostly from the camera side, from a random direction up to ~60 degrees off-axis."""
    direction = np.array([rng.normal(0, 0.6), rng.normal(0.35, 0.45), 1.0])
    tint = np.clip(1 + rng.normal(0, 0.05, 3), 0.85, 1.15)
    ambient = rng.uniform(0.25, 0.5)
    return Light(direction=direction / np.linalg.norm(direction), ambient=ambient,
                 diffuse=rng.uniform(0.75, 1.0) * (1.05 - ambient), specular=rng.uniform(0.0, 0.12),
                 shininess=rng.uniform(8, 30), tint=tint * rng.uniform(0.85, 1.15))


def gaze(weights: np.ndarray) -> np.ndarray:
    """Iris shift (2,) in chart mm from the eyeLook weights (averaged over both eyes)."""
    w = {n: weights[_INDEX[n]] for n in ARKIT_NAMES if n.startswith("eyeLook")}
    right = w["eyeLookOutLeft"] + w["eyeLookInRight"] - w["eyeLookInLeft"] - w["eyeLookOutRight"]
    up = w["eyeLookUpLeft"] + w["eyeLookUpRight"] - w["eyeLookDownLeft"] - w["eyeLookDownRight"]
    return GAZE_MM * np.array([right, up]) / 2


def render_frame(model: FaceModel, identity: np.ndarray, look: Look, action: str, camera: Camera,
                 stats: PoseStats, rng: np.random.Generator, supersample: int = 2,
                 blur_max: float = 1.0, noise_max: float = 4.0) -> Frame:
    """Draw expression, pose, light and background for one frame, and render it."""
    weights = action_weights(action, rng)
    verts = identity + np.tensordot(weights, build_blendshapes(), axes=1)
    R_t = draw_pose(rng, stats, verts, camera)
    light = random_light(rng)
    image = random_background(rng, camera.width)
    mesh = render_mesh()
    look = Look(**{**look.__dict__, "gaze": gaze(weights)})
    render_verts = extend(mesh, verts)
    cam = to_camera(render_verts, R_t)
    uv = camera.project_camera_points(cam)
    x0, y0 = np.maximum(np.floor(uv.min(axis=0)).astype(int) - 2, 0)
    x1, y1 = np.minimum(np.ceil(uv.max(axis=0)).astype(int) + 2, [camera.width, camera.height])
    rgb, alpha = render_region(cam, uv, mesh.faces, mesh.attributes, lambda a: albedo(a, look),
                               light, (x0, y0, x1, y1), supersample)
    region = image[y0:y1, x0:x1].astype(np.float32) / 255.0
    blended = region * (1 - alpha[..., None]) + rgb * alpha[..., None]
    image[y0:y1, x0:x1] = np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Frame(image=_camera_effects(image, rng, blur_max, noise_max), verts=verts.astype(np.float32),
                 R_t=R_t)


@lru_cache(maxsize=1)
def _grain_tile() -> np.ndarray:
    """A fixed (1024, 1024, 3) float32 standard-normal noise tile (same in every process)."""
    return np.random.default_rng(12345).standard_normal((1024, 1024, 3)).astype(np.float32)


def _camera_effects(image: np.ndarray, rng: np.random.Generator, blur_max: float, noise_max: float) -> np.ndarray:
    """uint8 image -> uint8 with mild Gaussian blur and sensor noise (a random window of a
    fixed noise tile, scaled)."""
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, max(blur_max, 0.5)))
    noise = rng.uniform(0.0, noise_max)
    h, w = image.shape[:2]
    tile = _grain_tile()
    if noise > 0.5 and h <= tile.shape[0] and w <= tile.shape[1]:
        y, x = rng.integers(0, tile.shape[0] - h + 1), rng.integers(0, tile.shape[1] - w + 1)
        image = cv2.scaleAdd(tile[y:y + h, x:x + w], float(noise), image.astype(np.float32))
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image
