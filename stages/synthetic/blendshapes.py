"""The 51 ARKit blendshapes (all but tongueOut) of the procedural face, as vertex deltas.

Each blendshape is a local displacement field defined on the template (regions are smooth
weights on the chart, so the deltas are symmetric for Left/Right pairs: "Left" is the face's
left, +x). Deltas are additive: a face with identity I and weights w is I + sum_k w_k delta_k,
so they apply to any identity. Amplitudes are in mm here, returned in metres.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from stages.synthetic.model import MM, build_face_model, gauss, smoothstep
from stages.synthetic.topology import EYE_INNER, EYE_OUTER, MOUTH_Q, eye_lids
from stages.wcpa.arkit import ARKIT_NAMES

JAW_HINGE = np.array([0.0, -5.0, -75.0])    # mm, template frame
JAW_OPEN_ANGLE = 0.30                       # rad at jawOpen = 1
CUTOFF = 0.01                               # region weights below this are zero (locality)


class Regions:
    """Smooth region weights (V,) on the template, for one side s (+1 the face's left)."""

    def __init__(self, chart: np.ndarray, build_chart: np.ndarray, shape_mm: np.ndarray):
        self.chart, self.build, self.shape = chart, build_chart, shape_mm
        self.p, self.q = chart[:, 0], chart[:, 1]
        self.upper = build_chart[:, 1] > MOUTH_Q      # above the mouth slit

    def at(self, centre, sigma, s: float = 1.0) -> np.ndarray:
        w = gauss(self.chart, (s * centre[0], centre[1]), sigma)
        return np.where(w < CUTOFF, 0.0, w)

    def eye(self, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For the eye on side s: lid gap (V,) mm, upper-lid falloff, lower-lid falloff, span taper."""
        t = (s * self.p - EYE_OUTER[0]) / (EYE_INNER[0] - EYE_OUTER[0])
        _, q_up, q_low = eye_lids(t)
        gap = q_up - q_low
        span = smoothstep(t, -0.35, 0.05) * smoothstep(t, 1.35, 0.95)
        above = self.q > (q_up + q_low) / 2
        up = np.where(above, np.exp(-np.clip(self.q - q_up, 0, None) / 5.0), 0.0) * span
        low = np.where(~above, np.exp(-np.clip(q_low - self.q, 0, None) / 4.0), 0.0) * span
        return gap, np.where(up < CUTOFF, 0, up), np.where(low < CUTOFF, 0, low), span

    def jaw(self) -> np.ndarray:
        """Weight of the lower jaw: 1 below the lower lip, 0 above the upper lip, soft on the cheeks."""
        width = 1.0 + 7.0 * smoothstep(np.abs(self.p), 18.0, 40.0)
        near = 1.0 / (1.0 + np.exp(-(MOUTH_Q - self.build[:, 1]) / width))
        lateral = smoothstep(np.abs(self.p), 25.0, 55.0)
        w = (1 - lateral) * near + lateral * smoothstep(self.q, -25.0, -80.0)
        return np.where(w < CUTOFF, 0.0, w)

    def upper_lip(self) -> np.ndarray:
        return self.at((0.0, -47.0), (18.0, 6.0)) * self.upper

    def lower_lip(self) -> np.ndarray:
        return self.at((0.0, -58.0), (18.0, 7.0)) * ~self.upper

    def corner(self, s: float) -> np.ndarray:
        return self.at((26.0, -52.0), (10.0, 9.0), s)

    def mouth(self) -> np.ndarray:
        return self.at((0.0, -53.0), (26.0, 14.0))


def _vec(w: np.ndarray, dx=0.0, dy=0.0, dz=0.0) -> np.ndarray:
    return w[:, None] * np.array([dx, dy, dz])


def _jaw_rotation(r: Regions, angle: float) -> np.ndarray:
    rel = r.shape - JAW_HINGE
    c, s = np.cos(angle), np.sin(angle)
    rotated = np.stack([rel[:, 0], c * rel[:, 1] - s * rel[:, 2], s * rel[:, 1] + c * rel[:, 2]], -1)
    return r.jaw()[:, None] * (rotated - rel)


def _eye_shapes(r: Regions, s: float) -> dict[str, np.ndarray]:
    gap, up, low, span = r.eye(s)
    side_w = r.at((32.5, 10.0), (13.0, 9.0), s)
    return {
        "eyeBlink": _vec(up * gap, dy=-0.9) + _vec(up * gap, dz=0.12) + _vec(low * gap, dy=0.1),
        "eyeLookDown": _vec(up, dy=-2.0) + _vec(low, dy=-1.0),
        "eyeLookIn": _vec(side_w, dx=-0.8 * s),
        "eyeLookOut": _vec(side_w, dx=0.8 * s),
        "eyeLookUp": _vec(up, dy=1.5) + _vec(low, dy=0.8),
        "eyeSquint": _vec(low * gap, dy=0.3) + _vec(up * gap, dy=-0.15) + _vec(r.at((34.0, -2.0), (14.0, 6.0), s), dy=1.5),
        "eyeWide": _vec(up, dy=2.5) + _vec(low, dy=-0.8),
    }


def _mouth_side_shapes(r: Regions, s: float) -> dict[str, np.ndarray]:
    corner = r.corner(s)
    half = smoothstep(s * r.p, -6.0, 6.0)
    return {
        "mouthSmile": _vec(corner, dx=4.0 * s, dy=6.0, dz=-3.0),
        "mouthFrown": _vec(corner, dx=1.0 * s, dy=-5.0),
        "mouthDimple": _vec(corner, dx=2.5 * s, dz=-3.0),
        "mouthStretch": _vec(corner, dx=5.0 * s, dy=-2.0, dz=-1.5),
        "mouthPress": _vec(r.upper_lip() * half, dy=-1.2, dz=-1.5) + _vec(r.lower_lip() * half, dy=1.5, dz=-1.5),
        "mouthLowerDown": _vec(r.lower_lip() * half, dy=-5.0, dz=1.0),
        "mouthUpperUp": _vec(r.upper_lip() * half, dy=4.5, dz=1.0),
        "browDown": _vec(r.at((26.0, 24.0), (14.0, 8.0), s), dy=-4.5, dz=-1.0) + _vec(r.at((15.0, 20.0), (6.0, 6.0), s), dx=-2.0 * s),
        "browOuterUp": _vec(r.at((46.0, 24.0), (12.0, 9.0), s), dy=6.0),
        "cheekSquint": _vec(r.at((40.0, -8.0), (13.0, 9.0), s), dy=3.5, dz=1.0),
        "noseSneer": _vec(r.at((11.0, -18.0), (7.0, 8.0), s), dy=3.5, dz=-0.5),
    }


def _central_shapes(r: Regions) -> dict[str, np.ndarray]:
    jaw = r.jaw()
    up, low = r.upper_lip(), r.lower_lip()
    return {
        "jawForward": _vec(jaw, dz=6.0),
        "jawOpen": _jaw_rotation(r, JAW_OPEN_ANGLE),
        "mouthClose": _vec(up, dy=-2.0) + _vec(low, dy=2.5),
        "mouthFunnel": _vec(r.mouth(), dz=5.0) + _vec(up, dy=2.0) + _vec(low, dy=-2.5)
        + _vec(r.corner(1.0), dx=-4.0) + _vec(r.corner(-1.0), dx=4.0),
        "mouthPucker": _vec(r.mouth(), dz=7.0) + _vec(r.corner(1.0), dx=-7.0) + _vec(r.corner(-1.0), dx=7.0),
        "mouthRollLower": _vec(low, dy=1.5, dz=-4.0),
        "mouthRollUpper": _vec(up, dy=-1.5, dz=-4.0),
        "mouthShrugLower": _vec(low + r.at((0.0, -80.0), (18.0, 12.0)), dy=3.5, dz=1.5),
        "mouthShrugUpper": _vec(up, dy=3.0, dz=1.0),
        "browInnerUp": _vec(r.at((15.0, 24.0), (9.0, 9.0)) + r.at((15.0, 24.0), (9.0, 9.0), -1.0), dy=5.5),
        "cheekPuff": _vec(r.at((42.0, -45.0), (14.0, 16.0)), dx=5.0, dz=4.0)
        + _vec(r.at((42.0, -45.0), (14.0, 16.0), -1.0), dx=-5.0, dz=4.0),
    }


def _lateral_jaw(r: Regions, s: float) -> np.ndarray:
    return _vec(r.jaw(), dx=8.0 * s)


@lru_cache(maxsize=1)
def build_blendshapes() -> np.ndarray:
    """(51, V, 3) deltas in metres, in ARKIT_NAMES order, on the template's vertices."""
    model = build_face_model()
    topo = model.topology
    r = Regions(topo.chart, topo.build_chart, model.template / MM)
    shapes = dict(_central_shapes(r))
    for side, suffix in ((1.0, "Left"), (-1.0, "Right")):
        shapes.update({name + suffix: d for name, d in _eye_shapes(r, side).items()})
        shapes.update({name + suffix: d for name, d in _mouth_side_shapes(r, side).items()})
        shapes["jaw" + suffix] = _lateral_jaw(r, side)
        shapes["mouth" + suffix] = _vec(r.mouth(), dx=7.0 * side)
    missing = set(ARKIT_NAMES) ^ set(shapes)
    if missing:
        raise AssertionError(f"blendshape table mismatch: {sorted(missing)}")
    return np.stack([shapes[n] for n in ARKIT_NAMES]) * MM
