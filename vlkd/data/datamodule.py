"""The LightningDataModule for video classification and open-vocabulary evaluation.

One data module covers the protocols of the papers:

* **base-to-novel**: train on a 16-shot (or full) list over the base classes,
  evaluate on base videos with base names and on novel videos with novel names;
* **cross-dataset zero-shot**: train on one dataset's list, evaluate on other
  datasets' lists with their own class names (UCF101, HMDB51, K600 splits);
* **zero-shot only**: no training list, evaluation sets only.

The evaluation sets are exposed as :attr:`VideoDataModule.eval_sets`, in the
same order as the validation/test dataloaders, so a method knows which class
names each dataloader must be classified against.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from vlkd.data.annotations import read_annotations, read_class_names
from vlkd.data.datasets import EpochSampler, VideoClipDataset, collate_clips
from vlkd.data.sampling import FrameSampler
from vlkd.data.splits import base2novel_files, load_base2novel, load_zero_shot
from vlkd.data.transforms import check_scale_jitter
from vlkd.errors import ConfigError, MissingFileError
from vlkd.paths import file_sha256


@dataclass
class Base2NovelSpec:
    """Which base-to-novel split to use.

    Args:
        dataset: ``k400``, ``hmdb51``, ``ucf101``, ``ssv2``, or a name under ``split_dir``.
        seed: 1, 2 or 3: the 16-shot training list.
        split_dir: folder with the split layout; ``None`` uses the shipped real splits.
        train_list: ``fs`` (16-shot) or ``full`` (all base training videos).
    """

    dataset: str = "k400"
    seed: int = 1
    split_dir: str | None = None
    train_list: str = "fs"


@dataclass
class ZeroShotSpec:
    """A cross-dataset evaluation set.

    Args:
        dataset: ``ucf101``, ``hmdb51`` or ``k600`` (or a name under ``split_dir``).
        split: 1, 2 or 3, or a list of them. Each split is its own evaluation set
            (``ucf101_s1``, ...); with several, the results also report the mean ± std
            of their top-1 under the dataset's name, as the published protocol does
            over ``[1, 2, 3]``.
        root: the folder that dataset's list paths are relative to.
        split_dir: folder with the zero-shot lists; ``None`` uses the shipped ones.
    """

    dataset: str
    root: str
    split: int | list[int] = 1
    split_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise ConfigError(f"data.zero_shot {self.dataset}: split needs distinct split numbers, got {self.split}")

    @property
    def splits(self) -> list[int]:
        return [self.split] if isinstance(self.split, int) else list(self.split)


@dataclass
class EvalSet:
    """One evaluation dataloader's identity: its name, group and the names its labels index."""

    name: str
    class_names: list[str]
    group: str  # "base", "novel" or "zero_shot"
    # The dataset a zero-shot split belongs to: splits of one dataset are also
    # summarised together (mean ± std of their top-1); None for other sets.
    dataset: str | None = None
    # Named subsets of the classes (indices into class_names) also scored on their own,
    # e.g. SynthActions' {"static": [...], "temporal": [...]}; empty for real datasets.
    subsets: dict[str, list[int]] = field(default_factory=dict)
    unit: str = "videos"  # what the samples are: the name of the sample count in results


