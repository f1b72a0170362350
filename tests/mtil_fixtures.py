"""Tiny fake copies of the 11 MTIL datasets, each in its torchvision class's on-disk layout.

Every writer lays out exactly the files the real torchvision class reads (a few
8-32 px JPEGs, MNIST's idx files, CIFAR-100's pickles, the .mat annotations of
Flowers102 and StanfordCars, ...), with three classes named as in the real
dataset, so ``torchvision.datasets.<Class>(root, download=False)`` loads them
unchanged. Where a split the MTIL protocol leaves out exists (Aircraft's and
Flowers' ``val``, DTD's ``val1.txt``) it is written too, with its own images, so a
test sees that it is left out.

Two classes check MD5 sums of their files against the real ones (CIFAR100: ``train``,
``test``, ``meta``; Flowers102: ``imagelabels.mat``, ``setid.mat``), which no fake can
match. :func:`write_fake_mtil` records the sums of the fakes it writes in
``<root>/fake_checksums.json``, and reading must happen inside
:func:`accept_fake_checksums`, which makes torchvision accept exactly those files with
exactly those contents (any other file is still checked against the real sum).

    expected = write_fake_mtil(tmp_path)          # all 11, well under a second
    with accept_fake_checksums(tmp_path):
        data = mtil_dataset("CIFAR100", tmp_path, "train")
    assert len(data) == expected["CIFAR100"].train
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlkd.data.mtil import MTIL_ORDER_I, class_names, mtil_spec, random_split_indices

CHECKSUMS = "fake_checksums.json"


@dataclass(frozen=True)
class FakeDataset:
    """What a fake dataset holds: the MTIL split sizes and the class names a loader must give."""

    name: str
    train: int
    test: int
    class_names: list[str]
    left_out: int = 0  # images of a split MTIL does not use (val)


# --------------------------------------------------------------------------- helpers


def _image(path: Path, rng: np.random.Generator, grey: bool = False) -> None:
    from PIL import Image

    height, width = (int(v) for v in rng.integers(8, 33, size=2))
    shape = (height, width) if grey else (height, width, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path, format="JPEG", quality=90)


def _text(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _split_counts(total: int) -> tuple[int, int]:
    train, test = random_split_indices(total)
    return len(train), len(test)


# --------------------------------------------------------------------------- the 11 layouts


def fake_aircraft(root: Path, rng, train: int, test: int) -> FakeDataset:
    variants = ["707-320", "A300B4", "BAE 146-200"]  # one with a space, as variants.txt has
    data = root / "fgvc-aircraft-2013b" / "data"
    _text(data / "variants.txt", variants)
    number = 1000000
    for split, count in (("train", train), ("val", 1), ("test", test)):
        lines = []
        for variant in variants:
            for _ in range(count):
                number += 1
                _image(data / "images" / f"{number}.jpg", rng)
                lines.append(f"{number} {variant}")
        _text(data / f"images_variant_{split}.txt", lines)
    return FakeDataset("Aircraft", 3 * train, 3 * test, variants, left_out=3)


def fake_caltech101(root: Path, rng, train: int, test: int) -> FakeDataset:
    # Folders far apart in the sorted list: the names must follow the folders, not the positions.
    folders = {"Faces": "off-center face", "accordion": "accordion", "yin_yang": "yin and yang symbol"}
    base = root / "caltech101" / "101_ObjectCategories"
    per_class = train + test
    for folder in ["BACKGROUND_Google", *folders]:
        for number in range(1, per_class + 1):
            _image(base / folder / f"image_{number:04d}.jpg", rng, grey=number == 1)
    return FakeDataset("Caltech101", *_split_counts(3 * per_class), list(folders.values()))


def fake_cifar100(root: Path, rng, train: int, test: int) -> FakeDataset:
    names = ["apple", "aquarium_fish", "baby"]
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        labels = [label for label in range(3) for _ in range(count)]
        entry = {"filenames": [f"fake_{i}.png" for i in range(len(labels))], "batch_label": f"{split} batch",
                 "fine_labels": labels, "coarse_labels": [0] * len(labels),
                 "data": rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)}
        (base / split).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"fine_label_names": names, "coarse_label_names": ["fruit_and_vegetables", "fish", "people"]}
    (base / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return FakeDataset("CIFAR100", 3 * train, 3 * test, [name.replace("_", " ") for name in names])


def fake_dtd(root: Path, rng, train: int, test: int) -> FakeDataset:
    textures = ["banded", "polka-dotted", "zigzagged"]
    base = root / "dtd" / "dtd"
    number = 0
    for split, count in (("train", train), ("val", 1), ("test", test)):
        lines = []
        for texture in textures:
            for _ in range(count):
                number += 1
                name = f"{texture}_{number:04d}.jpg"
                _image(base / "images" / texture / name, rng)
                lines.append(f"{texture}/{name}")
        _text(base / "labels" / f"{split}1.txt", lines)
        # another partition with other images must not be read
        _text(base / "labels" / f"{split}2.txt", lines[:1])
    return FakeDataset("DTD", 3 * train, 3 * test, textures, left_out=3)


def fake_eurosat(root: Path, rng, train: int, test: int) -> FakeDataset:
    folders = {"AnnualCrop": "annual crop land", "Forest": "forest", "SeaLake": "lake or sea"}
    per_class = train + test
    for folder in folders:
        for number in range(1, per_class + 1):
            _image(root / "eurosat" / "2750" / folder / f"{folder}_{number}.jpg", rng)
    return FakeDataset("EuroSAT", *_split_counts(3 * per_class), list(folders.values()))


def fake_flowers(root: Path, rng, train: int, test: int) -> FakeDataset:
    import scipy.io

    base = root / "flowers-102"
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    for key, count in (("trnid", train), ("valid", 1), ("tstid", test)):
        for label in (1, 2, 3):
            for _ in range(count):
                labels.append(label)
                ids[key].append(len(labels))
                _image(base / "jpg" / f"image_{len(labels):05d}.jpg", rng)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    scipy.io.savemat(base / "setid.mat", {key: np.array([value], dtype=np.uint16) for key, value in ids.items()})
    return FakeDataset("Flowers", 3 * train, 3 * test, class_names("Flowers"), left_out=3)  # labels index all 102


def fake_food(root: Path, rng, train: int, test: int) -> FakeDataset:
    classes = ["apple_pie", "cheese_plate", "cheesecake"]  # "cheese_plate" sorts before "cheesecake"
    base = root / "food-101"
    number = 100000
    for split, count in (("train", train), ("test", test)):
        meta = {}
        for name in classes:
            meta[name] = []
            for _ in range(count):
                number += 1
                _image(base / "images" / name / f"{number}.jpg", rng)
                meta[name].append(f"{name}/{number}")
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
        _text(base / "meta" / f"{split}.txt", [row for rows in meta.values() for row in rows])
    _text(base / "meta" / "classes.txt", classes)
    return FakeDataset("Food", 3 * train, 3 * test, [name.replace("_", " ") for name in classes])


def _idx(path: Path, array: np.ndarray) -> None:
    """An idx file (MNIST's format): magic 0x08 (uint8) and the number of dimensions, the sizes, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def fake_mnist(root: Path, rng, train: int, test: int) -> FakeDataset:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.repeat(np.arange(3, dtype=np.uint8), count)
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return FakeDataset("MNIST", 3 * train, 3 * test, class_names("MNIST"))  # torchvision's fixed 10 names


def fake_oxford_pet(root: Path, rng, train: int, test: int) -> FakeDataset:
    # (file-name breed, class id, species 1 cat / 2 dog, breed id within the species), as list.txt has them
    breeds = [("Abyssinian", 1, 1, 1), ("american_bulldog", 2, 2, 1), ("american_pit_bull_terrier", 3, 2, 2)]
    base = root / "oxford-iiit-pet"
    number = 0
    for split, count in (("trainval", train), ("test", test)):
        lines = []
        for breed, class_id, species, breed_id in breeds:
            for _ in range(count):
                number += 1
                _image(base / "images" / f"{breed}_{number}.jpg", rng)
                lines.append(f"{breed}_{number} {class_id} {species} {breed_id}")
        _text(base / "annotations" / f"{split}.txt", lines)
    return FakeDataset("OxfordPet", 3 * train, 3 * test,
                       ["Abyssinian", "American Bulldog", "American Pit Bull Terrier"])


def _cars_annotations(path: Path, rows: list[tuple[str, int]]) -> None:
    import scipy.io

    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    annotations = np.zeros((1, len(rows)), dtype=[(field, "O") for field in fields])
    for i, (fname, class_id) in enumerate(rows):
        box = [np.array([[value]], dtype=np.uint16) for value in (1, 1, 8, 8)]
        annotations[0, i] = (*box, np.array([[class_id]], dtype=np.uint8), np.array([fname]))
    scipy.io.savemat(path, {"annotations": annotations})


def fake_stanford_cars(root: Path, rng, train: int, test: int) -> FakeDataset:
    import scipy.io

    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Ram C/V Cargo Van Minivan 2012"]
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    meta = np.empty((1, len(names)), dtype=object)
    meta[0, :] = names
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": meta})
    for split, count, annotation_file in (("train", train, base / "devkit" / "cars_train_annos.mat"),
                                          ("test", test, base / "cars_test_annos_withlabels.mat")):
        rows = [(f"{i + 1:05d}.jpg", class_id) for i, class_id in enumerate(c for c in (1, 2, 3) for _ in range(count))]
        for fname, _ in rows:
            _image(base / f"cars_{split}" / fname, rng)
        _cars_annotations(annotation_file, rows)
    return FakeDataset("StanfordCars", 3 * train, 3 * test, names)


def fake_sun397(root: Path, rng, train: int, test: int) -> FakeDataset:
    scenes = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bedroom"]  # one with a sub-scene
    base = root / "SUN397"
    _text(base / "ClassName.txt", scenes)
    per_class = train + test
    for scene in scenes:
        for _ in range(per_class):
            _image(base / scene.strip("/") / f"sun_{rng.integers(16**8):08x}{rng.integers(16**8):08x}.jpg", rng)
    return FakeDataset("SUN397", *_split_counts(3 * per_class),
                       ["abbey", "apartment building/outdoor", "bedroom"])


WRITERS = {
    "Aircraft": fake_aircraft, "Caltech101": fake_caltech101, "CIFAR100": fake_cifar100, "DTD": fake_dtd,
    "EuroSAT": fake_eurosat, "Flowers": fake_flowers, "Food": fake_food, "MNIST": fake_mnist,
    "OxfordPet": fake_oxford_pet, "StanfordCars": fake_stanford_cars, "SUN397": fake_sun397,
}

# The files whose real MD5 sums torchvision checks.
_CHECKSUMMED = {"CIFAR100": ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
                "Flowers": ("flowers-102/imagelabels.mat", "flowers-102/setid.mat")}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_fake_mtil(root: str | Path, names: Sequence[str] = MTIL_ORDER_I, train_per_class: int = 6,
                    test_per_class: int = 2, seed: int = 0) -> dict[str, FakeDataset]:
    """Write fake copies of the MTIL datasets ``names`` under ``root``; returns what each holds.

    Each has three classes with ``train_per_class`` and ``test_per_class`` images in the
    datasets with fixed splits; the ones split 80/20 (Caltech101, EuroSAT, SUN397) get
    ``train_per_class + test_per_class`` images per class in all.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    written = {}
    checksums = json.loads((root / CHECKSUMS).read_text()) if (root / CHECKSUMS).is_file() else {}
    for name in names:
        name = mtil_spec(name).name
        written[name] = WRITERS[name](root, rng, train_per_class, test_per_class)
        checksums.update({relative: _md5(root / relative) for relative in _CHECKSUMMED.get(name, ())})
    (root / CHECKSUMS).write_text(json.dumps(checksums, indent=1))
    return written


@contextmanager
def accept_fake_checksums(*roots: str | Path) -> Iterator[None]:
    """Within the block, torchvision accepts the fakes :func:`write_fake_mtil` wrote under ``roots``.

    Only a file listed in a root's ``fake_checksums.json`` whose content still has the recorded
    MD5 passes; every other check goes to torchvision's own ``check_md5`` unchanged.
    """
    import torchvision.datasets.utils as utils

    accepted = {}
    for root in roots:
        root = Path(root).resolve()
        listed = json.loads((root / CHECKSUMS).read_text()) if (root / CHECKSUMS).is_file() else {}
        accepted.update({str(root / relative): md5 for relative, md5 in listed.items()})
    original = utils.check_md5

    def check_md5(fpath, md5: str, **kwargs) -> bool:
        fake = accepted.get(str(Path(fpath).resolve()))
        if fake is not None:
            return original(fpath, fake, **kwargs)
        return original(fpath, md5, **kwargs)

    utils.check_md5 = check_md5
    try:
        yield
    finally:
        utils.check_md5 = original
