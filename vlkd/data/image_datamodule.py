"""The LightningDataModule for semi-supervised and few-shot image classification (DHO's protocols).

A training step gets a labelled and an unlabelled batch side by side
(``batch["labelled"]``, ``batch["unlabelled"]``): one epoch is one pass over the
unlabelled pool while the labelled loader cycles (Lightning's ``max_size_cycle``),
as in DHO's ImageNet training. Evaluation has a ``val`` loop (where a method tunes
what it tunes after training, e.g. DHO's alpha and beta) and a ``test`` loop, each
on its own split; results name them ``val_*`` and ``test_*``.

Two layouts:

* ``layout: coop``: a CoOp dataset, ``root`` its image folder and ``split_file``
  its ``split_zhou_*.json`` (train / val / test). The offline SynthImages world
  (``vlkd synth images``) is written this way.
* ``layout: imagenet``: ``root/train/<WordNet id>/*`` and ``root/val/<WordNet id>/*``
  (ImageNet's val images sorted into class folders, the usual layout); the
  ``val`` split of the files is the *test* set, as in every ImageNet paper, and
  the validation set is ``val_per_class`` images per class held out of the
  unlabelled training pool, so that nothing is tuned on the test set.

The labelled part of the training split is a subset list (``labelled``: a file of
SimCLR's format, or ``1percent`` / ``10percent`` for ImageNet's shipped lists), or
``shots`` images per class drawn with ``shot_seed``, or, with neither, the whole
training split. Everything else of the training split is the unlabelled pool.

With ``teacher_cache`` (a folder ``vlkd cache`` wrote for the config), training
replays the crops stored there and each batch carries the teacher's outputs for
them. The cache covers the whole training split (``train_dataset``), whatever part
of it is labelled, so one cache serves the 1 %, 10 % and few-shot runs of a dataset
alike. Each pass over a loader takes the next stored view: the unlabelled pool is
passed once per epoch, the labelled images once per cycle.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from vlkd.data.datamodule import EvalSet
from vlkd.data.datasets import EpochSampler
from vlkd.data.images import (
    IMAGENET_SUBSETS,
    ImageDataset,
    ImageSample,
    collate_images,
    few_shot_subset,
    image_folder_samples,
    imagenet_class_names,
    load_imagenet_subset,
    read_split_zhou,
    read_subset_list,
    split_labelled,
)
from vlkd.errors import ConfigError, MissingFileError

LAYOUTS = ("coop", "imagenet")


class ImageDataModule(pl.LightningDataModule):
    """Labelled, unlabelled, validation and test images (see the module docstring).

    Args:
        root: the image folder (``coop``) or the folder holding ``train/`` and ``val/`` (``imagenet``).
        layout: ``coop`` or ``imagenet``.
        split_file: the CoOp ``split_zhou_*.json`` (``coop`` only).
        labelled: a subset list naming the labelled training images (paths relative to the
            image folder, or file names), or ``1percent`` / ``10percent`` (ImageNet's).
        shots: instead of ``labelled``, this many labelled images per class drawn with ``shot_seed``.
        shot_seed: the seed of the few-shot draw (1, 2, 3: the usual three splits).
        val_per_class: images per class held out of the unlabelled pool as the validation
            split; ``None``: the layout's own validation split (``coop``), or 10 (``imagenet``).
        image_size: side of the square images the model gets.
        crop_scale: area range of the training crops (random resized crop, then a flip).
        flip: horizontal flips in training.
        batch_size: labelled images per training step.
        unlabelled_batch_size: unlabelled images per training step (default ``batch_size``: 1 : 1).
        eval_batch_size: images per evaluation batch (default ``2 x batch_size``).
        num_workers: decoding worker processes per loader.
        seed: seed of the evaluation items and of the validation hold-out.
        teacher_cache: a folder written by ``vlkd cache`` for this config: training replays its
            stored crops, with the teacher's outputs for them (see the module docstring).
    """

    def __init__(self, root: str, layout: str = "coop", split_file: str | None = None, labelled: str | None = None,
                 shots: int | None = None, shot_seed: int = 1, val_per_class: int | None = None,
                 image_size: int = 224, crop_scale: tuple[float, float] = (0.5, 1.0), flip: bool = True,
                 batch_size: int = 64, unlabelled_batch_size: int | None = None, eval_batch_size: int | None = None,
                 num_workers: int = 4, seed: int = 0, teacher_cache: str | None = None):
        super().__init__()
        if layout not in LAYOUTS:
            raise ConfigError(f"data.layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == "coop" and split_file is None:
            raise ConfigError("data.split_file is missing: a coop layout needs its split_zhou_<Name>.json")
        if layout == "imagenet" and split_file is not None:
            raise ConfigError("data.split_file is for the coop layout; an imagenet layout reads root/train and root/val")
        if labelled is not None and shots is not None:
            raise ConfigError("data: give labelled (a subset list) or shots, not both")
        if labelled in IMAGENET_SUBSETS and layout != "imagenet":
            raise ConfigError(f"data.labelled {labelled!r} is ImageNet's list: give this dataset's own list file")
        for key, value in dict(batch_size=batch_size, image_size=image_size).items():
            if value < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {value}")
        self.root = Path(root).expanduser()
        self.layout = layout
        self.split_file = split_file
        self.labelled = labelled
        self.shots = shots
        self.shot_seed = shot_seed
        self.val_per_class = val_per_class if val_per_class is not None or layout == "coop" else 10
        self.image_size = image_size
        self.crop_scale = tuple(crop_scale)
        self.flip = flip
        self.batch_size = batch_size
        self.unlabelled_batch_size = unlabelled_batch_size or batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.teacher_cache = teacher_cache
        self.teacher_cache_reader = None  # the opened cache, once set up
        self.class_names: list[str] = []
        self.train_dataset: ImageDataset | None = None  # the whole training split: what vlkd cache caches
        self.labelled_dataset: ImageDataset | None = None
        self.unlabelled_dataset: ImageDataset | None = None
        self.val_dataset: ImageDataset | None = None
        self.test_dataset: ImageDataset | None = None
        self.val_sets: list[EvalSet] = []
        self.test_sets: list[EvalSet] = []

    # -- building ---------------------------------------------------------------
    def _read_layout(self) -> tuple[Path, list[ImageSample], list[ImageSample], list[ImageSample], Path]:
        """(image folder, train, val, test samples, the folder test paths are relative to)."""
        if self.layout == "coop":
            splits, self.class_names = read_split_zhou(self.split_file)
            missing = [name for name in ("train", "test") if not splits.get(name)]
            if missing:
                raise ConfigError(f"{self.split_file}: the split file has no {' or '.join(missing)} images")
            return self.root, splits["train"], splits.get("val", []), splits["test"], self.root
        train_root, val_root = self.root / "train", self.root / "val"
        for folder in (train_root, val_root):
            if not folder.is_dir():
                raise MissingFileError(folder, "ImageNet folder", "root must hold train/<wnid>/ and val/<wnid>/")
        wnids = sorted(p.name for p in train_root.iterdir() if p.is_dir())
        if len(wnids) != 1000:
            raise ConfigError(f"{train_root} has {len(wnids)} class folders, ImageNet-1k has 1,000 (one per WordNet id)")
        self.class_names = imagenet_class_names()
        return train_root, image_folder_samples(train_root, wnids), [], image_folder_samples(val_root, wnids), val_root

    def _labelled_names(self) -> list[str] | None:
        if self.labelled is None:
            return None
        if self.labelled in IMAGENET_SUBSETS:
            return [file for file, _ in load_imagenet_subset(self.labelled)]
        return read_subset_list(self.labelled)

    def setup(self, stage: str | None = None) -> None:
        if self.test_sets:
            return
        image_root, train, val, test, test_root = self._read_layout()
        listed = self._labelled_names()
        if listed is not None:
            labelled, unlabelled = split_labelled(train, listed)
        elif self.shots is not None:
            labelled = few_shot_subset(train, self.shots, self.shot_seed)
            chosen = {s.path for s in labelled}
            unlabelled = [s for s in train if s.path not in chosen]
        else:
            labelled, unlabelled = list(train), []
        if self.val_per_class is not None:
            val, unlabelled = self._hold_out(unlabelled, self.val_per_class)
        if not val:
            raise ConfigError("no validation images: the split file has no val split; set data.val_per_class to hold "
                              "some out of the unlabelled pool")
        images = dict(class_names=self.class_names, image_size=self.image_size, seed=self.seed)
        training = dict(images, train=True, crop_scale=self.crop_scale, flip=self.flip)
        self.train_dataset = ImageDataset(image_root, train, **training)
        self.labelled_dataset = ImageDataset(image_root, labelled, **training)
        self.unlabelled_dataset = ImageDataset(image_root, unlabelled, **training) if unlabelled else None
        self.val_dataset = ImageDataset(image_root, val, **images)
        self.test_dataset = ImageDataset(test_root, test, **images)
        self.val_sets = [EvalSet("val", self.class_names, "val", unit="images")]
        self.test_sets = [EvalSet("test", self.class_names, "test", unit="images")]
        self._open_teacher_cache()

    def _open_teacher_cache(self) -> None:
        if self.teacher_cache is None or self.teacher_cache_reader is not None:
            return
        from vlkd.teacher.cache import TeacherCache

        reader = TeacherCache(self.teacher_cache)
        reader.check_data(self.cache_fingerprint())
        rows = {sample.path: row for row, sample in enumerate(self.train_dataset.samples)}
        for dataset in (self.labelled_dataset, self.unlabelled_dataset):
            if dataset is not None:
                dataset.use_teacher_cache(reader, [rows[sample.path] for sample in dataset.samples])
        self.teacher_cache_reader = reader

    def cache_fingerprint(self) -> dict:
        """What a ``vlkd cache`` of the training split depends on: its images and labels (by content), the classes
        and the crops. A cache is valid for a run exactly when these agree (``sources`` may differ)."""
        listing = "\n".join(f"{sample.path}\t{sample.label}" for sample in self.train_dataset.samples)
        return {
            "train_samples_sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(),
            "train_classes_sha256": hashlib.sha256("\n".join(self.class_names).encode("utf-8")).hexdigest(),
            "num_samples": len(self.train_dataset),
            "image_size": self.image_size,
            "crop_scale": list(self.crop_scale),
            "flip": self.flip,
            "sources": {"layout": self.layout, "root": str(self.root),
                        "split_file": str(self.split_file) if self.split_file else None},
        }

    def _hold_out(self, pool: list[ImageSample], per_class: int) -> tuple[list[ImageSample], list[ImageSample]]:
        """``per_class`` images of every class drawn from ``pool`` (seeded), and the rest of the pool."""
        held = few_shot_subset(pool, per_class, seed=int(np.random.SeedSequence([self.seed, 7]).generate_state(1)[0]))
        chosen = {s.path for s in held}
        return held, [s for s in pool if s.path not in chosen]

    @property
    def eval_sets(self) -> list[EvalSet]:
        return self.val_sets + self.test_sets

    # -- loaders ------------------------------------------------------------------
    def _loader(self, dataset: ImageDataset, batch_size: int, shuffle: bool) -> DataLoader:
        # Replaying a cache, the sampler numbers the passes, which pick the stored views.
        sampler = EpochSampler(len(dataset)) if shuffle and dataset.teacher_cache else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else None,
                          sampler=sampler, num_workers=self.num_workers, collate_fn=collate_images,
                          persistent_workers=self.num_workers > 0, drop_last=shuffle and len(dataset) > batch_size)

    def train_dataloader(self):
        from lightning.pytorch.utilities import CombinedLoader

        loaders = {"labelled": self._loader(self.labelled_dataset, self.batch_size, shuffle=True)}
        if self.unlabelled_dataset is not None:
            loaders["unlabelled"] = self._loader(self.unlabelled_dataset, self.unlabelled_batch_size, shuffle=True)
            sampler = loaders["labelled"].sampler
            if isinstance(sampler, EpochSampler):  # the labelled loader restarts this often in one epoch
                sampler.passes_per_epoch = math.ceil(len(loaders["unlabelled"]) / len(loaders["labelled"]))
        # One epoch is one pass over the larger loader (the unlabelled pool); the labelled one cycles.
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.val_dataset, self.eval_batch_size, shuffle=False)]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)]


class SynthImagesDataModule(ImageDataModule):
    """The offline SynthImages world (rendered by :meth:`prepare_data` when missing), in the coop layout.

    Args:
        root: the world's folder (``synth/images``).
        labelled: ``1percent``, ``10percent`` or ``shot_<k>`` (k in 1, 2, 4, 8, 16): the world's list
            of that name for split seed ``split``; or a list file.
        split: split seed 1, 2 or 3 of the labelled lists.
        render: settings for :func:`vlkd.data.synthetic.images.generate_images` when rendering.
        **kwargs: as :class:`ImageDataModule` (image size, batches, workers, seed).
    """

    def __init__(self, root: str = "synth/images", labelled: str = "10percent", split: int = 1,
                 render: dict | None = None, **kwargs):
        from vlkd.data.synthetic.images import DATASET_NAME

        self.world_root = Path(root).expanduser()
        self.render = dict(render or {})
        named = labelled in ("1percent", "10percent") or labelled.startswith("shot_")
        listed = str(self.world_root / "labelled" / f"{labelled}_s{split}.txt") if named else labelled
        kwargs.setdefault("image_size", 64)
        super().__init__(str(self.world_root / "images"), layout="coop",
                         split_file=str(self.world_root / f"split_zhou_{DATASET_NAME}.json"), labelled=listed, **kwargs)

    def prepare_data(self) -> None:
        from vlkd.data.synthetic.images import generate_images

        generate_images(self.world_root, **self.render)
