"""Image data: CoOp's ``split_zhou`` files, SimCLR-style labelled-subset lists, ImageNet folders, a dataset.

Formats read and written here are the ones real image benchmarks come in:

* **CoOp** (Zhou et al., "Learning to Prompt for Vision-Language Models"): a
  dataset folder holds its images and one ``split_zhou_<Name>.json`` with
  ``{"train": [[path, label, class name], ...], "val": [...], "test": [...]}``,
  paths relative to the image folder, labels ``0..C-1`` (:func:`read_split_zhou`);
* **SimCLR's labelled subsets** (Chen et al. 2020): one training file name per
  line, the labelled part of a semi-supervised split; the rest of the training
  set is the unlabelled pool (:func:`read_subset_list`, :func:`split_labelled`).
  ImageNet's 1 % and 10 % lists ship in ``data/semi_supervised``
  (:func:`load_imagenet_subset`);
* **ImageNet's folder layout**: ``train/<WordNet id>/<file>`` and
  ``val/<WordNet id>/<file>`` (:func:`image_folder_samples`), class names from
  open_clip's ImageNet list in WordNet-id order (:func:`imagenet_class_names`).

:class:`ImageDataset` decodes images (PNG, JPEG, ...) with torchvision and cuts the
training view (a random resized crop and a flip, drawn as a
:class:`~vlkd.data.transforms.CropParams`) or the evaluation view (shorter side
resized, centre crop). An unreadable image is skipped, replaced and reported, as
an unreadable video is (:class:`~vlkd.data.datasets.SkippingDataset`). A training
view is drawn first and then cut (:class:`ImageView`), so ``vlkd cache`` can store the
crops it showed the teacher and training can replay them with the teacher's outputs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vlkd.data.datasets import SkippingDataset, with_teacher_targets
from vlkd.data.transforms import CropParams, apply_crop, eval_crop, sample_resized_crop
from vlkd.errors import ConfigError, ImageReadError, MissingFileError, VlkdError
from vlkd.paths import asset_path

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageDataset",
    "ImageSample",
    "ImageView",
    "collate_images",
    "few_shot_subset",
    "image_folder_samples",
    "imagenet_class_names",
    "load_imagenet_subset",
    "read_split_zhou",
    "read_subset_list",
    "split_labelled",
    "write_split_zhou",
    "write_subset_list",
]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff")
IMAGENET_SUBSETS = ("1percent", "10percent")


@dataclass(frozen=True)
class ImageSample:
    """One image: its path relative to the dataset's image folder, and its class id."""

    path: str
    label: int


# --------------------------------------------------------------------------- CoOp split files


def read_split_zhou(path: str | Path) -> tuple[dict[str, list[ImageSample]], list[str]]:
    """The splits and class names of a CoOp ``split_zhou_*.json`` file.

    Returns ``({"train": [...], "val": [...], "test": [...]}, class_names)``, class names
    ordered by label. Rows must be ``[path, label, class name]`` with one name per label.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(path, "CoOp split file", "give the split_zhou_<Name>.json of the dataset")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a JSON split file ({error})") from None
    if not isinstance(content, dict) or not content:
        raise ConfigError(f'{path}: expected {{"train": [...], "val": [...], "test": [...]}}')
    names: dict[int, str] = {}
    splits: dict[str, list[ImageSample]] = {}
    for split, rows in content.items():
        if not isinstance(rows, list):
            raise ConfigError(f"{path}: split {split!r} must be a list of [path, label, class name] rows")
        samples = []
        for number, row in enumerate(rows):
            if (not isinstance(row, list) or len(row) != 3 or not isinstance(row[0], str)
                    or not isinstance(row[1], int) or isinstance(row[1], bool) or row[1] < 0 or not isinstance(row[2], str)):
                raise ConfigError(f"{path}: {split}[{number}] must be [path, label >= 0, class name], got {row!r:.120}")
            image, label, name = row
            if names.setdefault(label, name) != name:
                raise ConfigError(f"{path}: label {label} is named both {names[label]!r} and {name!r}")
            samples.append(ImageSample(image, label))
        splits[split] = samples
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(max(names) + 1)) - set(names))
        raise ConfigError(f"{path}: labels must be 0..C-1; no row has label(s) {missing[:10]}")
    return splits, [names[label] for label in range(len(names))]


def write_split_zhou(path: str | Path, splits: dict[str, Sequence[ImageSample]], class_names: Sequence[str]) -> Path:
    """Write ``splits`` as a CoOp ``split_zhou`` file (the inverse of :func:`read_split_zhou`)."""
    path = Path(path)
    content = {split: [[s.path, s.label, class_names[s.label]] for s in samples] for split, samples in splits.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- labelled subsets


def read_subset_list(path: str | Path) -> list[str]:
    """A SimCLR-style subset list: one file name (or relative path) per line; blank lines and ``#`` comments skipped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(path, "labelled-subset list", "give a file with one training image name per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise ConfigError(f"{path}: the labelled-subset list is empty")
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: lists some images twice")
    return names


