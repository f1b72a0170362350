"""Task sequences for continual learning of CLIP (ZSCL's MTIL protocol) and the data module that feeds them.

A **task sequence** is a list of :class:`ContinualTask`: each task is one image
classification dataset with its own class names, prompt templates (the first
is the training template, all of them the evaluation ensemble), training and
test images. Two sources:

* ``synth``: the six offline SynthTasks (:mod:`vlkd.data.synthetic.tasks`,
  ``vlkd synth tasks``), in ``order_1`` / ``order_2`` or an explicit list;
  the world is rendered by :meth:`ContinualDataModule.prepare_data` when missing;
* ``mtil``: the 11 MTIL datasets read through torchvision from the user's files
  (:mod:`vlkd.data.mtil`), in order ``I`` / ``II`` or an explicit list.

**One ``vlkd fit`` trains the whole sequence.** Task ``t`` covers the global
optimisation steps ``[t * I, (t + 1) * I)`` with ``I = iterations_per_task``
(ZSCL: 1,000), whatever the size of its dataset. The training batches are a
function of the step alone: task ``t`` reads an endless stream of its training
images, one seeded permutation after another (permutation ``k`` is drawn from
``(seed, t, k)``), step ``s`` takes positions ``[s_t * B, (s_t + 1) * B)`` of it
(``s_t = s - t * I``), and every image's augmentation (crop, flip) is drawn from
its own generator seeded by ``(seed, t, s, slot)``. So a run killed in the
middle of a task and resumed with ``--ckpt_path last`` sees exactly the
batches an uninterrupted run sees (tested). In Lightning's terms
:class:`ContinualBatchSampler` reads ``trainer.global_step`` each time an
iterator is made, and yields the steps from there to the end of that task: one
Lightning epoch is (the rest of) one task, and a resumed epoch starts where the
checkpoint stopped. The loader is resumable by construction, which it says to
Lightning through ``state_dict`` / ``load_state_dict`` (its state is the step).

**Augmentation.** ZSCL's training transform is CLIP's ``RandomResizedCrop(224,
scale=(0.9, 1.0))`` with no flip, and evaluation resizes the shorter side and
crops the centre; ``crop_scale`` defaults to ``(0.9, 1.0)``. ``flip: true``
flips only the tasks marked flip-safe (SynthPlaces' "on the left" is not; of
MTIL, MNIST is not).

**Reference data** (:class:`ReferenceData`, ZSCL only): images and sentences
that stand for the pretraining distribution, on which ZSCL distils the frozen
CLIP. At real scale, ZSCL's ImageNet training folder (``ImageNet/train``, one
sub-folder per class; ZSCL's ``ImageNetSUB`` keeps ``num`` images of it, drawn
as ``torch.utils.data.random_split`` with seed 42, e.g. 100,000) and the
captions of Conceptual Captions' validation split (``Validation_GCC-1.1.0-
Validation_output.csv``, the ``title`` column; or any text file, one sentence a
line). Offline, the SynthImages stills (``vlkd synth images``, rendered when
missing) and sentences written from the shipped teacher's caption vocabulary
(:func:`synth_reference_sentences`). Every training step then also carries
``reference_batch_size`` reference images (ZSCL: the training batch size), in
their evaluation view (ZSCL reads them with the test transform), from their own
endless seeded stream indexed by the global step.

A batch is ``{"image": (B, 3, S, S), "label": (B,), "task": int, "step": int,
"index", "skipped"}`` plus ``"reference": {"image": (R, 3, S, S)}`` with
reference data; labels index the task's own class names.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlkd.data.datamodule import EvalSet
from vlkd.data.images import IMAGE_SUFFIXES, ImageDataset, ImageSample, collate_images, few_shot_subset
from vlkd.errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)

__all__ = [
    "SOURCES",
    "ContinualBatchSampler",
    "ContinualDataModule",
    "ContinualTask",
    "ReferenceData",
    "collate_continual",
    "mtil_task_sequence",
    "read_reference_sentences",
    "reference_image_samples",
    "step_to_task",
    "synth_reference_sentences",
    "synth_task_sequence",
    "task_sequence",
]

SOURCES = ("synth", "mtil")
#: MTIL datasets whose mirror image is another class (or no class): digits.
MTIL_FLIP_UNSAFE = frozenset({"MNIST"})
_STREAM_KEY = 0x6B1D  # keys of the seeded draws, so they differ from every other seeded draw of the package
_AUGMENT_KEY = 0x6B1E
_REFERENCE_KEY = 0x6B1F
_SENTENCE_KEY = 0x6B20


# --------------------------------------------------------------------------- tasks


@dataclass
class ContinualTask:
    """One task of a sequence: a dataset with its own class names and templates.

    Attributes:
        name: the dataset's name (``Aircraft``, ``SynthPlaces``).
        class_names: names of labels ``0..C-1``.
        templates: prompt templates with one ``{}``; the first is the training template.
        train_samples, test_samples: the images of each split (paths relative to the factory's root).
        flip_safe: a mirrored image shows the same class.
        dataset_factory: ``(samples, train=..., image_size=..., crop_scale=..., flip=..., seed=...) -> ImageDataset``.
    """

    name: str
    class_names: list[str]
    templates: tuple[str, ...]
    train_samples: list[ImageSample]
    test_samples: list[ImageSample]
    flip_safe: bool
    dataset_factory: Callable[..., ImageDataset] = field(repr=False)

    @property
    def training_template(self) -> str:
        return self.templates[0]

    def train_dataset(self, image_size: int, crop_scale: tuple[float, float], flip: bool, seed: int) -> ImageDataset:
        """Training views (random resized crop; a flip only where ``flip`` and the task is flip-safe)."""
        return self.dataset_factory(self.train_samples, train=True, image_size=image_size, crop_scale=crop_scale,
                                    flip=flip and self.flip_safe, seed=seed)

    def test_dataset(self, image_size: int, seed: int) -> ImageDataset:
        """Evaluation views (shorter side resized, centre crop)."""
        return self.dataset_factory(self.test_samples, train=False, image_size=image_size, seed=seed)


def _check_shots(shots: int | None) -> None:
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise ConfigError(f"data.shots must be a positive number of images per class or null, got {shots!r}")


def synth_task_sequence(root: str | Path, order: str | Sequence[str] = "order_1", shots: int | None = None,
                        shot_seed: int = 1) -> list[ContinualTask]:
    """The SynthTasks of the folder ``root`` (``vlkd synth tasks``) in ``order`` (``order_1``, ``order_2`` or names)."""
    from vlkd.data.images import read_split_zhou
    from vlkd.data.synthetic.tasks import read_tasks

    _check_shots(shots)
    world = read_tasks(root)
    manifest = json.loads(world.manifest.read_text(encoding="utf-8"))
    flip_safe = {task["name"]: bool(task.get("flip_safe", False)) for task in manifest["tasks"]}
    if isinstance(order, str):
        names = world.order(order)
    else:
        names = list(order)
        unknown = [name for name in names if name not in world.class_names]
        if unknown or len(set(names)) != len(names):
            raise ConfigError(f"data.order {names}: give distinct tasks of {', '.join(world.tasks)}"
                              + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    tasks = []
    for name in names:
        splits, class_names = read_split_zhou(world.split_file(name))
        train = splits.get("train") or []
        if shots is not None:
            train = few_shot_subset(train, shots, shot_seed)
        image_root = world.image_root(name)

        def factory(samples, *, _root=image_root, _names=class_names, **kwargs):
            return ImageDataset(_root, samples, _names, **kwargs)

        tasks.append(ContinualTask(name, list(class_names), tuple(world.templates[name]), list(train),
                                   list(splits.get("test") or []), flip_safe[name], factory))
    return tasks


def mtil_task_sequence(root: str | Path, order: str | Sequence[str] = "I", shots: int | None = None,
                       shot_seed: int = 1) -> list[ContinualTask]:
    """The MTIL datasets under ``root`` (torchvision's layouts) in ``order`` (``I``, ``II`` or names)."""
    from vlkd.data.mtil import mtil_order, mtil_splits

    _check_shots(shots)
    tasks = []
    for name in mtil_order(order):
        splits = mtil_splits(name, root, shots=shots, seed=shot_seed)
        train, test = splits["train"], splits["test"]

        def factory(samples, *, _data=train, **kwargs):
            return replace(_data, samples=list(samples)).dataset(**kwargs)

        tasks.append(ContinualTask(name, list(train.class_names), tuple(train.templates), list(train.samples),
                                   list(test.samples), name not in MTIL_FLIP_UNSAFE, factory))
    return tasks


def task_sequence(source: str, root: str | Path, order: str | Sequence[str], shots: int | None = None,
                  shot_seed: int = 1) -> list[ContinualTask]:
    """The task sequence of ``source`` (``synth`` or ``mtil``) under ``root`` in ``order``."""
    if source == "synth":
        return synth_task_sequence(root, order, shots, shot_seed)
    if source == "mtil":
        return mtil_task_sequence(root, order, shots, shot_seed)
    raise ConfigError(f"data.source must be one of {SOURCES}, got {source!r}")


# --------------------------------------------------------------------------- steps and batches


def step_to_task(step: int, iterations_per_task: int) -> tuple[int, int]:
    """``(task, step within the task)`` of global optimisation step ``step``."""
    if step < 0 or iterations_per_task < 1:
        raise ValueError(f"need step >= 0 and iterations_per_task >= 1, got {step}, {iterations_per_task}")
    return divmod(step, iterations_per_task)


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32).astype(np.uint64)
               .dot(np.array([1, 2**32], dtype=np.uint64)) % (2**62))


