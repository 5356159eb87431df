"""Resizing and cropping, written once: torchvision's ``transforms.v2.functional``, antialiased, clamped to [0, 1].

Every path that feeds a network (calibration, parity, evaluation, stylize,
fixed-shape artifacts) resizes through here, so they all see the same pixels.
Tensors are (..., C, H, W) float in [0, 1].
"""

from __future__ import annotations

import torch


def _functional():
    """torchvision's ``transforms.v2.functional``, imported on first use: importing torchvision loads its models
    and ``torch._dynamo`` (about 160 MB resident), which tiled stylization of a big photo never needs."""
    from torchvision.transforms.v2 import functional

    return functional


def resize(images: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """Bilinear, antialiased resize to ``size`` = (height, width)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    TF = _functional()
    return TF.resize(images, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True).clamp(0, 1)


def crop_resize(images: torch.Tensor, top: int, left: int, side: int, size: int) -> torch.Tensor:
    """The ``side`` x ``side`` square at (top, left), resized to ``size`` x ``size``."""
    return resize(_functional().crop(images, top, left, side, side), (size, size))


def center_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centre square crop, resized to ``size`` x ``size``."""
    h, w = images.shape[-2:]
    side = min(h, w)
    return crop_resize(images, (h - side) // 2, (w - side) // 2, side, size)


def fit_longest(images: torch.Tensor, size: int, multiple: int = 1) -> torch.Tensor:
    """Resize so the longest side is ``size``, each side rounded to a multiple of ``multiple`` (video codecs: 2)."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    new = [max(multiple, round(d * scale / multiple) * multiple) for d in (h, w)]
    return resize(images, new)


def fit_shortest(images: torch.Tensor, size: int) -> torch.Tensor:
    """Upscale so the shortest side is at least ``size`` (unchanged if it already is)."""
    h, w = images.shape[-2:]
    short = min(h, w)
    if short >= size:
        return images
    return resize(images, [max(size, round(h * size / short)), max(size, round(w * size / short))])


def jitter_colors(images: torch.Tensor, strength: float, rng) -> torch.Tensor:
    """Brightness, contrast and saturation scaled by 1 ± ``strength`` and hue turned by ± ``strength`` / 2 of the
    colour wheel (torchvision's ColorJitter ranges), drawn from ``rng`` (a ``random.Random``) so crops replay."""
    TF = _functional()
    for adjust in (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation):
        images = adjust(images, rng.uniform(1 - strength, 1 + strength))
    return TF.adjust_hue(images, rng.uniform(-strength / 2, strength / 2)).clamp(0, 1)