def write_subset_list(path: str | Path, names: Sequence[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return path


def load_imagenet_subset(name: str) -> list[tuple[str, str]]:
    """SimCLR's ImageNet labelled subset ``"1percent"`` or ``"10percent"``: ``(file name, WordNet id)`` rows.

    12,811 and 128,116 rows over the 1,000 classes; the rest of the training set is the unlabelled pool.
    """
    if name not in IMAGENET_SUBSETS:
        raise ConfigError(f"unknown ImageNet subset {name!r}: use one of {IMAGENET_SUBSETS}")
    files = read_subset_list(asset_path("semi_supervised", f"{name}.txt"))
    return [(file, file.split("_", 1)[0]) for file in files]


def split_labelled(pool: Sequence[ImageSample], listed: Sequence[str]) -> tuple[list[ImageSample], list[ImageSample]]:
    """``(labelled, unlabelled)``: the pool's images named by ``listed`` (by relative path or by file name), and the rest.

    Every listed name must match exactly one image of the pool.
    """
    by_path = {sample.path: sample for sample in pool}
    by_name: dict[str, list[ImageSample]] = {}
    for sample in pool:
        by_name.setdefault(Path(sample.path).name, []).append(sample)
    labelled = []
    for name in listed:
        if name in by_path:
            labelled.append(by_path[name])
            continue
        matches = by_name.get(Path(name).name, [])
        if len(matches) != 1:
            problem = "is not in" if not matches else f"matches {len(matches)} images of"
            raise ConfigError(f"labelled image {name!r} {problem} the training set: the subset list does not "
                              "belong to this dataset (or the image folder is incomplete)")
        labelled.append(matches[0])
    chosen = {sample.path for sample in labelled}
    return labelled, [sample for sample in pool if sample.path not in chosen]


def few_shot_subset(pool: Sequence[ImageSample], shots: int, seed: int) -> list[ImageSample]:
    """``shots`` images per class drawn from ``pool`` without replacement (all of a class that has fewer), per seed.

    The draw depends only on ``seed`` and the pool's order, as CoOp's few-shot lists do.
    """
    if shots < 1:
        raise ConfigError(f"shots must be >= 1, got {shots}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[ImageSample]] = {}
    for sample in pool:
        by_class.setdefault(sample.label, []).append(sample)
    chosen = []
    for label in sorted(by_class):
        items = by_class[label]
        picks = rng.permutation(len(items))[:shots]
        chosen += [items[i] for i in sorted(picks)]
    return chosen


# --------------------------------------------------------------------------- ImageNet


def image_folder_samples(root: str | Path, class_ids: Sequence[str]) -> list[ImageSample]:
    """Images under ``root/<class id>/`` for every id of ``class_ids`` (label = its position), sorted by path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError(root, "image folder", "set it to the folder holding one sub-folder per class")
    samples = []
    for label, class_id in enumerate(class_ids):
        folder = root / class_id
        if not folder.is_dir():
            raise MissingFileError(folder, f"folder of class {class_id}", "the image folder lacks this class")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        samples += [ImageSample(f"{class_id}/{p.name}", label) for p in files]
    if not samples:
        raise VlkdError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return samples


def imagenet_class_names() -> list[str]:
    """ImageNet-1k's class names in WordNet-id order (open_clip's list, as CLIP's zero-shot evaluation uses)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


# --------------------------------------------------------------------------- dataset


def read_image(path: Path) -> torch.Tensor:
    """An RGB image as a (3, H, W) uint8 tensor; :class:`~vlkd.errors.ImageReadError` if it cannot be decoded."""
    from torchvision.io import ImageReadMode, decode_image

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ImageReadError(path, error.strerror or str(error)) from None
    if not raw:  # torch.frombuffer refuses an empty buffer
        raise ImageReadError(path, "the file is empty")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as error:
        raise ImageReadError(path, " ".join(str(error).split())[:200] or "cannot be decoded") from None


@dataclass(frozen=True)
class ImageView:
    """One view of an image: the crop and flip that cut it (:class:`~vlkd.data.transforms.CropParams`)."""

    crop: CropParams

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"crop": torch.tensor(self.crop.to_list(), dtype=torch.int32)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> ImageView:
        return cls(CropParams.from_list(tensors["crop"].tolist()))


class ImageDataset(SkippingDataset):
    """Images of ``samples`` under ``root``, as items ``{"image": (3, S, S) float in [0, 1], "label", "index", "skipped"}``.

    Args:
        root: folder the sample paths are relative to.
        samples: the images and their labels.
        class_names: names of the label ids.
        image_size: side ``S`` of the output.
        train: a random resized crop (area fraction in ``crop_scale``, aspect 3/4 to 4/3) and a
            horizontal flip when ``flip``; otherwise the shorter side resized to ``S`` and a
            centre crop.
        crop_scale: the area range of the training crops (DHO: 0.5 to 1).
        flip: horizontal flips in training.
        max_consecutive_failures: give up with a clear error after this many unreadable images in a row.
        seed: seed of the evaluation items' (deterministic) randomness.

    A training dataset given a teacher cache (:meth:`use_teacher_cache`) replays the cache's
    stored crops instead of drawing new ones, and each item then carries the teacher's
    outputs for exactly its pixels under ``"teacher"``.
    """

    pixels_key = "image"  # the batch key of this dataset's pixels (what a teacher cache's builder passes on)

    def __init__(self, root: str | Path, samples: Sequence[ImageSample], class_names: Sequence[str],
                 image_size: int = 224, train: bool = False, crop_scale: tuple[float, float] = (0.5, 1.0),
                 flip: bool = True, max_consecutive_failures: int = 20, seed: int = 0):
        super().__init__(root, samples, class_names, train, seed, max_consecutive_failures,
                         "no images: check the split file or subset list")
        low, high = crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}")
        self.image_size = image_size
        self.crop_scale = (float(low), float(high))
        self.flip = flip
        self.teacher_cache = None  # a vlkd.teacher.cache.TeacherCache, see use_teacher_cache
        self.cache_rows: list[int] = []  # the cache's sample number of each of this dataset's samples

    def use_teacher_cache(self, cache, rows: Sequence[int]) -> None:
        """Replay ``cache``'s views in training; ``rows[i]``: the cache's sample number of sample ``i``."""
        if len(rows) != len(self.samples):
            raise ValueError(f"{len(rows)} cache rows for {len(self.samples)} samples")
        self.teacher_cache, self.cache_rows = cache, list(rows)

    def draw_view(self, index: int, rng: random.Random, evaluation: bool = False) -> tuple[torch.Tensor, ImageView]:
        """Decode image ``index`` and draw one view: (3, S, S) pixels in [0, 1] and the :class:`ImageView`.

        A training view (random resized crop, then a flip), or with ``evaluation`` the
        deterministic evaluation view (shorter side resized, centre crop).
        """
        pixels = self.read_pixels(index)
        height, width = pixels.shape[-2:]
        if evaluation:
            crop = eval_crop(height, width, self.image_size)
        else:
            crop = sample_resized_crop(height, width, self.image_size, rng, scale=self.crop_scale)
            if self.flip and rng.random() < 0.5:
                crop = replace(crop, flip=True)
        return apply_crop(pixels, crop), ImageView(crop)

    def read_pixels(self, index: int) -> torch.Tensor:
        """Image ``index`` as (3, H, W) floats in [0, 1] (a subclass may read them from elsewhere than files)."""
        return read_image(self.path_of(index)).float().div_(255.0)

    def placeholder_view(self) -> tuple[torch.Tensor, ImageView]:
        """A zero image and view: what a cache build records for an image it cannot read."""
        size = self.image_size
        return torch.zeros(3, size, size), ImageView(CropParams((0, 0), (0, 0, size, size)))

    def _load(self, index: int, rng: random.Random, pass_number: int | None = None) -> dict:
        label = self.samples[index].label
        if not self.train:
            return {"image": self.draw_view(index, rng, evaluation=True)[0], "label": label}
        if self.teacher_cache is None:
            return {"image": self.draw_view(index, rng)[0], "label": label}
        cache, row = self.teacher_cache, self.cache_rows[index]
        if not cache.has(row):
            raise ImageReadError(self.path_of(index), "not in the teacher cache (it was unreadable when the cache "
                                 "was built)")
        # Pass p takes stored view p mod K (see vlkd.data.datasets.EpochSampler).
        view = pass_number % cache.views if pass_number is not None else rng.randrange(cache.views)
        crop = ImageView.from_tensors(cache.view(row, view)).crop
        pixels = apply_crop(self.read_pixels(index), crop)
        return {"image": pixels, "label": label, "teacher": cache.targets(row, view)}


def collate_images(items: list[dict]) -> dict:
    """Stack images, labels and cached teacher outputs; concatenate the skipped-file lists."""
    batch = {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        "skipped": [path for item in items for path in item["skipped"]],
    }
    return with_teacher_targets(batch, items)
