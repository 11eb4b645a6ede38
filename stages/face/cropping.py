"""The two ways of cutting crops into the crop store (stage crop), a chunk of rows at a time:
OpenCVCrops (decode, warp and store each image on a worker thread: the CPU path) and TorchCrops
(files read on the worker threads, each chunk decoded in one torchvision batch on a device, nvJPEG
on CUDA, and warped there by warp_images). Both give every row of a chunk None (stored) or the
DataError of the OpenCV reader, with the same messages, and their crops agree within a grey level.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from stages.common.cropstore import CropStoreWriter
from stages.face.warp import warp_image
from stages.wcpa.decode import device_images, load_for_device, torchvision_io
from stages.wcpa.layout import DataError, read_image

log = logging.getLogger("crop")


def _crop_one(path: Path | str, warp: np.ndarray, size: int, image_size: tuple[int, int]) -> np.ndarray | DataError:
    """The RGB crop of one image. The warp runs on the decoded BGR image and only the crop is
    converted to RGB: the same pixels (the resampling treats each channel alike) for a fraction
    of the full-resolution conversion."""
    try:
        return cv2.cvtColor(warp_image(read_image(path, image_size, rgb=False), warp, size), cv2.COLOR_BGR2RGB)
    except DataError as err:
        return err


def _crop_into(writer: CropStoreWriter, index: int, path: str, size: int,
               image_size: tuple[int, int]) -> DataError | None:
    """Worker thread: crop row `index` into the writer's store -> None, or the DataError."""
    result = _crop_one(path, writer.warps[index], size, image_size)
    if isinstance(result, DataError):
        return result
    writer.store(index, result)
    return None


Outcome = Callable[[], list]   # -> per row of a chunk: None (stored) or its DataError


class OpenCVCrops:
    """The CPU path: every row on a worker thread (read_image, warp_image, store)."""

    def __init__(self, pool: ThreadPoolExecutor, writer: CropStoreWriter, paths: list[str], size: int,
                 image_size: tuple[int, int]):
        self.pool, self.writer, self.paths, self.size, self.image_size = pool, writer, paths, size, image_size

    def submit(self, part: np.ndarray) -> Outcome:
        futures = [self.pool.submit(_crop_into, self.writer, i, self.paths[i], self.size, self.image_size)
                   for i in part]
        return lambda: [future.result() for future in futures]


class TorchCrops:
    """The torch path, a chunk at a time: the worker threads read the chunk's files (on the CPU
    they decode them too) while one device thread decodes the previous chunk in one batch
    (decode_images: nvJPEG on CUDA), warps it on the device (warp_images) and copies the crops
    back once into the writer's rows. crop_split keeps two chunks in flight, so the files of the
    next chunk are read while the current one decodes."""

    def __init__(self, pool: ThreadPoolExecutor, device_thread: ThreadPoolExecutor, writer: CropStoreWriter,
                 paths: list[str], size: int, image_size: tuple[int, int], device):
        self.pool, self.device_thread, self.writer = pool, device_thread, writer
        self.paths, self.size, self.image_size, self.device = paths, size, image_size, device
        torchvision_io()    # imported here, before the threads use it

    def submit(self, part: np.ndarray) -> Outcome:
        loads = [self.pool.submit(load_for_device, self.paths[i], self.device, self.image_size) for i in part]
        return self.device_thread.submit(self._crop_chunk, part, loads).result

    def _crop_chunk(self, part: np.ndarray, loads: list[Future]) -> list:
        """Device thread: crop the chunk's rows into the writer -> per row None or its DataError."""
        import torch

        from stages.face.warp_torch import warp_images
        results = device_images([load.result() for load in loads], [self.paths[i] for i in part], self.device,
                                self.image_size)
        good = [k for k, r in enumerate(results) if not isinstance(r, DataError)]
        if good:
            rows = part[good]
            crops = warp_images(torch.stack([results[k] for k in good]), self.writer.warps[rows],
                                self.size).cpu().numpy()
            for row, crop in zip(rows, crops):
                self.writer.store(row, crop)
        return [r if isinstance(r, DataError) else None for r in results]
