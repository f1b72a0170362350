"""CLIP re-normalisation (EZAD): tune only the teacher's LayerNorms on ground-truth crops of the base classes.

EZAD ("Efficient Feature Distillation for Zero-shot Annotation Object Detection",
Liu, Hu, Nevatia, WACV 2024) distils CLIP's embeddings of image regions into a
detector. CLIP learnt from whole web images, so a tight object crop is out of its
domain and it misnames many of them; the paper's remedy is to fine-tune the
LayerNorm parameters alone (well under 1 % of the weights) to classify base-class
ground-truth crops among the base names. The affine parameters of the norms shift
and rescale the features towards the crop domain without moving the embedding
space the text tower shares, so novel classes, never trained on, improve too
(the official README: it "improves the classification accuracy on both base and
novel of COCO dataset by 25% in general").

What the official code does (github.com/dragonlzm/EZAD, read at a66287c)
-------------------------------------------------------------------------
* Parameters: every parameter whose name holds ``ln_`` (``ln_pre``, ``ln_1`` /
  ``ln_2`` of each block, ``ln_post``; in the text tower also ``ln_final``), all
  others frozen, the logit scale included (``mmdet/models/backbones/
  vision_transformer.py`` L264-277 and ``mmdet/models/dense_heads/
  clip_encoder_head.py`` L200-213, ``fixed_param`` in ``configs/_base_/models/
  cls_finetuner.py`` L17).  COCO tunes both towers (``cls_finetuner_clip_full_coco.py``
  L19 ``backbone=dict(open_ln=True)``; the text head's ``open_ln`` defaults to
  True); LVIS the image tower only (``cls_finetuner_clip_full_lvis.py`` L76 and L79
  ``open_ln=False``): the :func:`renormalize_teacher` ``towers`` option.
* Loss: sigmoid binary cross-entropy with one-hot targets on ``logit_scale x
  cosine`` between the crop embedding and the prompt embeddings of the base
  names, averaged over crops and classes, with no bias term (``clip_encoder_head.py``
  L380-411 and L474-486; ``use_sigmoid=True`` in the configs; ``mmdet/models/losses/
  cross_entropy_loss.py`` L74-113).
* Prompt: the single template ``"a photo of a {}"`` (``cls_finetuner_clip_full_coco.py`` L30).
* Optimiser: AdamW, lr 1e-4, weight decay 1e-4 (on every tuned parameter),
  gradient clipping at norm 0.1, a constant learning rate without warm-up, 12
  epochs (``cls_finetuner_clip_full_coco.py`` L3-11, the same in the LVIS config
  L60-68).
* Batch: 2 GPUs x 2 images (``configs/_base_/datasets/coco_detection.py`` L32,
  ``hpc_script/finetune_clip/clip_finetune_base_full.sh``), every base box of the
  4 images, about 25-30 crops on COCO; here a batch is a number of crops.
* Crops (``mmdet/models/detectors/cls_finetuner.py`` L346-363, L428-462, L35-42):
  the box enlarged 1.2 times about its centre, at least 10 px a side, clipped to the
  image, zero-padded to a centred square, then CLIP's preprocessing (bicubic
  resize, centre crop, normalisation); training images are flipped horizontally
  with probability 1/2 (``cls_finetuner_coco.py`` L11).  Here:
  :data:`EZAD_CROP` and a flip of the crop, which is the crop of the flipped image
  (the bounds mirror exactly; only the odd padding pixel changes sides).  EZAD
  widens a box to 10 px before enlarging it and crops images resized to 1333 x 800;
  :class:`~vlkd.teacher.regions.RegionCrop` widens after enlarging and crops the
  file's pixels, which differs only for boxes under 12 px and in resampling.

The defaults of :func:`renormalize_teacher` are that recipe.

The offline world
-----------------
On SynthDetection (:mod:`vlkd.data.synthetic.detection`, the default 600 + 200
images; novel: the purple and orange balls and triangles) with the shipped teacher
(``vlkd-synth-vit`` / ``synthactions``, logit scale 19.8; its 4,352 LayerNorm
parameters are 0.06 % of its weights), trained on the 1,410 base boxes of
``instances_train.json`` and evaluated on the 691 boxes (437 base, 254 novel) of
``instances_val.json`` among all 12 names (top-1 %; the mean of seeds 0-2 where
marked x3, whose runs span at most 1.8 points on base and 4.7 on novel;
``benchmarks/ezad_crops.py``, one CPU thread, seconds of training)::

    recipe                                               base  novel   all    HM  train
    frozen teacher                                       47.4   46.9  47.2  47.1      -
    EZAD COCO: BCE, no bias, lr 1e-4, batch 32, 12 ep    46.9   48.4  47.5  47.7   25 s
    EZAD LVIS: the same, image tower only                46.7   48.4  47.3  47.5   18 s
    EZAD COCO at lr 1e-3                                 60.9   50.4  57.0  55.1   26 s
    softmax CE at EZAD's schedule (lr 1e-4)              55.1   51.2  53.7  53.1   26 s
    BCE, no bias, lr 1e-3, batch 16, 8 ep                59.7   50.0  56.2  54.4   24 s
    BCE + bias from -10, lr 1e-3, batch 16, 8 ep (x3)    78.3   48.4  67.3  59.8   22 s
      the same, image tower only                         70.0   49.2  62.4  57.8   14 s
      the bias from -7                                   70.0   53.5  64.0  60.7   25 s
      the bias from -14                                  81.9   46.1  68.7  59.0   26 s
    softmax CE, lr 1e-3, batch 16, 8 ep (x3)             82.5   58.9  73.8  68.7   23 s
      the same, image tower only                         78.7   62.6  72.8  69.7   15 s

The frozen teacher names the colour but calls nearly every object a ball: every ball
category 87-98 %, every triangle 0-3 % (it learnt from 64 px stills in which one
object covers 3-9 % of the frame; a crop shows an upsampled object filling a third to
a half of a padded square).  Half of the crops are balls, hence about 47 % on both
halves.

The authors' recipe hardly moves it, for two reasons.  First the step count: EZAD's
lr 1e-4 is meant for 12 epochs of COCO, about 300k steps of 4 images; here 12 epochs
are 540 steps, and softmax CE at that schedule moves little further (55 / 51).  Second
the missing bias: a sigmoid without bias has its threshold at cosine 0, where the
unrelated names already sit, so most of its gradient pushes down cosines that top-1
never looks at, while the right name counts as won.  At lr 1e-3 it reaches 60 % base.
A learnable scalar bias from -10 moves the threshold to cosine 0.5, between the right
name and the nearest wrong one, and base gains 31 points.

What transfers to the novel colours is the shape.  Softmax CE over the base names
teaches the triangles (base 69-87 % from 0) and the novel triangles with them (purple
3 to 93 %, orange 0 to 87 %), although no purple or orange box was trained on.  But the
novel balls lose what the frozen teacher had: purple 87 to 3-5 % (now "purple
triangle"), orange 97 to 46-55 %; novel gains 12 points net.  The BCE recipes do the
same with the balls worse off (orange 9-19 % with the bias), so novel stays where it
was (46-54 %).  Tuning the image tower alone keeps more of the orange balls (81 %; one
seed).

:data:`OFFLINE_RECIPE` (``configs/ezad_synth.yaml``) is therefore softmax CE over the
base names at lr 1e-3, batch 16, 8 epochs, both towers (as the authors tune on COCO):
the best base, novel and harmonic-mean accuracy of the recipes run on three seeds, in
under half a minute on one CPU thread (two OpenMP threads are four times slower on a
small shared CPU).  (On the world's first version, whose novel names recombined base
words, BCE with the bias had been best on novel crops.)  The defaults of
:func:`renormalize_teacher` stay the authors' recipe for real data.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vlkd.data.datasets import SkippingDataset
from vlkd.data.detection import CategorySplit, category_ids_of, keep_categories, read_coco_annotations
from vlkd.data.images import read_image
from vlkd.data.transforms import eval_transform
from vlkd.errors import ConfigError, ImageReadError, MissingFileError
from vlkd.paths import file_sha256
from vlkd.teacher.backends import CLIPAdapter, HFCLIPAdapter, OpenCLIPAdapter
from vlkd.teacher.clip import FrozenCLIP
from vlkd.teacher.prompts import resolve_templates
from vlkd.teacher.regions import RegionCrop, crop_regions

__all__ = [
    "EZAD_CROP",
    "EZAD_TEMPLATE",
    "MANIFEST_NAME",
    "OFFLINE_RECIPE",
    "TOWERS",
    "CropAccuracy",
    "CropSample",
    "GroundTruthCrops",
    "RenormalizedTeacher",
    "collate_crops",
    "crop_accuracy",
    "layernorm_parameters",
    "renormalize_teacher",
]

log = logging.getLogger(__name__)

#: EZAD's crop rule: the box enlarged 1.2 times, at least 10 px a side, zero-padded to a centred square.
EZAD_CROP = RegionCrop(enlarge=1.2, min_size=10, square=True)

#: EZAD's one prompt template (without a full stop, as the official configs write it).
EZAD_TEMPLATE = "a photo of a {}"

#: The recipe chosen for the offline world (module docstring): sigmoid BCE with one learnable bias from -10
#: (threshold at cosine 0.5 at the shipped teacher's logit scale 19.8), lr 1e-3, batch 16, 8 epochs, both towers.
OFFLINE_RECIPE: dict = {"loss": "ce", "lr": 1e-3, "batch_size": 16, "epochs": 8}

#: The towers whose LayerNorms can be tuned.
TOWERS = ("image", "text")

#: The file in a re-normalised teacher folder that records where it came from (written last).
MANIFEST_NAME = "renormalization.json"

_FORMAT = "vlkd-renormalized-teacher"
_FORMAT_VERSION = 1
_LOSSES = ("bce", "ce")


# --------------------------------------------------------------------------- ground-truth crops


@dataclass(frozen=True)
class CropSample:
    """One annotated box: the image file (relative to the image folder), its annotated size, the box
    ``[x0, y0, x1, y1]`` in pixels and its label (a position in the dataset's class names)."""

    path: str
    width: int
    height: int
    box: tuple[float, float, float, float]
    label: int
    image_id: int


class GroundTruthCrops(SkippingDataset):
    """Every annotated box of the listed categories as ``{"pixels": (3, S, S) in [0, 1], "label", "index", "skipped"}``.

    A box is cut by ``crop`` (EZAD's rule by default: :data:`EZAD_CROP`) and resized to
    the teacher's side ``S`` as CLIP's preprocessing does (shorter side, centre crop; the
    square padding makes that a plain resize), so the teacher's own normalisation is the
    only step left.  Labels index ``class_names``; crowd regions are not objects and are
    left out.  An unreadable image is skipped and reported as any file dataset's
    (:class:`~vlkd.data.datasets.SkippingDataset`: in evaluation its boxes come back with
    label ``-1``, to be left out), and remembered, so its other boxes fail without reading
    it again.

    Args:
        annotations: a COCO ``instances_*.json`` (:func:`~vlkd.data.detection.read_coco_annotations`).
        image_root: the folder its ``file_name`` fields are relative to.
        class_names: the categories to keep, spelled as the file's category names; the labels' order.
        image_size: the teacher's input side ``S``.
        interpolation: the teacher's resize mode (``teacher.preprocess.interpolation``).
        crop: how a box becomes an image.
        train: training items: an unreadable box is replaced by another (evaluation: label ``-1``).
        flip: in training, flip crops horizontally with probability 1/2 (EZAD flips its training images).
        cache: keep every crop in memory once cut (before the flip), for data small enough
            to hold (``len(self) x 3 x S x S`` floats); epochs after the first then read no files.
        max_consecutive_failures: give up with a clear error after this many unreadable crops in a row.
        seed: seed of the evaluation items' (deterministic) randomness.
    """

    def __init__(self, annotations: str | Path, image_root: str | Path, class_names: Sequence[str],
                 image_size: int, interpolation: str = "bicubic", crop: RegionCrop = EZAD_CROP,
                 train: bool = False, flip: bool = True, cache: bool = False, max_consecutive_failures: int = 20,
                 seed: int = 0):
        names = _check_names(class_names, "class_names")
        if not isinstance(crop, RegionCrop):
            raise ConfigError(f"crop must be a vlkd.teacher.RegionCrop, got {type(crop).__name__}")
        images, categories, report = read_coco_annotations(annotations)
        if report.total_skipped or report.clipped:
            log.warning("%s", report.summary())
        ids = category_ids_of(categories, names, str(annotations))
        label_of = {category_id: label for label, category_id in enumerate(ids)}
        samples = [CropSample(image.path, image.width, image.height, tuple(float(v) for v in box),
                              label_of[int(category_id)], image.image_id)
                   for image in keep_categories(images, ids, drop_empty=True)
                   for box, category_id in zip(image.boxes.tolist(), image.category_ids.tolist())]
        if not samples:
            raise ConfigError(f"{annotations} has no boxes of {list(names)[:5]}{'...' if len(names) > 5 else ''}: "
                              "give the annotation file of a split that annotates these categories")
        super().__init__(image_root, samples, names, train, seed, max_consecutive_failures,
                         "no boxes: check the annotation file")
        self.annotations = Path(annotations)
        self.image_size = int(image_size)
        self.interpolation = interpolation
        self.crop = crop
        self.flip = flip
        self.cache = cache
        self._crops: dict[int, torch.Tensor] = {}
        self._unreadable: dict[Path, str] = {}
        self._last_image: tuple[Path, torch.Tensor] | None = None

    @classmethod
    def for_teacher(cls, teacher, annotations: str | Path, image_root: str | Path, class_names: Sequence[str],
                    **kwargs) -> GroundTruthCrops:
        """The crops at ``teacher``'s input size and resize mode."""
        return cls(annotations, image_root, class_names, image_size=teacher.image_size,
                   interpolation=teacher.preprocess.interpolation, **kwargs)

    @property
    def labels(self) -> list[int]:
        return [sample.label for sample in self.samples]

    def _image(self, path: Path) -> torch.Tensor:
        # Boxes of one image are neighbours in the sample list: evaluation, in order, decodes each image once.
        if self._last_image is not None and self._last_image[0] == path:
            return self._last_image[1]
        if path in self._unreadable:
            raise ImageReadError(path, self._unreadable[path])
        try:
            try:
                data = read_image(path)
            except ValueError:
                # torch.frombuffer refuses an empty buffer before read_image can say the file is empty.
                if path.is_file() and path.stat().st_size == 0:
                    raise ImageReadError(path, "the file is empty") from None
                raise
        except ImageReadError as error:
            self._unreadable[path] = error.reason
            raise
        pixels = data.float().div_(255.0)
        self._last_image = (path, pixels)
        return pixels

    def crop_pixels(self, index: int) -> torch.Tensor:
        """(3, S, S) the crop of box ``index`` in [0, 1], unflipped."""
        cached = self._crops.get(index)
        if cached is not None:
            return cached
        sample: CropSample = self.samples[index]
        pixels = self._image(self.path_of(index))
        box = torch.tensor(sample.box, dtype=torch.float64)
        if (pixels.shape[-1], pixels.shape[-2]) != (sample.width, sample.height):
            # The file disagrees with its annotation's size: scale the box to the pixels (as DetectionDataset does).
            box = box * torch.tensor([pixels.shape[-1] / sample.width, pixels.shape[-2] / sample.height] * 2,
                                     dtype=torch.float64)
        (region,) = crop_regions([pixels], torch.cat([torch.zeros(1, dtype=torch.float64), box])[None], self.crop)
        out = eval_transform(region, self.image_size, mode=self.interpolation).contiguous()
        if self.cache:
            self._crops[index] = out
        return out

    def _load(self, index: int, rng: random.Random, pass_number: int | None = None) -> dict:
        pixels = self.crop_pixels(index)
        if self.train and self.flip and rng.random() < 0.5:
            pixels = pixels.flip(-1)
        return {"pixels": pixels, "label": self.samples[index].label}


def collate_crops(items: list[dict]) -> dict:
    """Stack crops and labels; concatenate the skipped-file lists."""
    return {"pixels": torch.stack([item["pixels"] for item in items]),
            "label": torch.tensor([item["label"] for item in items], dtype=torch.long),
            "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
            "skipped": [path for item in items for path in item["skipped"]]}


# --------------------------------------------------------------------------- crop accuracy


@dataclass(frozen=True)
class CropAccuracy:
    """Top-1 % of ground-truth crops named among ``class_names``: overall, per category group and per category.

    ``groups`` and ``per_category`` hold ``None`` for a group or category without crops;
    ``skipped`` lists the unreadable images (``path: reason``), whose boxes are left out.
    """

    top1: float
    groups: dict[str, float | None]
    per_category: dict[str, float | None]
    crops: int
    group_crops: dict[str, int]
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    skipped: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {**asdict(self), "class_names": list(self.class_names), "templates": list(self.templates),
                "skipped": list(self.skipped)}

    @classmethod
    def from_dict(cls, values: Mapping) -> CropAccuracy:
        return cls(**{**values, "class_names": tuple(values["class_names"]), "templates": tuple(values["templates"]),
                      "skipped": tuple(values.get("skipped", ()))})

    def summary(self) -> str:
        groups = ", ".join(f"{name} {value:.1f}" for name, value in self.groups.items() if value is not None)
        return f"{self.top1:.1f} % of {self.crops} crops" + (f" ({groups})" if groups else "")


def _groups_of(groups, class_names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    if groups is None:
        return {}
    if isinstance(groups, CategorySplit):
        groups = {"base": groups.base, "novel": groups.novel}
    if not isinstance(groups, Mapping):
        raise ConfigError(f"groups must be a CategorySplit or a mapping of group name to category names, got "
                          f"{type(groups).__name__}")
    resolved = {}
    for name, members in groups.items():
        members = (members,) if isinstance(members, str) else tuple(members)
        unknown = [member for member in members if member not in class_names]
        if unknown:
            raise ConfigError(f"group {name!r} names categories that are not among the class names: {unknown[:5]}; "
                              "a group must be a subset of the names the crops are classified among")
        resolved[str(name)] = members
    return resolved


@torch.no_grad()
def crop_accuracy(
    teacher,
    crops: GroundTruthCrops | tuple[str | Path, str | Path],
    class_names: Sequence[str] | None = None,
    templates: str | Sequence[str] | None = EZAD_TEMPLATE,
    groups: CategorySplit | Mapping[str, Sequence[str]] | None = None,
    crop: RegionCrop = EZAD_CROP,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
) -> CropAccuracy:
    """How often ``teacher`` names a ground-truth crop right among ``class_names``: EZAD's premise measurement.

    Each crop's embedding is compared with the prompt-ensembled embeddings of
    ``class_names`` (``templates``) and the closest name is its prediction, as CLIP's
    zero-shot classification does.

    Args:
        teacher: any :class:`~vlkd.teacher.Teacher` (``encode_images`` and ``encode_text`` are used).
        crops: a :class:`GroundTruthCrops` (at the teacher's size), or ``(annotation file, image folder)``
            whose boxes of ``class_names`` are cut with ``crop``.
        class_names: the names to choose among (default: the dataset's); every crop's category must be one.
        templates: prompt templates (EZAD's one by default).
        groups: category groups to report apart, e.g. the :class:`~vlkd.data.detection.CategorySplit`
            (``base`` / ``novel``) or ``{"base": [...], "novel": [...]}``.
        batch_size: crops per forward pass.
        workers: DataLoader worker processes cutting crops.
    """
    if isinstance(crops, GroundTruthCrops):
        dataset = crops
        names = _check_names(class_names if class_names is not None else dataset.class_names, "class_names")
        missing = [name for name in dataset.class_names if name not in names]
        if missing:
            raise ConfigError(f"the crops include categories that are not among the class names: {missing[:5]}; "
                              "add them to class_names (a crop must be named among names that include its own)")
    elif isinstance(crops, (tuple, list)) and len(crops) == 2:
        if class_names is None:
            raise ConfigError("crop_accuracy with (annotations, image_root) needs class_names: the categories to "
                              "cut and to choose among")
        names = _check_names(class_names, "class_names")
        dataset = GroundTruthCrops.for_teacher(teacher, crops[0], crops[1], names, crop=crop)
    else:
        raise ConfigError("crops must be a GroundTruthCrops dataset or an (annotation file, image folder) pair")
    if dataset.train:
        raise ConfigError("the crops were built with train=True (random flips, unreadable boxes replaced): "
                          "measure accuracy on a GroundTruthCrops built with train=False")
    if dataset.image_size != teacher.image_size:
        raise ConfigError(f"the crops are {dataset.image_size} px but the teacher takes {teacher.image_size} px: "
                          "build them with GroundTruthCrops.for_teacher(teacher, ...)")
    resolved_groups = _groups_of(groups, names)
    templates = resolve_templates(templates)
    text = teacher.encode_text(list(names), templates)
    position = {name: i for i, name in enumerate(names)}
    to_vocabulary = torch.tensor([position[name] for name in dataset.class_names])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate_crops)
    truths, predictions, skipped = [], [], {}
    for batch in tqdm(loader, desc="crop accuracy", unit="batch", disable=not progress):
        skipped.update(dict.fromkeys(batch["skipped"]))
        keep = batch["label"] >= 0
        if not keep.any():
            continue
        features = teacher.encode_images(batch["pixels"][keep].to(text.device))
        predictions.append((features @ text.T).argmax(dim=1).cpu())
        truths.append(to_vocabulary[batch["label"][keep]])
    if skipped:
        log.warning("crop accuracy: skipped %d unreadable image(s), e.g. %s", len(skipped), next(iter(skipped)))
    if not truths:
        raise ConfigError(f"no crop of {dataset.annotations} could be read (first: {next(iter(skipped), '?')}): "
                          "check the image folder")
    truth, predicted = torch.cat(truths), torch.cat(predictions)
    correct = truth == predicted

    def percent(mask: torch.Tensor) -> float | None:
        return float(100.0 * correct[mask].float().mean()) if mask.any() else None

    member = {group: torch.isin(truth, torch.tensor([position[n] for n in members], dtype=torch.long))
              for group, members in resolved_groups.items()}
    return CropAccuracy(
        top1=float(100.0 * correct.float().mean()),
        groups={group: percent(mask) for group, mask in member.items()},
        per_category={name: percent(truth == position[name]) for name in names},
        crops=int(truth.numel()),
        group_crops={group: int(mask.sum()) for group, mask in member.items()},
        class_names=tuple(names),
        templates=templates,
        skipped=tuple(skipped),
    )


# --------------------------------------------------------------------------- the LayerNorms of a tower


def _tower_of(adapter: CLIPAdapter, module_name: str) -> str:
    if isinstance(adapter, OpenCLIPAdapter):
        # open_clip's CLIP keeps the image tower in `visual`; the text tower is the rest
        # (transformer, ln_final, ...; `text` for CustomTextCLIP).
        return "image" if module_name.split(".")[0] == "visual" else "text"
    if isinstance(adapter, HFCLIPAdapter):
        return "image" if module_name.split(".")[0] in ("vision_model", "visual_projection") else "text"
    raise ConfigError(f"re-normalisation supports open_clip and Hugging Face CLIP teachers, not "
                      f"{type(adapter).__name__}")


def layernorm_parameters(teacher: FrozenCLIP, towers: Sequence[str] = TOWERS) -> dict[str, nn.Parameter]:
    """The weights and biases of every ``nn.LayerNorm`` of ``towers``, by name in the wrapped model.

    For open_clip's ViT-B these are ``visual.ln_pre``, ``visual.transformer.resblocks.*.ln_1`` /
    ``ln_2`` and ``visual.ln_post`` (image) and ``transformer.resblocks.*.ln_1`` / ``ln_2`` and
    ``ln_final`` (text): exactly the ``ln_`` parameters EZAD tunes.
    """
    towers = _check_towers(towers)
    model = teacher.adapter.model
    found: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and _tower_of(teacher.adapter, module_name) in towers:
            for parameter_name, parameter in module.named_parameters(recurse=False):
                found[f"{module_name}.{parameter_name}"] = parameter
    for tower in towers:
        if not any(_tower_of(teacher.adapter, name) == tower for name in found):
            raise ConfigError(f"the {tower} tower of {teacher.model_name} has no LayerNorm with parameters to tune: "
                              f"choose towers among those that have one")
    return found


# --------------------------------------------------------------------------- re-normalisation


@dataclass
class RenormalizedTeacher:
    """The result of :func:`renormalize_teacher`.

    Attributes:
        folder: the teacher folder (``create_teacher(str(folder))`` loads it).
        trained: False when the folder was already up to date and nothing was trained.
        before: crop accuracy of the source teacher.
        after: crop accuracy of the re-normalised teacher.
        manifest: the folder's ``renormalization.json``.
        teacher: the re-normalised teacher in memory (None when nothing was trained).
    """

    folder: Path
    trained: bool
    before: CropAccuracy
    after: CropAccuracy
    manifest: dict
    teacher: FrozenCLIP | None = field(default=None, repr=False)

    def load(self, **kwargs) -> FrozenCLIP:
        """The re-normalised teacher, loaded from its folder (``kwargs`` go to :func:`create_teacher`)."""
        from vlkd.teacher.factory import create_teacher

        return create_teacher(str(self.folder), **kwargs)


def renormalize_teacher(
    teacher_name: str,
    pretrained: str | None,
    annotations: str | Path,
    image_root: str | Path,
    class_names: Sequence[str],
    out_dir: str | Path,
    *,
    towers: Sequence[str] = TOWERS,
    epochs: int = 12,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    loss: str = "bce",
    bias_init: float | None = None,
    grad_clip: float | None = 0.1,
    templates: str | Sequence[str] = EZAD_TEMPLATE,
    crop: RegionCrop = EZAD_CROP,
    flip: bool = True,
    eval_annotations: str | Path | None = None,
    eval_image_root: str | Path | None = None,
    eval_names: Sequence[str] | None = None,
    eval_groups: CategorySplit | Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    workers: int = 0,
    cache_crops: bool | None = None,
    cache_dir: str | None = None,
    offline: bool | None = None,
    progress: bool = True,
    force: bool = False,
) -> RenormalizedTeacher:
    """Tune the LayerNorms of a CLIP teacher on base-class ground-truth crops (EZAD) and save it as a teacher folder.

    Every parameter but the LayerNorm weights and biases of ``towers`` stays as it was;
    the logit scale too.  Each step embeds a batch of crops (:class:`GroundTruthCrops`,
    flipped at random) and the prompts of ``class_names`` (again each step when the
    text tower is tuned) and scores ``logit_scale x cosine``:

    * ``loss="bce"``: sigmoid binary cross-entropy with one-hot targets, averaged over
      crops and classes (EZAD's); ``bias_init`` adds one learnable scalar to every logit,
      initialised there (``None``: no bias, as EZAD).  The bias only shapes the loss: the
      teacher's outputs are embeddings, so it is not part of the saved folder;
    * ``loss="ce"``: softmax cross-entropy over ``class_names``.

    AdamW on the norms at a constant learning rate, gradient clipping at ``grad_clip``.
    The defaults are EZAD's COCO recipe (module docstring); its LVIS recipe is
    ``towers=("image",)``.  The teacher is loaded with
    :func:`~vlkd.teacher.factory.create_teacher` and the result is a folder like any
    other: open_clip's layout (``open_clip_config.json`` and float32
    ``open_clip_model.safetensors``, so untouched weights stay exactly as they were) or
    Hugging Face's (``save_pretrained``), plus ``renormalization.json``, which records the
    source teacher's identity, the data (the annotation files' SHA-256), the settings,
    the training history and the crop accuracy before and after.  The folder is written
    under a temporary name and renamed into place; a folder whose manifest matches the
    source, data and settings is returned as it is (so a pipeline can call this every
    time); ``force`` trains again.  For a seed, a CPU run is deterministic.

    Args:
        teacher_name, pretrained: the source teacher, as :func:`~vlkd.teacher.factory.create_teacher` takes them.
        annotations: the COCO ``instances_*.json`` of the training split (base boxes).
        image_root: the folder its ``file_name`` fields are relative to.
        class_names: the base categories: the boxes trained on and the names they are classified among.
        out_dir: the teacher folder to write.
        towers: whose LayerNorms are tuned: ``("image", "text")`` (EZAD on COCO) or ``("image",)`` (LVIS).
        epochs, lr, weight_decay, batch_size: the schedule (``batch_size`` in crops).
        loss: ``"bce"`` (EZAD) or ``"ce"``.
        bias_init: with ``"bce"``: the initial value of a learnable logit bias, or ``None`` for none.
        grad_clip: the maximum gradient norm (``None``: no clipping).
        templates: prompt templates of the class names (training and accuracy).
        crop: how a box becomes an image (EZAD's rule).
        flip: random horizontal flips of the training crops.
        eval_annotations: the annotation file the accuracy is measured on (default: the training one).
        eval_image_root: its image folder (default: ``image_root``).
        eval_names: the names evaluation crops are classified among (default: ``class_names``);
            give base and novel names to measure the novel categories too.
        eval_groups: groups reported apart (default: ``base`` = ``class_names`` and ``novel`` =
            the other ``eval_names``).
        seed: seed of the batch order and the flips.
        device: where to train.
        threads: torch intra-op threads while training (``None``: as set; restored afterwards).
        workers: DataLoader worker processes cutting crops.
        cache_crops: keep the crops in memory (``None``: when all of them take at most 2 GiB).
        cache_dir, offline: passed to :func:`~vlkd.teacher.factory.create_teacher`.
        progress: show progress bars.
        force: train again even if the folder is up to date.

    Raises:
        ConfigError: an unknown tower or loss, an empty or unknown class list, bad numbers, or an
            ``out_dir`` holding files that are not a re-normalised teacher.
    """
    from vlkd.teacher.factory import create_teacher

    towers = _check_towers(towers)
    names = _check_names(class_names, "class_names")
    if loss not in _LOSSES:
        raise ConfigError(f"loss must be one of {list(_LOSSES)}, got {loss!r}")
    if bias_init is not None and loss != "bce":
        raise ConfigError("bias_init applies to the sigmoid loss only: use loss='bce' or leave bias_init None")
    if bias_init is not None and not (isinstance(bias_init, (int, float)) and math.isfinite(bias_init)):
        raise ConfigError(f"bias_init must be a finite number or None, got {bias_init!r}")
    for key, value in {"epochs": epochs, "batch_size": batch_size}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    for key, value in {"lr": lr, "weight_decay": weight_decay}.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0) or (key == "lr" and not value):
            raise ConfigError(f"{key} must be a {'positive' if key == 'lr' else 'non-negative'} number, got {value!r}")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
        raise ConfigError(f"grad_clip must be a positive number or None, got {grad_clip!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    if not isinstance(flip, bool):
        raise ConfigError(f"flip must be True or False, got {flip!r}")
    if not isinstance(crop, RegionCrop):
        raise ConfigError(f"crop must be a vlkd.teacher.RegionCrop, got {type(crop).__name__}")
    templates = resolve_templates(templates)
    eval_names = names if eval_names is None else _check_names(eval_names, "eval_names")
    missing = [name for name in names if name not in eval_names] if eval_annotations is None else []
    if missing:
        raise ConfigError(f"eval_names lacks training categories {missing[:5]}: with no eval_annotations the "
                          "training crops are evaluated, so eval_names must include class_names")
    if eval_groups is None:
        novel = tuple(name for name in eval_names if name not in names)
        eval_groups = {"base": tuple(n for n in eval_names if n in names), **({"novel": novel} if novel else {})}
    eval_groups = _groups_of(eval_groups, eval_names)
    annotations = Path(annotations).expanduser()
    eval_file = Path(eval_annotations).expanduser() if eval_annotations is not None else annotations
    eval_root = Path(eval_image_root if eval_image_root is not None else image_root).expanduser()
    for path in {annotations, eval_file}:
        if not path.is_file():
            raise MissingFileError(path, "COCO annotation file", "give the instances_*.json of the split")
    out = Path(out_dir).expanduser()
    _check_out_dir(out)

    teacher = create_teacher(teacher_name, pretrained, device=device, cache_dir=cache_dir, offline=offline)
    identity = teacher.identity
    data_sha256 = file_sha256(annotations)
    key = {
        "source": {"model": str(teacher_name), "pretrained": pretrained, "weights_sha256": identity.weights_sha256},
        "data": {"annotations_sha256": data_sha256, "class_names": list(names)},
        "eval": {"annotations_sha256": data_sha256 if eval_file == annotations else file_sha256(eval_file),
                 "names": list(eval_names),
                 "groups": {group: list(members) for group, members in eval_groups.items()}},
        "settings": {"towers": list(towers), "epochs": epochs, "lr": float(lr), "weight_decay": float(weight_decay),
                     "batch_size": batch_size, "loss": loss,
                     "bias_init": None if bias_init is None else float(bias_init),
                     "grad_clip": None if grad_clip is None else float(grad_clip), "templates": list(templates),
                     "crop": asdict(crop), "flip": bool(flip), "seed": seed, "optimizer": "AdamW",
                     "schedule": "constant"},
    }
    stored = _read_manifest(out)
    if not force and stored is not None and stored.get("key") == key and _has_weights(out):
        log.info("re-normalised teacher %s is up to date", out)
        return RenormalizedTeacher(out, False, CropAccuracy.from_dict(stored["accuracy"]["before"]),
                                   CropAccuracy.from_dict(stored["accuracy"]["after"]), stored)

    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        train_set = GroundTruthCrops.for_teacher(teacher, annotations, image_root, names, crop=crop, train=True,
                                                 flip=flip, seed=seed)
        if cache_crops is None:
            cache_crops = len(train_set) * 3 * teacher.image_size ** 2 * 4 <= 2 ** 31
        train_set.cache = bool(cache_crops)
        eval_set = GroundTruthCrops.for_teacher(teacher, eval_file, eval_root, eval_names, crop=crop, seed=seed,
                                                cache=bool(cache_crops))
        measure = dict(class_names=eval_names, templates=templates, groups=eval_groups, workers=workers,
                       progress=progress)
        before = crop_accuracy(teacher, eval_set, **measure)
        log.info("crop accuracy before re-normalisation: %s", before.summary())
        seconds = {"before": time.perf_counter() - started}
        trainable = layernorm_parameters(teacher, towers)
        history, skipped = _train(teacher, train_set, names, templates, trainable, towers, epochs=epochs, lr=lr,
                                  weight_decay=weight_decay, batch_size=batch_size, loss=loss, bias_init=bias_init,
                                  grad_clip=grad_clip, seed=seed, workers=workers, progress=progress)
        seconds["train"] = time.perf_counter() - started - seconds["before"]
        # A fresh wrapper: new text-embedding cache and identity, as loading the folder would give.
        tuned = FrozenCLIP(teacher.adapter, str(out.resolve()), model=str(out)).to(teacher.pixel_mean.device)
        after = crop_accuracy(tuned, eval_set, **measure)
        log.info("crop accuracy after re-normalisation: %s", after.summary())
        seconds["after"] = time.perf_counter() - started - seconds["before"] - seconds["train"]
    finally:
        torch.set_num_threads(previous_threads)

    manifest = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "key": key,
        "source": identity.to_dict(),
        "data": {"annotations": str(annotations.resolve()), "image_root": str(Path(image_root).resolve()),
                 "crops": len(train_set), "skipped": skipped},
        "eval": {"annotations": str(eval_file.resolve()), "image_root": str(eval_root.resolve()),
                 "crops": after.crops},
        "trainable": {"parameters": sorted(trainable), "count": sum(p.numel() for p in trainable.values()),
                      "of": sum(p.numel() for p in teacher.adapter.model.parameters())},
        "accuracy": {"before": before.to_dict(), "after": after.to_dict()},
        "history": history,
        "seconds": {**seconds, "total": time.perf_counter() - started},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "threads": torch.get_num_threads() if threads is None
                        else threads},
    }
    _write_folder(teacher, teacher_name, out, manifest)
    log.info("re-normalised teacher written to %s", out)
    return RenormalizedTeacher(out, True, before, after, manifest, tuned)


