"""The procedural face model: neutral template (3D lift of the chart) and the identity space.

The chart (stages/synthetic/topology.py) is wrapped around an elliptic head cylinder and given
relief (nose, eye sockets, brow ridge, cheekbones, lips, chin) by smooth bumps. Units: the
chart and the relief are in millimetres; the template and every displacement returned by the
public functions are in metres, in the challenge's canonical frame (+x the face's left, +y up, +z
the direction the face looks).

Identity: `IDENTITY_MODES` smooth global deformation fields, each scaled to one standard
deviation; a subject is template + sum_k c_k mode_k with c ~ N(0, identity_scale^2).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.interpolate import PchipInterpolator

from stages.synthetic.topology import FaceTopology, build_topology

MM = 1e-3
HEAD_RADIUS_X, HEAD_DEPTH_RATIO = 92.0, 1.45
NOSE_TIP_Z = 45.0           # mm: the template is shifted so that the nose tip sits at this z

_NOSE_HEIGHT = PchipInterpolator([-40, -33, -29, -25, -21, -10, 1, 12, 22],
                                 [0, 3, 12, 21.5, 24, 16.5, 10, 4.5, 0], extrapolate=False)
_NOSE_WIDTH = PchipInterpolator([-30, -21, -5, 22], [13, 8.5, 7.5, 6.5])


def gauss(chart: np.ndarray, centre, sigma) -> np.ndarray:
    """Anisotropic Gaussian bump on the chart (V, 2) -> (V,) in [0, 1]."""
    d = (chart - np.asarray(centre, dtype=np.float64)) / np.asarray(sigma, dtype=np.float64)
    return np.exp(-0.5 * (d ** 2).sum(-1))


def pair(chart: np.ndarray, centre, sigma) -> np.ndarray:
    """Symmetric pair of bumps at (+-p, q) -> (V,)."""
    p, q = centre
    return gauss(chart, (p, q), sigma) + gauss(chart, (-p, q), sigma)


def smoothstep(x: np.ndarray, edge0: float, edge1: float) -> np.ndarray:
    """Hermite step from 0 at edge0 to 1 at edge1 (either order)."""
    t = np.clip((np.asarray(x, dtype=np.float64) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def nose_relief(chart: np.ndarray) -> np.ndarray:
    """Height (V,) in mm of the nose ridge and the nostril wings over the face."""
    p, q = chart[:, 0], chart[:, 1]
    ridge = np.nan_to_num(_NOSE_HEIGHT(q)) * np.exp(-0.5 * (p / _NOSE_WIDTH(np.clip(q, -30, 22))) ** 2)
    return ridge + 5.5 * pair(chart, (13.5, -25.5), (4.5, 4.0))


def relief(chart: np.ndarray) -> np.ndarray:
    """Height (V,) in mm added along +z to the head cylinder: the facial features."""
    return (nose_relief(chart)
            - 8.0 * pair(chart, (32.0, 10.0), (15.0, 10.0))     # eye sockets
            + 4.0 * pair(chart, (32.5, 9.0), (9.0, 6.0))        # eyeballs under the lids
            + 4.0 * pair(chart, (32.0, 25.0), (20.0, 6.0))      # brow ridge
            + 2.5 * gauss(chart, (0.0, 18.0), (10.0, 8.0))      # glabella
            + 6.0 * pair(chart, (45.0, -12.0), (14.0, 12.0))    # cheekbones
            + 9.0 * gauss(chart, (0.0, -50.0), (28.0, 18.0))    # muzzle
            + 3.0 * gauss(chart, (0.0, -46.5), (15.0, 3.5))     # upper lip
            + 3.5 * gauss(chart, (0.0, -58.5), (14.0, 4.0))     # lower lip
            - 2.0 * gauss(chart, (0.0, -70.0), (15.0, 4.0))     # groove under the lower lip
            + 8.0 * gauss(chart, (0.0, -88.0), (20.0, 10.0)))   # chin


def lift(chart: np.ndarray) -> np.ndarray:
    """Chart (V, 2) mm -> 3D points (V, 3) mm: head cylinder + receding forehead/chin + relief."""
    p, q = chart[:, 0], chart[:, 1]
    theta = p / HEAD_RADIUS_X
    x = HEAD_RADIUS_X * np.sin(theta)
    z = HEAD_RADIUS_X * HEAD_DEPTH_RATIO * (np.cos(theta) - 1)
    z -= 0.0042 * np.clip(q - 10, 0, None) ** 2 + 0.004 * np.clip(-q - 45, 0, None) ** 2
    return np.stack([x, q, z + relief(chart)], -1)


@dataclass(frozen=True)
class FaceModel:
    """Template and identity space.

    topology: the chart mesh; template: (V, 3) metres; faces: (F, 3); kpt_ind: (68,);
    identity_modes: (M, V, 3) metres per unit coefficient; identity_names: (M,) names.
    """

    topology: FaceTopology
    template: np.ndarray
    identity_modes: np.ndarray
    identity_names: tuple

    @property
    def faces(self) -> np.ndarray:
        return self.topology.faces

    @property
    def kpt_ind(self) -> np.ndarray:
        return self.topology.kpt_ind

    def identity(self, coeffs: np.ndarray) -> np.ndarray:
        """Identity coefficients (M,) -> neutral subject mesh (V, 3) metres."""
        return self.template + np.tensordot(coeffs, self.identity_modes, axes=1)


def identity_modes(chart: np.ndarray, shape: np.ndarray) -> dict[str, np.ndarray]:
    """Smooth deformation fields (V, 3) in mm, each one standard deviation, on the neutral shape (mm)."""
    x, y, z = shape[:, 0], shape[:, 1], shape[:, 2]
    p, q = chart[:, 0], chart[:, 1]
    zero = np.zeros_like(x)
    side = np.tanh(p / 6.0)
    lower = smoothstep(q, -35.0, -75.0)
    nose = nose_relief(chart) / 24.0
    eyes = pair(chart, (32.0, 10.0), (14.0, 10.0))
    mouth = gauss(chart, (0.0, -54.0), (24.0, 10.0))
    lips = gauss(chart, (0.0, -52.0), (20.0, 7.0))
    return {
        "face_width": np.stack([0.055 * x, zero, zero], -1),
        "face_length": np.stack([zero, 0.045 * (y + 10.0), zero], -1),
        "face_depth": np.stack([zero, zero, 0.07 * (z - z.mean())], -1),
        "nose_size": np.stack([0.12 * x * nose, -2.0 * nose, 5.0 * nose], -1),
        "nose_width": np.stack([0.25 * x * gauss(chart, (0.0, -22.0), (14.0, 10.0)), zero, zero], -1),
        "jaw_width": np.stack([0.09 * x * lower, zero, zero], -1),
        "chin_length": np.stack([zero, -6.0 * smoothstep(q, -55.0, -95.0), 2.0 * gauss(chart, (0, -90), (20, 12))], -1),
        "cheeks": np.stack([2.5 * side * pair(chart, (45.0, -30.0), (16.0, 18.0)), zero,
                            4.0 * pair(chart, (42.0, -25.0), (16.0, 18.0))], -1),
        "brow_ridge": np.stack([zero, 1.0 * pair(chart, (32.0, 25.0), (20.0, 7.0)),
                                3.0 * pair(chart, (32.0, 25.0), (20.0, 7.0))], -1),
        "eye_spacing": np.stack([2.5 * side * eyes, zero, zero], -1),
        "eye_height": np.stack([zero, 3.0 * smoothstep(q, -20.0, 5.0) * smoothstep(q, 60.0, 30.0), zero], -1),
        "mouth_width": np.stack([0.12 * x * mouth, zero, zero], -1),
        "lip_thickness": np.stack([zero, 1.2 * np.tanh((q + 52.0) / 3.0) * lips, 2.5 * lips], -1),
        "forehead_slope": np.stack([zero, zero, -7.0 * smoothstep(q, 20.0, 85.0) ** 2], -1),
        "midface_height": np.stack([zero, 3.0 * smoothstep(q, -50.0, -20.0) * smoothstep(q, 30.0, 0.0), zero], -1),
        "asymmetry": np.stack([zero, 0.012 * x, 0.01 * x * smoothstep(q, -40.0, 0.0)], -1),
    }


@lru_cache(maxsize=1)
def build_face_model() -> FaceModel:
    """The template and identity space (deterministic; cached)."""
    topo = build_topology()
    shape = lift(topo.chart)
    shape[:, 2] += NOSE_TIP_Z - shape[topo.kpt_ind[30], 2]
    modes = identity_modes(topo.chart, shape)
    names = tuple(modes)
    return FaceModel(topology=topo, template=shape * MM,
                     identity_modes=np.stack([modes[n] for n in names]) * MM, identity_names=names)
