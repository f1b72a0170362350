"""SynthTasks: an offline sequence of image classification datasets for continual learning of CLIP (MTIL).

ZSCL's Multi-domain Task-Incremental Learning (MTIL) fine-tunes CLIP on one
dataset after another (Aircraft, Caltech101, CIFAR100, ...), each with its own
class names, and after every stage evaluates every dataset among its own names:
the datasets already trained on show forgetting, those still to come show how
much of CLIP's zero-shot transfer survives.  SynthTasks is that sequence for the
offline world: six still-image "datasets" whose class names are words of the
shipped teacher's captions (the SynthActions vocabulary of
:mod:`vlkd.data.synthetic.world` and the captions' place phrases), each drawn
in its own style by the shared renderer (:mod:`vlkd.data.synthetic.render`).

Tasks
-----
================  ==========================================================  ========  ==========================
task              classes (each name is words of the teacher's captions)      style     concept
================  ==========================================================  ========  ==========================
SynthColours      red, green, blue, yellow, purple, orange                    flat      colour
SynthDarkGrounds  on grass, on sand, in water, on snow                        dark      ground
SynthGrounds      grass, sand, water, snow                                    textured  ground
SynthObjects      red / blue / yellow / green x ball / triangle (8)           striped   colour and shape
SynthPastels      red / blue / purple / orange ball x on sand / on snow (8)   pastel    colour, shape and ground
SynthPlaces       on the left, on the right, up high, down low                outlined  place
================  ==========================================================  ========  ==========================

A class fixes the concepts its name says and nothing else: an image of
``"red"`` in SynthColours shows a red object of a random shape on a random
ground, one of ``"grass"`` an object of a random colour and shape on grass, one
of ``"red ball on sand"`` exactly that, one of ``"on the left"`` an object of a
random colour and shape on a random ground whose centre lies in the left part
of the frame (:data:`PLACES`; the teacher's captions say where an object is,
"a red ball on grass, seen on the left").  A :class:`SynthTask` may also name
a motion phrase, drawn as a still at a uniformly random point of the motion, as
the teacher's pretraining stills are.  Colours that would vanish on their
ground (green on grass, blue in water, yellow on sand) are never drawn on it.
No class name occurs in two tasks, so the names of several tasks can also be
pooled.  Every task but SynthPlaces is flip-safe (a mirrored image shows the
same class); the manifest says so per task.

The styles are :data:`~vlkd.data.synthetic.world.STYLES`' two and four more in
:data:`TASK_STYLES`: ``outlined`` (thick dark outlines on plain backgrounds),
``striped`` (striped fills), ``pastel`` (palette and grounds faded towards
white) and ``dark`` (palette and grounds darkened towards a deep blue, under
the usual backdrops).  How well the shipped teacher reads each task zero-shot,
and why, is measured in ``benchmarks/continual_tasks_zeroshot.py``: perfectly
on colours and grounds (fine-tuning has nothing to add, later stages can only
lose them), about half right on objects, pastel scenes and dark grounds, little
above chance on places; fine-tuning on a task alone gains 12 to 44 points on
each of the four.

Templates and orders
--------------------
Each task has its own prompt templates, as CLIP has per dataset, taken from the
templates the teacher's captions were written in (:data:`~vlkd.teacher.pretrain.CAPTION_TEMPLATES`),
so every prompt is text the teacher has read: the first is the training
template, all of them together the test ensemble.  :data:`TASK_ORDERS` holds
two orders, as MTIL has order I (alphabetical) and order II: ``order_1`` is
alphabetical; ``order_2`` trains the tasks the teacher reads worst first and the
two it already solves (colours, grounds) last, so that transfer, measured on
the tasks still to come, is measured where the teacher has most to lose.  No
task keeps its ``order_1`` position in ``order_2`` and no two tasks are
neighbours in both orders (the two ground tasks follow each other in
``order_1`` and lie three stages apart in ``order_2``).

Layout (one CoOp dataset per task, read by :func:`vlkd.data.images.read_split_zhou`)::

    out_dir/
      tasks.json                                       manifest: settings, tasks, templates, orders; written last
      SynthColours/split_zhou_SynthColours.json        {"train": [[path, label, name], ...], "val": ..., "test": ...}
      SynthColours/images/<class_with_underscores>/train_000.png   (paths relative to images/)
      SynthColours/images/<class_with_underscores>/val_000.png
      SynthColours/images/<class_with_underscores>/test_000.png
      SynthGrounds/...

Every image has its own generator (:func:`task_rng`: seed, task, class, role,
index; :func:`render_task_image` reproduces it), so files are byte-identical
across runs; a folder whose manifest matches the settings (and whose files all
exist) is not rendered again, and images that the settings no longer list are
removed.  The default world (64 px; 64 training, 10 validation and 30 test
images per class; 34 classes, 3,536 images, 2,176 of them for training) renders
in about 8 s on 2 cores (twice that when they are busy) and takes 23 MB.
"""

