"""The 11 datasets of MTIL, read from the user's files through torchvision's dataset classes.

**Protocol.** Multi-domain Task-Incremental Learning (MTIL; Zheng et al., "Preventing
Zero-Shot Transfer Degradation in Continual Learning of Vision-Language Models",
ICCV 2023, the ZSCL code base, folder ``mtil/``) trains one CLIP model on 11 image
classification datasets in turn, one task per dataset, each with its own class
names, and evaluates every task after every step (the accuracy matrix; its
metrics live in ``vlkd.eval``). Two task orders are used:

* :data:`MTIL_ORDER_I`: Aircraft, Caltech101, CIFAR100, DTD, EuroSAT, Flowers, Food,
  MNIST, OxfordPet, StanfordCars, SUN397 (alphabetical);
* :data:`MTIL_ORDER_II`: StanfordCars, Food, MNIST, OxfordPet, Flowers, SUN397,
  Aircraft, Caltech101, DTD, EuroSAT, CIFAR100.

**Splits**, as ZSCL's ``mtil/src/datasets/collections.py`` (and ``cifar10.py`` for
CIFAR100) builds them, every dataset through its torchvision class:

============  =======================================  ================================  =================
dataset       torchvision class                        train                             test
============  =======================================  ================================  =================
Aircraft      ``FGVCAircraft`` (``variant``, 100)      ``split="train"``                 ``split="test"``
Caltech101    ``Caltech101`` (``category``)            80 % of all images, seed 42       the other 20 %
CIFAR100      ``CIFAR100``                             ``train=True``                    ``train=False``
DTD           ``DTD`` (partition 1)                    ``split="train"``                 ``split="test"``
EuroSAT       ``EuroSAT`` (RGB)                        80 % of all images, seed 42       the other 20 %
Flowers       ``Flowers102``                           ``split="train"``                 ``split="test"``
Food          ``Food101``                              ``split="train"``                 ``split="test"``
MNIST         ``MNIST``                                ``train=True``                    ``train=False``
OxfordPet     ``OxfordIIITPet`` (``category``)         ``split="trainval"``              ``split="test"``
StanfordCars  ``StanfordCars``                         ``split="train"``                 ``split="test"``
SUN397        ``SUN397``                               80 % of all images, seed 42       the other 20 %
============  =======================================  ================================  =================

ZSCL uses no validation split: Aircraft's, DTD's and Flowers' ``val`` images are left out.
The 80/20 splits are ZSCL's ``torch.utils.data.random_split(dataset, [int(0.8 * n),
n - int(0.8 * n)], generator=torch.Generator().manual_seed(42))``: a permutation
``torch.randperm(n)`` from that generator, its first ``int(0.8 * n)`` positions for
training and the rest for testing, in permutation order (:func:`random_split_indices`
draws the same indices). The permutation indexes torchvision's order of the images:
Caltech101's sorted categories, then ``image_0001.jpg``, ``image_0002.jpg``, ...;
EuroSAT's sorted class folders and sorted files. For SUN397 torchvision lists the
images in the file system's order (``Path.rglob``), which differs between machines,
so the images are sorted by path here before the split is drawn; the split is then
the same everywhere, and it is ZSCL's draw over that order.

The **few-shot variant** (:data:`FEW_SHOT`, 5 images per class) keeps ``shots``
training images of each class, drawn from the training split with
:func:`vlkd.data.images.few_shot_subset` (per seed, in the split's order); the
test split stays whole.

**Class names and templates** are the ones ZSCL prompts with, shipped in
``data/mtil/<dataset>.json`` (:func:`class_names`, :func:`templates`; see that
folder's README for the sources). ZSCL hard-codes CLIP's names for Caltech101
(without CLIP's ``background``), EuroSAT and Flowers; for the other 8 it takes
torchvision's ``classes``, read from the dataset's files, with underscores turned
into spaces. A loaded split (:class:`MTILData`) does the same: names from the files
where ZSCL reads them there, the shipped names by folder (Caltech101, EuroSAT) or
by label (Flowers) otherwise, so a partial copy of a dataset gets the right names.
ZSCL trains with the first template and averages all of a dataset's templates in
evaluation. MNIST's names are torchvision's ``"0 - zero"`` ... ``"9 - nine"``,
as ZSCL uses them.

**Reading.** :func:`mtil_dataset` constructs the torchvision class with
``download=False`` on the root the user gives (the folder torchvision's own
``root`` argument names, holding ``fgvc-aircraft-2013b/``, ``caltech101/``, ...) and
turns it into :class:`~vlkd.data.images.ImageSample` rows: image paths relative to
the root for the 9 datasets stored as image files, ``<file>#<row>`` for MNIST and
CIFAR100, whose pixels live in arrays. :meth:`MTILData.dataset` gives a
:class:`~vlkd.data.images.ImageDataset` with the package's crops and flips (for the
two array datasets, :class:`ArrayImageDataset`). Missing files raise
:class:`~vlkd.errors.MissingFileError` naming the dataset, the layout torchvision
expects under the root and how to get the files; files torchvision cannot read
raise :class:`~vlkd.errors.ConfigError` with the same hints.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from vlkd.data.images import ImageDataset, ImageSample, few_shot_subset
from vlkd.errors import ConfigError, ImageReadError, MissingFileError, VlkdError
from vlkd.paths import asset_path

__all__ = [
    "FEW_SHOT",
    "MTIL_DATASETS",
    "MTIL_ORDERS",
    "MTIL_ORDER_I",
    "MTIL_ORDER_II",
    "ArrayImageDataset",
    "MTILData",
    "MTILSpec",
    "class_names",
    "mtil_dataset",
    "mtil_order",
    "mtil_spec",
    "mtil_splits",
    "random_split_indices",
    "templates",
    "training_template",
]

MTIL_ORDER_I: tuple[str, ...] = ("Aircraft", "Caltech101", "CIFAR100", "DTD", "EuroSAT", "Flowers", "Food", "MNIST",
                                 "OxfordPet", "StanfordCars", "SUN397")
MTIL_ORDER_II: tuple[str, ...] = ("StanfordCars", "Food", "MNIST", "OxfordPet", "Flowers", "SUN397", "Aircraft",
                                  "Caltech101", "DTD", "EuroSAT", "CIFAR100")
MTIL_ORDERS: dict[str, tuple[str, ...]] = {"I": MTIL_ORDER_I, "II": MTIL_ORDER_II}

SPLITS = ("train", "test")
FEW_SHOT = 5  # images per class of the few-shot variant
RANDOM_SPLIT_RATIO = 0.8  # ZSCL's ClassificationDataset.split_dataset
RANDOM_SPLIT_SEED = 42


@dataclass(frozen=True)
class MTILSpec:
    """How one MTIL dataset is read: its torchvision class, ZSCL's splits, the files they need.

    Attributes:
        name: the name in the task orders.
        torchvision_class: the class in ``torchvision.datasets``.
        train, test: the constructor arguments of each split, or ``None`` for both when ZSCL
            draws an 80/20 split of the one set the class reads (:attr:`random_split`).
        needs: per split, the files and folders (relative to the root) it reads.
        layout: the on-disk layout under the root, for messages.
        download: how to get the files.
        names: where the class names come from: ``"files"`` (torchvision's ``classes``,
            underscores turned into spaces), ``"folders"`` (the shipped names by class folder)
            or ``"labels"`` (the shipped names by label).
        arrays: pixels are arrays in the files (MNIST, CIFAR100), not image files.
        needs_scipy: torchvision reads the annotations with scipy.
    """

    name: str
    torchvision_class: str
    train: dict | None
    test: dict | None
    needs: dict[str, tuple[str, ...]]
    layout: str
    download: str
    names: str = "files"
    arrays: bool = False
    needs_scipy: bool = False

    @property
    def random_split(self) -> bool:
        return self.train is None

    @property
    def asset(self) -> str:
        return f"{self.name.lower()}.json"

    def arguments(self, split: str) -> dict:
        """The torchvision constructor's arguments (besides root and ``download=False``) for ``split``."""
        return dict((self.train if split == "train" else self.test) or {})


