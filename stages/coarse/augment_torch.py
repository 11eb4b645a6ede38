"""The detector's photometric augmentation (stages/coarse/augment.py's `color_transforms`) for a
batch on a torch device: coarse_train's torch path (coarse_train.decode), which decodes, warps and
augments on the GPU instead of in the loader's CPU processes.

The same transforms with the same probabilities and ranges, drawn per sample on the CPU from the
sample's seeded generator (`draw`, in the loader workers: the batches do not depend on the number
of workers) and applied to the whole batch at once (`apply`):
- colour jitter (p 0.8): brightness, contrast, saturation factors in [0.7, 1.3], hue shift in
  [-0.03, 0.03] of the colour circle (in HSV space), applied in that order (albumentations
  shuffles the order);
- grey (p 0.05): the luma (ITU-R 601) in all three channels;
- Gaussian blur (p 0.2): kernel 3 or 5, sigma in [0.5, 3.0], borders reflected as OpenCV's
  BORDER_REFLECT_101;
- Gaussian noise (p 0.2): per pixel and channel, std in [0.01, 0.04] of the full range;
- JPEG (p 0.3): quality in [40, 95]: the loss of a JPEG round trip computed in batched tensor
  arithmetic (YCbCr, 4:2:0 chroma, 8 x 8 DCT quantised with libjpeg's tables at that quality;
  `jpeg`), within a grey level or two of OpenCV's encoder and decoder, with no per-quality
  encoder calls and no host round trip.
Each step clips to [0, 1]; the result is rounded to uint8.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

(JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE, GREY, BLUR, KSIZE, SIGMA, NOISE, NOISE_STD, NOISE_SEED, JPEG,
 QUALITY) = range(14)
FIELDS = 14
LUMA = (0.299, 0.587, 0.114)


def draw(rng: np.random.Generator) -> np.ndarray:
    """One sample's augmentation parameters (FIELDS,) float64 (flags 0 / 1; see the module doc;
    NOISE_SEED: the noise generator's seed when the sample is its batch's first)."""
    out = np.zeros(FIELDS)
    out[JITTER] = rng.random() < 0.8
    out[[BRIGHTNESS, CONTRAST, SATURATION]] = rng.uniform(0.7, 1.3, 3)
    out[HUE] = rng.uniform(-0.03, 0.03)
    out[GREY] = rng.random() < 0.05
    out[BLUR] = rng.random() < 0.2
    out[KSIZE] = rng.choice([3, 5])
    out[SIGMA] = rng.uniform(0.5, 3.0)
    out[NOISE] = rng.random() < 0.2
    out[NOISE_STD] = rng.uniform(0.01, 0.04)
    out[NOISE_SEED] = rng.integers(0, 2**31)
    out[JPEG] = rng.random() < 0.3
    out[QUALITY] = rng.integers(40, 96)
    return out


def luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) ITU-R 601 luma."""
    return LUMA[0] * x[:, :1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:]


def hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, H, W) in [0, 1] with each sample's hue turned by shift (B,) (a fraction of the
    colour circle) in HSV space, saturation and value kept (greys stay)."""
    value, _ = x.max(dim=1)
    delta = value - x.min(dim=1).values
    saturation = torch.where(value > 0, delta / value.clamp_min(1e-12), torch.zeros_like(value))
    r, g, b = ((value - c) / delta.clamp_min(1e-12) for c in x.unbind(1))
    hue = torch.where(value == x[:, 0], b - g, torch.where(value == x[:, 1], 2 + r - b, 4 + g - r))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue)) + shift[:, None, None]
    sector = hue.mul(6).remainder(6)
    index = sector.floor().clamp_(0, 5)
    frac = sector - index
    p, q, t = value * (1 - saturation), value * (1 - saturation * frac), value * (1 - saturation * (1 - frac))
    choices = torch.stack([torch.stack(c) for c in ((value, q, p, p, t, value), (t, value, value, q, p, p),
                                                     (p, p, t, value, value, q))])   # (3, 6, B, H, W)
    pick = index.long()[None, None].expand(3, 1, *index.shape)
    return choices.gather(1, pick)[:, 0].permute(1, 0, 2, 3)


def color_jitter(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation, hue of the samples whose JITTER flag is set; x (B, 3, H, W) in [0, 1]."""
    on = p[:, JITTER, None, None, None] > 0
    factor = {k: torch.where(on[:, 0, 0, 0], p[:, k], torch.ones_like(p[:, k]))[:, None, None, None]
              for k in (BRIGHTNESS, CONTRAST, SATURATION)}
    x = (x * factor[BRIGHTNESS]).clamp_(0, 1)
    mean = luma(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * factor[CONTRAST] + mean).clamp_(0, 1)
    grey = luma(x)
    x = ((x - grey) * factor[SATURATION] + grey).clamp_(0, 1)
    return torch.where(on & (p[:, HUE, None, None, None] != 0), hue_shift(x, p[:, HUE]), x).clamp_(0, 1)


