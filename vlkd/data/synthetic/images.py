"""SynthImages: the offline image world for semi-supervised distillation (DHO), written in CoOp's layout.

Classes
-------
42 still-image classes ``<colour> <shape> <context>`` ("red ball on grass",
"blue triangle on snow"): the six colours and four grounds of SynthActions, two
shapes (ball and triangle), leaving out the three low-contrast pairs the video
world leaves out too (green on grass, blue in water, yellow on sand). Images are
stills drawn by the SynthActions renderer (:func:`~vlkd.data.synthetic.render.render_still`,
"flat" style, 64 px, the shipped teacher's input size).

Why the teacher is imperfect here, and why labels and teacher each add something
---------------------------------------------------------------------------------
The shipped teacher learnt its vocabulary from captioned stills in which colour
and ground tell most captions apart, and it learnt them well: on these images
it names the colour and the ground almost always right. It barely learnt the
*shape*: measured on stills of every colour x shape x ground, it tells a ball
from a square or a star at chance and a triangle from the rest about two times
in three. So its zero-shot accuracy here is that of a two-way shape guess on
top of a near-perfect colour-and-ground reading (measured in
``benchmarks/dho_synth.py``; the README gives the figure). A handful of labels
per class teach a student the shape (a student sees a ball's outline as easily
as a colour), which is what the teacher lacks; the teacher's soft predictions
on the unlabelled pool carry colour and ground for every image, which a few
labels cannot teach over 42 classes. Each source covers the other's gap, which
is the situation DHO's two heads are for (a CE head for the labels, a KD head
for the teacher, combined at inference).

Layout (CoOp's, read by :func:`vlkd.data.images.read_split_zhou`)::

    out_dir/
      world_info.json                         manifest: settings, classes, counts
      images/<class_with_underscores>/train_000.png    the training pool (per class)
      images/<class_with_underscores>/val_000.png      validation split
      images/<class_with_underscores>/test_000.png     test split
      split_zhou_SynthImages.json             {"train": [[path, label, name], ...], "val": ..., "test": ...}
      labelled/1percent_s{1,2,3}.txt          SimCLR-style lists: the labelled part of the pool
      labelled/10percent_s{1,2,3}.txt
      labelled/shot_{1,2,4,8,16}_s{1,2,3}.txt

Percent subsets are class-balanced (``round(p x pool)`` images of every class, at
least one), as SimCLR's ImageNet subsets are close to; the unlabelled pool is the
rest of the training split. Every image has its own generator (seed, class, role,
index), so files are byte-identical across runs; the manifest is written last and
a folder whose manifest matches is not rendered again.
"""

from __future__ import annotations

import io
import itertools
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlkd.data.images import ImageSample, few_shot_subset, write_split_zhou, write_subset_list
from vlkd.data.synthetic.render import render_still
from vlkd.data.synthetic.world import COLOURS, CONTEXTS, Concepts
from vlkd.errors import ConfigError

__all__ = ["DATASET_NAME", "GeneratedImages", "PERCENTS", "SHOTS", "generate_images", "image_classes", "image_rng"]

DATASET_NAME = "SynthImages"
FORMAT_VERSION = 1
SHAPES = ("ball", "triangle")
# Objects that would hardly stand out from their ground (left out of SynthActions too).
LOW_CONTRAST = {("green", "grass"), ("blue", "water"), ("yellow", "sand")}
PERCENTS = {"1percent": 0.01, "10percent": 0.10}
SHOTS = (1, 2, 4, 8, 16)
ROLES = ("train", "val", "test")


def image_classes() -> list[Concepts]:
    """The 42 classes in label order (colour, then shape, then ground)."""
    return [Concepts(colour, shape, context=context)
            for colour, shape, context in itertools.product(COLOURS, SHAPES, CONTEXTS)
            if (colour, context) not in LOW_CONTRAST]


def class_name(concepts: Concepts) -> str:
    return f"{concepts.colour} {concepts.shape} {concepts.phrase}"