def _download_hint(cls: str, folder: str) -> str:
    return (f"run torchvision.datasets.{cls}(root, download=True) once on a machine with internet "
            f"access and copy the {folder} folder it writes under this root")


def _aircraft_needs(split: str) -> tuple[str, ...]:
    data = "fgvc-aircraft-2013b/data"
    return (f"{data}/variants.txt", f"{data}/images_variant_{split}.txt", f"{data}/images")


_MNIST_FILES = tuple(f"MNIST/raw/{prefix}-{kind}" for prefix in ("train", "t10k")
                     for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))
_CIFAR_FILES = ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta")

MTIL_DATASETS: dict[str, MTILSpec] = {spec.name: spec for spec in (
    MTILSpec(
        "Aircraft", "FGVCAircraft", {"split": "train", "annotation_level": "variant"},
        {"split": "test", "annotation_level": "variant"},
        {split: _aircraft_needs(split) for split in SPLITS},
        "fgvc-aircraft-2013b/data/{variants.txt, images_variant_train.txt, images_variant_test.txt, images/<id>.jpg}",
        _download_hint("FGVCAircraft", "fgvc-aircraft-2013b"),
    ),
    MTILSpec(
        "Caltech101", "Caltech101", None, None,
        dict.fromkeys(SPLITS, ("caltech101/101_ObjectCategories",)),
        "caltech101/101_ObjectCategories/<category>/image_0001.jpg, ... (BACKGROUND_Google is left out)",
        _download_hint("Caltech101", "caltech101"), names="folders",
    ),
    MTILSpec(
        "CIFAR100", "CIFAR100", {"train": True}, {"train": False}, dict.fromkeys(SPLITS, _CIFAR_FILES),
        "cifar-100-python/{train, test, meta} (the python pickles of cifar-100-python.tar.gz)",
        _download_hint("CIFAR100", "cifar-100-python"), arrays=True,
    ),
    MTILSpec(
        "DTD", "DTD", {"split": "train", "partition": 1}, {"split": "test", "partition": 1},
        {split: (f"dtd/dtd/labels/{split}1.txt", "dtd/dtd/images") for split in SPLITS},
        "dtd/dtd/{labels/train1.txt, labels/test1.txt, images/<texture>/<file>.jpg}",
        _download_hint("DTD", "dtd"),
    ),
    MTILSpec(
        "EuroSAT", "EuroSAT", None, None, dict.fromkeys(SPLITS, ("eurosat/2750",)),
        "eurosat/2750/<class folder>/<file>.jpg (the RGB EuroSAT)",
        _download_hint("EuroSAT", "eurosat"), names="folders",
    ),
    MTILSpec(
        "Flowers", "Flowers102", {"split": "train"}, {"split": "test"},
        dict.fromkeys(SPLITS, ("flowers-102/imagelabels.mat", "flowers-102/setid.mat", "flowers-102/jpg")),
        "flowers-102/{imagelabels.mat, setid.mat, jpg/image_00001.jpg, ...}",
        _download_hint("Flowers102", "flowers-102"), names="labels", needs_scipy=True,
    ),
    MTILSpec(
        "Food", "Food101", {"split": "train"}, {"split": "test"},
        {split: (f"food-101/meta/{split}.json", "food-101/images") for split in SPLITS},
        "food-101/{meta/train.json, meta/test.json, images/<class>/<id>.jpg}",
        _download_hint("Food101", "food-101"),
    ),
    MTILSpec(
        "MNIST", "MNIST", {"train": True}, {"train": False}, dict.fromkeys(SPLITS, _MNIST_FILES),
        "MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte} (uncompressed)",
        _download_hint("MNIST", "MNIST"), arrays=True,
    ),
    MTILSpec(
        "OxfordPet", "OxfordIIITPet", {"split": "trainval"}, {"split": "test"},
        {split: (f"oxford-iiit-pet/annotations/{name}.txt", "oxford-iiit-pet/images")
         for split, name in (("train", "trainval"), ("test", "test"))},
        "oxford-iiit-pet/{annotations/trainval.txt, annotations/test.txt, images/<breed>_<n>.jpg}",
        _download_hint("OxfordIIITPet", "oxford-iiit-pet"),
    ),
    MTILSpec(
        "StanfordCars", "StanfordCars", {"split": "train"}, {"split": "test"},
        {"train": ("stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat",
                   "stanford_cars/cars_train"),
         "test": ("stanford_cars/devkit/cars_meta.mat", "stanford_cars/cars_test_annos_withlabels.mat",
                  "stanford_cars/cars_test")},
        "stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/<n>.jpg, "
        "cars_test_annos_withlabels.mat, cars_test/<n>.jpg}",
        "torchvision cannot download Stanford Cars (its original address is gone): get car_devkit.tgz, "
        "cars_train.tgz, cars_test.tgz and cars_test_annos_withlabels.mat from a mirror and unpack them into "
        "the stanford_cars folder as shown",
        needs_scipy=True,
    ),
    MTILSpec(
        "SUN397", "SUN397", None, None, dict.fromkeys(SPLITS, ("SUN397/ClassName.txt",)),
        "SUN397/{ClassName.txt, <letter>/<scene>[/<sub-scene>]/sun_<id>.jpg}",
        _download_hint("SUN397", "SUN397"),
    ),
)}

