"""Image regions as teacher inputs: the crop rule that turns a box into a CLIP image.

Detection distillation (ViLD, EZAD) embeds object boxes with CLIP's image tower.
How a box becomes an image matters: EZAD enlarges each box 1.2 times for context,
clips it to the image, keeps at least 10 pixels a side, and pads it with zeros
to a centred square so that CLIP's resize does not stretch it. :class:`RegionCrop`
names those choices; :func:`crop_regions` applies them, the same way in the
training process and on the teacher server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlkd.errors import ConfigError


@dataclass(frozen=True)
class RegionCrop:
    """How a box is cut out of its image.

    Args:
        enlarge: the box's width and height are multiplied by this about its centre (EZAD: 1.2).
        min_size: sides shorter than this many pixels are widened about the centre (EZAD: 10).
        square: zero-pad the crop to a centred square (EZAD: yes), instead of letting the
            teacher's preprocessing (shorter side resize, centre crop) cut its longer side.
    """

    enlarge: float = 1.0
    min_size: int = 1
    square: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.enlarge, (int, float)) and math.isfinite(self.enlarge) and self.enlarge > 0):
            raise ConfigError(f"region crop enlarge must be a number > 0, got {self.enlarge!r}")
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, int) or self.min_size < 1:
            raise ConfigError(f"region crop min_size must be an integer >= 1, got {self.min_size!r}")


def check_boxes(boxes: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Validate (M, 5) boxes ``[image index, x0, y0, x1, y1]`` against images of (H, W) ``sizes``.

    Returns the boxes as float64. Raises :class:`~vlkd.errors.ConfigError` naming the first bad row.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ConfigError(f"boxes must have shape (M, 5): [image index, x0, y0, x1, y1]; got {tuple(boxes.shape)}")
    if boxes.shape[0] == 0:
        raise ConfigError("boxes is empty: give at least one [image index, x0, y0, x1, y1] row")
    boxes = boxes.detach().to("cpu", torch.float64)
    for row, (index, x0, y0, x1, y1) in enumerate(boxes.tolist()):
        if not all(math.isfinite(v) for v in (index, x0, y0, x1, y1)):
            raise ConfigError(f"box {row} has a value that is not finite: {[index, x0, y0, x1, y1]}")
        if index != int(index) or not 0 <= index < len(sizes):
            raise ConfigError(f"box {row} names image {index:g}, but there are {len(sizes)} image(s)")
        if not (x1 > x0 and y1 > y0):
            raise ConfigError(f"box {row} is empty: need x1 > x0 and y1 > y0, got {[x0, y0, x1, y1]}")
        height, width = sizes[int(index)]
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise ConfigError(f"box {row} {[x0, y0, x1, y1]} lies outside its {width}x{height} image")
    return boxes


def _crop_bounds(x0: float, y0: float, x1: float, y1: float, width: int, height: int, rule: RegionCrop):
    """Integer pixel bounds of a box after enlarging, widening to ``min_size`` and clipping."""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) * rule.enlarge, (y1 - y0) * rule.enlarge
    w, h = max(w, rule.min_size), max(h, rule.min_size)
    left, right = max(0, math.floor(cx - w / 2)), min(width, math.ceil(cx + w / 2))
    top, bottom = max(0, math.floor(cy - h / 2)), min(height, math.ceil(cy + h / 2))
    # Clipping at an image edge can leave a side below min_size: extend it inwards.
    if right - left < rule.min_size:
        left, right = (max(0, right - rule.min_size), right) if right == width else (left, min(width, left + rule.min_size))
    if bottom - top < rule.min_size:
        top, bottom = (max(0, bottom - rule.min_size), bottom) if bottom == height else (top, min(height, top + rule.min_size))
    return left, top, right, bottom


def crop_regions(images, boxes: torch.Tensor, rule: RegionCrop | None = None) -> list[torch.Tensor]:
    """Cut every box out of its image by ``rule``.

    Args:
        images: (B, 3, H, W) pixels, or a list of (3, H_i, W_i) images of different sizes.
        boxes: (M, 5) rows ``[image index, x0, y0, x1, y1]`` in pixel coordinates of that image.
        rule: the crop rule (default: the box as it is).

    Returns:
        M crops (3, h, w), zero-padded squares when ``rule.square``; the teacher resizes them.
    """
    rule = rule or RegionCrop()
    images = list(images) if not isinstance(images, torch.Tensor) else list(images.unbind(0))
    for image in images:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ConfigError(f"region images must be (3, H, W) each, got {tuple(image.shape)}")
    sizes = [tuple(image.shape[-2:]) for image in images]
    crops = []
    for index, x0, y0, x1, y1 in check_boxes(boxes, sizes).tolist():
        image = images[int(index)]
        height, width = image.shape[-2:]
        left, top, right, bottom = _crop_bounds(x0, y0, x1, y1, width, height, rule)
        crop = image[:, top:bottom, left:right]
        if rule.square and crop.shape[1] != crop.shape[2]:
            side = max(crop.shape[1:])
            pad_h, pad_w = side - crop.shape[1], side - crop.shape[2]
            crop = F.pad(crop, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        crops.append(crop)
    return crops
