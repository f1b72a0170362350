"""Base-to-novel splits and cross-dataset zero-shot lists.

The base-to-novel protocol (ViFi-CLIP, reused by Open-VCLIP and FROSTER) splits
each dataset's classes into two disjoint halves.  Models train on a 16-shot
list of *base* classes (three seeds) and are evaluated separately on base
videos (classifier over base names only) and novel videos (classifier over
novel names only); the headline number is the harmonic mean of the two top-1
accuracies.  Label ids in every list are local to their half.

Split folder convention
-----------------------
The shipped files (``vlkd.paths.asset_dir() / "base2novel"``) and any
user-supplied ``split_dir`` (for example a synthetic world) share one layout::

    <split_dir>/
      labels/<base_labels>        id,name CSV, base ids 0..B-1
      labels/<novel_labels>       id,name CSV, novel ids 0..N-1
      labels/<full_labels>        id,name CSV of all classes (zero-shot lists use it)
      splits/<splits_subdir>/
        fs_base_s{seed}_train.txt 16-shot training list over base classes (seed 1, 2, 3, ...)
        base_train.txt            optional full training list over base classes
        base_val.txt              evaluation list, base label ids
        novel_val.txt             evaluation list, novel label ids
      zero_shot/                  cross-dataset lists (see ZERO_SHOT_LAYOUTS)

List files use the ``relative/path label`` format of
:func:`vlkd.data.annotations.read_video_list`.  The file names of the four real
datasets are in :data:`BASE2NOVEL_LAYOUTS` (e.g. ``kinetics_400_base_labels.csv``
and ``k400_splits/`` for ``"k400"``).  Any other dataset name ``<name>`` is
allowed under a user ``split_dir`` and uses the generic names
``<name>_base_labels.csv``, ``<name>_novel_labels.csv``, ``<name>_labels.csv``
and ``splits/<name>_splits/``; :func:`write_base2novel` writes that layout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from vlkd.data.annotations import (
    VideoSample,
    read_class_names,
    read_video_list,
    write_class_names,
    write_video_list,
)
from vlkd.errors import ConfigError, MissingFileError
from vlkd.paths import asset_path

__all__ = [
    "Base2NovelSplit",
    "Base2NovelFiles",
    "DatasetLayout",
    "ZeroShotLayout",
    "ZeroShotSet",
    "BASE2NOVEL_LAYOUTS",
    "ZERO_SHOT_LAYOUTS",
    "SHIPPED_SPLIT_FOLDER",
    "base2novel_files",
    "load_base2novel",
    "load_base2novel_from_files",
    "load_full_class_names",
    "load_zero_shot",
    "write_base2novel",
]

TrainList = Literal["fs", "full"]

SHIPPED_SPLIT_FOLDER = "base2novel"
"""Name of the shipped split folder inside :func:`vlkd.paths.asset_dir`."""


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class DatasetLayout:
    """File names of one dataset's base-to-novel files inside a split folder."""

    base_labels: str  # under labels/
    novel_labels: str  # under labels/
    splits_subdir: str  # under splits/
    full_labels: str  # under labels/

    @classmethod
    def generic(cls, name: str) -> DatasetLayout:
        """The layout of a dataset that is not one of the four real ones (see module docstring)."""
        return cls(f"{name}_base_labels.csv", f"{name}_novel_labels.csv", f"{name}_splits", f"{name}_labels.csv")


BASE2NOVEL_LAYOUTS: dict[str, DatasetLayout] = {
    "k400": DatasetLayout(
        "kinetics_400_base_labels.csv", "kinetics_400_novel_labels.csv", "k400_splits", "kinetics_400_labels.csv"
    ),
    "hmdb51": DatasetLayout("hmdb_51_base_labels.csv", "hmdb_51_novel_labels.csv", "hmdb_splits", "hmdb_51_labels.csv"),
    "ucf101": DatasetLayout("ucf_101_base_labels.csv", "ucf_101_novel_labels.csv", "ucf_splits", "ucf_101_labels.csv"),
    "ssv2": DatasetLayout("ssv2_174_base_labels.csv", "ssv2_174_novel_labels.csv", "ssv2_splits", "ssv2_labels.csv"),
}