_BY_LOWER = {name.lower(): name for name in MTIL_DATASETS}


def mtil_spec(name: str) -> MTILSpec:
    """The :class:`MTILSpec` of dataset ``name`` (any case, e.g. ``"aircraft"``)."""
    canonical = _BY_LOWER.get(str(name).lower())
    if canonical is None:
        raise ConfigError(f"unknown MTIL dataset {name!r}: use one of {', '.join(MTIL_ORDER_I)}")
    return MTIL_DATASETS[canonical]


def mtil_order(order: str | Sequence[str] = "I") -> tuple[str, ...]:
    """The task order ``"I"`` or ``"II"``, or a custom list of dataset names (checked, made canonical)."""
    if isinstance(order, str):
        if order in MTIL_ORDERS:
            return MTIL_ORDERS[order]
        raise ConfigError(f"unknown MTIL order {order!r}: use 'I', 'II' or a list of dataset names")
    names = tuple(mtil_spec(name).name for name in order)
    if len(set(names)) != len(names):
        raise ConfigError(f"the task order lists a dataset twice: {list(names)}")
    return names


# --------------------------------------------------------------------------- shipped names and templates


@lru_cache(maxsize=None)
def _shipped(name: str) -> dict:
    spec = mtil_spec(name)
    content = json.loads(asset_path("mtil", spec.asset).read_text(encoding="utf-8"))
    return content


