"""MTIL's 11 datasets read through torchvision: splits, names, templates, the 80/20 and few-shot draws, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torchvision.datasets

from tests.mtil_fixtures import accept_fake_checksums, write_fake_mtil
from vlkd.data.images import collate_images
from vlkd.data.mtil import (
    FEW_SHOT,
    MTIL_DATASETS,
    MTIL_ORDER_I,
    MTIL_ORDER_II,
    class_names,
    mtil_dataset,
    mtil_order,
    mtil_splits,
    random_split_indices,
    templates,
    training_template,
)
from vlkd.errors import ConfigError, MissingFileError

# ZSCL's mtil/src/datasets/collections.py: the torchvision class and constructor arguments of each
# split; None: one set, split 80/20 with seed 42.
ZSCL = {
    "Aircraft": ("FGVCAircraft", {"split": "train"}, {"split": "test"}),
    "Caltech101": ("Caltech101", None, None),
    "CIFAR100": ("CIFAR100", {"train": True}, {"train": False}),
    "DTD": ("DTD", {"split": "train"}, {"split": "test"}),
    "EuroSAT": ("EuroSAT", None, None),
    "Flowers": ("Flowers102", {"split": "train"}, {"split": "test"}),
    "Food": ("Food101", {"split": "train"}, {"split": "test"}),
    "MNIST": ("MNIST", {"train": True}, {"train": False}),
    "OxfordPet": ("OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
    "StanfordCars": ("StanfordCars", {"split": "train"}, {"split": "test"}),
    "SUN397": ("SUN397", None, None),
}
DEFAULTS = {"annotation_level": "variant", "partition": 1}  # torchvision's defaults, which ZSCL keeps

CLASS_COUNTS = {"Aircraft": 100, "Caltech101": 101, "CIFAR100": 100, "DTD": 47, "EuroSAT": 10, "Flowers": 102,
                "Food": 101, "MNIST": 10, "OxfordPet": 37, "StanfordCars": 196, "SUN397": 397}


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtil")
    return root, write_fake_mtil(root)


def _spy_constructor(monkeypatch, class_name: str) -> list[dict]:
    cls = getattr(torchvision.datasets, class_name)
    original, calls = cls.__init__, []

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", spy)
    return calls


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", MTIL_ORDER_I)
def test_each_dataset_loads_through_its_torchvision_class_with_zscls_splits(fake, monkeypatch, name):
    root, expected = fake
    class_name, train_arguments, test_arguments = ZSCL[name]
    calls = _spy_constructor(monkeypatch, class_name)
    with accept_fake_checksums(root):
        splits = mtil_splits(name, root)
        alone = mtil_dataset(name.lower(), root, "test")
    train, test = splits["train"], splits["test"]

    wanted = [train_arguments, test_arguments] if train_arguments is not None else [{}]
    assert len(calls) == len(wanted) + 1
    calls = calls[:len(wanted)]
    for call, arguments in zip(calls, wanted):
        assert call["download"] is False
        assert {key: call.get(key, DEFAULTS.get(key)) for key in arguments} == arguments
        assert all(call.get(key, value) == value for key, value in DEFAULTS.items())

    assert (len(train), len(test)) == (expected[name].train, expected[name].test)
    assert train.class_names == test.class_names == expected[name].class_names
    assert train.templates == test.templates == templates(name)
    assert train.training_template == templates(name)[0]
    paths = [s.path for s in train.samples + test.samples]
    assert len(set(paths)) == len(paths)  # disjoint, and the left-out val images are in neither
    assert all(0 <= s.label < len(train.class_names) for s in train.samples + test.samples)
    assert set(train.labels) == set(test.labels) == {0, 1, 2}
    if MTIL_DATASETS[name].arrays:
        assert train.pixels is not None and all("#" in p for p in paths)
    else:
        assert train.pixels is None and all((root / p).is_file() for p in paths)
    assert alone.samples == test.samples and alone.class_names == test.class_names


def test_split_files_of_other_partitions_and_val_are_not_read(fake):
    root, expected = fake
    with accept_fake_checksums(root):
        for name in ("Aircraft", "DTD", "Flowers"):
            used = {s.path for split in mtil_splits(name, root).values() for s in split.samples}
            assert expected[name].left_out > 0 and len(used) == expected[name].train + expected[name].test
    dtd = mtil_dataset("DTD", root, "train")
    assert len(dtd) == expected["DTD"].train  # train1.txt, not train2.txt


def test_class_names_follow_folders_and_files(fake):
    root, _ = fake
    assert mtil_dataset("Caltech101", root, "test").class_names == ["off-center face", "accordion",
                                                                    "yin and yang symbol"]
    assert mtil_dataset("EuroSAT", root, "test").class_names == ["annual crop land", "forest", "lake or sea"]
    assert mtil_dataset("Food", root, "test").class_names == ["apple pie", "cheese plate", "cheesecake"]
    assert mtil_dataset("SUN397", root, "test").class_names == ["abbey", "apartment building/outdoor", "bedroom"]
    assert mtil_dataset("MNIST", root, "test").class_names[:2] == ["0 - zero", "1 - one"]


def test_datasets_give_image_items_for_files_and_arrays(fake):
    root, _ = fake
    with accept_fake_checksums(root):
        for name in ("Caltech101", "MNIST", "CIFAR100"):  # a grey JPEG, grey arrays, RGB arrays
            for split in ("train", "test"):
                data = mtil_dataset(name, root, split)
                dataset = data.dataset(image_size=16)
                assert dataset.train == (split == "train")
                items = [dataset[i] for i in range(3)]
                batch = collate_images(items)
                assert batch["image"].shape == (3, 3, 16, 16) and batch["skipped"] == []
                assert 0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1
                assert batch["label"].tolist() == [data.samples[i].label for i in range(3)]
    data = mtil_dataset("MNIST", root, "test")
    row = int(data.samples[4].path.rsplit("#", 1)[1])
    pixels = data.dataset(image_size=28)[4]["image"]
    assert torch.allclose(pixels[0], data.pixels[row].float() / 255, atol=1e-6)  # the evaluation view is the image


# --------------------------------------------------------------------------- the 80/20 split


@pytest.mark.filterwarnings("ignore:Length of split")
@pytest.mark.parametrize("n", [0, 1, 7, 24, 1000, 9146])
def test_random_split_indices_are_torchs_random_split(n):
    generator = torch.Generator().manual_seed(42)
    size = int(0.8 * n)
    train, test = torch.utils.data.random_split(range(n), [size, n - size], generator=generator)
    assert random_split_indices(n) == (list(train.indices), list(test.indices))
    first, second = random_split_indices(n)
    assert len(first) == size and set(first).isdisjoint(second) and sorted(first + second) == list(range(n))
    assert random_split_indices(n) == (first, second)


@pytest.mark.parametrize("name", ["Caltech101", "EuroSAT"])
def test_random_splits_draw_over_torchvisions_order(fake, name):
    root, _ = fake
    dataset = getattr(torchvision.datasets, MTIL_DATASETS[name].torchvision_class)(str(root), download=False)
    size = int(0.8 * len(dataset))
    train, test = torch.utils.data.random_split(dataset, [size, len(dataset) - size],
                                                generator=torch.Generator().manual_seed(42))

    def path(i: int) -> str:
        if name == "Caltech101":
            folder = dataset.categories[dataset.y[i]]
            return f"caltech101/101_ObjectCategories/{folder}/image_{dataset.index[i]:04d}.jpg"
        return Path(dataset.samples[i][0]).relative_to(root).as_posix()

    splits = mtil_splits(name, root)
    assert [s.path for s in splits["train"].samples] == [path(i) for i in train.indices]
    assert [s.path for s in splits["test"].samples] == [path(i) for i in test.indices]


def test_random_splits_are_deterministic_and_disjoint(fake, monkeypatch):
    root, _ = fake
    for name in ("Caltech101", "EuroSAT", "SUN397"):
        first, second = mtil_splits(name, root), mtil_splits(name, root)
        assert first["train"].samples == second["train"].samples and first["test"].samples == second["test"].samples
        train, test = {s.path for s in first["train"].samples}, {s.path for s in first["test"].samples}
        assert train and test and train.isdisjoint(test)
    # SUN397's split does not depend on the order the file system lists the images in
    reference = mtil_splits("SUN397", root)
    rglob = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: reversed(list(rglob(self, pattern))))
    shuffled = mtil_splits("SUN397", root)
    assert shuffled["train"].samples == reference["train"].samples
    assert shuffled["test"].samples == reference["test"].samples


# --------------------------------------------------------------------------- few-shot


def test_few_shot_draws_five_training_images_per_class(fake):
    root, expected = fake
    full = mtil_dataset("Aircraft", root, "train")
    draws = {seed: mtil_dataset("Aircraft", root, "train", shots=FEW_SHOT, seed=seed) for seed in (1, 2, 3, 4)}
    for data in draws.values():
        assert data.shots == FEW_SHOT and len(data) == 3 * FEW_SHOT
        assert sorted(data.labels) == sorted([0, 1, 2] * FEW_SHOT)
        assert {s.path for s in data.samples} <= {s.path for s in full.samples}
    assert mtil_dataset("Aircraft", root, "train", shots=FEW_SHOT, seed=1).samples == draws[1].samples
    assert any(draws[seed].samples != draws[1].samples for seed in (2, 3, 4))
    splits = mtil_splits("EuroSAT", root, shots=2, seed=1)
    assert len(splits["test"]) == expected["EuroSAT"].test  # the test split stays whole
    assert sorted(splits["train"].labels) == [0, 0, 1, 1, 2, 2]
    assert {s.path for s in splits["train"].samples}.isdisjoint(s.path for s in splits["test"].samples)
    with pytest.raises(ConfigError, match="training split"):
        mtil_dataset("Aircraft", root, "test", shots=FEW_SHOT)


# --------------------------------------------------------------------------- errors


def test_missing_files_name_the_dataset_the_layout_and_the_fix(tmp_path):
    with pytest.raises(MissingFileError) as error:
        mtil_dataset("Aircraft", tmp_path, "train")
    message = str(error.value)
    assert "Aircraft" in message and "FGVCAircraft" in message and "fgvc-aircraft-2013b/data/" in message
    assert "download=True" in message and str(tmp_path) in message

    with pytest.raises(MissingFileError, match=r"Caltech101.*caltech101/101_ObjectCategories"):
        mtil_dataset("Caltech101", tmp_path, "test")
    assert not (tmp_path / "caltech101").exists()  # torchvision's Caltech101 would have created it

    with pytest.raises(MissingFileError, match=r"StanfordCars.*cannot download"):
        mtil_dataset("StanfordCars", tmp_path)
    with pytest.raises(MissingFileError, match="MTIL SUN397 data root"):
        mtil_dataset("SUN397", tmp_path / "nowhere")

    write_fake_mtil(tmp_path, ["MNIST", "CIFAR100"])
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(MissingFileError, match="t10k-labels-idx1-ubyte"):
        mtil_dataset("MNIST", tmp_path, "train")  # torchvision needs all four files for either split


def test_unreadable_files_are_vlkd_errors_not_torchvision_tracebacks(tmp_path):
    write_fake_mtil(tmp_path, ["CIFAR100", "Food"])
    with pytest.raises(ConfigError, match=r"MTIL CIFAR100: torchvision.datasets.CIFAR100 could not read .*corrupted"):
        mtil_dataset("CIFAR100", tmp_path)  # without the fake checksums, the real MD5 sums fail
    (tmp_path / "food-101" / "meta" / "test.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"MTIL Food: .*food-101/\{meta/train.json"):
        mtil_dataset("Food", tmp_path, "test")
    assert len(mtil_dataset("Food", tmp_path, "train")) == 18


def test_unknown_names_splits_and_folders(fake, tmp_path):
    root, _ = fake
    with pytest.raises(ConfigError, match="unknown MTIL dataset 'ImageNet'"):
        mtil_dataset("ImageNet", root)
    with pytest.raises(ConfigError, match="unknown split 'val'"):
        mtil_dataset("Aircraft", root, "val")
    shutil.copytree(root / "eurosat", tmp_path / "eurosat")
    (tmp_path / "eurosat" / "2750" / "Forest").rename(tmp_path / "eurosat" / "2750" / "Woods")
    with pytest.raises(ConfigError, match=r"\['Woods'\] are not EuroSAT classes"):
        mtil_dataset("EuroSAT", tmp_path)


# --------------------------------------------------------------------------- shipped names and templates


def test_orders_and_registry():
    assert MTIL_ORDER_I == ("Aircraft", "Caltech101", "CIFAR100", "DTD", "EuroSAT", "Flowers", "Food", "MNIST",
                            "OxfordPet", "StanfordCars", "SUN397")
    assert MTIL_ORDER_II == ("StanfordCars", "Food", "MNIST", "OxfordPet", "Flowers", "SUN397", "Aircraft",
                             "Caltech101", "DTD", "EuroSAT", "CIFAR100")
    assert set(MTIL_DATASETS) == set(MTIL_ORDER_I) == set(MTIL_ORDER_II)
    assert mtil_order("II") == MTIL_ORDER_II and mtil_order(["mnist", "dtd"]) == ("MNIST", "DTD")
    for name, (class_name, train, _) in ZSCL.items():
        assert MTIL_DATASETS[name].torchvision_class == class_name
        assert MTIL_DATASETS[name].random_split == (train is None)
    with pytest.raises(ConfigError, match="twice"):
        mtil_order(["MNIST", "mnist"])


@pytest.mark.parametrize("name", MTIL_ORDER_I)
def test_shipped_class_names_and_templates(name):
    names = class_names(name)
    assert len(names) == CLASS_COUNTS[name] and len(set(names)) == len(names)
    assert all(isinstance(n, str) and n and "_" not in n for n in names)
    prompts = templates(name)
    assert prompts and all(t.count("{}") == 1 for t in prompts) and len(set(prompts)) == len(prompts)
    assert training_template(name) == prompts[0]
    assert class_names(name) is not names  # callers may change their copy


def test_shipped_lists_spot_checks():
    assert "background" not in class_names("Caltech101") and class_names("Caltech101")[:2] == ["off-center face",
                                                                                              "centered face"]
    assert class_names("EuroSAT")[0] == "annual crop land" and class_names("EuroSAT")[-1] == "lake or sea"
    assert class_names("Aircraft")[:3] == ["707-320", "727-200", "737-200"]
    assert class_names("StanfordCars")[0] == "AM General Hummer SUV 2000"
    assert class_names("SUN397")[8] == "apartment building/outdoor"
    assert class_names("OxfordPet")[:2] == ["Abyssinian", "American Bulldog"]
    assert class_names("Flowers")[0] == "pink primrose" and class_names("CIFAR100")[1] == "aquarium fish"
    assert training_template("Food") == "a photo of a {}, a type of food."
    assert training_template("StanfordCars") == "a photo of a {}, a type of car."
    assert training_template("MNIST") == 'a photo of the number: "{}".'
    assert len(templates("CIFAR100")) == 18 and len(templates("Caltech101")) == 34