from __future__ import annotations

import io
import itertools
import json
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vlkd.data.images import ImageSample, write_split_zhou
# A positioned still is render_still's scene with the named object moved: the renderer's own steps.
from vlkd.data.synthetic.render import DEFAULT_FRAMES, _render, _sample_class_scene, _still_time, render_still
from vlkd.data.synthetic.world import (
    COLOURS,
    CONTEXTS,
    MOTION_AXES,
    MOTIONS,
    SHAPES,
    STYLES,
    Concepts,
    Style,
    vocabulary,
)
from vlkd.errors import ConfigError, MissingFileError

__all__ = [
    "DATASET_NAME",
    "MANIFEST_NAME",
    "PLACES",
    "ROLES",
    "TASKS",
    "TASK_ORDERS",
    "TASK_STYLES",
    "GeneratedTasks",
    "SynthTask",
    "generate_tasks",
    "get_task",
    "read_tasks",
    "render_task_image",
    "task_rng",
    "task_vocabulary",
]

DATASET_NAME = "SynthTasks"
MANIFEST_NAME = "tasks.json"
FORMAT_VERSION = 1
ROLES = ("train", "val", "test")
# Objects that would hardly stand out from their ground (left out of SynthActions too).
LOW_CONTRAST = frozenset({("green", "grass"), ("blue", "water"), ("yellow", "sand")})
#: Where a positioned object's centre is drawn, ``((x from, x to), (y from, y to))`` in frame units, for
#: each of the teacher's position phrases (its captions say "seen on the left" for x < 0.38, "seen up
#: high" for y < 0.38, ...): regions well inside one phrase's range and outside the others'.
PLACES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "on the left": ((0.10, 0.30), (0.42, 0.58)),
    "on the right": ((0.70, 0.90), (0.42, 0.58)),
    "up high": ((0.42, 0.58), (0.10, 0.30)),
    "down low": ((0.42, 0.58), (0.70, 0.90)),
}
#: The places a horizontal flip turns into each other (a task naming them is not flip-safe).
_MIRRORED_PLACES = frozenset({"on the left", "on the right"})
_KEY = zlib.crc32(b"synth-tasks")


# --------------------------------------------------------------------------- styles


def _mixed(colours: dict[str, tuple[float, float, float]], keep: float, towards: tuple[float, float, float]
           ) -> dict[str, tuple[float, float, float]]:
    """``colours`` mixed towards ``towards``: ``keep`` of each colour, the rest of ``towards``."""
    return {key: tuple(round(keep * c + (1.0 - keep) * w, 4) for c, w in zip(rgb, towards))
            for key, rgb in colours.items()}


_FLAT = STYLES["flat"]
_WHITE = (1.0, 1.0, 1.0)
_DEEP_BLUE = (0.0, 0.02, 0.12)
#: The styles the tasks add to SynthActions' ``flat`` and ``textured``; the same colour words, other looks.
TASK_STYLES: dict[str, Style] = {
    style.name: style
    for style in (
        replace(_FLAT, name="outlined", outline=0.3, backgrounds=("solid",), noise=(0.0, 0.01), distractors=1),
        replace(_FLAT, name="striped", fill="striped", backgrounds=("gradient", "stripes", "floor"),
                noise=(0.0, 0.03)),
        replace(_FLAT, name="pastel", palette=_mixed(_FLAT.palette, 0.4, _WHITE),
                grounds=_mixed(_FLAT.grounds, 0.5, _WHITE)),
        replace(_FLAT, name="dark", palette=_mixed(_FLAT.palette, 0.25, _DEEP_BLUE),
                grounds=_mixed(_FLAT.grounds, 0.25, _DEEP_BLUE)),
    )
}