def class_names(name: str) -> list[str]:
    """ZSCL's class names of dataset ``name`` in label order (the full dataset's; shipped in ``data/mtil``)."""
    return list(_shipped(name)["classes"])


def templates(name: str) -> tuple[str, ...]:
    """ZSCL's prompt templates of dataset ``name`` (``{}`` for the class name); the first is the training one."""
    return tuple(_shipped(name)["templates"])


def training_template(name: str) -> str:
    """The template ZSCL trains dataset ``name`` with: its first."""
    return templates(name)[0]


def _folder_names(name: str) -> dict[str, str]:
    content = _shipped(name)
    return dict(zip(content["folders"], content["classes"], strict=True))


# --------------------------------------------------------------------------- the 80/20 split


def random_split_indices(n: int, ratio: float = RANDOM_SPLIT_RATIO,
                         seed: int = RANDOM_SPLIT_SEED) -> tuple[list[int], list[int]]:
    """``(train, test)`` positions of ZSCL's split of ``n`` items: what ``torch.utils.data.random_split``
    gives for lengths ``[int(ratio * n), n - int(ratio * n)]`` and ``torch.Generator().manual_seed(seed)``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    train_size = int(ratio * n)
    return permutation[:train_size], permutation[train_size:]


# --------------------------------------------------------------------------- a loaded split


@dataclass
class MTILData:
    """One split of one MTIL dataset, read from the user's files.

    Attributes:
        name: the dataset's name in the task orders.
        split: ``"train"`` or ``"test"``.
        root: the folder the sample paths are relative to (the root the user gave).
        samples: the images and labels; a path is an image file under ``root``, or
            ``<file>#<row>`` for a row of :attr:`pixels`.
        class_names: the names of labels ``0..C-1``.
        templates: the prompt templates; the first is the training one.
        pixels: the array datasets' images (MNIST ``(N, 28, 28)``, CIFAR100 ``(N, 32, 32, 3)``,
            uint8), indexed by the row in each sample's path; ``None`` for image files.
        shots: images per class of a few-shot draw (``None``: the whole split).
    """

    name: str
    split: str
    root: Path
    samples: list[ImageSample]
    class_names: list[str]
    templates: tuple[str, ...]
    pixels: torch.Tensor | None = None
    shots: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [sample.label for sample in self.samples]

    @property
    def training_template(self) -> str:
        return self.templates[0]

    def dataset(self, image_size: int = 224, train: bool | None = None, **kwargs) -> ImageDataset:
        """A :class:`~vlkd.data.images.ImageDataset` of this split (training views for the training split
        unless ``train`` says otherwise); ``kwargs`` go to the dataset (``crop_scale``, ``flip``, ``seed``)."""
        train = self.split == "train" if train is None else train
        if self.pixels is not None:
            return ArrayImageDataset(self.root, self.samples, self.class_names, self.pixels,
                                     image_size=image_size, train=train, **kwargs)
        return ImageDataset(self.root, self.samples, self.class_names, image_size=image_size, train=train, **kwargs)


class ArrayImageDataset(ImageDataset):
    """An :class:`~vlkd.data.images.ImageDataset` whose images are rows of a uint8 array, not files.

    ``pixels``: ``(N, H, W)`` (grey, repeated to RGB) or ``(N, H, W, 3)``; sample ``i``'s path ends
    in ``#<row>``. It reads its pixels from the array (:meth:`read_pixels`); views, items and the teacher
    cache work as for image files.
    """

    def __init__(self, root: str | Path, samples: Sequence[ImageSample], class_names: Sequence[str],
                 pixels: torch.Tensor, **kwargs):
        super().__init__(root, samples, class_names, **kwargs)
        if pixels.dtype != torch.uint8 or pixels.ndim not in (3, 4):
            raise ValueError(f"pixels must be (N, H, W) or (N, H, W, 3) uint8, "
                             f"got {tuple(pixels.shape)} {pixels.dtype}")
        self.pixels = pixels
        self.rows = [_row_of(sample.path) for sample in self.samples]

    def read_pixels(self, index: int) -> torch.Tensor:
        """Image ``index`` as (3, H, W) floats in [0, 1]."""
        row = self.rows[index]
        if not 0 <= row < len(self.pixels):
            raise ImageReadError(self.path_of(index), f"row {row} is outside the {len(self.pixels)} images")
        image = self.pixels[row]
        image = image.unsqueeze(0).expand(3, -1, -1) if image.ndim == 2 else image.permute(2, 0, 1)
        return image.float().div_(255.0)


def _row_of(path: str) -> int:
    head, sep, row = path.rpartition("#")
    if not sep or not row.isdigit():
        raise ConfigError(f"sample path {path!r} does not name an array row ('<file>#<row>')")
    return int(row)


# --------------------------------------------------------------------------- reading through torchvision


def _check_files(spec: MTILSpec, root: Path, split: str) -> None:
    """Raise :class:`MissingFileError` for the first file or folder of ``split`` that is not under ``root``."""
    if not root.is_dir():
        raise MissingFileError(root, f"MTIL {spec.name} data root",
                               f"give the folder holding {spec.layout.split('/', 1)[0]}/; {spec.download}")
    for relative in spec.needs[split]:
        path = root / relative
        if not path.exists():
            raise MissingFileError(
                path, f"MTIL {spec.name} file",
                f"torchvision.datasets.{spec.torchvision_class} reads {spec.layout} under {root}; {spec.download}")


def _construct(spec: MTILSpec, root: Path, split: str):
    """The torchvision dataset of ``split`` (``download=False``); errors become vlkd's."""
    import torchvision.datasets

    _check_files(spec, root, split)
    if spec.needs_scipy and importlib.util.find_spec("scipy") is None:
        raise ConfigError(f"MTIL {spec.name}: torchvision reads its .mat annotation files with scipy, which is "
                          "not installed: pip install scipy")
    cls = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        return cls(str(root), download=False, **spec.arguments(split))
    except VlkdError:
        raise
    except Exception as error:  # a torchvision or file-format error: name the dataset and the fix instead
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise ConfigError(
            f"MTIL {spec.name}: torchvision.datasets.{spec.torchvision_class} could not read the files under {root} "
            f"({reason}); it expects {spec.layout}; {spec.download}") from None


