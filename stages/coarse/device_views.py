"""coarse_train's torch path (coarse_train.decode): the detector's views decoded, warped and
augmented in batches on the training device, for a GPU machine whose CPU cores cannot decode
and augment at the networks' rate.

The loader processes do only what is cheap per image: read the file's bytes (stages/wcpa/decode.py
`load_for_device`, which also decodes an EXIF-rotated image as the OpenCV path does) and draw the
item's geometry and photometric parameters from the same seeded generator as the OpenCV path
(`ViewSet.views`: the same warps, landmark targets and flips for the same seed). One thread then
makes each batch on the device, one batch ahead of the training step, on its own CUDA stream:
one batched decode_jpeg (nvJPEG on CUDA), one warp per pass from the full-resolution image
(stages/face/warp_torch.py, the OpenCV path's convention), and for training the batched
photometric augmentation (stages/coarse/augment_torch.py). Batches come out as the OpenCV path's
(stages/coarse/sources.py `Stream`), with 'image' uint8 (B, S, S, 3) on the device.

On a CPU the path runs too (the tests compare it with the OpenCV path), decoding with
torchvision's CPU decoder.

Between the two (coarse_train.augment on the OpenCV path, `auto` on CUDA): the loader processes
decode and warp with OpenCV as on the OpenCV path and draw the photometric parameters, and the
thread applies the photometric augmentation in batches on the device (`augment_views`): the
loader's CPU an item without its largest share after the decode.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import default_collate

from stages.coarse import augment_torch
from stages.coarse.sources import PASSES, Stream, ViewSet
from stages.face.warp_torch import warp_images
from stages.wcpa.decode import device_images, load_for_device
from stages.wcpa.layout import DataError


class PlanSet(ViewSet):
    """Items (epoch, i) -> what the device needs to make image i's views: {'index', 'error' (''),
    'data' (load_for_device's: the file's bytes (n,) uint8, its decoded (3, H, W) uint8 image,
    or its DataError), pass: {'warp' (2, 3) float64, 'points' (L, 2), 'scale', 'color' (FIELDS,)
    the photometric parameters (training; zeros without jitters)}}."""

    def __init__(self, *args, device: torch.device, **kwargs):
        super().__init__(*args, **kwargs)
        self.device = device

    def __getitem__(self, item: tuple[int, int]) -> dict:
        epoch, index = item
        data = load_for_device(self.samples.paths[index].decode(), self.device, self.samples.size)
        out = {"index": index, "error": "", "data": data}
        for name, view in self.views(epoch, index).items():
            color = (augment_torch.draw(np.random.default_rng(view["color_seed"])) if self.jitters
                     else np.zeros(augment_torch.FIELDS))
            out[name] = {"warp": view["warp"], "points": view["points"], "scale": view["scale"], "color": color}
        return out


class WarpedSet(ViewSet):
    """ViewSet's items with the photometric augmentation left to the device: each training pass's
    'image' as warped, and 'color' (FIELDS,) its photometric parameters, drawn as PlanSet's."""

    def augmented(self, pixels: np.ndarray, color_seed: int) -> dict:
        return {"color": augment_torch.draw(np.random.default_rng(color_seed))}


def collate_plans(items: list[dict]) -> dict:
    """PlanSet items -> one batch: the files' data as a list, the rest collated as the DataLoader does."""
    datas = [item.pop("data") for item in items]
    batch = default_collate(items)
    batch["data"] = datas
    return batch


def decoded(batch: dict, paths: np.ndarray, device: torch.device, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (B, 3, H, W) on `device`: the batch's images, black where they failed (whose
    'error' entries get the failure)."""
    names = [paths[int(i)].decode() for i in batch["index"]]
    images = device_images(batch["data"], names, device, size)
    black = torch.zeros((3, size[1], size[0]), dtype=torch.uint8, device=device)
    for k, image in enumerate(images):
        if isinstance(image, DataError):
            batch["error"][k], images[k] = str(image), black
    return torch.stack(images)


def make_views(batch: dict, views: ViewSet, device: torch.device) -> dict:
    """A collated PlanSet batch -> the OpenCV path's batch, 'image' uint8 (B, S, S, 3) on `device`."""
    images = decoded(batch, views.samples.paths, device, views.samples.size)
    out = {"index": batch["index"], "error": list(batch["error"])}
    for name in PASSES:
        plan = batch[name]
        pixels = warp_images(images, plan["warp"].numpy(), views.sizes[name])
        if views.jitters:
            seed = int(plan["color"][0, augment_torch.NOISE_SEED])
            pixels = augment_torch.apply(pixels.permute(0, 3, 1, 2), plan["color"], seed).permute(0, 2, 3, 1)
        out[name] = {"image": pixels, "points": plan["points"], "scale": plan["scale"]}
    return out


def augment_views(batch: dict, views: ViewSet, device: torch.device) -> dict:
    """A collated WarpedSet batch -> the OpenCV path's batch, its training views augmented on
    `device`: 'image' uint8 (B, S, S, 3) there."""
    out = {"index": batch["index"], "error": list(batch["error"])}
    for name in PASSES:
        entry = batch[name]
        pixels = entry["image"].to(device, non_blocking=True).permute(0, 3, 1, 2)
        seed = int(entry["color"][0, augment_torch.NOISE_SEED])
        pixels = augment_torch.apply(pixels, entry["color"], seed).permute(0, 2, 3, 1)
        out[name] = {"image": pixels, "points": entry["points"], "scale": entry["scale"]}
    return out


class DeviceStream:
    """The torch path's counterpart of stages/coarse/sources.py's Stream: `workers` loader processes
    read the files and draw the plans of the batches given to each `read`, one thread makes each
    batch's views on `device` one batch ahead (on a side CUDA stream on CUDA). decode_on_device
    False: the workers decode and warp (training views: WarpedSet), the thread augments
    (`augment_views`)."""

    def __init__(self, views: ViewSet, workers: int, device: torch.device, decode_on_device: bool = True):
        fields = (views.samples, views.sizes, views.margin, views.seed, views.jitters, views.flip_order,
                  views.flip_prob)
        if decode_on_device:
            self.views, self.make = PlanSet(*fields, device=device), make_views
        else:
            self.views, self.make = WarpedSet(*fields), augment_views
        self.device = device
        self.stream = Stream(self.views, workers, collate_plans if decode_on_device else None)
        cuda = device.type == "cuda"
        index = (torch.cuda.current_device() if device.index is None else device.index) if cuda else None
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="coarse-views", initializer=torch.cuda.set_device
                                         if cuda else None, initargs=(index,) if cuda else ())
        self.side = torch.cuda.Stream(device) if cuda else None

    def _make(self, batch: dict) -> dict:
        if self.side is None:
            return self.make(batch, self.views, self.device)
        with torch.cuda.stream(self.side):
            out = self.make(batch, self.views, self.device)
        event = torch.cuda.Event()
        event.record(self.side)
        out["ready"] = event
        return out

    def _hand_over(self, out: dict) -> dict:
        """The batch for the training step: on CUDA the step's stream waits for the side stream's
        work, and the images are marked as used by the step's stream (not reused before it is done)."""
        event = out.pop("ready", None)
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for name in PASSES:
                out[name]["image"].record_stream(stream)
        return out

    def read(self, batches: list[list[tuple[int, int]]]) -> Iterator[dict]:
        pending = None
        for batch in self.stream.read(batches):
            made = self.thread.submit(self._make, batch)
            if pending is not None:
                yield self._hand_over(pending.result())
            pending = made
        if pending is not None:
            yield self._hand_over(pending.result())