def _train(teacher: FrozenCLIP, dataset: GroundTruthCrops, names: tuple[str, ...], templates: tuple[str, ...],
           trainable: dict[str, nn.Parameter], towers: tuple[str, ...], *, epochs: int, lr: float,
           weight_decay: float, batch_size: int, loss: str, bias_init: float | None, grad_clip: float | None,
           seed: int, workers: int, progress: bool) -> tuple[list[dict], list[str]]:
    """Tune ``trainable`` in place; returns the per-epoch history and the unreadable files met.

    Works on the wrapped model directly, since :class:`FrozenCLIP`'s encoders run without
    gradients; the teacher stays in eval mode (CLIP's towers have no dropout or batch norm,
    so train mode would change nothing), and its parameters are frozen again afterwards.
    """
    adapter = teacher.adapter
    device = teacher.pixel_mean.device
    parameters = list(trainable.values())
    groups = [{"params": parameters, "weight_decay": weight_decay}]
    bias = None
    if bias_init is not None:
        bias = torch.tensor(float(bias_init), device=device, requires_grad=True)
        # A bias is a threshold, not a feature scale: no decay pulls it towards zero.
        groups.append({"params": [bias], "weight_decay": 0.0})
    optimiser = torch.optim.AdamW(groups, lr=lr)
    scale = float(adapter.logit_scale())  # frozen, as in EZAD
    tokens = adapter.tokenize([template.format(name) for name in names for template in templates]).to(device)
    history: list[dict] = []
    skipped: dict[str, None] = {}

    def text_embeddings() -> torch.Tensor:
        per_prompt = F.normalize(adapter.text_features(tokens).float(), dim=-1).view(len(names), len(templates), -1)
        return F.normalize(per_prompt.mean(dim=1), dim=-1)

    # fork_rng: the run's seed drives the batch order and the flips without touching the caller's generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                             collate_fn=collate_crops, generator=torch.Generator().manual_seed(seed))
        for parameter in parameters:
            parameter.requires_grad_(True)
        try:
            with torch.no_grad():
                fixed_text = None if "text" in towers else text_embeddings()
            step = 0
            for epoch in range(epochs):
                total, correct, seen = 0.0, 0, 0
                bar = tqdm(loader, desc=f"re-normalising, epoch {epoch + 1}/{epochs}", unit="batch",
                           disable=not progress)
                for batch in bar:
                    skipped.update(dict.fromkeys(batch["skipped"]))
                    pixels = teacher.normalize_pixels(batch["pixels"].to(device))
                    labels = batch["label"].to(device)
                    images = F.normalize(adapter.image_features(pixels).float(), dim=-1)
                    text = fixed_text if fixed_text is not None else text_embeddings()
                    logits = scale * images @ text.T
                    if loss == "ce":
                        value = F.cross_entropy(logits, labels)
                    else:
                        if bias is not None:
                            logits = logits + bias
                        # One-hot targets, the mean over crops and classes: mmdet's sigmoid cross-entropy.
                        targets = F.one_hot(labels, len(names)).to(logits.dtype)
                        value = F.binary_cross_entropy_with_logits(logits, targets)
                    optimiser.zero_grad(set_to_none=True)
                    value.backward()
                    if grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(parameters + ([bias] if bias is not None else []), grad_clip)
                    optimiser.step()
                    step += 1
                    total += value.item() * len(labels)
                    correct += int((logits.argmax(dim=1) == labels).sum())
                    seen += len(labels)
                    bar.set_postfix(loss=f"{total / seen:.4f}")
                history.append({"epoch": epoch + 1, "steps": step, "loss": total / seen,
                                "train_top1": 100.0 * correct / seen,
                                **({"bias": bias.item()} if bias is not None else {})})
        finally:
            for parameter in parameters:
                parameter.requires_grad_(False)
    if skipped:
        log.warning("re-normalisation skipped %d unreadable image(s), e.g. %s", len(skipped), next(iter(skipped)))
    return history, list(skipped)


