"""Unlabelled SynthActions clips of random compositions: the offline world's "web video".

Label-free distillation (ResidualViT's tokenizer) is meant to run on large,
generic video collections, not on a benchmark's training classes.  In the
offline world that collection is :class:`RandomSynthClips`: clips of random
compositions of the whole vocabulary (:func:`~vlkd.data.synthetic.world.random_concepts`,
static or temporal with equal odds) in random styles, rendered on the fly, the
video counterpart of the captioned stills the teacher was pretrained on.  Like
those stills they may compose any class of either world, base or novel, as web
data covers benchmark classes too; no benchmark video and no label is used.

Every draw renders a new clip: its generator is seeded from torch's generator,
which Lightning seeds and the DataLoader gives each worker its own stream of
(as for training clips of :class:`~vlkd.data.datasets.VideoClipDataset`), so
every epoch sees new clips and a seeded run sees the same ones.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

from vlkd.data.synthetic.render import render_clip
from vlkd.data.synthetic.world import COLOURS, CONTEXTS, MOTION_AXES, MOTIONS, SHAPES, STYLES, Concepts, random_concepts
from vlkd.errors import ConfigError

_KEY = zlib.crc32(b"random-clips")


def vocabulary_names() -> list[str]:
    """Every composition of the vocabulary a clip can show (the text set of label-free distillation)."""
    names = [Concepts(c, s, context=k).name for c, s, k in itertools.product(COLOURS, SHAPES, CONTEXTS)]
    for colour, motion in itertools.product(COLOURS, MOTIONS):
        names += [Concepts(colour, shape, motion=motion).name for shape in MOTION_AXES[MOTIONS[motion][0]].shapes]
    return names


class RandomSynthClips(Dataset):
    """``length`` clips ``(frames, 3, size, size)`` in [0, 1] of random compositions (module docstring).

    Items are ``{"video", "label": -1, "index", "skipped": []}``, the layout of
    :class:`~vlkd.data.datasets.VideoClipDataset`, so the usual collate function applies.
    """

    def __init__(self, length: int, frames: int = 16, size: int = 64, styles: tuple[str, ...] = tuple(STYLES)):
        if length < 1 or frames < 1 or size < 1:
            raise ConfigError(f"random clips need length, frames and size >= 1, got {length}, {frames}, {size}")
        unknown = set(styles) - set(STYLES)
        if not styles or unknown:
            raise ConfigError(f"unknown SynthActions styles {sorted(unknown)}; known: {', '.join(STYLES)}")
        self.length, self.frames, self.size, self.styles = length, frames, size, tuple(styles)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((_KEY, int(torch.randint(2**62, ()).item())))
        style = self.styles[rng.integers(len(self.styles))]
        clip = render_clip(rng, random_concepts(rng), style, size=self.size, frames=self.frames)
        video = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div_(255.0)
        return {"video": video, "label": -1, "index": index, "skipped": []}
