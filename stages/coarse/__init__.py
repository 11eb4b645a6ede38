"""Coarse landmark detector: finds the 68 landmarks on the full image (pipeline step 1).

Two passes of the same kind of network: `locate` sees the whole image downscaled and finds the
face; `refine` sees a crop around the located face and gives the final landmarks.
"""
