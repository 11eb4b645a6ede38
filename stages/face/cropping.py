"""The two ways of cutting crops into the crop store (stage crop), a chunk of rows at a time:
OpenCVCrops (decode, warp and store each image on a worker thread: the CPU path) and TorchCrops
(files read on the worker threads, each chunk decoded in one torchvision batch on a device, nvJPEG
on CUDA, and warped there by warp_images). Both give every row of a chunk None (stored) or the
DataError of the OpenCV reader, with the same messages, and their crops agree within a grey level.
"""
from __future__ import annotations

import logging
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from stages.common.cropstore import CropStoreWriter
from stages.face.warp import warp_image
from stages.wcpa.layout import DataError, check_image_size, exif_rotated, image_bytes, read_image

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


def torchvision_io():
    """torchvision.io, with the deprecation warning of its decoders silenced (torchvision 0.29
    points at TorchCodec; decode_jpeg is still there)."""
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)
    import torchvision.io
    return torchvision.io


def decode_images(datas: list, paths: list[str], device, image_size: tuple[int, int]) -> list:
    """JPEG bytes (CPU uint8 tensors) -> per image a (3, H, W) uint8 RGB tensor on `device`, or
    the DataError of the OpenCV path. One batched decode_jpeg (nvJPEG on CUDA); when it raises, one
    image at a time (_decode_one). Sizes are checked as read_image checks them."""
    io = torchvision_io()
    try:
        images = io.decode_jpeg(datas, mode=io.ImageReadMode.RGB, device=device) if datas else []
    except RuntimeError as err:
        _reraise_out_of_memory(err)
        if len(datas) > 1:
            log.warning("a batch of %d images failed to decode at once (%s): decoding them one by one",
                        len(datas), str(err).splitlines()[0] if str(err) else type(err).__name__)
        images = [_decode_one(data, path, device) for data, path in zip(datas, paths)]
    return [image if isinstance(image, DataError) else _checked_size(image, path, image_size)
            for image, path in zip(images, paths)]


def _decode_one(data, path: str, device):
    """One image's tensor, or its DataError: an image torchvision cannot decode goes to read_image
    (OpenCV), which decodes it (a PNG, say) or raises the DataError of the OpenCV path, so that
    both paths skip the same images with the same messages."""
    import torch
    io = torchvision_io()
    try:
        return io.decode_jpeg(data, mode=io.ImageReadMode.RGB, device=device)
    except RuntimeError as err:
        _reraise_out_of_memory(err)
    try:
        return torch.from_numpy(read_image(path)).permute(2, 0, 1).to(device)
    except DataError as err:
        return err


def _reraise_out_of_memory(err: RuntimeError) -> None:
    """Device memory running out is not an undecodable image: stop with it."""
    import torch
    if isinstance(err, torch.OutOfMemoryError):
        raise err


def _checked_size(image, path: str, image_size: tuple[int, int]):
    """A decoded (3, H, W) image, or the DataError of an image of another size than the data set's."""
    try:
        check_image_size(path, tuple(image.shape[1:]), image_size)
    except DataError as err:
        return err
    return image


def _load(path: str, device, image_size: tuple[int, int]):
    """Worker thread: an image's bytes as a (N,) CPU tensor (decoded there when `device` is the
    CPU, where a batched decode is a loop anyway), or its DataError. An image whose EXIF
    orientation asks for a rotation is decoded here by OpenCV, which applies it as the landmarks'
    reader did (decode_jpeg does not): a (3, H, W) CPU tensor."""
    import torch
    try:
        data = image_bytes(path)
        if exif_rotated(data):
            return _checked_size(torch.from_numpy(read_image(path)).permute(2, 0, 1), path, image_size)
    except DataError as err:
        return err
    data = torch.from_numpy(data)
    return data if device.type != "cpu" else decode_images([data], [path], device, image_size)[0]


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
        loads = [self.pool.submit(_load, self.paths[i], self.device, self.image_size) for i in part]
        return self.device_thread.submit(self._crop_chunk, part, loads).result

    def _crop_chunk(self, part: np.ndarray, loads: list[Future]) -> list:
        """Device thread: crop the chunk's rows into the writer -> per row None or its DataError."""
        import torch

        from stages.face.warp_torch import warp_images
        results = [load.result() for load in loads]
        if self.device.type != "cpu":
            todo = [k for k, r in enumerate(results) if not isinstance(r, DataError) and r.dim() == 1]
            decoded = decode_images([results[k] for k in todo], [self.paths[part[k]] for k in todo],
                                    self.device, self.image_size)
            for k, image in zip(todo, decoded):
                results[k] = image
        good = [k for k, r in enumerate(results) if not isinstance(r, DataError)]
        if good:
            rows = part[good]
            crops = warp_images(torch.stack([results[k].to(self.device) for k in good]), self.writer.warps[rows],
                                self.size).cpu().numpy()
            for row, crop in zip(rows, crops):
                self.writer.store(row, crop)
        return [r if isinstance(r, DataError) else None for r in results]