class VideoDataModule(pl.LightningDataModule):
    """Video clips for training and open-vocabulary evaluation.

    Args:
        root: folder the training (and base-to-novel evaluation) list paths are relative to;
            not needed when only ``zero_shot`` sets are evaluated (each names its own root).
        base2novel: use a base-to-novel split (training list + base and novel evaluation).
        train_list: an explicit training list (``path label`` lines or ``path,label`` CSV)
            instead of a base-to-novel split.
        train_classes: ``id,name`` CSV naming the labels of ``train_list``.
        zero_shot: cross-dataset evaluation sets, evaluated after the base/novel ones.
        num_frames: frames per clip (T).
        sampling: ``segment`` (TSN-style, one frame per segment), ``dense`` (frames
            ``stride`` apart) or ``window`` (PySlowFast's clips: ``num_frames`` frames spread
            evenly over ``num_frames x stride``); see :class:`~vlkd.data.sampling.FrameSampler`.
        stride: frame stride for dense and window sampling.
        stride_fps: the frame rate ``stride`` counts frames at, so that a window lasts the
            same time in every video (30 in PySlowFast and FROSTER: 8 x 16 lasts 4.3 s);
            ``None``: the video's own frames.
        test_views: temporal views per evaluation video, logits averaged over them.
        image_size: side length of the square crops.
        flip: horizontal flips in training (turn off for direction-sensitive datasets such as SSv2).
        scale_jitter: ``[low, high]``: training crops resize the shorter side to a random
            length in this range, then crop ``image_size`` at random (PySlowFast's recipe,
            ``[224, 256]`` in FROSTER's configs); ``None``: random resized crops (40-100 %
            of the area, aspect 3/4 to 4/3).
        batch_size: training clips per batch; evaluation uses ``eval_batch_size`` (default the same).
        num_workers: decoding worker processes.
        backend: video decoding backend (``decord``, ``pyav``, ``torchcodec``; ``None``: default).
        seed: base seed for sampling and augmentation.
        teacher_cache: a folder written by ``vlkd cache`` for this config: training replays its
            stored views and takes the teacher's outputs from it instead of running the teacher.
            A cache built for other data (list, sampling, crop settings) is refused, naming
            the setting that differs.
    """

    def __init__(
        self,
        root: str | None = None,
        base2novel: Base2NovelSpec | None = None,
        train_list: str | None = None,
        train_classes: str | None = None,
        zero_shot: list[ZeroShotSpec] | None = None,
        num_frames: int = 8,
        sampling: str = "segment",
        stride: int = 16,
        stride_fps: float | None = None,
        test_views: int = 1,
        image_size: int = 224,
        flip: bool = True,
        scale_jitter: tuple[int, int] | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        backend: str | None = None,
        seed: int = 0,
        teacher_cache: str | None = None,
    ):
        super().__init__()
        if base2novel is not None and train_list is not None:
            raise ConfigError("data: give either base2novel or train_list, not both")
        if train_list is not None and train_classes is None:
            raise ConfigError("data.train_classes is missing: train_list needs an id,name CSV of its class names")
        if root is None and (base2novel is not None or train_list is not None):
            raise ConfigError("data.root is missing: set it to the folder the training list's video paths are relative to")
        self.root = None if root is None else Path(root).expanduser()
        self.base2novel = base2novel
        self.train_list = train_list
        self.train_classes_file = train_classes
        self.zero_shot = list(zero_shot or [])
        frames = dict(mode=sampling, num_frames=num_frames, stride=stride, stride_fps=stride_fps)
        self.train_sampler = FrameSampler(**frames, num_views=1)
        self.eval_sampler = FrameSampler(**frames, num_views=test_views)
        self.image_size = image_size
        self.flip = flip
        if scale_jitter is not None:
            check_scale_jitter(image_size, scale_jitter)
        self.scale_jitter = None if scale_jitter is None else tuple(scale_jitter)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.backend = backend
        self.seed = seed
        self.teacher_cache = teacher_cache
        self.teacher_cache_reader = None  # the opened cache, once set up
        self.train_list_file: Path | None = None
        self.train_dataset: VideoClipDataset | None = None
        self.eval_datasets: list[VideoClipDataset] = []
        self.eval_sets: list[EvalSet] = []
        self.train_classes: list[str] = []
        if base2novel is None and train_list is None and not self.zero_shot:
            raise ConfigError("data: nothing to load; set base2novel, train_list or zero_shot")

    # -- building ---------------------------------------------------------------
    def _dataset(self, root: Path, samples, class_names, train: bool) -> VideoClipDataset:
        return VideoClipDataset(
            root,
            samples,
            class_names,
            self.train_sampler if train else self.eval_sampler,
            image_size=self.image_size,
            train=train,
            flip=self.flip,
            scale_jitter=self.scale_jitter,
            backend=self.backend,
            seed=self.seed,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.eval_sets:  # already set up (setup runs once per stage)
            return
        if self.root is not None and not self.root.is_dir():
            raise MissingFileError(self.root, "video root folder", "set data.root to the folder holding the videos")
        if self.base2novel is not None:
            spec = self.base2novel
            split = load_base2novel(spec.dataset, spec.seed, spec.split_dir, spec.train_list)
            self.train_list_file = base2novel_files(spec.dataset, spec.seed, spec.split_dir, spec.train_list).train_list
            self.train_classes = split.base_classes
            self.train_dataset = self._dataset(self.root, split.train, split.base_classes, train=True)
            self._add_eval("base", split.base_classes, self.root, split.base_val, "base")
            self._add_eval("novel", split.novel_classes, self.root, split.novel_val, "novel")
        elif self.train_list is not None:
            self.train_classes = read_class_names(self.train_classes_file)
            samples = read_annotations(self.train_list)
            self.train_list_file = Path(self.train_list).expanduser()
            self.train_dataset = self._dataset(self.root, samples, self.train_classes, train=True)
        for spec in self.zero_shot:
            root = Path(spec.root).expanduser()
            if not root.is_dir():
                raise MissingFileError(root, f"{spec.dataset} video root", "set root in data.zero_shot")
            for split in spec.splits:
                class_names, samples = load_zero_shot(spec.dataset, split, spec.split_dir)
                self._add_eval(f"{spec.dataset}_s{split}", class_names, root, samples, "zero_shot", spec.dataset)

        self._open_teacher_cache()

    def _open_teacher_cache(self) -> None:
        if self.teacher_cache is None or self.teacher_cache_reader is not None or self.train_dataset is None:
            return
        from vlkd.teacher.cache import TeacherCache

        reader = TeacherCache(self.teacher_cache)
        reader.check_data(self.cache_fingerprint())
        self.train_dataset.teacher_cache = reader
        self.teacher_cache_reader = reader

    def cache_fingerprint(self) -> dict:
        """What a ``vlkd cache`` of this training set depends on: the list (by content), the sampling and the crops.

        A cache is valid for a run exactly when these agree (``sources`` only says where
        the list was read from, and may differ).
        """
        dataset = self.train_dataset
        if not isinstance(dataset, VideoClipDataset):
            raise ConfigError(
                f"{type(self).__name__} trains on {type(dataset).__name__}, which vlkd cache cannot replay: "
                "cache a data module that reads a video list (base2novel or train_list)"
            )
        if dataset.sampler.mode == "fps":
            raise ConfigError("sampling 'fps' gives clips of varying length, which vlkd cache cannot store")
        listing = "\n".join(f"{sample.path}\t{sample.label}" for sample in dataset.samples)
        sampler = dataset.sampler
        return {
            "train_samples_sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest(),
            "train_classes_sha256": hashlib.sha256("\n".join(self.train_classes).encode("utf-8")).hexdigest(),
            "num_samples": len(dataset),
            "sampling": {"mode": sampler.mode, "num_frames": sampler.num_frames, "stride": sampler.stride,
                         "stride_fps": sampler.stride_fps},
            "image_size": dataset.image_size,
            "flip": dataset.flip,
            "scale_jitter": list(dataset.scale_jitter) if dataset.scale_jitter else None,
            "sources": {"train_list": str(self.train_list_file) if self.train_list_file else None,
                        "train_list_sha256": (file_sha256(self.train_list_file)
                                              if self.train_list_file and self.train_list_file.is_file() else None), "root": str(dataset.root)},
        }

    def _add_eval(self, name: str, class_names, root: Path, samples, group: str, dataset: str | None = None) -> None:
        subsets = self.class_subsets(root, list(class_names))
        self.eval_sets.append(EvalSet(name, list(class_names), group, dataset, subsets))
        self.eval_datasets.append(self._dataset(root, samples, class_names, train=False))

    def class_subsets(self, root: Path, class_names: list[str]) -> dict[str, list[int]]:
        """Named subsets of an evaluation set's classes to score separately (none for a plain video folder)."""
        return {}

    # -- loaders ------------------------------------------------------------------
    def _loader(self, dataset: VideoClipDataset, batch_size: int, shuffle: bool, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            persistent_workers=self.num_workers > 0,
            pin_memory=False,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ConfigError("this data module has no training list: set data.base2novel or data.train_list")
        if self.teacher_cache_reader is not None:
            # Replaying a cache: the sampler tells each item its epoch, which picks its stored view.
            return self._loader(self.train_dataset, self.batch_size, shuffle=True,
                                sampler=EpochSampler(len(self.train_dataset)))
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(dataset, self.eval_batch_size, shuffle=False) for dataset in self.eval_datasets]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()


class SynthActionsDataModule(VideoDataModule):
    """:class:`VideoDataModule` on a SynthActions world, rendered into ``root`` if it is missing.

    The world is written with :func:`vlkd.data.synthetic.generate_actions` in
    ``prepare_data`` (once, on the first process) and read back through exactly
    the base-to-novel loaders a real dataset uses. Horizontal flips are off:
    they would turn "moving left" into "moving right".

    Args:
        root: folder of the world (rendered there when missing or out of date).
        style: render style (``flat``, ``textured``).
        world_seed: the world's seed.
        seed: the 16-shot training list, 1..3.
        size: frame side in pixels when rendering.
        frames: frames per rendered clip.
        clips_per_class: evaluation clips per class when rendering.
        train_clips_per_class: base training pool per class when rendering.
        shots: clips per base class in each seed's training list when rendering.
        zero_shot_styles: other styles whose zero-shot lists are evaluated too
            (cross-dataset protocol), rendered beside ``root`` as ``<root>_<style>``.
        random_clips: train on this many unlabelled clips of random compositions per
            epoch (:class:`~vlkd.data.synthetic.clips.RandomSynthClips`, the world's "web
            video", for label-free distillation) instead of the base training list; the
            text set (``train_classes``) is then every composition of the vocabulary.
        **kwargs: the remaining :class:`VideoDataModule` options.
    """

    def __init__(
        self,
        root: str = "synth/flat",
        style: str = "flat",
        world_seed: int = 0,
        seed: int = 1,
        size: int = 64,
        frames: int = 16,
        clips_per_class: int = 32,
        train_clips_per_class: int = 32,
        shots: int = 16,
        zero_shot_styles: list[str] | None = None,
        random_clips: int | None = None,
        num_frames: int = 8,
        image_size: int = 64,
        batch_size: int = 16,
        num_workers: int = 2,
        **kwargs,
    ):
        from vlkd.data.synthetic import default_dataset_name

        self.world_settings = {
            "seed": world_seed, "style": style, "size": size, "frames": frames, "clips_per_class": clips_per_class,
            "train_clips_per_class": train_clips_per_class, "shots": shots,
        }
        self.random_clips = random_clips
        self.other_worlds = {s: f"{str(root).rstrip('/')}_{s}" for s in (zero_shot_styles or [])}
        zero_shot = [
            ZeroShotSpec(default_dataset_name(s), root=path, split=1, split_dir=path)
            for s, path in self.other_worlds.items()
        ]
        super().__init__(
            root,
            base2novel=Base2NovelSpec(default_dataset_name(style), seed=seed, split_dir=str(root)),
            zero_shot=zero_shot,
            num_frames=num_frames,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            flip=False,
            **kwargs,
        )

    def class_subsets(self, root: Path, class_names: list[str]) -> dict[str, list[int]]:
        """SynthActions classes by group: ``static`` and ``temporal``, from the world's manifest."""
        from vlkd.data.synthetic import read_world_classes

        classes = read_world_classes(root) or {}
        subsets: dict[str, list[int]] = {}
        for index, name in enumerate(class_names):
            if name in classes:
                subsets.setdefault(classes[name]["group"], []).append(index)
        return subsets

    def setup(self, stage: str | None = None) -> None:
        from vlkd.data.synthetic.clips import RandomSynthClips, vocabulary_names

        if self.random_clips and self.teacher_cache:
            raise ConfigError("data.random_clips draws new clips every epoch, which a teacher cache cannot hold: "
                              "drop one of random_clips and teacher_cache")
        super().setup(stage)
        if self.random_clips and not isinstance(self.train_dataset, RandomSynthClips):
            frames = self.train_sampler.num_frames
            self.train_dataset = RandomSynthClips(self.random_clips, frames=frames, size=self.image_size)
            self.train_classes = vocabulary_names()

    def prepare_data(self) -> None:
        from vlkd.data.synthetic import generate_actions

        generate_actions(self.root, **self.world_settings)
        for style, path in self.other_worlds.items():
            generate_actions(path, **{**self.world_settings, "style": style})
