"""Batched colour jitter against torchvision's single-image operations and OpenCV's HSV hue."""
import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from stages.nets.color import OPERATIONS, draw_jitter, jitter_images

REFERENCE = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation}


def mid_range_images(count: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    """uint8 (count, 3, size, size) in 70-180: mild jitter never clips them."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(70, 181, (count, 3, size, size), dtype=np.uint8))


def jitter_of(factors, hue: float, order) -> torch.Tensor:
    return torch.tensor([[*factors, hue, *order]], dtype=torch.float32)


def reference(images: torch.Tensor, factors, order) -> torch.Tensor:
    """torchvision's brightness / contrast / saturation, one image at a time, in the given order."""
    x = images.float() / 255
    for op in order:
        x = torch.stack([REFERENCE[op](image, factors[op]) for image in x])
    return x * 255


@pytest.mark.parametrize("op, factor", [(0, 1.25), (0, 0.7), (1, 0.7), (1, 1.3), (2, 0.6), (2, 1.3)])
def test_each_operation_is_torchvisions(op, factor):
    images = mid_range_images()
    factors = [1.0, 1.0, 1.0]
    factors[op] = factor
    order = [op] + [k for k in range(OPERATIONS) if k != op]
    out = jitter_images(images, jitter_of(factors, 0.0, order).expand(len(images), -1))
    torch.testing.assert_close(out, reference(images, factors, [op]), atol=0.02, rtol=0)


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (2, 1, 0, 3), (1, 3, 2, 0), (3, 2, 1, 0)])
def test_composed_map_follows_the_drawn_order(order):
    """The contrast step's mean grey depends on what came before: the composition must track it."""
    images = mid_range_images(seed=1)
    factors = [1.15, 0.75, 0.8]
    out = jitter_images(images, jitter_of(factors, 0.0, order).expand(len(images), -1))
    torch.testing.assert_close(out, reference(images, factors, [op for op in order if op != 3]), atol=0.03, rtol=0)


def test_hue_rotation_shifts_the_hsv_hue_and_keeps_greys():
    rng = np.random.default_rng(2)
    hsv = np.stack([rng.uniform(0, 360, 400), rng.uniform(0.3, 0.6, 400), rng.uniform(0.5, 0.7, 400)], axis=1)
    rgb = cv2.cvtColor(hsv[None].astype(np.float32), cv2.COLOR_HSV2RGB)[0] * 255
    grey = np.full((4, 3), 128.0)
    pixels = torch.from_numpy(np.concatenate([rgb, grey]).T.reshape(1, 3, 1, -1).astype(np.float32))
    turns = 0.05
    out = jitter_images(pixels, jitter_of([1, 1, 1], turns, [3, 0, 1, 2]))[0, :, 0].numpy().T
    hue_out = cv2.cvtColor((out[None, :-4] / 255).astype(np.float32), cv2.COLOR_RGB2HSV)[0, :, 0]
    shift = (hue_out - hsv[:, 0] + 180) % 360 - 180
    assert abs(np.median(shift) - 360 * turns) < 1.0
    assert np.abs(shift - 360 * turns).max() < 6.0
    np.testing.assert_allclose(out[-4:], grey, atol=1e-3)


def test_drawn_parameters_stay_in_their_ranges_and_strength_zero_is_the_identity():
    jitter = draw_jitter(np.random.default_rng(3), 5000, 0.3)
    assert jitter.shape == (5000, 8) and jitter.dtype == np.float32
    assert jitter[:, :3].min() >= 0.7 - 1e-6 and jitter[:, :3].max() <= 1.3 + 1e-6
    assert np.abs(jitter[:, 3]).max() <= 0.075 + 1e-6 and np.abs(jitter[:, 3]).max() > 0.07
    np.testing.assert_array_equal(np.sort(jitter[:, 4:], axis=1), np.broadcast_to(np.arange(4), (5000, 4)))
    assert len({tuple(row) for row in jitter[:, 4:].astype(int)}) == 24
    images = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8))
    torch.testing.assert_close(jitter_images(images, torch.from_numpy(draw_jitter(np.random.default_rng(7), 3, 0.0))), images.float(),
                               atol=1e-3, rtol=0)


def test_jittered_images_are_clipped_to_the_pixel_range():
    images = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (64, 3, 16, 16), dtype=np.uint8))
    out = jitter_images(images, torch.from_numpy(draw_jitter(np.random.default_rng(6), 64, 0.8)))
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 255
    assert not torch.allclose(out, images.float())


def test_training_batches_carry_reproducible_jitter_and_untouched_crops():
    from stages.nets.dataset import TrainBatches
    from stages.wcpa.camera import Camera
    from tests.tiny_project import PROJ, memory_store
    _, verts, poses, store, basis = memory_store(np.random.default_rng(8), 4, 32, Camera(PROJ, 800, 800))
    common = (store, verts, poses, Camera(PROJ, 800, 800), basis, np.arange(verts.shape[1]), 0.0)
    batches = TrainBatches(*common, 0.3, 0)
    item = batches[[0, 1, 2, 3]]
    np.testing.assert_array_equal(item["images"].numpy(), store.images.transpose(0, 3, 1, 2))
    assert item["jitter"].shape == (4, 8) and not np.allclose(item["jitter"][:, :3].numpy(), 1.0)
    torch.testing.assert_close(batches[[0, 1, 2, 3]]["jitter"], item["jitter"])
    batches.set_epoch(1)
    assert not torch.allclose(batches[[0, 1, 2, 3]]["jitter"], item["jitter"])
    plain = TrainBatches(*common, 0.3, 0, augment=False)[[0, 1, 2, 3]]["jitter"]
    np.testing.assert_array_equal(plain[:, :3].numpy(), 1.0)
    np.testing.assert_array_equal(plain[:, 3].numpy(), 0.0)
