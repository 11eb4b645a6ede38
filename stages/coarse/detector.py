"""The trained two-pass detector: saving, loading and batched prediction on full images.

Pass 1 (locate) runs on the downscaled whole image; pass 2 (refine) on a square around the
pass-1 landmarks, repeated `refine_passes` times, each time re-centred on the latest estimate.
With `flip_test`, each refine pass also runs on the mirrored crop and the two are averaged.
With `settle`, an image whose landmarks have stopped moving takes no further refine pass.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch

from stages.coarse.model import LandmarkNet
from stages.coarse.train import to_tensor
from stages.coarse.views import landmark_shift, locate_warp, refine_warp
from stages.common.io import load_torch, save_torch
from stages.common.precision import amp_dtype, autocast, place_network
from stages.face.warp import apply_warp, invert_warp, warp_image
from stages.face.warp_torch import warp_images

log = logging.getLogger(__name__)
Images = Union[list[np.ndarray], torch.Tensor]

SHAPE_STEP = 32      # a refine pass over some of a batch runs on a multiple of this many images

CONFIG_KEYS = ("locate_backbone", "refine_backbone", "locate_size", "refine_size", "refine_margin",
               "head_width", "n_points")


def save_detector(path: Path | str, nets: dict[str, LandmarkNet], config: dict[str, Any],
                  flip_order: np.ndarray | None, inputs: dict[str, str]) -> None:
    """Write model.pt: {'config', 'nets': {'locate', 'refine'} (CPU tensors), 'flip_order' (a list
    of K indices, or None when the landmarks have no known mirror order), 'inputs' (the identity
    of the data it was trained on)}: tensors and plain data only."""
    state = {"config": {k: config[k] for k in CONFIG_KEYS},
             "nets": {k: {n: t.detach().cpu() for n, t in net.state_dict().items()} for k, net in nets.items()},
             "flip_order": None if flip_order is None else np.asarray(flip_order).tolist(), "inputs": dict(inputs)}
    save_torch(state, path)


class Detector:
    """Full images (H, W, 3) uint8 -> 68 landmarks (L, 2) full-image px."""

    def __init__(self, path: Path | str, device: torch.device, workers: int = 1, amp: bool = False):
        """amp: mixed-precision inference where the device has it (stages.common.precision)."""
        state = load_torch(path)
        self.amp = amp_dtype(device, amp)
        self.config = state["config"]
        self.flip_order = None if state["flip_order"] is None else np.asarray(state["flip_order"])
        self._mirror = None if self.flip_order is None else torch.as_tensor(self.flip_order, device=device)
        self.device = device
        self.nets = {}
        for name in ("locate", "refine"):
            net = LandmarkNet(self.config[f"{name}_backbone"], self.config["n_points"], False,
                              self.config["head_width"])
            net.load_state_dict(state["nets"][name])
            self.nets[name] = place_network(net, device).eval()
        self.pool = ThreadPoolExecutor(max(workers, 1))

    def usable_flip_test(self, flip_test: bool) -> bool:
        """flip_test where this detector has a landmark flip order; False, with a warning, where
        one is asked for and there is none (`trace` would refuse it)."""
        if flip_test and self.flip_order is None:
            log.warning("coarse_predict.flip_test ignored: the detector has no landmark flip order")
            return False
        return flip_test

    def _inputs(self, images: Images, warps: np.ndarray, size: int, bgr: bool) -> torch.Tensor:
        """Each image warped into a pass's input -> float (B, 3, S, S) on the device. A list of
        numpy images: warped on the worker threads (OpenCV), bgr ones converted to RGB there, crop
        by crop (the same pixels as warping the RGB image: resampling treats channels alike; a
        numpy copy of the batch through a reversed axis instead took 19 of 31 s of coarse_predict
        on a GPU machine). A tensor (B, 3, H, W) uint8 RGB on the device: warped there, batched
        (stages/face/warp_torch.py)."""
        if isinstance(images, torch.Tensor):
            return to_tensor(warp_images(images, warps, size), self.device)

        def crop(image: np.ndarray, warp: np.ndarray) -> np.ndarray:
            out = warp_image(image, warp, size)
            return cv2.cvtColor(out, cv2.COLOR_BGR2RGB) if bgr else out

        return to_tensor(np.stack(list(self.pool.map(crop, images, warps))), self.device)

    def _run(self, name: str, images: Images, warps: np.ndarray, flip: bool, bgr: bool = False) -> np.ndarray:
        """Warp each image into the pass's input (_inputs), predict -> landmarks (B, L, 2) full
        px. The flip test mirrors the input tensor on the device and merges the two predictions
        there: the host reads the pass's landmarks once, after both forwards are queued."""
        size = self.config[f"{name}_size"]
        inputs = self._inputs(images, warps, size, bgr)
        points = self._predict(self.nets[name], inputs)
        if flip:
            mirrored = self._predict(self.nets[name], inputs.flip(-1))[:, self._mirror]
            mirrored[..., 0] = size - mirrored[..., 0]
            points = (points + mirrored) / 2
        return apply_warp(invert_warp(warps), points.cpu().numpy())

    @torch.no_grad()
    def _predict(self, net: LandmarkNet, inputs: torch.Tensor) -> torch.Tensor:
        """inputs (B, 3, S, S) float RGB in [0, 1] on the device -> landmarks (B, L, 2) input px,
        float64 on the device (the network's float32 outputs, exactly)."""
        with autocast(self.device, self.amp):
            return net(inputs).float().double()

    def __call__(self, images: Images, refine_passes: int = 1, flip_test: bool = False,
                 bgr: bool = False, settle: float = 0.0) -> np.ndarray:
        """A batch of full images (a list of (H, W, 3) uint8 arrays, or a (B, 3, H, W) uint8 RGB
        tensor on the detector's device) -> landmarks (B, L, 2) full-image px."""
        return self.trace(images, refine_passes, flip_test, bgr, settle)[-1]

    def trace(self, images: Images, refine_passes: int = 1, flip_test: bool = False,
              bgr: bool = False, settle: float = 0.0) -> np.ndarray:
        """A batch of full images -> the landmarks of every pass (1 + refine_passes, B, L, 2)
        full-image px: locate first, the last refine pass last (see stages.coarse.confidence).
        flip_test needs a flip order. bgr: the images are in OpenCV's BGR order
        (read_image(rgb=False)): only the small crops are converted, not the full images.
        settle > 0: an image takes no further refine pass once one of its passes after the first
        moved its landmarks by less than settle (stages.coarse.views.landmark_shift: the median
        point's move over the face box's side); its landmarks stay as they are in the later
        passes of the trace."""
        if flip_test and self.flip_order is None:
            raise ValueError("flip_test: this detector has no landmark flip order")
        size = self.config["locate_size"]
        shapes = [tuple(images.shape[-2:])] * len(images) if isinstance(images, torch.Tensor) else [a.shape[:2] for a in images]
        warps = np.stack([locate_warp(width, height, size) for height, width in shapes])
        passes = [self._run("locate", images, warps, flip=False, bgr=bgr)]
        active = np.arange(len(shapes))
        for k in range(refine_passes):
            latest = passes[-1].copy()
            if len(active):
                rows = self._rows(active, len(shapes))
                warps = refine_warp(latest[rows], self.config["refine_size"], self.config["refine_margin"])
                latest[active] = self._run("refine", _subset(images, rows), warps, flip_test, bgr)[:len(active)]
                if settle > 0 and k > 0:
                    active = active[~(landmark_shift(passes[-1][active], latest[active]) < settle)]
            passes.append(latest)
        return np.stack(passes)

    @staticmethod
    def _rows(active: np.ndarray, batch: int) -> np.ndarray:
        """The images (indices) a refine pass runs on: the active ones first, padded with others
        to a multiple of SHAPE_STEP (at most the batch), so that the networks meet a few batch
        shapes rather than one per count of active images: cuDNN autotunes each shape on CUDA
        (cudnn.benchmark), and on the CPU the allocator keeps blocks of each (the demo's
        coarse_predict peaked at 1.54 GB with a shape per count, 1.34 padded, 1.33 without
        settle; its landmarks byte-identical padded or not)."""
        if len(active) == batch:
            return active
        count = min(batch, -(-len(active) // SHAPE_STEP) * SHAPE_STEP)
        others = np.setdiff1d(np.arange(batch), active)[:count - len(active)]
        return np.concatenate([active, others])


def _subset(images: Images, rows: np.ndarray) -> Images:
    """The images at rows (all of them, unchanged, when rows is every index in order)."""
    if len(rows) == len(images) and (rows == np.arange(len(rows))).all():
        return images
    if isinstance(images, torch.Tensor):
        return images[torch.as_tensor(rows, device=images.device)]
    return [images[i] for i in rows]