def image_rng(seed: int, name: str, role: str, index: int) -> np.random.Generator:
    """The generator of one image (``role``: train, val or test): ``render_still(image_rng(...), name, "flat", size)``
    reproduces it."""
    return np.random.default_rng((seed, zlib.crc32(b"synth-images"), zlib.crc32(name.encode()), ROLES.index(role), index))


@dataclass
class GeneratedImages:
    root: Path
    split_file: Path
    class_names: list[str]
    counts: dict[str, int]
    rendered: int
    seconds: float

    def labelled_list(self, subset: str, seed: int) -> Path:
        """The list file of ``subset`` (``1percent``, ``10percent`` or ``shot_<k>``) for split seed ``seed``."""
        return self.root / "labelled" / f"{subset}_s{seed}.txt"


def generate_images(out_dir: str | Path, seed: int = 0, size: int = 64, pool_per_class: int = 100,
                    val_per_class: int = 10, test_per_class: int = 30, split_seeds: int = 3,
                    force: bool = False) -> GeneratedImages:
    """Render the SynthImages world into ``out_dir`` (see the module docstring); a no-op when it is up to date."""
    for key, value in dict(size=size, pool_per_class=pool_per_class, val_per_class=val_per_class,
                           test_per_class=test_per_class, split_seeds=split_seeds).items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if pool_per_class < max(SHOTS):
        raise ConfigError(f"pool_per_class must be at least {max(SHOTS)} (the largest few-shot list), got {pool_per_class}")
    started = time.perf_counter()
    root = Path(out_dir).expanduser()
    classes = image_classes()
    names = [class_name(c) for c in classes]
    settings = dict(seed=seed, size=size, pool_per_class=pool_per_class, val_per_class=val_per_class,
                    test_per_class=test_per_class, split_seeds=split_seeds, style="flat")
    manifest_path = root / "world_info.json"
    counts = {"train": pool_per_class, "val": val_per_class, "test": test_per_class}
    splits = {role: [ImageSample(f"{names[label].replace(' ', '_')}/{role}_{index:03d}.png", label)
                     for label in range(len(names)) for index in range(counts[role])] for role in ROLES}
    manifest = {"generator": "vlkd.data.synthetic.images", "format_version": FORMAT_VERSION, "dataset": DATASET_NAME,
                "settings": settings, "classes": names, "flip_safe": True,
                "counts": {role: len(samples) for role, samples in splits.items()}}
    result = GeneratedImages(root, root / f"split_zhou_{DATASET_NAME}.json", names, manifest["counts"], 0, 0.0)
    images = root / "images"
    if not force and _read_json(manifest_path) == manifest and all(
            (images / s.path).is_file() for samples in splits.values() for s in samples):
        return result
    manifest_path.unlink(missing_ok=True)
    from PIL import Image

    jobs = [(role, sample) for role in ROLES for sample in splits[role]]
    for role, sample in tqdm(jobs, desc="rendering SynthImages", unit="image", leave=False):
        path = images / sample.path
        index = int(Path(sample.path).stem.split("_")[-1])
        pixels, _ = render_still(image_rng(seed, names[sample.label], role, index), classes[sample.label], "flat", size)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".png.tmp")
        temporary.write_bytes(buffer.getvalue())
        temporary.replace(path)
    write_split_zhou(result.split_file, splits, names)
    pool = splits["train"]
    for split_seed in range(1, split_seeds + 1):
        for subset, fraction in PERCENTS.items():
            per_class = max(1, round(fraction * pool_per_class))
            write_subset_list(result.labelled_list(subset, split_seed),
                              [s.path for s in few_shot_subset(pool, per_class, seed=1000 * split_seed + per_class)])
        for shots in SHOTS:
            write_subset_list(result.labelled_list(f"shot_{shots}", split_seed),
                              [s.path for s in few_shot_subset(pool, shots, seed=split_seed)])
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    result.rendered = len(jobs)
    result.seconds = time.perf_counter() - started
    return result


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
