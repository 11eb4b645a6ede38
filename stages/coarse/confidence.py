"""Whether the detector found a face: a sanity gate on its landmarks, not a face classifier.

The detector always returns 68 points, face or not. Two signs that its points do not sit on a
face, from the landmarks of every pass (Detector.trace):
  inside  the fraction of the last pass's points inside the image; a face cut off by the image
          border keeps most of its points, a detection on background may drift off it;
  shift   the median distance a point moved in the last refine pass run on the image, over the
          landmarks' box side (stages.coarse.views.landmark_shift): on a face each refine pass
          re-centres on the same points, so the last pass barely moves them (a few per cent of
          the face); on other content the refine network has nothing consistent to converge to.
Degenerate points (box side below MIN_SIDE_PX) are no face either. The thresholds are loose:
they stop on clearly failed detections; a trained detector on a non-face image can still pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.coarse.views import landmark_box, landmark_shift
from stages.face.frontal import MIN_INSIDE     # the crop stage's threshold (landmark_checks)
MAX_SHIFT = 0.1      # of the landmarks' box side
MIN_SIDE_PX = 4.0


@dataclass(frozen=True)
class Confidence:
    """Per image (B,): inside fraction, last-pass shift (fraction of the box side), box side px."""

    inside: np.ndarray
    shift: np.ndarray
    side: np.ndarray


def confidence(trace: np.ndarray, sizes: np.ndarray) -> Confidence:
    """Landmarks of every pass (P, B, L, 2) full px and image sizes (B, 2) as (width, height)
    px -> their Confidence."""
    last = np.asarray(trace[-1], dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)[:, None, :]
    inside = ((last >= 0) & (last <= sizes)).all(-1).mean(-1)
    _, side = landmark_box(last)
    return Confidence(inside=inside, shift=last_shift(trace), side=side)


def last_shift(trace: np.ndarray) -> np.ndarray:
    """Per image (B,), the landmark_shift of the last pass of trace (P, B, L, 2) that moved its
    landmarks: Detector.trace repeats an image's landmarks for the passes it stopped before
    (`settle`). 0 with a single pass (no refine pass to compare)."""
    trace = np.asarray(trace, dtype=np.float64)
    if len(trace) < 2:
        return np.zeros(trace.shape[1])
    moved = (trace[1:] != trace[:-1]).any((-1, -2))                         # (P - 1, B)
    last = len(moved) - 1 - np.argmax(moved[::-1], axis=0)                 # the last pass that moved; the last if none
    images = np.arange(trace.shape[1])
    return landmark_shift(trace[last, images], trace[last + 1, images])


def no_face_reason(conf: Confidence, index: int, min_inside: float = MIN_INSIDE,
                   max_shift: float = MAX_SHIFT) -> str:
    """Why image `index` of a batch has no usable face ('' when it has one)."""
    if not (np.isfinite(conf.side[index]) and conf.side[index] >= MIN_SIDE_PX):
        return f"no face found (degenerate landmarks: box side {conf.side[index]:.1f} px)"
    if conf.inside[index] < min_inside:
        return f"no face found (only {conf.inside[index]:.0%} of the landmarks inside the image, need {min_inside:.0%})"
    if not conf.shift[index] <= max_shift:
        return (f"no face found (the last refine pass moved the landmarks by {conf.shift[index]:.1%} of the face, "
                f"more than {max_shift:.0%}: the detector does not converge)")
    return ""