@dataclass(frozen=True)
class ZeroShotLayout:
    """File names of a cross-dataset evaluation set; ``{split}`` is replaced by the split number."""

    labels: str  # under labels/
    samples: str  # under zero_shot/

    @classmethod
    def generic(cls, name: str) -> ZeroShotLayout:
        return cls(f"{name}_labels.csv", f"{name}_splits_val{{split}}.txt")


ZERO_SHOT_LAYOUTS: dict[str, ZeroShotLayout] = {
    # UCF101 / HMDB51: all classes, the three official test splits.
    "ucf101": ZeroShotLayout("ucf_101_labels.csv", "ucf_splits_val{split}.txt"),
    "hmdb51": ZeroShotLayout("hmdb_51_labels.csv", "hmdb_splits_val{split}.txt"),
    # K600: three draws of 160 classes among the 220 that Kinetics-400 lacks.
    "k600": ZeroShotLayout("ZS_split{split}_K600.csv", "k600_splits_ZS_split{split}_K600_eval.txt"),
}


# --------------------------------------------------------------------------- split container


@dataclass
class Base2NovelSplit:
    """A base-to-novel split with label ids local to each half.

    ``train`` and ``base_val`` use ids ``0..len(base_classes)-1``; ``novel_val``
    uses ids ``0..len(novel_classes)-1``.  Construction checks the ranges and that
    no class name (compared case-insensitively, as CLIP's tokenizer lowercases)
    is in both halves.
    """

    name: str
    base_classes: list[str]
    novel_classes: list[str]
    train: list[VideoSample]
    base_val: list[VideoSample]
    novel_val: list[VideoSample]

    def __post_init__(self) -> None:
        for half, classes in (("base", self.base_classes), ("novel", self.novel_classes)):
            if not classes:
                raise ConfigError(f"split {self.name!r}: no {half} classes")
            _check_unique(classes, f"split {self.name!r}: {half} classes")
        shared = {name.casefold() for name in self.base_classes} & {name.casefold() for name in self.novel_classes}
        if shared:
            raise ConfigError(
                f"split {self.name!r}: base and novel classes must be disjoint; both contain {sorted(shared)[:5]}"
            )
        _check_label_range(self.train, len(self.base_classes), f"split {self.name!r}: train list")
        _check_label_range(self.base_val, len(self.base_classes), f"split {self.name!r}: base_val list")
        _check_label_range(self.novel_val, len(self.novel_classes), f"split {self.name!r}: novel_val list")

    @property
    def all_classes(self) -> list[str]:
        """Base then novel names: base id ``i`` keeps ``i``, novel id ``j`` becomes ``len(base_classes) + j``."""
        return [*self.base_classes, *self.novel_classes]


@dataclass(frozen=True)
class Base2NovelFiles:
    """The five files a base-to-novel split is read from (or written to)."""

    base_labels: Path
    novel_labels: Path
    train_list: Path
    base_val: Path
    novel_val: Path


class ZeroShotSet(NamedTuple):
    """A cross-dataset evaluation set; unpacks as ``class_names, samples``."""

    class_names: list[str]
    samples: list[VideoSample]


# --------------------------------------------------------------------------- loading


def load_base2novel_from_files(
    base_labels: str | Path,
    novel_labels: str | Path,
    train_list: str | Path,
    base_val: str | Path,
    novel_val: str | Path,
    name: str = "custom",
) -> Base2NovelSplit:
    """Read a split from explicit files (two ``id,name`` CSVs and three video lists).

    Label-range errors name the offending file, so a broken list is easy to find.
    """
    base_classes = read_class_names(base_labels)
    novel_classes = read_class_names(novel_labels)
    lists = {}
    for field, path, num_classes in (
        ("train", train_list, len(base_classes)),
        ("base_val", base_val, len(base_classes)),
        ("novel_val", novel_val, len(novel_classes)),
    ):
        lists[field] = read_video_list(path)
        _check_label_range(lists[field], num_classes, str(path))
    return Base2NovelSplit(name, base_classes, novel_classes, **lists)


