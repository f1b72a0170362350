"""Detection data: COCO-format annotation files, base / novel category splits, and a dataset of images with boxes.

The format is COCO's ``instances_*.json`` (images, annotations with ``[x, y, w, h]``
boxes, categories), which COCO, LVIS and the offline detection world share.
:func:`read_coco_annotations` reads one into :class:`DetectionImage` records and
never fails on a bad annotation: a box outside its image is clipped to it, and one
with no area left, a box of zero or negative size, an unknown category id or an
annotation of an image the file does not list is skipped, each *counted and listed*
in the returned :class:`AnnotationReport` (the method logs it once). Crowd regions
(``iscrowd: 1``) are kept apart as ``ignore`` boxes: they are neither objects to
learn nor background, as in every COCO detector.

Zero-shot-annotation detection (EZAD) and open-vocabulary detection split the
categories into base (annotated in training) and novel (only their names are known):

* COCO: the 48 / 17 split of Bansal et al. 2018 (shipped: ``data/detection``);
* LVIS v1: base = frequent + common (866), novel = rare (337), from each category's
  ``frequency`` field of the annotation file;
* any other dataset: a ``{"base": [...], "novel": [...]}`` file of category names.

Training keeps the base categories' annotations only (:func:`keep_categories`);
novel objects stay in the images, unannotated, which is the setting.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from vlkd.data.datasets import SkippingDataset
from vlkd.data.images import read_image
from vlkd.errors import ConfigError, MediaReadError, MissingFileError
from vlkd.paths import asset_path

__all__ = [
    "AnnotationReport",
    "CategorySplit",
    "DetectionDataset",
    "DetectionImage",
    "collate_detection",
    "keep_categories",
    "load_category_split",
    "read_coco_annotations",
]

#: The shipped category splits, by name.
SHIPPED_SPLITS = {"coco_48_17": ("detection", "coco_ovd_48_17.json")}


@dataclass(frozen=True)
class DetectionImage:
    """One image and its objects. Boxes are ``(N, 4)`` ``[x0, y0, x1, y1]`` pixels; ``category_ids``
    are the annotation file's ids; ``ignore`` holds the crowd regions, ``ignore_category_ids`` their categories."""

    image_id: int
    path: str  # relative to the image folder
    width: int
    height: int
    boxes: torch.Tensor
    category_ids: torch.Tensor
    ignore: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    ignore_category_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @property
    def num_objects(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class AnnotationReport:
    """What reading an annotation file left out or changed, by reason, with examples."""

    source: str
    skipped: Counter = field(default_factory=Counter)
    clipped: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < 3:
            kept.append(example)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line: nothing to report, or the counts by reason with the first examples."""
        parts = [f"skipped {count} {reason} (e.g. {'; '.join(self.examples[reason])})"
                 for reason, count in sorted(self.skipped.items())]
        if self.clipped:
            parts.append(f"clipped {self.clipped} box(es) reaching outside their image")
        return f"{self.source}: " + (", ".join(parts) if parts else "every annotation read")


@dataclass(frozen=True)
class CategorySplit:
    """Base (annotated in training) and novel (names only) category names."""

    base: tuple[str, ...]
    novel: tuple[str, ...]

    def __post_init__(self) -> None:
        overlap = sorted(set(self.base) & set(self.novel))
        if overlap:
            raise ConfigError(f"categories {overlap[:5]} are both base and novel: a category split must be disjoint")
        if not self.base or not self.novel:
            raise ConfigError("a category split needs at least one base and one novel category")

    @property
    def names(self) -> tuple[str, ...]:
        """All categories, base first (the evaluation vocabulary)."""
        return self.base + self.novel


def load_category_split(source: str | Path) -> CategorySplit:
    """A base / novel split: a shipped one by name (``coco_48_17``), a ``{"base", "novel"}`` JSON file,
    or an LVIS annotation file (base = frequent + common, novel = rare)."""
    if str(source) in SHIPPED_SPLITS:
        path = asset_path(*SHIPPED_SPLITS[str(source)])
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise MissingFileError(path, "category split", f"give a file, or one of {sorted(SHIPPED_SPLITS)}")
    content = _read_json(path)
    if isinstance(content, dict) and {"base", "novel"} <= set(content):
        return CategorySplit(tuple(content["base"]), tuple(content["novel"]))
    if isinstance(content, dict) and "categories" in content:
        categories = content["categories"]
        if not all("frequency" in c for c in categories):
            raise ConfigError(f"{path}: its categories have no 'frequency' field (LVIS v1 has one): give a "
                              '{"base": [...], "novel": [...]} file for this dataset instead')
        return CategorySplit(tuple(c["name"] for c in categories if c["frequency"] in ("f", "c")),
                             tuple(c["name"] for c in categories if c["frequency"] == "r"))
    raise ConfigError(f'{path}: not a category split ({{"base": [...], "novel": [...]}}) nor an LVIS annotation file')


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None


def read_coco_annotations(path: str | Path) -> tuple[list[DetectionImage], dict[int, str], AnnotationReport]:
    """``(images, {category id: name}, report)`` of a COCO-format ``instances_*.json``.

    Images keep the file's order; a bad annotation is skipped or clipped, never an error
    (see the module docstring and :class:`AnnotationReport`). A file that is not a COCO
    annotation file at all raises :class:`~vlkd.errors.ConfigError` naming what is missing.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(path, "COCO annotation file", "give the instances_*.json of the split")
    content = _read_json(path)
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(content, dict)
               or not isinstance(content.get(key), list)]
    if missing:
        raise ConfigError(f"{path}: not a COCO annotation file (no {', '.join(missing)} list)")
    report = AnnotationReport(str(path))
    categories = {}
    for category in content["categories"]:
        try:
            categories[int(category["id"])] = str(category["name"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: category {category!r} lacks an integer id or a name") from None
    records: dict[int, dict] = {}
    for image in content["images"]:
        try:
            image_id, width, height = int(image["id"]), int(image["width"]), int(image["height"])
            records[image_id] = {"path": _image_path(image), "width": width, "height": height,
                                 "boxes": [], "ids": [], "ignore": [], "ignore_ids": []}
        except (KeyError, TypeError, ValueError):
            report.skip("images without id, file_name (or coco_url), width or height", repr(image)[:80])
    for annotation in content["annotations"]:
        _add_annotation(annotation, records, categories, report)
    images = [DetectionImage(image_id, r["path"], r["width"], r["height"],
                             torch.tensor(r["boxes"], dtype=torch.float32).reshape(-1, 4),
                             torch.tensor(r["ids"], dtype=torch.long),
                             torch.tensor(r["ignore"], dtype=torch.float32).reshape(-1, 4),
                             torch.tensor(r["ignore_ids"], dtype=torch.long))
              for image_id, r in records.items()]
    return images, categories, report


def _image_path(image: dict) -> str:
    """An image's path under the image folder: its ``file_name``, or, for LVIS v1 (whose images name only
    their ``coco_url``), the URL's last two parts (``train2017/000000391895.jpg``) under the COCO root."""
    if "file_name" in image:
        return str(image["file_name"])
    url = str(image["coco_url"]).rstrip("/")
    parts = url.split("/")
    if len(parts) < 2 or not parts[-1]:
        raise ValueError(f"coco_url {url!r} does not end in <folder>/<file>")
    return "/".join(parts[-2:])


def _add_annotation(annotation: dict, records: dict, categories: dict, report: AnnotationReport) -> None:
    label = f"annotation {annotation.get('id', '?')}"
    try:
        image_id, category_id = int(annotation["image_id"]), int(annotation["category_id"])
        x, y, w, h = (float(v) for v in annotation["bbox"])
    except (KeyError, TypeError, ValueError):
        report.skip("annotations without image_id, category_id or a 4-number bbox", label)
        return
    record = records.get(image_id)
    if record is None:
        report.skip("annotations of images the file does not list", f"{label} (image {image_id})")
        return
    if category_id not in categories:
        report.skip("annotations of unknown category ids", f"{label} (category {category_id})")
        return
    if not (w > 0 and h > 0):
        report.skip("boxes of zero or negative size", f"{label} [{x:g}, {y:g}, {w:g}, {h:g}]")
        return
    box = [max(0.0, x), max(0.0, y), min(float(record["width"]), x + w), min(float(record["height"]), y + h)]
    if not (box[2] > box[0] and box[3] > box[1]):
        report.skip("boxes outside their image", f"{label} [{x:g}, {y:g}, {w:g}, {h:g}] in "
                    f"{record['width']}x{record['height']}")
        return
    if box != [x, y, x + w, y + h]:
        report.clipped += 1
    if annotation.get("iscrowd", 0):
        record["ignore"].append(box)
        record["ignore_ids"].append(category_id)
    else:
        record["boxes"].append(box)
        record["ids"].append(category_id)


def keep_categories(images: Iterable[DetectionImage], category_ids: Iterable[int], drop_empty: bool = False
                    ) -> list[DetectionImage]:
    """The images with only the objects of ``category_ids`` annotated (the others stay in the pixels,
    unannotated); ``drop_empty``: leave out images with none of them."""
    wanted = torch.tensor(sorted(set(category_ids)), dtype=torch.long)
    kept = []
    for image in images:
        mask = torch.isin(image.category_ids, wanted)
        if drop_empty and not mask.any():
            continue
        crowd = torch.isin(image.ignore_category_ids, wanted)
        kept.append(replace(image, boxes=image.boxes[mask], category_ids=image.category_ids[mask],
                            ignore=image.ignore[crowd], ignore_category_ids=image.ignore_category_ids[crowd]))
    return kept


def category_ids_of(categories: dict[int, str], names: Sequence[str], source: str) -> list[int]:
    """The ids of ``names`` in an annotation file's ``{id: name}``; a name it lacks is a :class:`ConfigError`."""
    by_name = {name: category_id for category_id, name in categories.items()}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ConfigError(f"{source} has no categories named {unknown[:5]}: the category split does not match "
                          "this annotation file (names must be spelled as its categories' 'name' fields)")
    return [by_name[name] for name in names]


class DetectionDataset(SkippingDataset):
    """Images and their boxes, as items ``{"image": (3, H, W) float in [0, 1], "target": {...}, "index", "skipped"}``.

    ``target`` holds ``boxes`` (N, 4) ``[x0, y0, x1, y1]`` pixels, ``labels`` (N,) positions in
    ``class_names`` (``category_ids`` maps them from the file's ids), ``image_id`` and
    ``ignore`` (crowd boxes). Training flips horizontally at random (boxes with it); the
    detector resizes. An unreadable image is skipped and reported like any image.

    Args:
        root: the image folder the records' paths are relative to.
        images: the records (:func:`read_coco_annotations`, :func:`keep_categories`).
        class_names: the categories the labels index, in order.
        category_ids: the annotation file's id of each of ``class_names``.
        train: random horizontal flips.
    """

    def __init__(self, root: str | Path, images: Sequence[DetectionImage], class_names: Sequence[str],
                 category_ids: Sequence[int], train: bool = False, flip: bool = True,
                 max_consecutive_failures: int = 20, seed: int = 0, region_cache=None,
                 proposals_per_image: int = 200):
        super().__init__(root, images, class_names, train, seed, max_consecutive_failures,
                         "no images: check the annotation file")
        if len(category_ids) != len(class_names):
            raise ValueError(f"{len(category_ids)} category ids for {len(class_names)} class names")
        self.label_of = {int(category_id): label for label, category_id in enumerate(category_ids)}
        self.flip = flip
        self.region_cache = region_cache
        self.proposals_per_image = proposals_per_image

    def read(self, index: int) -> dict:
        """Sample ``index`` as it is (no flip, no stored targets); raises MediaReadError if unreadable."""
        train, cache = self.train, self.region_cache
        self.train, self.region_cache = False, None
        try:
            return self._load(index, random.Random(0))
        finally:
            self.train, self.region_cache = train, cache

    def _load(self, index: int, rng: random.Random, pass_number: int | None = None) -> dict:
        record: DetectionImage = self.samples[index]
        pixels = read_image(self.path_of(index)).float().div_(255.0)
        boxes = record.boxes.clone()
        keep = torch.tensor([int(c) in self.label_of for c in record.category_ids.tolist()], dtype=torch.bool)
        boxes, ids = boxes[keep], record.category_ids[keep]
        ignore = record.ignore.clone()
        if (pixels.shape[-1], pixels.shape[-2]) != (record.width, record.height):
            # The file disagrees with its annotation's size: scale the boxes to the pixels.
            scale = torch.tensor([pixels.shape[-1] / record.width, pixels.shape[-2] / record.height] * 2)
            boxes, ignore = boxes * scale, ignore * scale
        flipped = self.train and self.flip and rng.random() < 0.5
        width = pixels.shape[-1]
        item = {}
        if self.region_cache is not None:
            item["distill"] = self._stored_regions(index, boxes, flipped, width)
        if flipped:
            pixels, boxes, ignore = pixels.flip(-1), flip_boxes(boxes, width), flip_boxes(ignore, width)
        labels = torch.tensor([self.label_of[int(c)] for c in ids.tolist()], dtype=torch.long)
        target = {"boxes": boxes, "labels": labels, "image_id": record.image_id, "ignore": ignore}
        return {"image": pixels, "target": target, **item}

    def _stored_regions(self, index: int, boxes: torch.Tensor, flipped: bool, width: int) -> dict:
        """The distillation regions of ``vlkd cache`` for this image: its base boxes (weight 1) and its best
        ``proposals_per_image`` CLIP proposals (weights: the teacher's confidence, mean 1 over the image)."""
        if not self.region_cache.has(index):
            raise MediaReadError(self.path_of(index), "image", "it could not be read when the teacher cache was built")
        stored = self.region_cache.targets(index, flipped)
        if stored.gt_boxes.shape != boxes.shape or not torch.allclose(stored.gt_boxes, boxes.float(), atol=1e-3):
            raise ConfigError(f"the teacher cache {self.region_cache.folder} holds other boxes for {self.path_of(index)} "
                              "than its annotation file: rebuild the cache for this annotation file")
        count = min(self.proposals_per_image, len(stored.proposal_boxes))
        proposal_boxes, confidence = stored.proposal_boxes[:count], stored.proposal_confidence[:count]
        weights = confidence / confidence.mean() if count else confidence
        regions = torch.cat([stored.gt_boxes, proposal_boxes])
        if flipped:
            regions = flip_boxes(regions, width)
        return {"boxes": regions, "embeddings": torch.cat([stored.gt_embeddings, stored.proposal_embeddings[:count]]),
                "weights": torch.cat([torch.ones(len(stored.gt_boxes)), weights.float()])}


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """(N, 4) ``x0 y0 x1 y1`` boxes of an image ``width`` pixels wide, mirrored left to right."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def collate_detection(items: list[dict]) -> dict:
    """Images of different sizes stay a list (the detector batches them); targets a list of dicts."""
    batch = {"images": [item["image"] for item in items], "targets": [item["target"] for item in items],
            "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
            "skipped": [path for item in items for path in item["skipped"]]}
    if all("distill" in item for item in items):
        batch["distill"] = [item["distill"] for item in items]
    return batch
