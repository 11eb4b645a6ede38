"""The iBUG-68 landmark convention: the left-right mirror order of its 68 points.

The challenge's 68 landmarks (resources/kpt_ind.npy, 68landmarks/) are in iBUG-68 order, so
when the mesh is not symmetric enough for a vertex flip permutation, this fixed table still
gives the mirror order of the landmarks.
"""
from __future__ import annotations

import numpy as np

# MIRROR[k]: the iBUG-68 point that landmark k becomes in a left-right mirrored face.
MIRROR = np.array(
    list(range(16, -1, -1))                    # jaw 0..16 <-> 16..0
    + list(range(26, 16, -1))                  # brows 17..21 <-> 26..22
    + [27, 28, 29, 30]                         # nose bridge: on the midline
    + [35, 34, 33, 32, 31]                     # nostrils 31..35 <-> 35..31
    + [45, 44, 43, 42, 47, 46]                 # eye 36..41 -> the other eye
    + [39, 38, 37, 36, 41, 40]                 # eye 42..47 -> the other eye
    + [54, 53, 52, 51, 50, 49, 48]             # upper outer lip 48..54 <-> 54..48
    + [59, 58, 57, 56, 55]                     # lower outer lip 55..59 <-> 59..55
    + [64, 63, 62, 61, 60]                     # upper inner lip 60..64 <-> 64..60
    + [67, 66, 65],                            # lower inner lip 65..67 <-> 67..65
    dtype=np.int64)
N_POINTS = len(MIRROR)


def mirror_mismatch(order: np.ndarray) -> str:
    """Where a mirror order (68,) of the landmarks (-1: no landmark) differs from MIRROR: 'pairs
    landmarks [...] with [...], the iBUG-68 table with [...]', or '' where it does not."""
    order = np.asarray(order)
    differ = np.flatnonzero(order != MIRROR)
    if not len(differ):
        return ""
    return (f"pairs landmarks {differ.tolist()} with {order[differ].tolist()}, the iBUG-68 table with "
            f"{MIRROR[differ].tolist()}")