def base2novel_files(
    dataset: str, seed: int | str = 1, split_dir: str | Path | None = None, train_list: TrainList = "fs"
) -> Base2NovelFiles:
    """Where ``dataset``'s split files are under ``split_dir`` (default: the shipped folder).

    Only resolves paths; nothing is checked to exist except the folder itself.
    """
    layout = _lookup_layout(BASE2NOVEL_LAYOUTS, DatasetLayout.generic, dataset, split_dir)
    root = _split_root(split_dir)
    lists_dir = root / "splits" / layout.splits_subdir
    if train_list == "fs":
        train_name = f"fs_base_s{_parse_index(seed, 'seed')}_train.txt"
    elif train_list == "full":
        train_name = "base_train.txt"
    else:
        raise ConfigError(f"train_list must be 'fs' (16-shot, per seed) or 'full', got {train_list!r}")
    return Base2NovelFiles(
        base_labels=root / "labels" / layout.base_labels,
        novel_labels=root / "labels" / layout.novel_labels,
        train_list=lists_dir / train_name,
        base_val=lists_dir / "base_val.txt",
        novel_val=lists_dir / "novel_val.txt",
    )


def load_base2novel(
    dataset: str, seed: int | str = 1, split_dir: str | Path | None = None, train_list: TrainList = "fs"
) -> Base2NovelSplit:
    """Load a base-to-novel split: ``"k400"``, ``"hmdb51"``, ``"ucf101"`` or ``"ssv2"``.

    ``seed`` (1, 2, 3; also ``"2"`` or ``"s2"``) picks the 16-shot training list
    ``fs_base_s{seed}_train.txt``; ``train_list="full"`` uses ``base_train.txt``
    instead (shipped for HMDB51, UCF101 and SSv2, not for K400).  ``split_dir``
    points at a folder with the same layout as the shipped one (module docstring);
    under it any dataset name is accepted.
    """
    files = base2novel_files(dataset, seed, split_dir, train_list)
    if not files.train_list.is_file():
        raise _missing_train_list(files.train_list, dataset, train_list)
    return load_base2novel_from_files(
        files.base_labels, files.novel_labels, files.train_list, files.base_val, files.novel_val, name=dataset
    )


def load_full_class_names(dataset: str, split_dir: str | Path | None = None) -> list[str]:
    """All of ``dataset``'s class names in its original id order (the ``full_labels`` file)."""
    layout = _lookup_layout(BASE2NOVEL_LAYOUTS, DatasetLayout.generic, dataset, split_dir)
    return read_class_names(_split_root(split_dir) / "labels" / layout.full_labels)


def load_zero_shot(dataset: str, split: int | str = 1, split_dir: str | Path | None = None) -> ZeroShotSet:
    """Load a cross-dataset zero-shot evaluation set: ``"ucf101"``, ``"hmdb51"`` (all classes,
    test split 1-3) or ``"k600"`` (160 classes absent from K400, split 1-3).

    Returns ``(class_names, samples)`` with sample labels indexing ``class_names``.
    """
    layout = _lookup_layout(ZERO_SHOT_LAYOUTS, ZeroShotLayout.generic, dataset, split_dir)
    root = _split_root(split_dir)
    number = _parse_index(split, "split")
    samples_path = root / "zero_shot" / layout.samples.format(split=number)
    if not samples_path.is_file():
        raise MissingFileError(
            samples_path,
            f"{dataset} zero-shot list for split {number}",
            f"available splits: {_available_indices(samples_path.parent, layout.samples)}",
        )
    class_names = read_class_names(root / "labels" / layout.labels.format(split=number))
    samples = read_video_list(samples_path)
    _check_label_range(samples, len(class_names), str(samples_path))
    return ZeroShotSet(class_names, samples)


# --------------------------------------------------------------------------- writing


