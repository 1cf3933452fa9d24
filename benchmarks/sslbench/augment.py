"""Batched views of uint8 image tensors: solo-learn's augmentation pipeline
(``build_transform_pipeline``) drawn per image, but applied to a whole batch in a few tensor ops
on the training process, so that a 2-core CPU spends its time on the model, not on PIL.

Each view of image ``b`` goes through, as in solo-learn (parameters from ``cfg.augmentations``):
random resized crop (torchvision's parameter rule: 10 tries of area and log-aspect, else the
centre crop; bicubic sampling with ``grid_sample``, the horizontal flip folded into the same
sampling grid), colour jitter with probability ``p`` (brightness, contrast, saturation and hue in
a random order, torchvision's factor ranges and formulas), grayscale, Gaussian blur
(sigma uniform in [0.1, 2], a separable per-image kernel), solarisation, then solo-learn's
normalisation. Only equalisation is refused (no recipe here uses it). Every draw comes from one
``torch.Generator``: the same seed gives the same views, whatever else the process does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_BLUR_SIGMA = (0.1, 2.0)  # solo-learn's GaussianBlur range


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * (high - low) + low


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    w = x.new_tensor(_GRAY).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


# for each sector i = floor(6 h) of the hue circle: which of (v, q, p, t) is r, g and b
_SECTORS = torch.tensor([[0, 1, 2, 2, 3, 0], [3, 0, 0, 1, 2, 2], [2, 2, 3, 0, 0, 1]])


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Adds ``shift`` (n,) turns to the HSV hue of x (n, 3, H, W) in [0, 1], as torchvision's
    ``adjust_hue`` (RGB -> HSV, hue shifted modulo 1, HSV -> RGB), in fewer passes."""
    r, g, b = x.unbind(1)
    v, argmax = x.max(dim=1)
    delta = v - x.min(dim=1).values
    safe = torch.where(delta > 0, delta, 1.0)
    hue = torch.where(
        argmax == 0,
        (g - b) / safe,
        torch.where(argmax == 1, 2 + (b - r) / safe, 4 + (r - g) / safe),
    )
    hue = torch.where(delta > 0, hue / 6.0, 0.0)
    sat = torch.where(v > 0, delta / torch.where(v > 0, v, 1.0), 0.0)
    h6 = ((hue + shift.view(-1, 1, 1)) % 1.0) * 6.0
    sector = h6.floor().clamp_(0, 5)
    f = h6 - sector
    p, q, t = v * (1 - sat), v * (1 - sat * f), v * (1 - sat * (1 - f))
    options = torch.stack([v, q, p, t])  # (4, n, H, W)
    index = _SECTORS[:, sector.long()]  # (3, n, H, W)
    return options.gather(0, index).transpose(0, 1)


def crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for n images at once: (n, 4) float
    ``(top, left, h, w)`` in pixels; aspect ratio log-uniform in [3/4, 4/3], the first of 10
    tries that fits, else the whole image clamped to that ratio range."""
    tries = 10
    area = height * width * _uniform(n * tries, *scale, g).view(n, tries)
    log_ratio = _uniform(n * tries, math.log(3 / 4), math.log(4 / 3), g).view(n, tries)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().round()
    h = (area / ratio).sqrt().round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(dim=1), ok.float().argmax(dim=1), 0)
    pick = first.unsqueeze(1)
    w, h, found = w.gather(1, pick)[:, 0], h.gather(1, pick)[:, 0], ok.any(dim=1)
    # the fallback: the centre crop at the aspect ratio clamped to [3/4, 4/3]
    in_ratio = width / height
    if in_ratio < 3 / 4:
        fw, fh = width, round(width / (3 / 4))
    elif in_ratio > 4 / 3:
        fw, fh = round(height * 4 / 3), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, float(fw))
    h = torch.where(found, h, float(fh))
    u = torch.rand(n, 2, generator=g)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).floor(), ((height - h) / 2).floor())
    left = torch.where(found, (u[:, 1] * (width - w + 1)).floor(), ((width - w) / 2).floor())
    return torch.stack([top, left, h, w], dim=1)


def resized_crop(
    x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int
) -> torch.Tensor:
    """Crops (n, 4) ``(top, left, h, w)`` of x (n, C, H, W) float, resized to ``size`` x
    ``size`` by bicubic ``grid_sample`` (values clamped to [0, 1]), mirrored where ``flip`` (n,)
    bool."""
    n, _, height, width = x.shape
    top, left, h, w = boxes.unbind(1)
    # affine_grid's sampling points for an axis-aligned box, built separably: output pixel
    # centres (2 i + 1) / size - 1 mapped into the box, in grid_sample's [-1, 1] coordinates
    base = (2 * torch.arange(size, dtype=x.dtype) + 1) / size - 1  # (S,)
    sx = torch.where(flip, -w / width, w / width).view(n, 1)
    gx = sx * base + ((2 * left + w) / width - 1).view(n, 1)  # (n, S)
    gy = (h / height).view(n, 1) * base + ((2 * top + h) / height - 1).view(n, 1)
    grid = torch.stack(
        [gx.view(n, 1, size).expand(n, size, size), gy.view(n, size, 1).expand(n, size, size)],
        dim=3,
    )
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0)


def color_jitter(
    x: torch.Tensor, strength: Any, apply: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    """torchvision's ``ColorJitter`` per image of x (n, 3, H, W) in [0, 1] where ``apply`` (n,):
    factors uniform in [max(0, 1 - s), 1 + s] (hue: [-s, s]) per image, the four in a random
    order drawn per call (each image's order is uniform, as in torchvision; one order per batch
    applies each adjustment once)."""
    n = x.shape[0]
    b, c, s, h = (float(strength[k]) for k in ("brightness", "contrast", "saturation", "hue"))
    factors = [
        _uniform(n, max(0.0, 1 - b), 1 + b, g),
        _uniform(n, max(0.0, 1 - c), 1 + c, g),
        _uniform(n, max(0.0, 1 - s), 1 + s, g),
        _uniform(n, -h, h, g),
    ]
    # where not applied: the identity factors (1, 1, 1, 0)
    factors = [torch.where(apply, f, 0.0 if i == 3 else 1.0) for i, f in enumerate(factors)]
    for i in torch.randperm(4, generator=g).tolist():
        f = factors[i].view(n, 1, 1, 1)
        if i == 0 and b > 0:
            x = (x * f).clamp_(0, 1)
        elif i == 1 and c > 0:
            x = (f * x + (1 - f) * _gray(x).mean(dim=(2, 3), keepdim=True)).clamp_(0, 1)
        elif i == 2 and s > 0:
            x = (f * x + (1 - f) * _gray(x)).clamp_(0, 1)
        elif i == 3 and h > 0:
            x = shift_hue(x, factors[3])
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of x (n, C, H, W) with a standard deviation per image (n,), the
    kernel truncated at 3 sigma of the largest one, edges replicated."""
    n, c, height, width = x.shape
    radius = max(1, math.ceil(3 * float(_BLUR_SIGMA[1])))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(taps.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n c, k)
    y = F.pad(x.reshape(1, n * c, height, width), (radius,) * 4, mode="replicate")
    y = F.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
    return y.view(n, c, height, width)


