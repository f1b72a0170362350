"""Image data: CoOp split files, labelled-subset lists, ImageNet's layout and subsets, the dataset and data module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlkd.data.images import (
    ImageDataset,
    ImageSample,
    collate_images,
    few_shot_subset,
    load_imagenet_subset,
    read_split_zhou,
    read_subset_list,
    split_labelled,
    write_split_zhou,
)
from vlkd.errors import ConfigError, MissingFileError


def write_png(path, value: int = 128, size: tuple[int, int] = (20, 30)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from vlkd.data.synthetic.images import generate_images

    return generate_images(tmp_path_factory.mktemp("synth_images"), pool_per_class=16, val_per_class=2,
                           test_per_class=2, split_seeds=2)


# --------------------------------------------------------------------------- files


def test_split_zhou_round_trip_and_class_names(tmp_path):
    splits = {"train": [ImageSample("a/1.png", 1), ImageSample("b/2.png", 0)], "val": [ImageSample("a/3.png", 1)],
              "test": [ImageSample("b/4.png", 0)]}
    path = write_split_zhou(tmp_path / "split_zhou_X.json", splits, ["cat", "dog"])
    assert json.loads(path.read_text())["train"][0] == ["a/1.png", 1, "dog"]
    read, names = read_split_zhou(path)
    assert read == splits and names == ["cat", "dog"]


@pytest.mark.parametrize("content, message", [
    ('{"train": [["a.png", 0, "cat"], ["b.png", 0, "dog"]]}', "named both"),
    ('{"train": [["a.png", "0", "cat"]]}', "must be [path, label"),
    ('{"train": [["a.png", 1, "cat"]]}', "no row has label(s) [0]"),
    ('{"train": [["a.png", 0]]}', "must be [path, label"),
    ('[1, 2]', "expected"),
    ('{"train": [', "not a JSON split file"),
])
def test_split_zhou_errors_name_the_problem(tmp_path, content, message):
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        read_split_zhou(path)
    with pytest.raises(MissingFileError):
        read_split_zhou(tmp_path / "absent.json")


def test_subset_lists_skip_blanks_and_refuse_bad_files(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("# labelled\nn01_1.JPEG\n\n  n02_7.JPEG  \n")
    assert read_subset_list(path) == ["n01_1.JPEG", "n02_7.JPEG"]
    path.write_text("\n# nothing\n")
    with pytest.raises(ConfigError, match="empty"):
        read_subset_list(path)
    path.write_text("a.png\na.png\n")
    with pytest.raises(ConfigError, match="twice"):
        read_subset_list(path)
    path.write_bytes(b"a.png\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_subset_list(path)


def test_shipped_imagenet_subsets_are_simclrs():
    for name, rows in (("1percent", 12_811), ("10percent", 128_116)):
        subset = load_imagenet_subset(name)
        assert len(subset) == rows
        assert len({wnid for _, wnid in subset}) == 1000
        assert all(file.startswith(wnid + "_") and wnid.startswith("n") for file, wnid in subset[:100])
    with pytest.raises(ConfigError, match="1percent"):
        load_imagenet_subset("5percent")


def test_split_labelled_matches_paths_or_file_names():
    pool = [ImageSample("n1/n1_1.JPEG", 0), ImageSample("n1/n1_2.JPEG", 0), ImageSample("n2/n2_1.JPEG", 1)]
    labelled, unlabelled = split_labelled(pool, ["n1_2.JPEG", "n2/n2_1.JPEG"])
    assert labelled == [pool[1], pool[2]] and unlabelled == [pool[0]]
    with pytest.raises(ConfigError, match="not in the training set"):
        split_labelled(pool, ["n3_1.JPEG"])


def test_few_shot_subsets_are_per_class_and_seeded():
    pool = [ImageSample(f"c{label}/{i}.png", label) for label in range(3) for i in range(10)]
    first = few_shot_subset(pool, 4, seed=1)
    assert [sum(s.label == c for s in first) for c in range(3)] == [4, 4, 4]
    assert first == few_shot_subset(pool, 4, seed=1) != few_shot_subset(pool, 4, seed=2)
    assert len(few_shot_subset(pool, 50, seed=1)) == 30  # a class with fewer gives all it has


# --------------------------------------------------------------------------- dataset


def test_dataset_views_and_unreadable_images(tmp_path):
    write_png(tmp_path / "good.png", size=(20, 30))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    samples = [ImageSample("good.png", 0), ImageSample("bad.png", 1), ImageSample("missing.png", 1)]
    evaluation = ImageDataset(tmp_path, samples, ["a", "b"], image_size=16)
    item = evaluation[0]
    assert item["image"].shape == (3, 16, 16) and item["label"] == 0 and item["skipped"] == []
    assert torch.allclose(item["image"], torch.full((3, 16, 16), 128 / 255), atol=1e-3)
    replaced = evaluation[1]
    assert replaced["label"] == -1 and "bad.png" in replaced["skipped"][0]
    train = ImageDataset(tmp_path, [samples[0], samples[2]], ["a", "b"], image_size=16, train=True)
    torch.manual_seed(0)
    items = [train[1] for _ in range(3)]
    for item in items:  # replaced by the readable image (possibly after drawing the missing one again)
        assert item["index"] == 0 and item["label"] == 0 and item["skipped"]
        assert all("missing.png" in skipped for skipped in item["skipped"])
    batch = collate_images(items)
    assert batch["image"].shape == (3, 3, 16, 16) and len(batch["skipped"]) == sum(len(i["skipped"]) for i in items)
    with pytest.raises(ConfigError, match="crop_scale"):
        ImageDataset(tmp_path, samples, ["a", "b"], crop_scale=(0.0, 1.0))


# --------------------------------------------------------------------------- the offline world and the data module


def test_synth_images_world(small_world):
    from vlkd.data.synthetic.images import generate_images, image_classes

    assert len(image_classes()) == 42 == len(small_world.class_names)
    splits, names = read_split_zhou(small_world.split_file)
    assert names == small_world.class_names
    assert {k: len(v) for k, v in splits.items()} == {"train": 42 * 16, "val": 42 * 2, "test": 42 * 2}
    one = read_subset_list(small_world.labelled_list("1percent", 1))
    assert len(one) == 42  # at least one image of every class
    for shots in (1, 2, 4, 8, 16):
        assert len(read_subset_list(small_world.labelled_list(f"shot_{shots}", 2))) == 42 * shots
    assert read_subset_list(small_world.labelled_list("shot_4", 1)) != read_subset_list(
        small_world.labelled_list("shot_4", 2))
    again = generate_images(small_world.root, pool_per_class=16, val_per_class=2, test_per_class=2, split_seeds=2)
    assert again.rendered == 0  # up to date: nothing rendered again


def test_image_data_module_serves_labelled_and_unlabelled_side_by_side(small_world):
    from vlkd.data import SynthImagesDataModule

    data = SynthImagesDataModule(str(small_world.root), labelled="shot_2", split=1, batch_size=8, num_workers=0)
    data.setup("fit")
    labelled = {s.path for s in data.labelled_dataset.samples}
    unlabelled = {s.path for s in data.unlabelled_dataset.samples}
    assert len(labelled) == 84 and len(unlabelled) == 42 * 14 and not labelled & unlabelled
    assert [s.name for s in data.val_sets] == ["val"] and [s.name for s in data.test_sets] == ["test"]
    loader = data.train_dataloader()
    batches = iter(loader)
    assert len(loader) == len(unlabelled) // 8  # one epoch: one pass over the unlabelled pool
    batch, _, _ = next(batches)
    assert batch["labelled"]["image"].shape == batch["unlabelled"]["image"].shape == (8, 3, 64, 64)
    with pytest.raises(ConfigError, match="not both"):
        SynthImagesDataModule(str(small_world.root), labelled="shot_2", shots=2)


def test_imagenet_layout_holds_out_validation_from_the_pool(tmp_path):
    from vlkd.data import ImageDataModule

    wnids = [f"n{index:08d}" for index in range(1000)]
    for label, wnid in enumerate(wnids[:3]):
        for i in range(4):
            write_png(tmp_path / "train" / wnid / f"{wnid}_{i}.JPEG".replace(".JPEG", ".png"), value=label)
        write_png(tmp_path / "val" / wnid / f"ILSVRC_val_{label}.png")
    for wnid in wnids[3:]:
        write_png(tmp_path / "train" / wnid / f"{wnid}_0.png")
        write_png(tmp_path / "val" / wnid / f"ILSVRC_val_{wnid}.png")
    listed = tmp_path / "labelled.txt"
    listed.write_text(f"{wnids[0]}_0.png\n{wnids[1]}_1.png\n")
    data = ImageDataModule(str(tmp_path), layout="imagenet", labelled=str(listed), val_per_class=1, num_workers=0)
    data.setup("fit")
    assert data.class_names[0] == "tench" and len(data.class_names) == 1000
    val = {s.path for s in data.val_dataset.samples}
    unlabelled = {s.path for s in data.unlabelled_dataset.samples}
    assert len(val) == 1000 and not val & unlabelled  # nothing tuned on the test set (ImageNet's val folder)
    assert len(data.labelled_dataset) == 2 and len(data.test_dataset) == 1000
    assert len(unlabelled) == 1000 + 3 * 3 - 1000 - 2
    with pytest.raises(ConfigError, match="ImageNet's list"):
        ImageDataModule(str(tmp_path), split_file="x.json", labelled="1percent")


def test_an_empty_image_file_is_an_image_read_error(tmp_path):
    from vlkd.data.images import read_image
    from vlkd.errors import ImageReadError

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="the file is empty"):
        read_image(empty)