def _style(name: str) -> Style:
    return STYLES.get(name) or TASK_STYLES[name]


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class SynthTask:
    """One dataset of the sequence.

    Args:
        name: the dataset name (its folder and ``split_zhou_<name>.json``).
        concept: what the class names name (``colour``, ``ground``, ``motion``, ...).
        classes: the class names in label order; each is a colour, a shape, a ground
            (context key or phrase), a motion phrase or a place (:data:`PLACES`) of the
            teacher's captions, or several of them in the order colour, shape, ground or
            motion, place ("red ball on sand", "red ball on the left").
        style: the name of its render style (in ``STYLES`` or :data:`TASK_STYLES`).
        templates: its prompt templates; the first is the training template, all of them
            the test ensemble.

    ``fixed[label]`` holds what the name of class ``label`` fixes (``{"colour": "red",
    "shape": "ball", "context": "sand"}``); everything else is drawn per image.
    """

    name: str
    concept: str
    classes: tuple[str, ...]
    style: str
    templates: tuple[str, ...]
    fixed: tuple[dict, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"task name {self.name!r} must be a plain identifier (it names a folder and a file)")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"task {self.name}: give at least two distinct class names, got {list(self.classes)}")
        if self.style not in STYLES and self.style not in TASK_STYLES:
            raise ConfigError(f"task {self.name}: unknown style {self.style!r}; known: "
                              f"{', '.join([*STYLES, *TASK_STYLES])}")
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise ConfigError(f"task {self.name}: every template needs exactly one '{{}}' for the class name")
        object.__setattr__(self, "fixed", tuple(_parse_fixed(self.name, name) for name in self.classes))

    @property
    def train_template(self) -> str:
        return self.templates[0]

    @property
    def chance(self) -> float:
        """Top-1 of a uniform guess, in percent."""
        return 100.0 / len(self.classes)

    @property
    def render_style(self) -> Style:
        return _style(self.style)

    @property
    def flip_safe(self) -> bool:
        """Whether a horizontally mirrored image still shows its class (not when a name says left or right)."""
        return not any(fixed.get("place") in _MIRRORED_PLACES for fixed in self.fixed)

    def render(self, label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
        """One image of class ``label`` as uint8 RGB ``(size, size, 3)``, every draw from ``rng``."""
        concepts = self.concepts(label, rng)
        place = self.fixed[label].get("place")
        if place is None:
            return render_still(rng, concepts, self.render_style, size)[0]
        # render_still's steps, with the named object moved into the place's region.
        scene = _sample_class_scene(rng, concepts, self.render_style)
        (x_from, x_to), (y_from, y_to) = PLACES[place]
        scene.main.x, scene.main.y = float(rng.uniform(x_from, x_to)), float(rng.uniform(y_from, y_to))
        if scene.main.axis in ("horizontal", "vertical"):
            scene.main.amount = 0.0  # a travelling object would leave its place
        moment = np.array([_still_time(scene.main, rng.random())])
        return _render(scene, size, moment, exposure=1.0 / DEFAULT_FRAMES, rng=rng)[0]

    def concepts(self, label: int, rng: np.random.Generator) -> Concepts:
        """The concepts of one image of class ``label``: what the name says, the rest drawn from ``rng``."""
        fixed = self.fixed[label]
        motion = fixed.get("motion")
        if motion is not None:
            shapes = MOTION_AXES[MOTIONS[motion][0]].shapes
            colour = fixed.get("colour") or COLOURS[rng.integers(len(COLOURS))]
            shape = fixed.get("shape") or shapes[rng.integers(len(shapes))]
            return Concepts(colour, shape, motion=motion)
        # Redraw the free concepts until the object stands out from its ground (the catalogue
        # never fixes a low-contrast pair, so a fixed colour always has at least three grounds).
        while True:
            colour = fixed.get("colour") or COLOURS[rng.integers(len(COLOURS))]
            shape = fixed.get("shape") or SHAPES[rng.integers(len(SHAPES))]
            context = fixed.get("context") or list(CONTEXTS)[rng.integers(len(CONTEXTS))]
            if (colour, context) not in LOW_CONTRAST:
                return Concepts(colour, shape, context=context)

    def folder(self, label: int) -> str:
        return self.classes[label].replace(" ", "_")

    def to_dict(self) -> dict:
        return {"name": self.name, "concept": self.concept, "classes": list(self.classes), "style": self.style,
                "train_template": self.train_template, "templates": list(self.templates),
                "chance": round(self.chance, 4), "flip_safe": self.flip_safe}


def task_vocabulary() -> set[str]:
    """The words a class name may use: :func:`~vlkd.data.synthetic.world.vocabulary` and the place phrases."""
    return vocabulary() | {word for place in PLACES for word in place.split()}


def _parse_fixed(task: str, name: str) -> dict:
    """The concepts a class name fixes: ``"red ball on sand"`` -> colour, shape and context."""
    words = name.split()
    unknown = sorted(set(words) - task_vocabulary())
    if unknown or " ".join(words) != name:
        raise ConfigError(f"task {task}: class {name!r} must be words of the teacher's captions"
                          + (f" (unknown: {', '.join(unknown)})" if unknown else " separated by single spaces"))
    fixed: dict = {}
    for place in PLACES:
        if name == place or name.endswith(" " + place):
            fixed["place"] = place
            words = words[: len(words) - len(place.split())]
            break
    if words and words[0] in COLOURS:
        fixed["colour"] = words.pop(0)
    if words and words[0] in SHAPES:
        fixed["shape"] = words.pop(0)
    phrase = " ".join(words)
    grounds = {**{key: key for key in CONTEXTS}, **{text: key for key, text in CONTEXTS.items()}}
    if phrase in grounds:
        fixed["context"] = grounds[phrase]
    elif phrase in MOTIONS:
        fixed["motion"] = phrase
    elif phrase:
        raise ConfigError(f"task {task}: class {name!r} is not '[colour] [shape] [ground or motion] [place]'")
    if not fixed:
        raise ConfigError(f"task {task}: class {name!r} names no concept")
    if (fixed.get("colour"), fixed.get("context")) in LOW_CONTRAST:
        raise ConfigError(f"task {task}: class {name!r} would hardly show its object on its ground")
    motion = fixed.get("motion")
    if motion is not None and "shape" in fixed and fixed["shape"] not in MOTION_AXES[MOTIONS[motion][0]].shapes:
        raise ConfigError(f"task {task}: class {name!r}: {motion!r} is invisible on a {fixed['shape']}")
    return fixed


_PHOTO = "a photo of a {}."
#: The task catalogue, in ``order_1`` (alphabetical, as MTIL's order I).  Zero-shot accuracy of the
#: shipped teacher on each is in ``benchmarks/results/continual_tasks_zeroshot.md``.
TASKS: tuple[SynthTask, ...] = (
    SynthTask("SynthColours", "colour", COLOURS, "flat",
              (_PHOTO, "a picture of a {}.", "a frame of a {}.", "a {}.")),
    SynthTask("SynthDarkGrounds", "ground", tuple(CONTEXTS.values()), "dark",
              (_PHOTO, "a {}.", "an example of {}.", "footage of {}.")),
    SynthTask("SynthGrounds", "ground", tuple(CONTEXTS), "textured",
              (_PHOTO, "a video of {}.", "footage of {}.", "an example of {}.")),
    SynthTask("SynthObjects", "colour and shape",
              tuple(f"{c} {s}" for c, s in itertools.product(("red", "blue", "yellow", "green"), ("ball", "triangle"))),
              "striped", (_PHOTO, "a picture of a {}.", "a bad photo of the {}.", "art of the {}.")),
    SynthTask("SynthPastels", "colour, shape and ground",
              tuple(f"{c} ball {g}" for c, g in itertools.product(("red", "blue", "purple", "orange"),
                                                                   ("on sand", "on snow"))),
              "pastel", (_PHOTO, "a bad photo of the {}.", "a picture of a {}.", "a frame of a {}.")),
    SynthTask("SynthPlaces", "place", tuple(PLACES), "outlined",
              (_PHOTO, "a picture of a {}.", "a frame of a {}.", "a {}.")),
)

#: Two task orders (permutations of :data:`TASKS`), as MTIL's order I and order II.
TASK_ORDERS: dict[str, tuple[str, ...]] = {
    "order_1": tuple(sorted(task.name for task in TASKS)),
    "order_2": ("SynthPlaces", "SynthObjects", "SynthDarkGrounds", "SynthPastels", "SynthColours", "SynthGrounds"),
}


def get_task(name: str) -> SynthTask:
    """A task of :data:`TASKS` by name."""
    for task in TASKS:
        if task.name == name:
            return task
    raise ConfigError(f"unknown task {name!r}; known: {', '.join(task.name for task in TASKS)}")


def _check_catalogue() -> None:
    """The properties the module docstring promises: an edited catalogue that breaks one fails on import."""
    names = [task.name for task in TASKS]
    if len(set(names)) != len(names):
        raise ConfigError("SynthTasks: duplicate task names")
    classes = [name for task in TASKS for name in task.classes]
    if len(set(classes)) != len(classes):
        raise ConfigError("SynthTasks: a class name occurs in two tasks")
    for order, listed in TASK_ORDERS.items():
        if sorted(listed) != sorted(names):
            raise ConfigError(f"SynthTasks: {order} is not a permutation of the tasks")


_check_catalogue()


# --------------------------------------------------------------------------- rendering


def task_rng(seed: int, task: str, class_name: str, role: str, index: int) -> np.random.Generator:
    """The generator of one image (``role``: train, val or test); :func:`render_task_image` draws from it."""
    return np.random.default_rng((seed, _KEY, zlib.crc32(task.encode()), zlib.crc32(class_name.encode()),
                                  ROLES.index(role), index))


def render_task_image(task: str | SynthTask, label: int, role: str, index: int, seed: int = 0,
                      size: int = 64) -> np.ndarray:
    """Image ``index`` of ``role`` of class ``label`` of ``task`` as uint8 RGB ``(size, size, 3)``:
    the pixels of ``<task>/images/<class>/<role>_<index>.png`` of a world rendered with ``seed`` and ``size``."""
    task = get_task(task) if isinstance(task, str) else task
    return task.render(label, task_rng(seed, task.name, task.classes[label], role, index), size)


# --------------------------------------------------------------------------- the world on disk


@dataclass
class GeneratedTasks:
    """A SynthTasks folder: its tasks (in ``order_1``), their class names and templates, the orders, the counts.

    ``counts[task]`` is ``{"train": n, "val": n, "test": n}`` images, ``settings`` those of
    :func:`generate_tasks` (seed, size, images per class); ``rendered`` is the number
    of images this call rendered (0 when the folder was up to date) and ``seconds`` its time.
    """

    root: Path
    manifest: Path
    tasks: list[str]
    class_names: dict[str, list[str]]
    templates: dict[str, list[str]]
    orders: dict[str, list[str]]
    counts: dict[str, dict[str, int]]
    settings: dict = field(default_factory=dict)
    rendered: int = 0
    seconds: float = 0.0

    def task_root(self, task: str) -> Path:
        """The task's dataset folder (holding ``images/`` and its split file)."""
        self._check(task)
        return self.root / task

    def image_root(self, task: str) -> Path:
        """The folder the split file's paths are relative to."""
        return self.task_root(task) / "images"

    def split_file(self, task: str) -> Path:
        return self.task_root(task) / f"split_zhou_{task}.json"

    def train_template(self, task: str) -> str:
        self._check(task)
        return self.templates[task][0]

    def order(self, name: str = "order_1") -> list[str]:
        if name not in self.orders:
            raise ConfigError(f"unknown task order {name!r}; known: {', '.join(self.orders)}")
        return list(self.orders[name])

    def total(self) -> dict[str, int]:
        """Images per role over all tasks."""
        return {role: sum(counts[role] for counts in self.counts.values()) for role in ROLES}

    def _check(self, task: str) -> None:
        if task not in self.class_names:
            raise ConfigError(f"no task {task!r} in {self.root}; tasks: {', '.join(self.tasks)}")


def _check_settings(seed, size, train_per_class, val_per_class, test_per_class) -> None:
    for key, value, flag in (("train_per_class", train_per_class, "--train-per-class"),
                             ("val_per_class", val_per_class, "--val-per-class"),
                             ("test_per_class", test_per_class, "--test-per-class")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r} (set {flag} to 1 or more)")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ConfigError(f"size must be an integer of at least 16 pixels, got {size!r} (set --size, e.g. 64)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r} (set --seed to 0 or more)")