def write_base2novel(
    split: Base2NovelSplit,
    split_dir: str | Path,
    dataset: str | None = None,
    seed: int | str = 1,
    train_list: TrainList = "fs",
) -> Base2NovelFiles:
    """Write ``split`` into ``split_dir`` in the layout :func:`load_base2novel` reads.

    ``dataset`` defaults to ``split.name``.  Writing several seeds rewrites the
    (identical) label and validation files; only the training list differs.
    """
    Path(split_dir).mkdir(parents=True, exist_ok=True)
    files = base2novel_files(dataset or split.name, seed, split_dir, train_list)
    write_class_names(split.base_classes, files.base_labels)
    write_class_names(split.novel_classes, files.novel_labels)
    write_video_list(split.train, files.train_list)
    write_video_list(split.base_val, files.base_val)
    write_video_list(split.novel_val, files.novel_val)
    return files


# --------------------------------------------------------------------------- helpers

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _lookup_layout(registry, generic, dataset: str, split_dir: str | Path | None):
    """The registered layout of ``dataset``; unknown names get the generic layout under a user folder."""
    layout = registry.get(str(dataset).strip().lower())
    if layout is not None:
        return layout
    if split_dir is None:
        raise ConfigError(
            f"unknown dataset {dataset!r}; shipped ones are {sorted(registry)} "
            "(for your own data pass split_dir=<folder in the vlkd split layout>)"
        )
    # The name becomes part of file names, so keep it to a plain file-name fragment.
    if not _SAFE_NAME.fullmatch(str(dataset)):
        raise ConfigError(f"dataset name {dataset!r} must be letters, digits, '_', '.' or '-'")
    return generic(dataset)


def _split_root(split_dir: str | Path | None) -> Path:
    """The shipped split folder, or the user's folder after checking it exists."""
    if split_dir is None:
        return asset_path(SHIPPED_SPLIT_FOLDER)
    root = Path(split_dir)
    if not root.is_dir():
        raise MissingFileError(
            root, "split folder", "expected a folder holding labels/ and splits/; see vlkd.data.splits"
        )
    return root


def _parse_index(value: int | str, what: str) -> int:
    """A 1-based seed or split number from ``2``, ``"2"`` or ``"s2"``."""
    number = None
    if isinstance(value, str):
        match = re.fullmatch(r"s?([0-9]+)", value.strip().lower())
        number = int(match.group(1)) if match else None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    if number is None or number < 1:
        raise ConfigError(f"{what} must be a positive integer such as 1, 2 or 3, got {value!r}")
    return number


def _available_indices(folder: Path, pattern: str) -> list[int]:
    """The ``{n}`` values for which ``pattern.format(n)`` (file name with one ``{...}`` field) exists in ``folder``."""
    prefix, _, rest = pattern.partition("{")
    suffix = rest.partition("}")[2]
    regex = re.compile(re.escape(prefix) + r"([0-9]+)" + re.escape(suffix))
    found = (regex.fullmatch(child.name) for child in folder.iterdir()) if folder.is_dir() else ()
    return sorted(int(match.group(1)) for match in found if match)


def _missing_train_list(path: Path, dataset: str, train_list: str) -> MissingFileError:
    if train_list == "full":
        return MissingFileError(
            path,
            f"{dataset} full base training list",
            "this split folder has only the 16-shot lists, as the shipped K400 split does; "
            "use train_list='fs' or a split_dir whose list folder has base_train.txt",
        )
    seeds = _available_indices(path.parent, "fs_base_s{seed}_train.txt")
    return MissingFileError(path, f"{dataset} 16-shot training list", f"available seeds: {seeds}")


def _check_unique(names: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{where}: class name {name!r} is listed twice")
        seen.add(name)


def _check_label_range(samples: Sequence[VideoSample], num_classes: int, where: str) -> None:
    """Every label must index the half's class list; name the first sample that does not."""
    for sample in samples:
        if not 0 <= sample.label < num_classes:
            raise ConfigError(
                f"{where}: sample {sample.path!r} has label {sample.label}, "
                f"outside 0..{num_classes - 1} ({num_classes} classes)"
            )
