"""The detector's batched photometric augmentation (stages/coarse/augment_torch.py) against
independent references: torchvision's colour functions, OpenCV's Gaussian blur, the noise's
measured spread, and the draws' probabilities and ranges."""
import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from stages.coarse import augment_torch as aug


def _images(count: int = 3, size: int = 48) -> torch.Tensor:
    rng = np.random.default_rng(1)
    smooth = [cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 2.0)
              for _ in range(count)]
    return torch.from_numpy(np.stack(smooth)).permute(0, 3, 1, 2).contiguous()


def _params(count: int, **fields) -> torch.Tensor:
    """Parameters with every transform off (neutral factors) except `fields` (name: value)."""
    p = torch.zeros((count, aug.FIELDS), dtype=torch.float64)
    p[:, [aug.BRIGHTNESS, aug.CONTRAST, aug.SATURATION]] = 1.0
    p[:, aug.KSIZE], p[:, aug.SIGMA], p[:, aug.QUALITY] = 3, 1.0, 90
    for name, value in fields.items():
        p[:, getattr(aug, name)] = value
    return p


def test_all_off_is_the_identity():
    images = _images()
    assert torch.equal(aug.apply(images, _params(3), seed=0), images)


@pytest.mark.parametrize("field, factor, reference", [
    ("BRIGHTNESS", 1.3, TF.adjust_brightness), ("BRIGHTNESS", 0.7, TF.adjust_brightness),
    ("CONTRAST", 1.3, TF.adjust_contrast), ("CONTRAST", 0.7, TF.adjust_contrast),
    ("SATURATION", 1.3, TF.adjust_saturation), ("SATURATION", 0.7, TF.adjust_saturation)])
def test_colour_factors_match_torchvision(field, factor, reference):
    images = _images()
    out = aug.apply(images, _params(3, JITTER=1, **{field: factor}), seed=0)
    expected = (reference(images.float() / 255, factor) * 255).round()
    assert (out.float() - expected).abs().max() <= 1


@pytest.mark.parametrize("shift", [-0.03, 0.015, 0.03])
def test_hue_shift_matches_torchvision(shift):
    images = _images()
    out = aug.apply(images, _params(3, JITTER=1, HUE=shift), seed=0).float()
    expected = (TF.adjust_hue(images.float() / 255, shift) * 255).round()
    assert (out - expected).abs().max() <= 1 and (out - images.float()).abs().mean() > 0.5


def test_jitter_flag_off_leaves_the_colours():
    images = _images()
    assert torch.equal(aug.apply(images, _params(3, JITTER=0, BRIGHTNESS=1.3, HUE=0.03), seed=0), images)


def test_grey_is_the_luma_in_every_channel():
    out = aug.apply(_images(), _params(3, GREY=1), seed=0)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


@pytest.mark.parametrize("ksize, sigma", [(3, 0.5), (3, 2.0), (5, 1.0), (5, 3.0)])
def test_blur_matches_opencv(ksize, sigma):
    images = _images()
    out = aug.apply(images, _params(3, BLUR=1, KSIZE=ksize, SIGMA=sigma), seed=0)
    for image, blurred in zip(images, out):
        expected = cv2.GaussianBlur(image.permute(1, 2, 0).numpy(), (ksize, ksize), sigma,
                                    borderType=cv2.BORDER_REFLECT_101)
        assert np.abs(blurred.permute(1, 2, 0).numpy().astype(int) - expected).max() <= 1


def test_noise_has_its_spread_and_only_on_flagged_samples():
    images = torch.full((2, 3, 64, 64), 128, dtype=torch.uint8)
    p = _params(2, NOISE_STD=0.03)
    p[0, aug.NOISE] = 1
    out = aug.apply(images, p, seed=5).float()
    assert abs((out[0] - 128).std().item() / 255 - 0.03) < 0.002
    assert torch.equal(out[1], images[1].float())
    assert torch.equal(aug.apply(images, p, seed=5), aug.apply(images, p, seed=5))


@pytest.mark.parametrize("quality", [40, 70, 95])
def test_jpeg_loses_what_opencvs_encoder_and_decoder_lose(quality):
    images = _images(4, 64)
    p = _params(4, JPEG=1, QUALITY=quality)
    p[3, aug.JPEG] = 0
    out = aug.apply(images, p, seed=0).permute(0, 2, 3, 1).numpy().astype(float)
    original = images.permute(0, 2, 3, 1).numpy()
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    opencv = np.stack([cv2.imdecode(cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), params)[1],
                                    cv2.IMREAD_COLOR)[..., ::-1] for image in original[:3]]).astype(float)   # RGB
    loss, expected = np.abs(out[:3] - original[:3]).mean(), np.abs(opencv - original[:3]).mean()
    assert np.abs(out[:3] - opencv).mean() < 1.0 and abs(loss - expected) < 0.15 * expected
    assert np.array_equal(out[3], original[3])


def test_jpeg_quantisation_steps_are_libjpegs():
    steps = aug.quant_tables(torch.tensor([50.0, 75.0, 100.0]))
    assert steps[0, 0, 0, 0] == 16 and steps[0, 1, 0, 0] == 17          # quality 50: the standard tables
    assert steps[1, 0, 0, 0] == 8 and steps[1, 0, 7, 7] == 50 and (steps[2] == 1).all()


def test_draws_have_the_albumentations_probabilities_and_ranges():
    draws = np.stack([aug.draw(np.random.default_rng(seed)) for seed in range(4000)])
    for field, probability in ((aug.JITTER, 0.8), (aug.GREY, 0.05), (aug.BLUR, 0.2), (aug.NOISE, 0.2),
                               (aug.JPEG, 0.3)):
        assert abs(draws[:, field].mean() - probability) < 0.025
    assert draws[:, [aug.BRIGHTNESS, aug.CONTRAST, aug.SATURATION]].min() >= 0.7
    assert draws[:, [aug.BRIGHTNESS, aug.CONTRAST, aug.SATURATION]].max() <= 1.3
    assert np.abs(draws[:, aug.HUE]).max() <= 0.03 and set(draws[:, aug.KSIZE]) == {3, 5}
    assert draws[:, aug.QUALITY].min() >= 40 and draws[:, aug.QUALITY].max() <= 95
