"""Base-to-novel and zero-shot loaders, checked against the shipped real split files."""

from __future__ import annotations

import re
from functools import cache

import pytest

from vlkd.data.annotations import VideoSample, read_class_names
from vlkd.data.splits import (
    BASE2NOVEL_LAYOUTS,
    Base2NovelSplit,
    base2novel_files,
    load_base2novel,
    load_base2novel_from_files,
    load_full_class_names,
    load_zero_shot,
    write_base2novel,
)
from vlkd.errors import ConfigError, MissingFileError
from vlkd.paths import asset_dir

# dataset: (base classes, novel classes, 16-shot train rows per seed), from data/base2novel/README.md
EXPECTED = {"k400": (200, 200, 3200), "hmdb51": (26, 25, 416), "ucf101": (51, 50, 816), "ssv2": (87, 87, 1392)}
SHIPPED = asset_dir() / "base2novel"


def count_list_rows(path) -> int:
    """Non-empty lines of a list file, counted from raw bytes independently of the package's reader."""
    return sum(1 for line in path.read_bytes().splitlines() if line.strip())


@cache
def shipped_split(dataset: str, seed: int = 1) -> Base2NovelSplit:
    return load_base2novel(dataset, seed)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_shipped_split_counts(dataset, seed):
    num_base, num_novel, train_rows = EXPECTED[dataset]
    split = shipped_split(dataset, seed)
    assert (len(split.base_classes), len(split.novel_classes), len(split.train)) == (num_base, num_novel, train_rows)
    # 16 shots for every base class.
    assert sorted({sample.label for sample in split.train}) == list(range(num_base))
    assert all(
        sum(sample.label == label for sample in split.train) == 16 for label in (0, num_base // 2, num_base - 1)
    )


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_shipped_validation_lists_are_complete_and_in_range(dataset):
    split = shipped_split(dataset)
    files = base2novel_files(dataset)
    assert len(split.base_val) == count_list_rows(files.base_val)
    assert len(split.novel_val) == count_list_rows(files.novel_val)
    # Every label of every list is a valid local id, and every class is evaluated.
    for samples, classes in ((split.train, split.base_classes), (split.base_val, split.base_classes),
                             (split.novel_val, split.novel_classes)):
        assert {sample.label for sample in samples} == set(range(len(classes)))


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_shipped_halves_partition_the_full_label_list(dataset):
    split = shipped_split(dataset)
    assert not set(split.base_classes) & set(split.novel_classes)
    assert sorted(split.all_classes) == sorted(load_full_class_names(dataset))
    assert split.all_classes[len(split.base_classes)] == split.novel_classes[0]
    assert not any("\r" in name or name != name.strip() for name in split.all_classes)


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_no_training_video_is_a_validation_video(dataset):
    split = shipped_split(dataset)
    val_paths = {sample.path for sample in split.base_val + split.novel_val}
    assert not val_paths & {sample.path for sample in split.train}


def test_ucf_label_ids_agree_with_class_names_in_file_names():
    # UCF101 file names embed the class (v_<Class>_gXX_cYY.avi): an independent check of the id mapping.
    split = shipped_split("ucf101")
    ucf_class = re.compile(r"v_([A-Za-z]+)_g\d+_c\d+\.avi")
    for samples, classes in ((split.train, split.base_classes), (split.base_val, split.base_classes),
                             (split.novel_val, split.novel_classes), (load_zero_shot("ucf101", 2).samples,
                                                                      load_full_class_names("ucf101"))):
        for sample in samples:
            assert ucf_class.fullmatch(sample.path).group(1).lower() == classes[sample.label].lower()


@pytest.mark.parametrize("dataset", ["hmdb51", "ucf101", "ssv2"])
def test_full_train_list(dataset):
    split = load_base2novel(dataset, train_list="full")
    assert len(split.train) == count_list_rows(base2novel_files(dataset, train_list="full").train_list)
    assert len(split.train) > 16 * len(split.base_classes)
    assert {sample.path for sample in shipped_split(dataset).train} <= {sample.path for sample in split.train}


def test_k400_has_no_full_train_list():
    with pytest.raises(MissingFileError, match="train_list='fs'"):
        load_base2novel("k400", train_list="full")


def test_seed_spellings_and_errors():
    assert load_base2novel("hmdb51", seed="s2").train == load_base2novel("hmdb51", seed=2).train
    assert load_base2novel("hmdb51", seed="3").train != load_base2novel("hmdb51", seed=2).train
    with pytest.raises(MissingFileError, match=r"available seeds: \[1, 2, 3\]"):
        load_base2novel("hmdb51", seed=4)
    for bad_seed in (0, "x", 1.5, True):
        with pytest.raises(ConfigError, match="seed must be a positive integer"):
            load_base2novel("hmdb51", seed=bad_seed)
    with pytest.raises(ConfigError, match="train_list must be"):
        load_base2novel("hmdb51", train_list="half")


def test_unknown_dataset_and_missing_folder():
    with pytest.raises(ConfigError, match="unknown dataset 'kinetics'"):
        load_base2novel("kinetics")
    with pytest.raises(MissingFileError, match="split folder"):
        load_base2novel("k400", split_dir="/nonexistent/vlkd-splits")


@pytest.mark.parametrize("dataset, num_classes", [("ucf101", 101), ("hmdb51", 51), ("k600", 160)])
@pytest.mark.parametrize("split_number", [1, 2, 3])
def test_zero_shot_sets(dataset, num_classes, split_number):
    class_names, samples = load_zero_shot(dataset, split_number)
    assert len(class_names) == num_classes
    assert {sample.label for sample in samples} == set(range(num_classes))
    prefix = {"ucf101": "ucf_splits_val", "hmdb51": "hmdb_splits_val", "k600": "k600_splits_ZS_split"}[dataset]
    [list_file] = (SHIPPED / "zero_shot").glob(f"{prefix}{split_number}*.txt")
    # The K600 lists lack a final newline; the last row must still be read.
    assert len(samples) == count_list_rows(list_file)


def test_k600_zero_shot_classes_are_new_to_k400():
    k400 = set(load_full_class_names("k400"))
    k600 = set(read_class_names(SHIPPED / "labels" / "kinetics_600_labels.csv"))
    draws = [set(load_zero_shot("k600", number).class_names) for number in (1, 2, 3)]
    for draw in draws:
        assert draw <= k600 and not draw & k400
    assert len(draws[0] | draws[1] | draws[2]) > 160


def test_zero_shot_errors():
    with pytest.raises(MissingFileError, match=r"available splits: \[1, 2, 3\]"):
        load_zero_shot("k600", 4)
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_zero_shot("ssv2")


# --------------------------------------------------------------------------- user split folders


def toy_split(name: str = "toy") -> Base2NovelSplit:
    return Base2NovelSplit(
        name=name,
        base_classes=["jumping, high", "running"],
        novel_classes=['saying "hi"'],
        train=[VideoSample("train/a.mp4", 0), VideoSample("train/b c.mp4", 1)],
        base_val=[VideoSample("val/d.mp4", 1)],
        novel_val=[VideoSample("val/e.mp4", 0)],
    )


@pytest.mark.parametrize("name", ["toy", "k400"])
def test_user_split_folder_round_trip(tmp_path, name):
    split = toy_split(name)
    files = write_base2novel(split, tmp_path, seed=2)
    assert files.train_list == tmp_path / "splits" / f"{name}_splits" / "fs_base_s2_train.txt"
    expected_labels = "kinetics_400_base_labels.csv" if name == "k400" else f"{name}_base_labels.csv"
    assert files.base_labels == tmp_path / "labels" / expected_labels
    assert load_base2novel(name, seed=2, split_dir=tmp_path) == split
    with pytest.raises(MissingFileError, match=r"available seeds: \[2\]"):
        load_base2novel(name, seed=1, split_dir=tmp_path)


def test_registered_layout_names_match_the_shipped_files():
    for dataset, layout in BASE2NOVEL_LAYOUTS.items():
        files = base2novel_files(dataset)
        for path in (files.base_labels, files.novel_labels, files.base_val, files.novel_val, files.train_list):
            assert path.is_file(), path
        assert (SHIPPED / "labels" / layout.full_labels).is_file()


def test_out_of_range_label_in_a_file_is_reported_with_its_path(tmp_path):
    files = write_base2novel(toy_split(), tmp_path)
    files.novel_val.write_text("val/e.mp4 1\n")  # the novel half has a single class: id 1 is out of range
    with pytest.raises(ConfigError) as error:
        load_base2novel_from_files(files.base_labels, files.novel_labels, files.train_list, files.base_val,
                                   files.novel_val)
    assert "novel_val.txt" in str(error.value) and "outside 0..0" in str(error.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"novel_classes": ["Running"]}, "disjoint"),
        ({"base_classes": ["a", "a"]}, "listed twice"),
        ({"novel_classes": []}, "no novel classes"),
        ({"train": [VideoSample("x.mp4", 2)]}, "train list"),
        ({"base_val": [VideoSample("x.mp4", -1)]}, "base_val list"),
        ({"novel_val": [VideoSample("x.mp4", 1)]}, "novel_val list"),
    ],
)
def test_split_validation(change, message):
    fields = {**toy_split().__dict__, **change}
    with pytest.raises(ConfigError, match=message):
        Base2NovelSplit(**fields)


def test_all_classes_offsets_novel_ids():
    split = toy_split()
    assert split.all_classes == ["jumping, high", "running", 'saying "hi"']
    assert split.all_classes[len(split.base_classes) + split.novel_val[0].label] == 'saying "hi"'