def _relative(path, root: Path) -> str:
    return Path(os.path.relpath(os.fspath(path), os.fspath(root))).as_posix()


def _records(spec: MTILSpec, dataset, root: Path, split: str) -> tuple[list[tuple[str, int]], list[str] | None,
                                                                          torch.Tensor | None]:
    """``(rows of (path, label), torchvision's class list or None, pixels or None)`` of a torchvision dataset."""
    readers: dict[str, Callable] = {
        "FGVCAircraft": lambda d: zip(d._image_files, d._labels),
        "DTD": lambda d: zip(d._image_files, d._labels),
        "Flowers102": lambda d: zip(d._image_files, d._labels),
        "Food101": lambda d: zip(d._image_files, d._labels),
        "SUN397": lambda d: zip(d._image_files, d._labels),
        "OxfordIIITPet": lambda d: zip(d._images, d._labels),
        "StanfordCars": lambda d: d._samples,
        "EuroSAT": lambda d: d.samples,
        "Caltech101": lambda d: ((Path(d.root, "101_ObjectCategories", d.categories[label], f"image_{number:04d}.jpg"),
                                  label) for number, label in zip(d.index, d.y)),
    }
    try:
        if spec.arrays:
            file = {"MNIST": f"MNIST/raw/{'train' if split == 'train' else 't10k'}-images-idx3-ubyte",
                    "CIFAR100": f"cifar-100-python/{split}"}[spec.name]
            pixels = torch.as_tensor(dataset.data).to(torch.uint8).contiguous()
            labels = [int(label) for label in dataset.targets]
            rows = [(f"{file}#{row}", label) for row, label in enumerate(labels)]
        else:
            pixels = None
            rows = [(_relative(path, root), int(label)) for path, label in readers[spec.torchvision_class](dataset)]
        names = None if spec.names == "labels" else list(dataset.categories if spec.name == "Caltech101"
                                                         else dataset.classes)
    except AttributeError as error:  # torchvision renamed a field this module reads
        raise VlkdError(f"MTIL {spec.name}: this torchvision version's {spec.torchvision_class} has no field "
                        f"{error.name!r}, which vlkd reads the image list from (as torchvision 0.29 names it)"
                        ) from None
    return rows, names, pixels