def blur_kernels(p: torch.Tensor) -> torch.Tensor:
    """(B, 5) normalised 1-D Gaussian taps (kernel 3 padded with zeros; [0, 0, 1, 0, 0] where BLUR is off)."""
    offsets = torch.arange(-2, 3, device=p.device, dtype=torch.float32)
    taps = torch.exp(-offsets**2 / (2 * p[:, SIGMA, None] ** 2))
    taps = taps * (offsets.abs() <= (p[:, KSIZE, None] - 1) / 2)
    identity = (offsets == 0).float().expand_as(taps)
    taps = torch.where(p[:, BLUR, None] > 0, taps, identity)
    return taps / taps.sum(dim=1, keepdim=True)


def blur(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with each sample's kernel (identity where BLUR is off); x (B, C, H, W)."""
    b, c, h, w = x.shape
    taps = blur_kernels(p).repeat_interleave(c, dim=0)             # (B C, 5)
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="reflect"), taps[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="reflect"), taps[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


LUMA_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float64)
CHROMA_TABLE = np.full((8, 8), 99.0)
CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
TO_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def dct_matrix() -> np.ndarray:
    """(8, 8) orthonormal DCT-II: coefficients = D @ block @ D.T."""
    k, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    d = np.sqrt(2 / 8) * np.cos((2 * n + 1) * k * np.pi / 16)
    d[0] /= np.sqrt(2)
    return d


def quant_tables(quality: torch.Tensor) -> torch.Tensor:
    """(B,) JPEG qualities 1-100 -> (B, 2, 8, 8) luma and chroma quantisation steps, the IJG
    (libjpeg) scaling of the standard tables."""
    q = quality.double().clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)[:, None, None, None]
    tables = torch.as_tensor(np.stack([LUMA_TABLE, CHROMA_TABLE]), device=quality.device)
    return ((tables * scale + 50) / 100).floor().clamp(1, 255)


def _quantised(planes: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) level-shifted planes (H, W multiples of 8), (B, 8, 8) steps -> each 8 x 8
    block's DCT coefficients rounded to the steps, transformed back."""
    b, c, h, w = planes.shape
    d = torch.as_tensor(dct_matrix(), device=planes.device, dtype=planes.dtype)
    blocks = planes.reshape(b, c, h // 8, 8, w // 8, 8).transpose(3, 4)          # (B, C, h/8, w/8, 8, 8)
    step = steps[:, None, None, None].to(planes.dtype)
    coefficients = torch.round(d @ blocks @ d.T / step) * step
    return (d.T @ coefficients @ d).transpose(3, 4).reshape(b, c, h, w)


def _padded(planes: torch.Tensor, multiple: int) -> torch.Tensor:
    """Planes padded at the bottom and right, by edge replication, to sides divisible by `multiple`."""
    h, w = planes.shape[-2:]
    return F.pad(planes, (0, -w % multiple, 0, -h % multiple), mode="replicate")


def jpeg(images: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) with JPEG's loss on the JPEG-flagged samples at their quality, in
    batched tensor arithmetic: RGB to YCbCr (JFIF), chroma averaged over 2 x 2 (4:2:0, libjpeg's
    default), each 8 x 8 block's DCT rounded to the quality's quantisation steps, chroma upsampled
    bilinearly, back to RGB (what an encoder and decoder round trip loses; the entropy coding in
    between is lossless)."""
    h, w = images.shape[-2:]
    x = images.float()
    ycc = torch.einsum("ij,bjhw->bihw", torch.as_tensor(TO_YCBCR, device=x.device, dtype=x.dtype), x)
    ycc[:, 1:] += 128
    steps = quant_tables(p[:, QUALITY])
    luma = _quantised(_padded(ycc[:, :1], 8) - 128, steps[:, 0])[..., :h, :w] + 128
    chroma = F.avg_pool2d(_padded(ycc[:, 1:], 2), 2)
    ch, cw = chroma.shape[-2:]
    chroma = _quantised(_padded(chroma, 8) - 128, steps[:, 1])[..., :ch, :cw] + 128
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
    y, cb, cr = luma[:, 0], chroma[:, 0] - 128, chroma[:, 1] - 128
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1)
    out = rgb.round_().clamp_(0, 255).to(torch.uint8)
    return torch.where(p[:, JPEG, None, None, None] > 0, out, images)


def apply(images: torch.Tensor, params: torch.Tensor, seed: int) -> torch.Tensor:
    """Augment uint8 images (B, 3, H, W) on any device with their parameters (B, FIELDS)
    (`draw`'s) -> uint8 (B, 3, H, W). seed: the noise generator's (drawn with the batch)."""
    p = params.to(images.device, torch.float32)
    x = color_jitter(images.float() / 255, p)
    x = torch.where(p[:, GREY, None, None, None] > 0, luma(x).expand_as(x), x)
    x = blur(x, p)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    x = (x + noise * (p[:, NOISE_STD] * p[:, NOISE])[:, None, None, None]).clamp_(0, 1)
    return jpeg(x.mul_(255).round_().to(torch.uint8), p)
