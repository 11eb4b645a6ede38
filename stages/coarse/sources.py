"""The detector's views, streamed: each image is decoded when a batch needs it, never kept.

`list_samples` keeps what the set needs in memory: the listed paths (one bytes array), sample
keys and GT landmarks (N, L, 2), after a cheap up-front check that every file exists and is not
empty (no decode). `ViewSet` is the torch Dataset the DataLoader workers read: item (epoch, i)
decodes image i, warps it once per pass to that pass's input (the view warp composed with the
random augmentation warp when training, so the full image is resampled once per view and never
augmented at full size), then the photometric augmentation at the input size. All draws come
from a generator seeded by (seed, epoch, i): the batches do not depend on the number of workers.

When the views are much smaller than the image, the JPEG is decoded at 1/2, 1/4 or 1/8 of its
size by libjpeg's scaled IDCT (read_image's `reduce`), at most as far down as keeps the
decoded image at least as dense as every view; the warp then starts from the reduced image.

A decode failure is not raised in the worker: the item carries the error ('path: reason') and
the training loop stops with it, or with data.skip_bad drops the sample from its batch and
records it once (stages/coarse/train.py::take).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Dataset

from stages.coarse.augment import Jitter, Photometric, flip_warp, jitter_warp
from stages.coarse.views import locate_warp, refine_warp
from stages.common.badinput import BadInputs
from stages.face.warp import apply_warp, compose, warp_image
from stages.wcpa.layout import DataError, read_image, sample_files, sample_keys

SOURCE_FIELD = 1.5
PASSES = ("locate", "refine")


def source_size(size: int) -> int:
    """Side of the refine source view for a refine input of `size` px (even, >= size): the field
    the refine augmentation's shift, scale and rotation are drawn in."""
    return 2 * int(np.ceil(size * SOURCE_FIELD / 2))


@dataclass
class Samples:
    """One split's listed images: paths (N,) bytes, keys (N,) bytes, landmarks (N, L, 2) full px,
    and the data set's image size (width, height) px, which every decoded image must have."""

    paths: np.ndarray
    keys: np.ndarray
    landmarks: np.ndarray
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.paths)

    def key(self, index: int) -> str:
        return self.keys[index].decode()

    @staticmethod
    def joined(parts: list[Samples]) -> Samples:
        """The samples of `parts` (slices of one split's rows, of one image size) in order."""
        return Samples(np.concatenate([part.paths for part in parts]), np.concatenate([part.keys for part in parts]),
                       np.concatenate([part.landmarks for part in parts]), parts[0].size)


def list_samples(root: Path | str, table: pd.DataFrame, landmarks: np.ndarray, size: tuple[int, int],
                 bad: BadInputs) -> Samples:
    """The listed images whose file exists and is not empty (a stat, no decode); size: the data
    set's (width, height) px. A missing or empty file stops with its name, or with data.skip_bad
    is recorded in `bad` and left out."""
    paths, keys = sample_files(root, table, "image"), sample_keys(table)
    kept = np.array([_nonempty(path) for path in paths], dtype=bool)
    for index in np.flatnonzero(~kept):
        with bad.guard(keys[index]):
            raise DataError(f"{paths[index]}: " + ("not a decodable image (corrupt or empty)"
                                                   if os.path.exists(paths[index]) else "image not found"))
    rows = np.flatnonzero(kept)
    return Samples(np.array([os.fsencode(paths[i]) for i in rows], dtype=bytes),
                   np.array([keys[i].encode() for i in rows], dtype=bytes),
                   np.asarray(landmarks, dtype=np.float64)[rows], tuple(size))


def _nonempty(path: str) -> bool:
    """Whether `path` is a file of at least one byte."""
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


def reduction(density: float, limit: int) -> int:
    """The largest decode reduction (1, 2, 4, 8; <= limit) that keeps the decoded image at least
    `density` times as dense as the full image needs (density: view px per full px, largest)."""
    factor = 1
    while factor * 2 <= limit and factor * 2 * density <= 1.0:
        factor *= 2
    return factor