def _class_names(spec: MTILSpec, names: list[str] | None) -> list[str]:
    if spec.names == "labels":
        return class_names(spec.name)
    if spec.names == "folders":
        by_folder = _folder_names(spec.name)
        unknown = [folder for folder in names if folder not in by_folder]
        if unknown:
            raise ConfigError(f"MTIL {spec.name}: class folder(s) {unknown[:5]} are not {spec.name} classes; "
                              f"expected {spec.layout} with the dataset's own folder names")
        return [by_folder[folder] for folder in names]
    return [name.replace("_", " ") for name in names]  # ZSCL's underline_to_space


def _make(spec: MTILSpec, root: Path, split: str, rows: list[tuple[str, int]], names: list[str],
          pixels: torch.Tensor | None) -> MTILData:
    samples = [ImageSample(path, label) for path, label in rows]
    bad = sorted({s.label for s in samples if not 0 <= s.label < len(names)})
    if bad:
        raise ConfigError(f"MTIL {spec.name} {split}: label(s) {bad[:10]} have no class name "
                          f"({len(names)} classes): the files under {root} are inconsistent")
    if not samples:
        raise ConfigError(f"MTIL {spec.name} {split}: no images under {root}; expected {spec.layout}")
    return MTILData(spec.name, split, root, samples, names, templates(spec.name), pixels)