def generate_tasks(out_dir: str | Path, seed: int = 0, size: int = 64, train_per_class: int = 64,
                   val_per_class: int = 10, test_per_class: int = 30, force: bool = False) -> GeneratedTasks:
    """Render the SynthTasks sequence into ``out_dir`` (see the module docstring); a no-op when it is up to date.

    Args:
        out_dir: the output folder (one sub-folder per task and ``tasks.json``).
        seed: the world seed; every image has its own generator (:func:`task_rng`).
        size: image side in pixels (64, the shipped teacher's input size, by default).
        train_per_class, val_per_class, test_per_class: images per class of each split, in every task.
        force: render again even if the folder is up to date.
    """
    _check_settings(seed, size, train_per_class, val_per_class, test_per_class)
    started = time.perf_counter()
    root = Path(out_dir).expanduser()
    per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    splits = {task.name: {role: [ImageSample(f"{task.folder(label)}/{role}_{index:03d}.png", label)
                                 for label in range(len(task.classes)) for index in range(per_class[role])]
                          for role in ROLES} for task in TASKS}
    counts = {name: {role: len(samples) for role, samples in task_splits.items()}
              for name, task_splits in splits.items()}
    settings = dict(seed=seed, size=size, train_per_class=train_per_class, val_per_class=val_per_class,
                    test_per_class=test_per_class)
    manifest = {
        "generator": "vlkd.data.synthetic.tasks", "format_version": FORMAT_VERSION, "dataset": DATASET_NAME,
        "settings": settings,
        "tasks": [{**task.to_dict(), "folder": task.name, "split_file": f"{task.name}/split_zhou_{task.name}.json",
                   "image_root": f"{task.name}/images", "counts": counts[task.name]} for task in TASKS],
        "orders": {name: list(order) for name, order in TASK_ORDERS.items()},
        "styles": {task.style: _style_dict(task.render_style) for task in TASKS},
    }
    result = _result(root, manifest)
    manifest_path = root / MANIFEST_NAME
    if (not force and _read_json(manifest_path) == manifest
            and all(result.split_file(name).is_file() for name in result.tasks)
            and all((result.image_root(name) / sample.path).is_file()
                    for name, task_splits in splits.items() for samples in task_splits.values() for sample in samples)):
        return result
    manifest_path.unlink(missing_ok=True)
    from PIL import Image
    from tqdm import tqdm

    jobs = [(task, role, sample) for task in TASKS for role in ROLES for sample in splits[task.name][role]]
    for task in TASKS:
        _remove_stale(result.image_root(task.name), {s.path for samples in splits[task.name].values() for s in samples})
    for task, role, sample in tqdm(jobs, desc="rendering SynthTasks", unit="image", leave=False):
        path = result.image_root(task.name) / sample.path
        index = int(Path(sample.path).stem.rsplit("_", 1)[1])
        pixels = render_task_image(task, sample.label, role, index, seed=seed, size=size)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".png.tmp")
        temporary.write_bytes(buffer.getvalue())
        temporary.replace(path)
    for task in TASKS:
        write_split_zhou(result.split_file(task.name), splits[task.name], task.classes)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    result.rendered = len(jobs)
    result.seconds = time.perf_counter() - started
    return result


