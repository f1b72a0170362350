"""Video clip datasets: a root folder plus an annotation list gives frames and labels.

Unreadable videos never cost an epoch: :class:`VideoClipDataset` catches
:class:`~vlkd.errors.VideoReadError`, draws another sample in its place, and
returns the skipped paths with the batch, so the training module can count and
report them at the end of the epoch even when decoding ran in worker processes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vlkd.data.annotations import VideoSample
from vlkd.data.sampling import FrameSampler
from vlkd.data.transforms import eval_transform, train_transform
from vlkd.data.video import read_clip
from vlkd.errors import VideoReadError, VlkdError


class TooManyUnreadableVideos(VlkdError):
    """Raised when many videos in a row fail: the root or the list is wrong, not one file."""


class VideoClipDataset(Dataset):
    """Clips of ``num_frames`` frames from the videos in ``samples``.

    Each item is a dict:

    * ``video``: training ``(T, C, H, W)``; evaluation ``(V, T, C, H, W)`` with
      ``V`` temporal views (logits are averaged over views); float in [0, 1].
    * ``label``: int, the class id local to this dataset's class list; ``-1`` in
      evaluation when the requested video was unreadable (the stand-in only keeps
      the batch shape, and evaluation leaves it out of the accuracy).
    * ``index``: int, the position of the sample actually returned.
    * ``skipped``: list of paths that failed and were replaced by this one.

    Args:
        root: folder the sample paths are relative to.
        samples: annotation rows.
        class_names: names for the label ids (kept for the caller's classifier).
        sampler: which frame indices to read.
        image_size: output side length in pixels.
        train: random crops, flips and frame offsets; otherwise centred and deterministic.
        flip: allow horizontal flips in training (False for direction-sensitive labels).
        scale_jitter: training crops by short-side scale jitter over this range
            (:func:`~vlkd.data.transforms.scale_jitter_crop`); ``None``: random resized crops.
        backend: video decoding backend (``None``: the default one).
        max_consecutive_failures: give up with a clear error after this many failures in a row.
        seed: seed of the evaluation views' (deterministic) randomness.
    """

    def __init__(
        self,
        root: str | Path,
        samples: Sequence[VideoSample],
        class_names: Sequence[str],
        sampler: FrameSampler,
        image_size: int = 224,
        train: bool = False,
        flip: bool = True,
        scale_jitter: tuple[int, int] | None = None,
        backend: str | None = None,
        max_consecutive_failures: int = 20,
        seed: int = 0,
    ):
        if not samples:
            raise VlkdError(f"empty annotation list for video root {root}: check the list file")
        self.root = Path(root)
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.sampler = sampler
        self.image_size = image_size
        self.train = train
        self.flip = flip
        self.scale_jitter = scale_jitter
        self.backend = backend
        self.max_consecutive_failures = max_consecutive_failures
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def path_of(self, index: int) -> Path:
        return self.root / self.samples[index].path

    def __getitem__(self, index: int) -> dict:
        # Training draws from torch's generator, which Lightning seeds and the
        # DataLoader gives each worker its own stream of (so epochs differ);
        # evaluation is a fixed function of the seed and the index.
        item_seed = int(torch.randint(2**62, ()).item()) if self.train else hash((self.seed, index))
        rng = random.Random(item_seed)
        skipped: list[str] = []
        while True:
            try:
                item = {**self._load(index, rng), "index": index, "skipped": skipped}
                if skipped and not self.train:
                    item["label"] = -1
                return item
            except VideoReadError as error:
                skipped.append(f"{error.path}: {error.reason}")
                if len(skipped) >= self.max_consecutive_failures:
                    raise TooManyUnreadableVideos(
                        f"{len(skipped)} videos in a row could not be read under {self.root} "
                        f"(last: {skipped[-1]}): check the data root and the annotation list"
                    ) from None
                index = rng.randrange(len(self.samples))

    def _load(self, index: int, rng: random.Random) -> dict:
        sample = self.samples[index]

        def choose(info) -> list[list[int]]:
            return self.sampler(info.num_frames, info.fps, train=self.train, rng=rng)

        views = read_clip(self.root / sample.path, choose, backend=self.backend)  # V x (T, C, H, W) uint8
        clips = torch.stack(views).float().div_(255.0)
        if self.train:
            video = train_transform(clips[0], self.image_size, rng, flip=self.flip, scale_jitter=self.scale_jitter)
        else:
            video = eval_transform(clips, self.image_size)
        return {"video": video, "label": sample.label}


def collate_clips(items: list[dict]) -> dict:
    """Stack videos and labels; concatenate the skipped-path lists."""
    return {
        "video": torch.stack([item["video"] for item in items]),
        "label": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        "skipped": [path for item in items for path in item["skipped"]],
    }