def _few_shot(data: MTILData, shots: int | None, seed: int) -> MTILData:
    if shots is None:
        return data
    if data.split != "train":
        raise ConfigError(f"shots={shots} applies to the training split; the {data.split} split is always whole")
    data.samples = few_shot_subset(data.samples, shots, seed)
    data.shots = shots
    return data


def mtil_splits(name: str, root: str | Path, splits: Sequence[str] = SPLITS, shots: int | None = None,
                seed: int = 1) -> dict[str, MTILData]:
    """The ``splits`` of dataset ``name`` under ``root``, ``{"train": MTILData, "test": MTILData}``.

    Args:
        name: a dataset of :data:`MTIL_DATASETS` (any case).
        root: the folder torchvision's ``root`` argument names (holding ``fgvc-aircraft-2013b/``,
            ``caltech101/``, ``cifar-100-python/``, ... : one root can hold all 11).
        splits: which splits to read.
        shots: keep this many training images per class (the few-shot variant: :data:`FEW_SHOT`);
            ``None``: the whole training split.
        seed: the seed of the few-shot draw.

    A dataset ZSCL splits 80/20 (Caltech101, EuroSAT, SUN397) is read once for both splits.
    """
    spec = mtil_spec(name)
    root = Path(root).expanduser()
    for split in splits:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} of MTIL {spec.name}: use one of {SPLITS}")
    out: dict[str, MTILData] = {}
    if spec.random_split:
        dataset = _construct(spec, root, "train")
        rows, names, pixels = _records(spec, dataset, root, "train")
        if spec.name == "SUN397":
            rows.sort()  # torchvision lists SUN397 in the file system's order; a path order is the same everywhere
        names = _class_names(spec, names)
        parts = dict(zip(SPLITS, random_split_indices(len(rows))))
        for split in splits:
            out[split] = _make(spec, root, split, [rows[i] for i in parts[split]], names, pixels)
    else:
        for split in splits:
            dataset = _construct(spec, root, split)
            rows, names, pixels = _records(spec, dataset, root, split)
            out[split] = _make(spec, root, split, rows, _class_names(spec, names), pixels)
    if "train" in out:
        _few_shot(out["train"], shots, seed)
    elif shots is not None:
        raise ConfigError(f"shots={shots} applies to the training split, which was not asked for")
    return out


def mtil_dataset(name: str, root: str | Path, split: str = "train", shots: int | None = None,
                 seed: int = 1) -> MTILData:
    """One split of MTIL dataset ``name`` read from ``root`` through its torchvision class (see :func:`mtil_splits`).

    ``shots`` (training split only) draws the few-shot variant, ``shots`` images per class, with ``seed``.
    """
    return mtil_splits(name, root, (split,), shots=shots, seed=seed)[split]