# --------------------------------------------------------------------------- the folder


def _read_manifest(folder: Path) -> dict | None:
    try:
        content = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("format") == _FORMAT else None


def _has_weights(folder: Path) -> bool:
    return ((folder / "open_clip_config.json").is_file() and (folder / "open_clip_model.safetensors").is_file()) or (
        (folder / "config.json").is_file() and any(folder.glob("*.safetensors")))


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} is a file: give a folder for the re-normalised teacher")
    if out.is_dir() and any(out.iterdir()) and _read_manifest(out) is None:
        raise ConfigError(f"out_dir {out} holds files that are not a re-normalised teacher (no {MANIFEST_NAME}): "
                          "give a new or empty folder, so that nothing else is replaced")


def _write_folder(teacher: FrozenCLIP, teacher_name: str, out: Path, manifest: dict) -> None:
    """Write the teacher and its manifest under a temporary name beside ``out``, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    previous = out.parent / f".{out.name}.previous-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        temporary.mkdir()
        adapter = teacher.adapter
        if isinstance(adapter, OpenCLIPAdapter):
            _save_open_clip(adapter, teacher_name, temporary)
        else:
            _save_hf(adapter, teacher_name, temporary)
        # The manifest last: a folder with one is complete.
        (temporary / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, allow_nan=False) + "\n",
                                               encoding="utf-8")
        if out.exists():
            out.rename(previous)
        try:
            temporary.rename(out)
        except OSError:
            if previous.exists() and not out.exists():
                previous.rename(out)  # put the old folder back rather than leave none
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def _save_open_clip(adapter: OpenCLIPAdapter, teacher_name: str, folder: Path) -> None:
    """open_clip's hub layout with float32 weights and the teacher's own preprocessing.

    Unlike :func:`~vlkd.teacher.pretrain.save_teacher` (float16, OpenAI's statistics) the
    weights keep full precision, so every parameter that was not tuned is stored exactly as
    the source teacher holds it, and the preprocessing is the source's.
    """
    from safetensors.torch import save_file

    from vlkd.teacher.factory import open_clip_model_config

    model = adapter.model
    cfg = adapter.preprocess
    preprocess = {**dict(getattr(model.visual, "preprocess_cfg", {}) or {}), "size": cfg.image_size,
                  "mean": list(cfg.mean), "std": list(cfg.std), "interpolation": cfg.interpolation}
    preprocess.setdefault("resize_mode", "shortest")
    config = {"model_cfg": open_clip_model_config(str(teacher_name), model), "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"), metadata={"format": "pt"})


def _save_hf(adapter: HFCLIPAdapter, teacher_name: str, folder: Path) -> None:
    """``save_pretrained`` of the model and its tokenizer, and the source's pixel statistics."""
    adapter.model.save_pretrained(folder)  # safetensors, in the dtype the model holds (float32)
    adapter.tokenizer.save_pretrained(folder)
    source = Path(teacher_name).expanduser() / "preprocessor_config.json"
    if source.is_file():
        shutil.copyfile(source, folder / "preprocessor_config.json")
    else:
        cfg = adapter.preprocess
        (folder / "preprocessor_config.json").write_text(
            json.dumps({"image_mean": list(cfg.mean), "image_std": list(cfg.std), "crop_size": cfg.image_size,
                        "size": cfg.image_size}, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- checks


def _check_towers(towers: Sequence[str]) -> tuple[str, ...]:
    towers = (towers,) if isinstance(towers, str) else tuple(towers)
    unknown = [tower for tower in towers if tower not in TOWERS]
    if unknown or not towers:
        raise ConfigError(f"unknown tower(s) {unknown}: towers must be a non-empty subset of {list(TOWERS)} "
                          "(EZAD tunes ('image', 'text') on COCO and ('image',) on LVIS)")
    # Canonical order, so ("text", "image") and ("image", "text") are the same setting.
    return tuple(tower for tower in TOWERS if tower in towers)


def _check_names(names: Sequence[str] | None, what: str) -> tuple[str, ...]:
    if names is None or isinstance(names, str):
        raise ConfigError(f"{what} must be a list of category names, got {names!r}")
    names = tuple(names)
    if not names:
        raise ConfigError(f"{what} is empty: give the category names (e.g. the base names of the category split)")
    if not all(isinstance(name, str) and name for name in names):
        bad = [name for name in names if not isinstance(name, str) or not name]
        raise ConfigError(f"{what} must hold non-empty strings, got {bad[:3]}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{what} lists {duplicates[:5]} more than once: give each category once")
    return names