class BatchedViews:
    """The views of ``cfg.augmentations`` for a batch of uint8 images, per-image random.

    Args:
        augmentations: ``cfg.augmentations`` (solo-learn's pipelines, ``num_crops`` views each).
        dataset: ``cfg.data.dataset``, for solo-learn's normalisation.
        seed: seeds this object's generator.

    Raises:
        ValueError: for equalisation (not implemented here).
    """

    def __init__(self, augmentations: Any, dataset: str, seed: int) -> None:
        from solo.data.pretrain_dataloader import build_transform_pipeline
        from torchvision import transforms

        self.pipelines = []
        for aug in augmentations:
            if float(aug.equalization.prob) > 0:
                raise ValueError(
                    f"augmentations: equalization.prob={aug.equalization.prob} is not supported "
                    "by the batched views (benchmarks/sslbench/augment.py); allowed: 0"
                )
            # solo-learn's own pipeline, only to read its normalisation (its per-dataset table)
            normalize = next(
                t
                for t in build_transform_pipeline(dataset, aug).transforms
                if isinstance(t, transforms.Normalize)
            )
            mean = torch.tensor(normalize.mean).view(1, 3, 1, 1)
            std = torch.tensor(normalize.std).view(1, 3, 1, 1)
            self.pipelines.append((aug, mean, std))
        self.generator = torch.Generator().manual_seed(int(seed))

    def view(self, images: torch.Tensor, aug: Any, mean: torch.Tensor, std: torch.Tensor):
        """One view (n, 3, S, S) float32, normalised, of uint8 images (n, 3, H, W)."""
        g, n = self.generator, images.shape[0]
        x = images.float().div_(255)
        height, width = x.shape[2:]
        if aug.rrc.enabled:
            scale = (float(aug.rrc.crop_min_scale), float(aug.rrc.crop_max_scale))
            boxes = crop_boxes(n, height, width, scale, g)
        else:
            boxes = torch.tensor([[0.0, 0.0, height, width]]).expand(n, 4)
        flip = torch.rand(n, generator=g) < float(aug.horizontal_flip.prob)
        x = resized_crop(x, boxes, flip, int(aug.crop_size))
        if float(aug.color_jitter.prob) > 0:
            apply = torch.rand(n, generator=g) < float(aug.color_jitter.prob)
            x = color_jitter(x, aug.color_jitter, apply, g)
        if float(aug.grayscale.prob) > 0:
            gray = torch.rand(n, generator=g) < float(aug.grayscale.prob)
            x = torch.where(gray.view(n, 1, 1, 1), _gray(x).expand_as(x), x)
        if float(aug.gaussian_blur.prob) > 0:
            blur = torch.rand(n, generator=g) < float(aug.gaussian_blur.prob)
            sigma = _uniform(n, *_BLUR_SIGMA, g)
            x = torch.where(blur.view(n, 1, 1, 1), gaussian_blur(x, sigma), x)
        if float(aug.solarization.prob) > 0:
            solar = torch.rand(n, generator=g) < float(aug.solarization.prob)
            x = torch.where(solar.view(n, 1, 1, 1) & (x >= 0.5), 1.0 - x, x)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every pipeline's ``num_crops`` views of uint8 images (n, 3, H, W)."""
        return [
            self.view(images, aug, mean, std)
            for aug, mean, std in self.pipelines
            for _ in range(int(aug.num_crops))
        ]
