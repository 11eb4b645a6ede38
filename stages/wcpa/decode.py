"""The challenge's images read with torchvision on a torch device: one batched decode_jpeg (nvJPEG
on CUDA) per batch of files, with the OpenCV reader's checks and messages (stages/wcpa/layout.py
`read_image`): an image of another size than the data set's, or one torchvision cannot decode
and OpenCV cannot either, is the same DataError; both leave an EXIF orientation unapplied (the
labels refer to the stored pixel grid). Used by the torch paths of crop
(stages/face/cropping.py), coarse_train (stages/coarse/device_views.py) and coarse_predict.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from stages.wcpa.layout import DataError, check_image_size, image_bytes, read_image

log = logging.getLogger(__name__)


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


def load_for_device(path: str, device, image_size: tuple[int, int]):
    """A worker thread's (or loader process's) read of an image: its bytes as a (N,) CPU tensor,
    decoded there when `device` is the CPU (where a batched decode is a loop anyway) or when the
    JPEG has four colour components (CMYK or YCCK: nvJPEG, as torchvision calls it, does not
    convert them to RGB), or its DataError."""
    import torch
    try:
        data = image_bytes(path)
    except DataError as err:
        return err
    on_cpu = device.type == "cpu" or jpeg_components(data) == 4
    data = torch.from_numpy(data)
    return decode_images([data], [path], torch.device("cpu"), image_size)[0] if on_cpu else data


SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}     # start of frame, any coding
UNSIZED_MARKERS = frozenset(range(0xD0, 0xDA)) | {0x01}               # RSTn, SOI, EOI, TEM


def jpeg_components(data: np.ndarray) -> int | None:
    """The colour components of a JPEG's frame (1 grey, 3 YCbCr or RGB, 4 CMYK or YCCK) from its
    header, bytes (N,) uint8; None when the bytes hold no JPEG frame header before the scan."""
    array = np.ascontiguousarray(data, dtype=np.uint8).ravel()
    view = memoryview(array)
    if len(view) < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return None
    at = 2
    while at + 4 <= len(view):
        if view[at] != 0xFF:                                # stray bytes: libjpeg skips to the next marker
            ahead = np.flatnonzero(array[at:] == 0xFF)
            at = at + int(ahead[0]) if len(ahead) else len(view)
            continue
        marker = view[at + 1]
        if marker == 0xFF:                                  # a fill byte before the marker
            at += 1
        elif marker in UNSIZED_MARKERS:
            at += 2
        elif marker in SOF_MARKERS:
            return view[at + 9] if at + 9 < len(view) else None
        elif marker == 0xDA:                                # the scan starts: no frame header
            return None
        else:
            at += 2 + (view[at + 2] << 8 | view[at + 3])
    return None


def device_images(loaded: list, paths: list[str], device, image_size: tuple[int, int]) -> list:
    """load_for_device's results -> per image a (3, H, W) uint8 RGB tensor on `device`, or its
    DataError: the files' bytes decoded in one batch (decode_images: nvJPEG on CUDA), images
    decoded already (on the CPU) moved there."""
    out = [item if isinstance(item, DataError) or item.dim() == 1 else item.to(device) for item in loaded]
    todo = [k for k, item in enumerate(loaded) if not isinstance(item, DataError) and item.dim() == 1]
    for k, image in zip(todo, decode_images([loaded[k] for k in todo], [paths[k] for k in todo], device, image_size)):
        out[k] = image
    return out
