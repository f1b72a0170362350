"""The LightningDataModule of zero-shot-annotation detection (EZAD's protocol): base boxes to train on, all to test.

Training images keep their base annotations only; images without a base box are left
out (the COCO 48 / 17 and LVIS protocols), while their novel objects stay in the
pixels, unannotated. Validation and test are annotated for base and novel categories
and are evaluated in the generalised setting: one vocabulary of every name, COCO AP
per group (base, novel, all; :func:`vlkd.eval.detection.coco_box_ap`).

Layouts are COCO's: ``root`` holds the annotation files and image folders named by
``train_annotations`` / ``train_images`` (COCO 2017: ``annotations/instances_train2017.json``
and ``train2017``) and the same for ``val`` (and ``test``, default: ``val``'s). The
category split is a shipped one (``coco_48_17``), a ``{"base", "novel"}`` file
(relative to ``root`` or absolute), or an LVIS annotation file (base = frequent +
common, novel = rare). Bad annotations are skipped and reported when the files are
read (:class:`~vlkd.data.detection.AnnotationReport`), unreadable images when they are
loaded.

With ``teacher_cache`` (a folder ``vlkd cache`` wrote for the config) each training
item carries its distillation regions (base boxes and CLIP proposals) with the
teacher's embeddings; the method builds the cache itself when the config names none.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from vlkd.data.detection import (
    CategorySplit,
    DetectionDataset,
    DetectionImage,
    category_ids_of,
    collate_detection,
    keep_categories,
    load_category_split,
    read_coco_annotations,
)
from vlkd.errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)

__all__ = ["DetectionDataModule", "SynthDetectionDataModule", "ground_truth"]


def ground_truth(images: list[DetectionImage], categories: dict[int, str]) -> dict:
    """A COCO ground-truth dict of the records as read (bad rows already dropped), for pycocotools."""
    rows, next_id = [], 1
    for image in images:
        for box, category in zip(image.boxes.tolist(), image.category_ids.tolist()):
            x0, y0, x1, y1 = box
            rows.append({"id": next_id, "image_id": image.image_id, "category_id": int(category),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
            next_id += 1
        for box, category in zip(image.ignore.tolist(), image.ignore_category_ids.tolist()):
            # Crowd regions: pycocotools neither rewards nor punishes detections of their category there.
            x0, y0, x1, y1 = box
            rows.append({"id": next_id, "image_id": image.image_id, "category_id": int(category),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 1})
            next_id += 1
    return {"images": [{"id": i.image_id, "width": i.width, "height": i.height, "file_name": i.path} for i in images],
            "annotations": rows, "categories": [{"id": k, "name": v} for k, v in sorted(categories.items())]}


class DetectionDataModule(pl.LightningDataModule):
    """Base-box training, generalised base + novel evaluation, in COCO layout (module docstring).

    Args:
        root: the dataset folder.
        split: the base / novel category split (see the module docstring).
        train_annotations, train_images, val_annotations, val_images: paths relative to ``root``.
        test_annotations, test_images: the test split (default: the validation split).
        batch_size: images per step; eval_batch_size: per evaluation step (default: batch_size).
        flip: random horizontal flips in training.
        teacher_cache: a ``vlkd cache`` folder of this training set's distillation regions.
        proposals_per_image: CLIP proposals distilled per image and step (EZAD: 200 of the 300 stored).
        max_train_images, max_eval_images: use only the first that many images (quick checks).
    """

    def __init__(self, root: str, split: str = "split.json", train_annotations: str = "annotations/instances_train.json",
                 train_images: str = "images/train", val_annotations: str = "annotations/instances_val.json",
                 val_images: str = "images/val", test_annotations: str | None = None, test_images: str | None = None,
                 batch_size: int = 8, eval_batch_size: int | None = None, num_workers: int = 2, flip: bool = True,
                 teacher_cache: str | None = None, proposals_per_image: int = 200,
                 max_train_images: int | None = None, max_eval_images: int | None = None, seed: int = 0):
        super().__init__()
        self.root = Path(root).expanduser()
        self.split_source = split
        self.paths = {"train": (train_annotations, train_images), "val": (val_annotations, val_images),
                      "test": (test_annotations or val_annotations, test_images or val_images)}
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.flip = num_workers, flip
        self.teacher_cache = teacher_cache
        self.proposals_per_image = proposals_per_image
        self.max_train_images, self.max_eval_images = max_train_images, max_eval_images
        self.seed = seed
        self.region_cache = None
        self._ready = False

    # -- files ---------------------------------------------------------------------------------
    def _path(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.root / path

    def annotation_file(self, stage: str) -> Path:
        return self._path(self.paths[stage][0])

    def image_dir(self, stage: str) -> Path:
        return self._path(self.paths[stage][1])

    def _category_split(self) -> CategorySplit:
        source = self.split_source
        candidate = self._path(source)
        return load_category_split(candidate if candidate.is_file() else source)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        if not self.root.is_dir():
            raise MissingFileError(self.root, "detection dataset folder", "set data.init_args.root to a COCO-layout folder")
        self.category_split = self._category_split()
        self.base_names = list(self.category_split.base)
        self.novel_names = list(self.category_split.novel)
        self.class_names = self.base_names + self.novel_names
        self.records, self.categories, self.reports = {}, {}, {}
        for name in ("train", "val", "test"):
            path = self.annotation_file(name)
            if name == "test" and path == self.annotation_file("val"):
                self.records["test"], self.categories["test"], self.reports["test"] = (
                    self.records["val"], self.categories["val"], self.reports["val"])
                continue
            images, categories, report = read_coco_annotations(path)
            if report.total_skipped or report.clipped:
                log.warning("%s", report.summary())
            self.records[name], self.categories[name], self.reports[name] = images, categories, report
        train_base_ids = category_ids_of(self.categories["train"], self.base_names, str(self.annotation_file("train")))
        self.train_category_ids = train_base_ids
        train = keep_categories(self.records["train"], train_base_ids, drop_empty=True)
        if not train:
            raise ConfigError(f"no training image of {self.annotation_file('train')} has a base box: check the split")
        self.train_records = train[: self.max_train_images] if self.max_train_images else train
        self.eval_records, self.eval_category_ids, self.eval_ground_truth = {}, {}, {}
        for name in ("val", "test"):
            ids = category_ids_of(self.categories[name], self.class_names, str(self.annotation_file(name)))
            records = keep_categories(self.records[name], ids)
            records = records[: self.max_eval_images] if self.max_eval_images else records
            self.eval_records[name], self.eval_category_ids[name] = records, ids
            self.eval_ground_truth[name] = ground_truth(records, {i: self.categories[name][i] for i in ids})
        if self.teacher_cache:
            self.attach_cache(self.teacher_cache)
        self._ready = True

    def attach_cache(self, folder: str | Path) -> None:
        """Read the distillation regions from the detection cache in ``folder`` (checked by the method)."""
        from vlkd.teacher.detection_cache import DetectionCache

        self.region_cache = DetectionCache(folder)

    def groups(self, stage: str) -> dict[str, list[int]]:
        """The category-id groups of ``stage``'s evaluation: base, novel and all."""
        ids = dict(zip(self.class_names, self.eval_category_ids[stage]))
        return {"base": [ids[n] for n in self.base_names], "novel": [ids[n] for n in self.novel_names],
                "all": [ids[n] for n in self.class_names]}

    # -- datasets and loaders ----------------------------------------------------------------------
    def train_dataset(self, augment: bool = True, with_cache: bool = True) -> DetectionDataset:
        return DetectionDataset(self.image_dir("train"), self.train_records, self.base_names, self.train_category_ids,
                                train=augment, flip=self.flip, seed=self.seed,
                                region_cache=self.region_cache if with_cache else None,
                                proposals_per_image=self.proposals_per_image)

    def eval_dataset(self, stage: str) -> DetectionDataset:
        return DetectionDataset(self.image_dir(stage), self.eval_records[stage], self.class_names,
                                self.eval_category_ids[stage], train=False, seed=self.seed)

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_detection, persistent_workers=self.num_workers > 0,
                          drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("test"), self.eval_batch_size, shuffle=False)


class SynthDetectionDataModule(DetectionDataModule):
    """:class:`DetectionDataModule` on the offline SynthDetection world, rendered into ``root`` when it holds
    none (``vlkd synth detection``; about 20 s). A world already there is used as it is, whatever its settings;
    ``render`` (keyword arguments of :func:`~vlkd.data.synthetic.detection.generate_detection`) renders it
    with those settings instead."""

    def __init__(self, root: str = "synth/detection", render: dict | None = None, **kwargs):
        super().__init__(root, **kwargs)
        self.render = render

    def prepare_data(self) -> None:
        from vlkd.data.synthetic.detection import MANIFEST_NAME, generate_detection

        if self.render is not None or not (self.root / MANIFEST_NAME).is_file():
            generate_detection(self.root, **(self.render or {}))

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        super().setup(stage)
