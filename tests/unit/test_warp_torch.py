"""warp_images (torch, batched, any device) against warp_image (OpenCV), and area_resize against
area_downscale (cv2.resize INTER_AREA at an integer factor).

Tolerance (measured on the cases below: noise and smooth images, 800x800 and 203x317, 8 warps
each, CPU): every value within 1 grey level of OpenCV, the rest equal; the mean absolute
difference of a case at most 0.0019 without the pre-shrink (0.19 % of the values off by 1,
noise images) and 0.0038 with it (0.38 %). The test allows max 1 and mean 0.01."""
import cv2
import numpy as np
import pytest
import torch

from stages.face import warp_torch
from stages.face.warp import area_downscale, area_shrink, area_shrinks, similarity, warp_image
from stages.face.warp_torch import area_resize, grid_theta, sampling_grid, warp_images

MAX_DIFF = 1
MEAN_DIFF = 0.01
CASES = {                      # (scale range, centre range as a fraction of the image, angle range)
    "rotation": ((0.6, 1.9), (0.3, 0.7), np.pi),
    "upscale": ((2.0, 4.0), (0.3, 0.7), np.pi),
    "preshrink": ((0.1, 0.5), (0.3, 0.7), np.pi),
    "outside": ((0.3, 1.5), (-0.3, 1.3), np.pi),
}
SHAPES = [(800, 800), (203, 317)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _images(rng, count: int, height: int, width: int, smooth: bool) -> np.ndarray:
    """(count, H, W, 3) uint8: uniform noise (the largest gradients), or blurred noise with discs."""
    noise = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    if not smooth:
        return noise
    out = []
    for image in noise:
        image = cv2.normalize(cv2.GaussianBlur(image.astype(np.float32), (0, 0), 3), None, 0, 255,
                              cv2.NORM_MINMAX).astype(np.uint8)
        for _ in range(10):
            centre = tuple(int(v) for v in rng.integers(0, [width, height]))
            cv2.circle(image, centre, int(rng.integers(3, 40)), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
        out.append(image)
    return np.stack(out)


def _warps(rng, count: int, height: int, width: int, size: int, case: str) -> np.ndarray:
    scales, centres, angle = CASES[case]
    centre = rng.uniform(centres[0], centres[1], (count, 2)) * [width, height]
    return similarity(rng.uniform(-angle, angle, count), rng.uniform(*scales, count), centre,
                      np.full((count, 2), size / 2))


def compare(images: np.ndarray, warps: np.ndarray, size: int, device: str, piece: int = 3) -> np.ndarray:
    """|warp_images - warp_image| (B, size, size, 3) int; warp_images in pieces of `piece`."""
    expected = np.stack([warp_image(image, warp, size) for image, warp in zip(images, warps)])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    got = warp_images(batch, warps, size, piece=piece)
    assert got.dtype == torch.uint8 and got.device.type == device and got.shape == expected.shape
    return np.abs(got.cpu().numpy().astype(int) - expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("smooth", [False, True], ids=["noise", "smooth"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_warp_images_matches_warp_image(case, smooth, shape, device):
    rng = np.random.default_rng([sorted(CASES).index(case), smooth, shape[1]])
    height, width = shape
    images = _images(rng, 8, height, width, smooth)
    warps = _warps(rng, 8, height, width, 64, case)
    if case == "preshrink":
        assert all(area_shrink(w) is not None for w in warps)
    diff = compare(images, warps, 64, device)
    assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF, (diff.max(), diff.mean())


def test_a_mixed_batch_keeps_each_image_in_its_row():
    """Pre-shrunk and plain warps in one batch, split into pieces: each crop is its own image's."""
    rng = np.random.default_rng(7)
    images = _images(rng, 7, 120, 150, smooth=True)
    warps = np.concatenate([_warps(rng, 4, 120, 150, 32, "preshrink"), _warps(rng, 3, 120, 150, 32, "rotation")])
    order = rng.permutation(7)
    diff = compare(images[order], warps[order], 32, "cpu")
    assert diff.max() <= MAX_DIFF


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("source,factor", [((800, 800), 2), ((800, 800), 3), ((317, 203), 7), ((150, 120), 4)])
def test_area_resize_is_area_downscale(source, factor, device):
    """Divisible and not (padded with black): each shrunk pixel its block's mean."""
    rng = np.random.default_rng(source[0] + factor)
    image = rng.integers(0, 256, (source[1], source[0], 3), dtype=np.uint8)
    expected = area_downscale(image, factor)
    got = area_resize(torch.from_numpy(image).permute(2, 0, 1)[None].to(device), factor)[0].permute(1, 2, 0).byte()
    assert got.shape == expected.shape
    assert np.abs(got.cpu().numpy().astype(int) - expected).max() <= 1


def test_area_downscale_is_the_mean_of_each_block():
    """Hand-checked: a 5 x 4 image shrunk 2 times is 3 x 2; the last column's blocks hold black."""
    image = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    got = area_downscale(image, 2)
    blocks = np.pad(image.astype(float), ((0, 0), (0, 1))).reshape(2, 2, 3, 2).mean((1, 3))
    assert got.shape == (2, 3)
    np.testing.assert_array_equal(got, np.floor(blocks + 0.5))


def test_area_shrink_scales_the_warp_by_its_factor():
    """A warp of scale 0.3 is shrunk 3 times: the same crop point from the shrunk image's point."""
    warp = similarity(0.4, 0.3, np.array([400.0, 380.0]), np.array([64.0, 64.0]))
    factor, from_small = area_shrink(warp)
    point = np.array([123.0, 456.0])
    assert factor == 3
    np.testing.assert_allclose(from_small[:, :2] @ (point / 3) + from_small[:, 2], warp[:, :2] @ point + warp[:, 2])
    assert area_shrink(similarity(0.0, 0.5, point, point)) is None


def test_area_shrinks_of_a_batch_are_each_warps_own():
    """Vectorised over the batch, the same factors and source warps as one warp at a time (to the
    bit: crops do not depend on the batch); NaN and zero-scale warps are not shrunk."""
    rng = np.random.default_rng(3)
    scales = np.r_[rng.uniform(0.05, 1.5, 40), np.nan, 0.0]
    warps = similarity(rng.uniform(-1, 1, 42), scales, rng.uniform(0, 800, (42, 2)), np.full((42, 2), 64.0))
    factors, sources = area_shrinks(warps)
    for warp, factor, source in zip(warps, factors, sources):
        alone = area_shrink(warp)
        assert (factor, source.tobytes()) == ((0, warp.tobytes()) if alone is None else (alone[0], alone[1].tobytes()))
    assert factors[-2:].tolist() == [0, 0] and len(set(factors.tolist())) > 4
    hand = similarity(np.zeros(6), np.array([0.3, 0.2, 0.45, 0.5, 0.049, 1e-30]), np.zeros((6, 2)), np.zeros((6, 2)))
    assert area_shrinks(hand)[0].tolist() == [3, 5, 2, 0, 20, 0]       # int(1 / scale); 1e-30: degenerate


def test_warp_images_sends_the_rows_and_thetas_in_one_copy_each(monkeypatch):
    """However many pieces and pre-shrink groups: two copies to the device, so that on a GPU the
    host queues every piece without waiting for the work before it."""
    copies = []
    monkeypatch.setattr(warp_torch, "host_to_device", lambda x, device: copies.append(x.shape) or x.to(device))
    rng = np.random.default_rng(7)
    images = _images(rng, 11, 120, 150, smooth=True)
    warps = np.concatenate([_warps(rng, 6, 120, 150, 32, "preshrink"), _warps(rng, 5, 120, 150, 32, "rotation")])
    assert compare(images, warps, 32, "cpu", piece=2).max() <= MAX_DIFF
    assert copies == [(11,), (11, 2, 3)]


def test_warp_images_checks_the_warps_shape():
    with pytest.raises(ValueError, match="warps of shape"):
        warp_images(torch.zeros((2, 3, 10, 10), dtype=torch.uint8), np.zeros((3, 2, 3)), 8)


def test_sampling_grid_is_affine_grid():
    rng = np.random.default_rng(3)
    theta = torch.from_numpy(grid_theta(_warps(rng, 4, 300, 200, 48, "outside"), 200, 300, 48)).float()
    expected = torch.nn.functional.affine_grid(theta, [4, 3, 48, 48], align_corners=False)
    assert torch.allclose(sampling_grid(theta, 48), expected, atol=1e-5)