class ViewSet(Dataset):
    """Items (epoch, i) -> both passes' inputs of image i, their landmark targets and scales.

    Returns {'index', 'error' ('' when decoded), 'locate'/'refine': {'image' (S, S, 3) uint8,
    'points' (L, 2) float32 input px, 'scale' view px per full-image px}}.
    jitters: {'locate': Jitter, 'refine': Jitter} to augment (training), None for the plain views
    (validation: locate on the whole image, refine centred on the GT landmarks).
    flip_order: (L,) landmark mirror order (used only when flipping; None: flip_prob must be 0); max_reduce: the largest
    decode reduction allowed (1: always decode at full size).
    """

    def __init__(self, samples: Samples, sizes: dict[str, int], margin: float, seed: int,
                 jitters: dict[str, Jitter] | None = None, flip_order: np.ndarray | None = None,
                 flip_prob: float = 0.0, max_reduce: int = 8):
        self.samples, self.sizes, self.margin, self.seed = samples, dict(sizes), margin, seed
        if flip_order is None and flip_prob > 0:
            raise ValueError(f"flip_prob={flip_prob}: horizontal flips need a landmark flip order")
        self.jitters, self.flip_order, self.flip_prob = jitters, flip_order, flip_prob
        self.max_reduce = max_reduce
        self.photometric = Photometric()

    def __len__(self) -> int:
        return len(self.samples)

    def warps(self, index: int, width: int, height: int, rng: np.random.Generator) -> dict[str, tuple]:
        """{pass: (full image -> input warp (2, 3), view scale, flipped)} of sample `index`."""
        out = {}
        for name in PASSES:
            size = self.sizes[name]
            if name == "locate":
                view, source = locate_warp(width, height, size), size
            else:
                source = source_size(size) if self.jitters else size
                view = refine_warp(self.samples.landmarks[index], source, self.margin * source / size)
            scale = float(np.sqrt(abs(np.linalg.det(view[:, :2]))))
            flipped = False
            if self.jitters:
                view = compose(jitter_warp(rng, self.jitters[name], source, size), view)
                flipped = bool(rng.random() < self.flip_prob)
                if flipped:
                    view = compose(flip_warp(size), view)
            out[name] = view, scale, flipped
        return out

    def reduction(self, index: int) -> int:
        """The decode reduction of sample `index` (1, 2, 4, 8): densest view, bounded before
        decoding (the locate view spans the image's longer side, the refine view the landmarks'
        box times the margin; a jitter's zoom by at most `stretch`)."""
        stretch = max((j.scale for j in self.jitters.values()), default=1.0) if self.jitters else 1.0
        side = max(float(np.ptp(self.samples.landmarks[index], axis=0).max()), 1e-6)
        density = max(self.sizes["locate"] / max(self.samples.size), self.sizes["refine"] / (self.margin * side))
        return reduction(stretch * density, self.max_reduce)

    def views(self, epoch: int, index: int) -> dict[str, dict]:
        """{pass: {'warp' (2, 3) full image -> input, 'points' (L, 2) float32 input px, 'scale',
        'color_seed' (the photometric augmentation's)}} of item (epoch, index), all drawn from the
        item's generator."""
        rng = np.random.default_rng([self.seed, epoch, index])
        color_seeds = rng.integers(0, 2**31, len(PASSES))
        out = {}
        for k, (name, (warp, scale, flipped)) in enumerate(self.warps(index, *self.samples.size, rng).items()):
            points = apply_warp(warp, self.samples.landmarks[index])
            if flipped:
                points = points[np.asarray(self.flip_order)]
            out[name] = {"warp": warp, "points": points.astype(np.float32), "scale": scale,
                         "color_seed": int(color_seeds[k])}
        return out

    def __getitem__(self, item: tuple[int, int]) -> dict:
        epoch, index = item
        reduce = self.reduction(index)
        out = {"index": index, "error": ""}
        try:
            image = read_image(self.samples.paths[index].decode(), self.samples.size, reduce=reduce)
        except DataError as err:
            image, out["error"] = None, str(err)
        for name, view in self.views(epoch, index).items():
            size = self.sizes[name]
            if image is None:
                pixels = np.zeros((size, size, 3), dtype=np.uint8)
            else:
                pixels = warp_image(image, view["warp"] * np.array([reduce, reduce, 1.0]), size)
            out[name] = {"image": pixels, "points": view["points"], "scale": view["scale"]}
            if self.jitters:
                out[name].update(self.augmented(pixels, view["color_seed"]))
        return out

    def augmented(self, pixels: np.ndarray, color_seed: int) -> dict:
        """A training input (S, S, 3) uint8 -> its item entries after the photometric augmentation
        drawn from `color_seed`: {'image'}."""
        return {"image": self.photometric(pixels, color_seed)}


class BatchList:
    """The batch sampler of a Stream: whatever batches it was last given."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _lower_priority(niceness: int, worker_id: int) -> None:
    """A loader process's start: its priority lowered by `niceness` (os.nice)."""
    os.nice(niceness)


class Stream:
    """A DataLoader over `views` whose `workers` processes (0: this process) start once and read,
    in order, the batches (lists of (epoch, index) items) given to each `read` (collate_fn: the
    DataLoader's, None for its default; niceness: how far the processes' priority is lowered;
    pin: each batch in pinned memory, for a copy to a GPU that does not wait for its queued work).

    The workers persist from epoch to epoch (fresh train and val workers every epoch cost about
    0.8 s an epoch on the demo data with 2 workers on 2 cores: fork of a >1 GB process, start-up,
    the first batches' latency). They are
    forked with OpenCV's thread pool at one thread: a child forked from a parent whose pool has
    threads deadlocks in its first parallel OpenCV call (pthreads backend), and one thread per
    worker is what the workers want anyway. The parent's setting is restored.
    """

    def __init__(self, views: Dataset, workers: int, collate_fn=None, niceness: int = 0, pin: bool = False):
        self.views, self.workers, self.sampler = views, workers, BatchList()
        self.data = DataLoader(views, batch_sampler=self.sampler, num_workers=workers, collate_fn=collate_fn,
                               pin_memory=pin,
                               persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                               worker_init_fn=partial(_lower_priority, niceness) if niceness and workers else None)

    def read(self, batches: list[list[tuple[int, int]]]) -> Iterator[dict]:
        self.sampler.batches = batches
        threads = cv2.getNumThreads()
        if self.workers:
            cv2.setNumThreads(1)
        try:
            stream = iter(self.data)          # forks the workers (the first time)
        finally:
            cv2.setNumThreads(threads)
        return stream
