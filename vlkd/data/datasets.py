"""Video clip datasets: a root folder plus an annotation list gives frames and labels.

Unreadable videos never cost an epoch: :class:`VideoClipDataset` catches
:class:`~vlkd.errors.VideoReadError`, draws another sample in its place, and
returns the skipped paths with the batch, so the training module can count and
report them at the end of the epoch even when decoding ran in worker processes.

A training view is a :class:`ClipView` (frame indices and a crop), drawn first
and then cut, so it can be stored and cut again: ``vlkd cache`` stores the views
it showed the teacher, and a dataset given that cache (``teacher_cache``) replays
one of them each time, with the teacher's outputs for exactly those pixels. Fed
by an :class:`EpochSampler`, it shows view ``e mod K`` in epoch ``e``, so with
``K`` at least the number of epochs every epoch brings each sample a view it has
not shown before, as live augmentation does (FKD stores one view per epoch for the
same reason). Drawn at random instead, 8 views over 8 epochs leave about a third
of the epochs repeating a view (see the README's teacher service section for what
that cost FROSTER).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from vlkd.data.annotations import VideoSample
from vlkd.data.sampling import FrameSampler
from vlkd.data.transforms import CropParams, apply_crop, eval_crop, eval_transform, sample_train_crop
from vlkd.data.video import read_clip
from vlkd.errors import MediaReadError, VideoReadError, VlkdError


@dataclass(frozen=True)
class ClipView:
    """One view of a video: which frames, then which crop (:class:`~vlkd.data.transforms.CropParams`)."""

    frames: tuple[int, ...]
    crop: CropParams

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"frames": torch.tensor(self.frames, dtype=torch.int32),
                "crop": torch.tensor(self.crop.to_list(), dtype=torch.int32)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> ClipView:
        return cls(tuple(int(i) for i in tensors["frames"].tolist()), CropParams.from_list(tensors["crop"].tolist()))


class TooManyUnreadableVideos(VlkdError):
    """Raised when many files in a row fail: the root or the list is wrong, not one file."""


class SkippingDataset(Dataset):
    """A dataset of files that skips the unreadable ones: what video and image datasets share.

    A subclass passes the shared settings to ``__init__`` and implements ``_load(index, rng, pass_number) -> dict``, raising
    :class:`~vlkd.errors.MediaReadError` for a file it cannot read. :meth:`__getitem__` then
    returns the item with ``index`` (the sample actually returned) and ``skipped`` (the files
    that failed and were replaced by a random other sample, reported by the method at the
    end of the epoch); in evaluation a replaced item gets label ``-1`` and is left out of
    the accuracy.
    """

    def __init__(self, root: str | Path, samples: Sequence, class_names: Sequence[str], train: bool, seed: int,
                 max_consecutive_failures: int, empty_hint: str):
        if not samples:
            raise VlkdError(f"no samples for {root}: {empty_hint}")
        self.root = Path(root)
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.train = train
        self.seed = seed
        self.max_consecutive_failures = max_consecutive_failures

    def __len__(self) -> int:
        return len(self.samples)

    def path_of(self, index: int) -> Path:
        return self.root / self.samples[index].path

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        # An EpochSampler hands over (index, pass): the pass number picks a cached sample's stored view.
        index, pass_number = index if isinstance(index, tuple) else (index, None)
        # Training draws from torch's generator, which Lightning seeds and the
        # DataLoader gives each worker its own stream of (so epochs differ);
        # evaluation is a fixed function of the seed and the index.
        item_seed = int(torch.randint(2**62, ()).item()) if self.train else hash((self.seed, index))
        rng = random.Random(item_seed)
        skipped: list[str] = []
        while True:
            try:
                item = {**self._load(index, rng, pass_number), "index": index, "skipped": skipped}
                if skipped and not self.train:
                    item["label"] = -1
                return item
            except MediaReadError as error:
                skipped.append(f"{error.path}: {error.reason}")
                if len(skipped) >= self.max_consecutive_failures:
                    raise TooManyUnreadableVideos(
                        f"{len(skipped)} {error.kind}s in a row could not be read under {self.root} "
                        f"(last: {skipped[-1]}): check the data root and the annotation list"
                    ) from None
                index = rng.randrange(len(self.samples))

    def _load(self, index: int, rng: random.Random, pass_number: int | None = None) -> dict:
        raise NotImplementedError


class VideoClipDataset(SkippingDataset):
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
        super().__init__(root, samples, class_names, train, seed, max_consecutive_failures,
                         "the annotation list is empty: check the list file")
        self.sampler = sampler
        self.image_size = image_size
        self.flip = flip
        self.scale_jitter = scale_jitter
        self.backend = backend
        # A vlkd.teacher.cache.TeacherCache whose stored views training replays (set by the data module).
        self.teacher_cache = None

    pixels_key = "video"  # the batch key of this dataset's pixels (what a teacher cache's builder passes on)

    def placeholder_view(self) -> tuple[torch.Tensor, ClipView]:
        """A zero clip and view: what a cache build records for a video it cannot read."""
        size, frames = self.image_size, self.sampler.num_frames
        return torch.zeros(frames, 3, size, size), ClipView((0,) * frames, CropParams((0, 0), (0, 0, size, size)))

    def _load(self, index: int, rng: random.Random, pass_number: int | None = None) -> dict:
        sample = self.samples[index]
        if self.train and self.teacher_cache is not None:
            return self._load_cached(index, rng, pass_number)
        if self.train:
            video, _ = self.draw_view(index, rng)
            return {"video": video, "label": sample.label}

        def choose(info) -> list[list[int]]:
            return self.sampler(info.num_frames, info.fps, train=False, rng=rng)

        views = read_clip(self.root / sample.path, choose, backend=self.backend)  # V x (T, C, H, W) uint8
        return {"video": eval_transform(torch.stack(views).float().div_(255.0), self.image_size),
                "label": sample.label}

    def draw_view(self, index: int, rng: random.Random, evaluation: bool = False) -> tuple[torch.Tensor, ClipView]:
        """Decode sample ``index`` and draw one view: (T, C, H, W) pixels in [0, 1] and the :class:`ClipView`.

        A training view (random frames, crop and flip, as training draws them), or with
        ``evaluation`` the deterministic single evaluation view (centred frames and crop).
        """
        chosen: list[int] = []

        def choose(info) -> list[list[int]]:
            if evaluation:
                views = replace(self.sampler, num_views=1)(info.num_frames, info.fps, train=False)
            else:
                views = self.sampler(info.num_frames, info.fps, train=True, rng=rng)
            chosen.extend(views[0])
            return views[:1]

        (frames,) = read_clip(self.path_of(index), choose, backend=self.backend)
        frames = frames.float().div_(255.0)
        height, width = frames.shape[-2:]
        if evaluation:
            crop = eval_crop(height, width, self.image_size)
        else:
            crop = sample_train_crop(height, width, self.image_size, rng, self.flip, self.scale_jitter)
        return apply_crop(frames, crop), ClipView(tuple(chosen), crop)

    def replay_view(self, index: int, view: ClipView) -> torch.Tensor:
        """(T, C, H, W) the pixels of a stored view of sample ``index``: the same frames, the same crop."""
        (frames,) = read_clip(self.path_of(index), lambda info: [list(view.frames)], backend=self.backend)
        return apply_crop(frames.float().div_(255.0), view.crop)

    def _load_cached(self, index: int, rng: random.Random, pass_number: int | None) -> dict:
        cache = self.teacher_cache
        if not cache.has(index):
            raise VideoReadError(self.path_of(index), "not in the teacher cache (it was unreadable when the cache was built)")
        # The stored views are independent draws: pass p (epoch e) takes view p mod K (see the module docstring).
        view_index = pass_number % cache.views if pass_number is not None else rng.randrange(cache.views)
        view = ClipView.from_tensors(cache.view(index, view_index))
        return {"video": self.replay_view(index, view), "label": self.samples[index].label,
                "teacher": cache.targets(index, view_index)}


class EpochSampler(Sampler):
    """A new random order every pass that also tells the dataset which pass: yields ``(index, pass)``.

    A dataset replaying a teacher cache shows view ``pass mod K`` in that pass. A loader is
    usually passed over once per epoch (``pass = epoch``); one that cycles within an epoch
    (the labelled images of a semi-supervised epoch, iterated ``passes_per_epoch`` times
    while the unlabelled pool is passed once) numbers its passes ``epoch x passes_per_epoch
    + i``, so each cycle brings the next stored view rather than the same one again.

    Lightning calls :meth:`set_epoch` before each epoch (also after resuming, and on every DDP
    rank through its sampler wrapper). The order depends only on the pass and a base seed
    drawn from torch's generator at construction (which ``seed_everything`` sets alike on
    every rank), so all ranks agree on it, as Lightning's distributed wrapper requires.
    """

    def __init__(self, size: int, passes_per_epoch: int = 1):
        self.size = size
        self.passes_per_epoch = max(1, passes_per_epoch)
        self.epoch = 0
        self.passes_this_epoch = 0
        self.base_seed = int(torch.randint(2**62, ()).item())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.passes_this_epoch = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        number = self.epoch * self.passes_per_epoch + min(self.passes_this_epoch, self.passes_per_epoch - 1)
        self.passes_this_epoch += 1
        generator = torch.Generator().manual_seed(self.base_seed + number)
        return iter([(index, number) for index in torch.randperm(self.size, generator=generator).tolist()])


def collate_clips(items: list[dict]) -> dict:
    """Stack videos, labels and cached teacher outputs; concatenate the skipped-path lists."""
    batch = {
        "video": torch.stack([item["video"] for item in items]),
        "label": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        "skipped": [path for item in items for path in item["skipped"]],
    }
    return with_teacher_targets(batch, items)


def with_teacher_targets(batch: dict, items: list[dict]) -> dict:
    """``batch`` with the items' cached teacher outputs stacked under ``"teacher"``, when they carry any."""
    if "teacher" in items[0]:
        batch["teacher"] = {name: torch.stack([item["teacher"][name] for item in items]) for name in items[0]["teacher"]}
    return batch