class _EndlessStream:
    """Positions ``0, 1, 2, ...`` of one permutation of ``range(size)`` after another, permutation ``k`` drawn
    from ``(seed, key, stream, k)``; the last permutation used is kept."""

    def __init__(self, size: int, seed: int, key: int, stream: int):
        self.size, self.seed, self.key, self.stream = size, seed, key, stream
        self._cached: tuple[int, np.ndarray] | None = None

    def _permutation(self, k: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != k:
            rng = np.random.default_rng([self.seed, self.key, self.stream, k])
            self._cached = (k, rng.permutation(self.size))
        return self._cached[1]

    def take(self, start: int, count: int) -> list[int]:
        return [int(self._permutation(p // self.size)[p % self.size]) for p in range(start, start + count)]


class ContinualBatchSampler:
    """The batches of a task sequence, a function of the global step (see the module docstring).

    Each batch is a list of keys for :class:`ContinualTrainDataset`: ``("train", task, index, item seed, step)``
    for the ``batch_size`` training images, then ``("reference", index)`` for the reference images.

    Args:
        task_sizes: training images of each task.
        iterations_per_task: optimisation steps per task.
        batch_size: training images per step.
        seed: the seed of every draw.
        start: the global step the next iterator starts at: an int, or a callable asked each time an iterator is
            made (the data module passes ``trainer.global_step``).
        reference_size, reference_batch_size: reference images in all, and per step (0: none).
    """

    def __init__(self, task_sizes: Sequence[int], iterations_per_task: int, batch_size: int, seed: int = 0,
                 start: int | Callable[[], int] = 0, reference_size: int = 0, reference_batch_size: int = 0):
        if iterations_per_task < 1 or batch_size < 1:
            raise ConfigError(f"need iterations_per_task >= 1 and batch_size >= 1, got {iterations_per_task}, "
                              f"{batch_size}")
        if any(size < 1 for size in task_sizes):
            raise ConfigError(f"every task needs training images, got sizes {list(task_sizes)}")
        self.task_sizes = list(task_sizes)
        self.iterations_per_task = iterations_per_task
        self.batch_size = batch_size
        self.seed = seed
        self.start = start
        self.reference_batch_size = reference_batch_size if reference_size else 0
        self._streams = [_EndlessStream(size, seed, _STREAM_KEY, task) for task, size in enumerate(self.task_sizes)]
        self._reference = _EndlessStream(reference_size, seed, _REFERENCE_KEY, 0) if self.reference_batch_size else None

    @property
    def total_steps(self) -> int:
        return len(self.task_sizes) * self.iterations_per_task

    def __len__(self) -> int:
        # One iterator covers (the rest of) one task.
        return self.iterations_per_task

    def start_step(self) -> int:
        return int(self.start() if callable(self.start) else self.start)

    def __iter__(self):
        start = self.start_step()
        if start >= self.total_steps:
            return
        task, _ = step_to_task(start, self.iterations_per_task)
        for step in range(start, (task + 1) * self.iterations_per_task):
            yield self.batch(step)

    def batch(self, step: int) -> list[tuple]:
        """The keys of global step ``step``."""
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step {step} is outside the sequence's {self.total_steps} steps")
        task, local = step_to_task(step, self.iterations_per_task)
        indices = self._streams[task].take(local * self.batch_size, self.batch_size)
        keys: list[tuple] = [("train", task, index, _seed_of(self.seed, _AUGMENT_KEY, task, step, slot), step)
                             for slot, index in enumerate(indices)]
        if self._reference is not None:
            keys += [("reference", index)
                     for index in self._reference.take(step * self.reference_batch_size, self.reference_batch_size)]
        return keys


class ContinualTrainDataset(Dataset):
    """Items of the keys :class:`ContinualBatchSampler` yields: a task's training image with the augmentation its
    key seeds, or a reference image (evaluation view)."""

    def __init__(self, tasks: Sequence[ImageDataset], reference: ImageDataset | None = None):
        self.tasks = list(tasks)
        self.reference = reference

    def __len__(self) -> int:
        return sum(len(task) for task in self.tasks)

    def __getitem__(self, key: tuple) -> dict:
        if key[0] == "reference":
            if self.reference is None:
                raise ValueError("a reference key, but this dataset has no reference images")
            return {**self.reference[key[1]], "kind": "reference"}
        _, task, index, seed, step = key
        # ImageDataset draws a training item's randomness from torch's generator: seeding a fork of it
        # makes the item a function of its key, whatever the worker and its history.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            item = self.tasks[task][index]
        return {**item, "kind": "train", "task": task, "step": step}


def collate_continual(items: list[dict]) -> dict:
    """One training batch (one task, one step) and, when present, its reference images."""
    train = [item for item in items if item["kind"] == "train"]
    reference = [item for item in items if item["kind"] == "reference"]
    tasks, steps = {item["task"] for item in train}, {item["step"] for item in train}
    if len(tasks) != 1 or len(steps) != 1:
        raise ValueError(f"a batch must hold one task and one step, got tasks {tasks} and steps {steps}")
    batch = collate_images(train)
    batch.update(task=tasks.pop(), step=steps.pop())
    if reference:
        batch["reference"] = {"image": torch.stack([item["image"] for item in reference])}
        batch["skipped"] += [path for item in reference for path in item["skipped"]]
    return batch


class ContinualTrainLoader(DataLoader):
    """A DataLoader whose position is the trainer's global step (its sampler starts there): resumable as it is."""

    def state_dict(self) -> dict:
        return {"global_step": self.batch_sampler.start_step()}

    def load_state_dict(self, state: dict) -> None:
        # Nothing to restore: the next iterator starts at the restored trainer's global step.
        pass


# --------------------------------------------------------------------------- reference data


@dataclass
class ReferenceData:
    """ZSCL's reference images and sentences (see the module docstring).

    Args:
        images: the folder of reference images: ``kind: folder``: one sub-folder per class holding image files
            (ZSCL: ``ImageNet/train``); ``kind: synth_images``: a SynthImages world (``vlkd synth images``),
            rendered there when missing; its training pool is used.
        kind: ``folder`` or ``synth_images``.
        num_images: keep this many images, drawn as ZSCL's ``ImageNetSUB`` draws them (``random_split``,
            seed 42); ``None``: all.
        sentences: a text file with one sentence a line, or a CSV / TSV with a ``title`` (Conceptual Captions,
            as ZSCL reads it) or ``caption`` column; ``None``: :func:`synth_reference_sentences`.
        num_sentences: how many sentences to generate when ``sentences`` is ``None``.
        batch_size: reference images per step; ``None``: the data module's ``batch_size`` (ZSCL).
    """

    images: str = "synth/images"
    kind: str = "folder"
    num_images: int | None = None
    sentences: str | None = None
    num_sentences: int = 1000
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("folder", "synth_images"):
            raise ConfigError(f"data.reference.kind must be 'folder' or 'synth_images', got {self.kind!r}")
        for key in ("num_images", "batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"data.reference.{key} must be >= 1 or null, got {value}")
        if self.num_sentences < 1:
            raise ConfigError(f"data.reference.num_sentences must be >= 1, got {self.num_sentences}")


def reference_image_samples(folder: str | Path, num_images: int | None = None) -> list[ImageSample]:
    """The image files of ``folder/<class>/`` (classes and files sorted), or ``num_images`` of them drawn as
    ``torch.utils.data.random_split(dataset, [num, rest], generator=torch.Generator().manual_seed(42))``."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MissingFileError(root, "reference image folder",
                               "give a folder with one sub-folder of images per class, e.g. ImageNet/train")
    samples = []
    for label, class_dir in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        files = sorted(p.name for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        samples += [ImageSample(f"{class_dir.name}/{name}", label) for name in files]
    if not samples:
        raise MissingFileError(root, "reference images",
                               f"the folder has no <class>/<image> files ({', '.join(IMAGE_SUFFIXES)})")
    if num_images is not None:
        if num_images > len(samples):
            raise ConfigError(f"data.reference.num_images is {num_images}, but {root} holds {len(samples)} images")
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(42)).tolist()
        samples = [samples[i] for i in order[:num_images]]
    return samples


def read_reference_sentences(path: str | Path) -> list[str]:
    """Sentences from a text file (one a line) or a CSV / TSV file's ``title`` or ``caption`` column."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise MissingFileError(file, "reference sentences",
                               "give a text file (one sentence a line) or Conceptual Captions' "
                               "Validation_GCC-1.1.0-Validation_output.csv")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in (".csv", ".tsv"):
        delimiter = "\t" if "\t" in text.splitlines()[0] else ","
        reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
        column = next((name for name in ("title", "caption") if name in (reader.fieldnames or [])), None)
        if column is None:
            raise ConfigError(f"{file}: no 'title' or 'caption' column (columns: {reader.fieldnames})")
        sentences = [str(row[column]).strip() for row in reader]
    else:
        sentences = [line.strip() for line in text.splitlines()]
    sentences = [sentence for sentence in sentences if sentence]
    if not sentences:
        raise ConfigError(f"{file}: no sentences")
    return sentences


def synth_reference_sentences(count: int = 1000, seed: int = 0) -> list[str]:
    """``count`` captions in the shipped teacher's caption language, drawn from ``seed``.

    Each names a colour, a shape and a ground or motion phrase of the world's
    vocabulary (:func:`~vlkd.data.synthetic.world.random_concepts`), sometimes a
    size and where the object is, in the renderer's caption form or put into one
    of the templates the captions were rewritten into in pretraining
    (:data:`~vlkd.teacher.pretrain.CAPTION_TEMPLATES`).
    """
    from vlkd.data.synthetic.world import random_concepts
    from vlkd.teacher.pretrain import CAPTION_TEMPLATES

    rng = np.random.default_rng([seed, _SENTENCE_KEY])
    places = ("on the left", "on the right", "up high", "down low")
    sentences = []
    for _ in range(count):
        concepts = random_concepts(rng)
        subject = f"{concepts.colour} {concepts.shape}"
        if rng.random() < 0.25:
            subject = f"{('small', 'big')[rng.integers(2)]} {subject}"
        description = f"{subject} {concepts.phrase}"
        if rng.random() < 0.4:
            description = f"{description}, seen {places[rng.integers(len(places))]}"
        if rng.random() < 0.5:
            sentences.append(CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(description))
        else:
            sentences.append(f"{'an' if description[0] in 'aeiou' else 'a'} {description}")
    return sentences


# --------------------------------------------------------------------------- the data module


class ContinualDataModule(pl.LightningDataModule):
    """A task sequence for one ``vlkd fit`` over all its tasks (see the module docstring).

    Args:
        source: ``synth`` (SynthTasks) or ``mtil`` (the 11 MTIL datasets through torchvision).
        root: the SynthTasks folder, or the root holding the MTIL datasets in torchvision's layouts.
        order: ``order_1`` / ``order_2`` (synth), ``I`` / ``II`` (mtil), or a list of task names.
        iterations_per_task: optimisation steps per task (ZSCL: 1,000).
        batch_size: training images per step (ZSCL: 64).
        eval_batch_size: images per evaluation batch (default ``2 x batch_size``).
        image_size: the side of the square images the model gets (the teacher resizes others).
        crop_scale: the area range of the training crops (ZSCL: 0.9 to 1).
        flip: horizontal flips in training, for flip-safe tasks only (ZSCL: none).
        shots: keep this many training images per class (the few-shot variant: 5); ``None``: all.
        shot_seed: the seed of the few-shot draw.
        num_workers: decoding worker processes per loader.
        seed: the seed of the batches, the augmentation and the evaluation items.
        reference: ZSCL's reference images and sentences (:class:`ReferenceData`); ``None`` for other methods.
        render: settings of :func:`vlkd.data.synthetic.tasks.generate_tasks` when rendering the SynthTasks world
            (``None``: the defaults, and an existing world is used as it is).
        reference_render: settings of :func:`vlkd.data.synthetic.images.generate_images` for a ``synth_images``
            reference (``None``: the defaults, and an existing world is used as it is).
    """

    def __init__(self, source: str = "synth", root: str = "synth/tasks", order: str | list[str] = "order_1",
                 iterations_per_task: int = 1000, batch_size: int = 64, eval_batch_size: int | None = None,
                 image_size: int = 224, crop_scale: tuple[float, float] = (0.9, 1.0), flip: bool = False,
                 shots: int | None = None, shot_seed: int = 1, num_workers: int = 4, seed: int = 0,
                 reference: ReferenceData | None = None, render: dict | None = None,
                 reference_render: dict | None = None):
        super().__init__()
        if source not in SOURCES:
            raise ConfigError(f"data.source must be one of {SOURCES}, got {source!r}")
        for key, value in dict(iterations_per_task=iterations_per_task, batch_size=batch_size,
                               image_size=image_size).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{key} must be a positive integer, got {value!r}")
        _check_shots(shots)
        low, high = crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}")
        self.source = source
        self.root = Path(root).expanduser()
        self.order = order
        self.iterations_per_task = iterations_per_task
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.image_size = image_size
        self.crop_scale = (float(low), float(high))
        self.flip = flip
        self.shots = shots
        self.shot_seed = shot_seed
        self.num_workers = num_workers
        self.seed = seed
        self.reference = reference
        self.render = render
        self.reference_render = reference_render
        self.tasks: list[ContinualTask] = []
        self.train_datasets: list[ImageDataset] = []
        self.test_datasets: list[ImageDataset] = []
        self.reference_dataset: ImageDataset | None = None
        self.reference_sentences: list[str] = []
        self.test_sets: list[EvalSet] = []

    # -- building -------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.source == "synth":
            from vlkd.data.synthetic.tasks import MANIFEST_NAME, generate_tasks

            if self.render is not None or not (self.root / MANIFEST_NAME).is_file():
                generate_tasks(self.root, **(self.render or {}))
        reference = self.reference
        if reference is not None and reference.kind == "synth_images":
            from vlkd.data.synthetic.images import generate_images

            world = Path(reference.images).expanduser()
            if self.reference_render is not None or not (world / "world_info.json").is_file():
                generate_images(world, **(self.reference_render or {}))

    def setup(self, stage: str | None = None) -> None:
        if self.tasks:
            return
        self.tasks = task_sequence(self.source, self.root, self.order, self.shots, self.shot_seed)
        if len(self.tasks) < 2:
            raise ConfigError(f"data.order names {len(self.tasks)} task(s); a sequence needs at least 2")
        self.train_datasets = [task.train_dataset(self.image_size, self.crop_scale, self.flip, self.seed)
                               for task in self.tasks]
        self.test_datasets = [task.test_dataset(self.image_size, self.seed) for task in self.tasks]
        self.test_sets = [EvalSet(task.name, task.class_names, "test", unit="images") for task in self.tasks]
        if self.reference is not None:
            self._setup_reference(self.reference)
        log.info("task sequence (%s): %s; %d steps each", self.source, ", ".join(self.task_names),
                 self.iterations_per_task)

    def _setup_reference(self, reference: ReferenceData) -> None:
        folder = Path(reference.images).expanduser()
        if reference.kind == "synth_images":
            from vlkd.data.images import read_split_zhou
            from vlkd.data.synthetic.images import DATASET_NAME

            splits, names = read_split_zhou(folder / f"split_zhou_{DATASET_NAME}.json")
            samples = splits["train"]
            if reference.num_images is not None:
                order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(42)).tolist()
                samples = [samples[i] for i in order[: reference.num_images]]
            self.reference_dataset = ImageDataset(folder / "images", samples, names, image_size=self.image_size,
                                                  train=False, seed=self.seed)
        else:
            samples = reference_image_samples(folder, reference.num_images)
            self.reference_dataset = ImageDataset(folder, samples, ["reference"] * (samples[-1].label + 1),
                                                  image_size=self.image_size, train=False, seed=self.seed)
        self.reference_sentences = (read_reference_sentences(reference.sentences) if reference.sentences
                                    else synth_reference_sentences(reference.num_sentences, self.seed))

    # -- what a method reads -----------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def total_steps(self) -> int:
        return self.num_tasks * self.iterations_per_task

    @property
    def reference_batch_size(self) -> int:
        if self.reference is None:
            return 0
        return self.reference.batch_size or self.batch_size

    def task_of_step(self, step: int) -> int:
        return step_to_task(step, self.iterations_per_task)[0]

    def _current_step(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_step) if trainer is not None else 0

    def batch_sampler(self, start: int | Callable[[], int] | None = None) -> ContinualBatchSampler:
        """The sampler of the training batches; ``start``: where iterators start (default: the trainer's step)."""
        if not self.tasks:
            raise RuntimeError("the data module is not set up: call setup('fit') first")
        return ContinualBatchSampler(
            [len(dataset) for dataset in self.train_datasets], self.iterations_per_task, self.batch_size,
            seed=self.seed, start=self._current_step if start is None else start,
            reference_size=len(self.reference_dataset) if self.reference_dataset is not None else 0,
            reference_batch_size=self.reference_batch_size)

    # -- loaders ------------------------------------------------------------------------
    def train_dataloader(self, start: int | Callable[[], int] | None = None) -> DataLoader:
        dataset = ContinualTrainDataset(self.train_datasets, self.reference_dataset)
        return ContinualTrainLoader(dataset, batch_sampler=self.batch_sampler(start), collate_fn=collate_continual,
                                    num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def test_loader(self, task: int) -> DataLoader:
        """The test images of task ``task`` (evaluation views, in order)."""
        return DataLoader(self.test_datasets[task], batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate_images)

    def test_dataloader(self) -> list[DataLoader]:
        return [self.test_loader(task) for task in range(self.num_tasks)]
