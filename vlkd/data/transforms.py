"""Clip-level image transforms: every frame of a clip gets the same crop and flip.

Inputs and outputs are ``(..., T, C, H, W)`` float tensors in [0, 1]; the
teacher applies its own mean/std normalisation later, so these transforms only
choose pixels. Every crop is first drawn as a :class:`CropParams` and then
applied, so a view can be stored and cut again exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from vlkd.errors import ConfigError


@dataclass(frozen=True)
class CropParams:
    """One crop of a clip, stored so that exactly the same pixels can be cut again.

    Applied in order (:func:`apply_crop`): resize the whole frame to ``resize`` (``(0, 0)``:
    as it is), cut the box ``(top, left, height, width)``, resize the box to ``out`` x ``out``
    (0: as it is), and flip horizontally if ``flip``. Every crop of this module is one of these;
    ``vlkd cache`` stores them beside the teacher's outputs so training replays the view the
    teacher saw.
    """

    resize: tuple[int, int]
    box: tuple[int, int, int, int]
    out: int = 0
    flip: bool = False

    def to_list(self) -> list[int]:
        """Eight integers: resize height, width, box top, left, height, width, out, flip."""
        return [*self.resize, *self.box, self.out, int(self.flip)]

    @classmethod
    def from_list(cls, values) -> CropParams:
        values = [int(v) for v in values]
        return cls(tuple(values[0:2]), tuple(values[2:6]), values[6], bool(values[7]))


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H', W') with the shorter side ``size`` and the aspect ratio kept (as :func:`resize_short_side`)."""
    scale = size / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


def _resize(video: torch.Tensor, new_hw: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    lead = video.shape[:-3]
    flat = video.reshape(-1, *video.shape[-3:])
    out = F.interpolate(flat, size=new_hw, mode=mode, align_corners=False, antialias=True)
    return out.reshape(*lead, *out.shape[-3:])


def resize_short_side(video: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize (..., C, H, W) so the shorter side equals ``size``, keeping the aspect ratio."""
    new_hw = short_side_size(*video.shape[-2:], size)
    if new_hw == tuple(video.shape[-2:]):
        return video
    return _resize(video, new_hw, mode)


def center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    height, width = video.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return video[..., top : top + size, left : left + size]


def eval_transform(video: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Test-time view: shorter side to ``size``, centre crop ``size`` x ``size`` (one crop).

    Input already at ``size`` x ``size`` is returned unchanged.
    """
    return center_crop(resize_short_side(video, size, mode), size)


def apply_crop(video: torch.Tensor, crop: CropParams) -> torch.Tensor:
    """Cut ``crop`` (see :class:`CropParams`) out of (..., C, H, W) pixels."""
    if crop.resize != (0, 0) and crop.resize != tuple(video.shape[-2:]):
        video = _resize(video, crop.resize)
    top, left, height, width = crop.box
    video = video[..., top : top + height, left : left + width]
    if crop.out:
        video = _resize(video, (crop.out, crop.out))
    return video.flip(-1) if crop.flip else video


def eval_crop(height: int, width: int, size: int) -> CropParams:
    """The crop of :func:`eval_transform` for frames of ``height`` x ``width``."""
    new_h, new_w = short_side_size(height, width, size)
    return CropParams((new_h, new_w), ((new_h - size) // 2, (new_w - size) // 2, size, size))


def sample_resized_crop(
    height: int,
    width: int,
    size: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> CropParams:
    """A random area/aspect box of ``height`` x ``width`` frames, resized to ``size`` x ``size``."""
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
    return CropParams((0, 0), (top, left, crop_h, crop_w), out=size)


def random_resized_crop(
    video: torch.Tensor,
    size: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """One random area/aspect crop, the same for all frames, resized to ``size`` x ``size``."""
    return apply_crop(video, sample_resized_crop(*video.shape[-2:], size, rng, scale, ratio))


def check_scale_jitter(size: int, scales: tuple[int, int]) -> None:
    """Raise :class:`~vlkd.errors.ConfigError` unless ``size <= scales[0] <= scales[1]``."""
    if not size <= scales[0] <= scales[1]:
        raise ConfigError(
            f"scale_jitter {list(scales)} must run from at least image_size ({size}, the crop size) upwards, "
            f"e.g. [{size}, {round(size * 8 / 7)}]"
        )


def sample_scale_jitter_crop(height: int, width: int, size: int, rng: random.Random,
                             scales: tuple[int, int]) -> CropParams:
    """Shorter side to a random length in ``scales`` (inclusive), then a random ``size`` box of that."""
    check_scale_jitter(size, scales)
    new_h, new_w = short_side_size(height, width, rng.randint(*scales))
    top, left = rng.randint(0, new_h - size), rng.randint(0, new_w - size)
    return CropParams((new_h, new_w), (top, left, size, size))


def scale_jitter_crop(video: torch.Tensor, size: int, rng: random.Random, scales: tuple[int, int]) -> torch.Tensor:
    """Shorter side resized to a random length in ``scales`` (inclusive), then one random ``size`` crop.

    The training crop of PySlowFast's video recipes (``TRAIN_JITTER_SCALES``), which
    FROSTER trains with: ``scales=(224, 256)`` for 224-pixel crops. It keeps at least
    ``size / scales[1]`` of the shorter side, a milder crop than :func:`random_resized_crop`.
    """
    return apply_crop(video, sample_scale_jitter_crop(*video.shape[-2:], size, rng, scales))


def sample_train_crop(
    height: int,
    width: int,
    size: int,
    rng: random.Random,
    flip: bool = True,
    scale_jitter: tuple[int, int] | None = None,
) -> CropParams:
    """The crop :func:`train_transform` takes of ``height`` x ``width`` frames (same draws, same order)."""
    if scale_jitter is None:
        crop = sample_resized_crop(height, width, size, rng)
    else:
        crop = sample_scale_jitter_crop(height, width, size, rng, scale_jitter)
    if flip and rng.random() < 0.5:
        crop = replace(crop, flip=True)
    return crop


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
    return apply_crop(video, sample_train_crop(*video.shape[-2:], size, rng, flip, scale_jitter))