def read_tasks(root: str | Path) -> GeneratedTasks:
    """The SynthTasks folder at ``root`` from its manifest (written by :func:`generate_tasks`)."""
    root = Path(root).expanduser()
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise MissingFileError(path, "SynthTasks manifest", f"render the tasks with `vlkd synth tasks --out {root}`")
    manifest = _read_json(path)
    if not isinstance(manifest, dict) or manifest.get("generator") != "vlkd.data.synthetic.tasks":
        raise ConfigError(f"{path}: not a SynthTasks manifest (render the folder again with `vlkd synth tasks`)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: format version {manifest.get('format_version')}, this vlkd reads "
                          f"{FORMAT_VERSION} (render again with `vlkd synth tasks --out {root} --force`)")
    return _result(root, manifest)


def _result(root: Path, manifest: dict) -> GeneratedTasks:
    tasks = manifest["tasks"]
    return GeneratedTasks(
        root=root, manifest=root / MANIFEST_NAME, tasks=[task["name"] for task in tasks],
        class_names={task["name"]: list(task["classes"]) for task in tasks},
        templates={task["name"]: list(task["templates"]) for task in tasks},
        orders={name: list(order) for name, order in manifest["orders"].items()},
        counts={task["name"]: dict(task["counts"]) for task in tasks},
        settings=dict(manifest["settings"]),
    )


def _style_dict(style: Style) -> dict:
    return {"palette": {k: list(v) for k, v in style.palette.items()},
            "grounds": {k: list(v) for k, v in style.grounds.items()}, "backgrounds": list(style.backgrounds),
            "fill": style.fill, "outline": style.outline, "ground_texture": style.ground_texture,
            "noise": list(style.noise), "distractors": style.distractors}


def _remove_stale(folder: Path, wanted: set[str]) -> None:
    """Delete the PNG files under ``folder`` that the settings no longer list (a smaller count, say)."""
    if not folder.is_dir():
        return
    for stale in folder.glob("*/*.png"):
        if stale.relative_to(folder).as_posix() not in wanted:
            stale.unlink()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
