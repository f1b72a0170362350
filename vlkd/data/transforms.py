"""Clip-level image transforms: every frame of a clip gets the same crop and flip.

Inputs and outputs are ``(..., T, C, H, W)`` float tensors in [0, 1]; the
teacher applies its own mean/std normalisation later, so these transforms only
choose pixels.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from vlkd.errors import ConfigError


def resize_short_side(video: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize (..., C, H, W) so the shorter side equals ``size``, keeping the aspect ratio."""
    height, width = video.shape[-2:]
    scale = size / min(height, width)
    new_hw = (max(size, round(height * scale)), max(size, round(width * scale)))
    if new_hw == (height, width):
        return video
    lead = video.shape[:-3]
    flat = video.reshape(-1, *video.shape[-3:])
    out = F.interpolate(flat, size=new_hw, mode=mode, align_corners=False, antialias=True)
    return out.reshape(*lead, *out.shape[-3:])


def center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    height, width = video.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return video[..., top : top + size, left : left + size]


def eval_transform(video: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Test-time view: shorter side to ``size``, centre crop ``size`` x ``size`` (one crop).

    Input already at ``size`` x ``size`` is returned unchanged.
    """
    return center_crop(resize_short_side(video, size, mode), size)


def random_resized_crop(
    video: torch.Tensor,
    size: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """One random area/aspect crop, the same for all frames, resized to ``size`` x ``size``."""
    height, width = video.shape[-2:]
    area = height * width
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = rng.randint(0, height - crop_h)
            left = rng.randint(0, width - crop_w)
            break
    else:  # fall back to the largest centred square-ish crop
        crop_h = crop_w = min(height, width)
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = video[..., top : top + crop_h, left : left + crop_w]
    flat = crop.reshape(-1, *crop.shape[-3:])
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*crop.shape[:-2], size, size)


def check_scale_jitter(size: int, scales: tuple[int, int]) -> None:
    """Raise :class:`~vlkd.errors.ConfigError` unless ``size <= scales[0] <= scales[1]``."""
    if not size <= scales[0] <= scales[1]:
        raise ConfigError(
            f"scale_jitter {list(scales)} must run from at least image_size ({size}, the crop size) upwards, "
            f"e.g. [{size}, {round(size * 8 / 7)}]"
        )


def scale_jitter_crop(video: torch.Tensor, size: int, rng: random.Random, scales: tuple[int, int]) -> torch.Tensor:
    """Shorter side resized to a random length in ``scales`` (inclusive), then one random ``size`` crop.

    The training crop of PySlowFast's video recipes (``TRAIN_JITTER_SCALES``), which
    FROSTER trains with: ``scales=(224, 256)`` for 224-pixel crops. It keeps at least
    ``size / scales[1]`` of the shorter side, a milder crop than :func:`random_resized_crop`.
    """
    check_scale_jitter(size, scales)
    video = resize_short_side(video, rng.randint(*scales))
    height, width = video.shape[-2:]
    top, left = rng.randint(0, height - size), rng.randint(0, width - size)
    return video[..., top : top + size, left : left + size]


def train_transform(
    video: torch.Tensor,
    size: int,
    rng: random.Random,
    flip: bool = True,
    scale_jitter: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Training view: a random crop, then a horizontal flip with probability 0.5 when allowed.

    The crop is :func:`scale_jitter_crop` over ``scale_jitter`` when it is given,
    :func:`random_resized_crop` otherwise. ``flip=False`` is required for datasets
    whose labels name a direction (Something-Something's "pushing something from
    left to right").
    """
    if scale_jitter is None:
        video = random_resized_crop(video, size, rng)
    else:
        video = scale_jitter_crop(video, size, rng, scale_jitter)
    if flip and rng.random() < 0.5:
        video = video.flip(-1)
    return video
