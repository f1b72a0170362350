"""SynthDetection: the offline object-detection world for zero-shot-annotation detection (EZAD), in COCO layout.

Categories
----------
12 object categories ``<colour> <shape>`` ("red ball", "blue triangle"): the six
colours of SynthActions times two shapes, ball and triangle (the two the shipped
teacher tells apart best, as SynthImages has), ids 1-12 in colour-then-shape order.
The four of two colours, ``purple ball``, ``purple triangle``, ``orange ball`` and
``orange triangle``, are novel, the other eight base.  A novel name's colour word
occurs in no base name, as COCO's novel names ("umbrella", "cake") are words its base
names never use: a detector trained on base boxes with a text classifier cannot reach a
novel category by recombining words it was trained on; only a teacher that knows the
word can tell it.  (A first version made three single colour-shape pairs novel, "red
triangle" among them: the base-only detector then found them at 64.8 AP50 from "red
ball" and "blue triangle" alone, so the world measured composition, not distillation.)
Two novel colours of six give two base categories per novel one, where COCO has three
(48 / 17); with one novel colour the novel half would be two categories.  The names are
the subjects of the teacher's captions ("a red ball on grass", "a photo of a big orange
triangle in water"), so its text tower knows them.

Scenes
------
Each image (128 px by default) shows 2-5 category objects, drawn with the
SynthActions renderer's shapes, palette (jittered), backdrops (nuisance backgrounds;
three in four with a ground band: grass, sand, water or snow), grey and brown
distractor dots and bars, brightness change and pixel noise (:func:`render_scene`).
Object radii are log-uniform in 5-13 % of the side (6-17 px: a ball 13-33 px
across); objects lie wholly inside the image and may overlap, but every object keeps
at least 60 % of its area visible; colours that vanish on the scene's ground (green on
grass, blue in water, yellow on sand) are not drawn on it.  Boxes are exact: the
tight box ``[x, y, w, h]`` of the pixels where the object's *visible* coverage (its
anti-aliased coverage times one minus the coverage of everything drawn over it)
exceeds one half; ``area`` is the sum of that visible coverage.

Training annotations hold the base categories only, while novel objects appear in
training images too (a third of all objects), unannotated: the zero-shot-annotation setting (every
training image has at least one base box; 455 of the 600 default training images
also show a novel object).  Their boxes are in ``novel_in_train.json``, for analysis
and for methods that may not use them.  Validation is annotated for all categories.

Why the teacher is imperfect on crops
-------------------------------------
The shipped teacher (``vlkd-synth-vit`` / ``synthactions``) learnt from 64 px stills
of one object covering 3-9 % of the frame on its ground; a ground-truth crop by EZAD's
rule (:class:`~vlkd.teacher.regions.RegionCrop` ``(enlarge=1.2, min_size=10,
square=True)``) shows an object covering a third to a half of a zero-padded square,
with little ground, upsampled from 16-44 px (median 25): out of its domain, which is
EZAD's premise. Its crop accuracy before and after re-normalisation is measured by
``benchmarks/ezad_crops.py`` (see the README and :mod:`vlkd.teacher.renormalize`).

Layout (COCO's; ``file_name`` is relative to the split's image folder)::

    out_dir/
      manifest.json                     settings, categories (with half), counts; written last
      split.json                        {"base": [names], "novel": [names]} (as data/detection/coco_ovd_48_17.json)
      images/train/000000.png ...       training images
      images/val/000000.png ...         validation images
      annotations/instances_train.json  COCO instances: base boxes only (all 12 categories listed)
      annotations/instances_val.json    COCO instances: every box
      annotations/novel_in_train.json   COCO instances: the novel boxes of the training images

Annotation ids are unique across the two training files, so their union is a valid
COCO file of every training box.  Every image has its own generator (:func:`detection_rng`:
seed, split, index; :func:`render_image` reproduces any image with its boxes), so files
are byte-identical across runs; a folder whose manifest matches the settings (and whose
files all exist) is not rendered again, and images a new setting no longer lists are
removed.  The default world (600 + 200 images; 691 validation boxes, 254 of them novel, so one novel crop
is 0.39 points of novel accuracy) renders in about 12 s on 2 cores and takes 21 MB.
"""

from __future__ import annotations

import io
import json
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The renderer's drawing primitives: a detection scene composites several named objects with them.
from vlkd.data.synthetic.render import (
    _coverage,
    _draw_backdrop,
    _draw_object,
    _local_coordinates,
    _Object,
    _pixel_grid,
    _sample_backdrop,
    _sample_distractor,
    _signed_distance,
)
from vlkd.data.synthetic.world import COLOURS, CONTEXTS, get_style
from vlkd.errors import ConfigError

__all__ = [
    "DATASET_NAME",
    "MANIFEST_NAME",
    "DetectionCategory",
    "GeneratedDetection",
    "Scene",
    "SceneObject",
    "detection_categories",
    "detection_rng",
    "generate_detection",
    "render_image",
    "render_scene",
]

DATASET_NAME = "SynthDetection"
FORMAT_VERSION = 2  # 2: orange and purple are the novel colours
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
DEFAULT_SIZE = 128
# Object radius range, as fractions of the image side (drawn log-uniformly).
RADIUS = (0.05, 0.13)
CATEGORY_COLOURS = COLOURS
CATEGORY_SHAPES = ("ball", "triangle")
# Whole colours are novel, so that no novel name is a recombination of base words (module docstring).
NOVEL_COLOURS = ("purple", "orange")
NOVEL = {(colour, shape) for colour in NOVEL_COLOURS for shape in CATEGORY_SHAPES}
# Objects that would hardly stand out from their ground (left out of SynthActions too).
LOW_CONTRAST = {("green", "grass"), ("blue", "water"), ("yellow", "sand")}
# How far each shape reaches from its centre, in units of its radius (render._signed_distance).
_REACH = {"ball": 1.0, "square": 0.85 * math.sqrt(2), "triangle": 1.3, "star": 1.4}
_TIME = np.array([0.5])
# Scenes of a training image are drawn again (same generator, going on) until one has a base object.
_MAX_REDRAWS = 50


@dataclass(frozen=True)
class DetectionCategory:
    """One object category: COCO id (1-based), colour, shape and half; its name is ``"<colour> <shape>"``."""

    id: int
    colour: str
    shape: str
    half: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def to_coco(self) -> dict:
        return {"id": self.id, "name": self.name, "supercategory": self.shape}


def detection_categories() -> list[DetectionCategory]:
    """The 12 categories in id order (colour, then shape)."""
    pairs = [(colour, shape) for colour in CATEGORY_COLOURS for shape in CATEGORY_SHAPES]
    return [DetectionCategory(index + 1, colour, shape, "novel" if (colour, shape) in NOVEL else "base")
            for index, (colour, shape) in enumerate(pairs)]


def detection_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` (``train`` or ``val``); see :func:`render_image`."""
    return np.random.default_rng((seed, zlib.crc32(b"synth-detection"), SPLITS.index(split), index))


@dataclass
class GeneratedDetection:
    """A generated SynthDetection folder (see the module docstring for the layout)."""

    root: Path
    train_json: Path
    val_json: Path
    novel_in_train_json: Path
    split_file: Path
    base_names: list[str]
    novel_names: list[str]
    counts: dict[str, int]
    rendered: int
    seconds: float

    @property
    def category_names(self) -> list[str]:
        """All categories in id order."""
        return [category.name for category in detection_categories()]

    def image_dir(self, split: str) -> Path:
        """The folder the ``file_name`` fields of ``split``'s annotation file are relative to."""
        return self.root / "images" / split


def generate_detection(out_dir: str | Path, seed: int = 0, size: int = DEFAULT_SIZE, train_images: int = 600,
                       val_images: int = 200, min_objects: int = 2, max_objects: int = 5,
                       force: bool = False) -> GeneratedDetection:
    """Render the SynthDetection world into ``out_dir`` (module docstring); a no-op when it is up to date.

    Args:
        out_dir: the output folder.
        seed: the world seed; every image has its own generator (:func:`detection_rng`).
        size: image side in pixels.
        train_images, val_images: images per split.
        min_objects, max_objects: category objects drawn per scene (one that cannot be placed
            without hiding another beyond 40 % is left out, so a scene may have fewer).
        force: render again even if the folder is up to date.
    """
    for key, value in dict(size=size, train_images=train_images, val_images=val_images,
                           min_objects=min_objects, max_objects=max_objects).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if min_objects > max_objects:
        raise ConfigError(f"min_objects ({min_objects}) must not exceed max_objects ({max_objects})")
    if size < 32:
        raise ConfigError(f"size must be at least 32 pixels, got {size}")
    started = time.perf_counter()
    root = Path(out_dir).expanduser()
    categories = detection_categories()
    base = [c.name for c in categories if c.half == "base"]
    novel = [c.name for c in categories if c.half == "novel"]
    settings = dict(seed=seed, size=size, train_images=train_images, val_images=val_images,
                    min_objects=min_objects, max_objects=max_objects, radius=list(RADIUS), min_visible=0.6,
                    style="flat")
    expected = {"generator": "vlkd.data.synthetic.detection", "format_version": FORMAT_VERSION,
                "dataset": DATASET_NAME, "settings": settings,
                "categories": [{**c.to_coco(), "half": c.half} for c in categories]}
    annotations = root / "annotations"
    result = GeneratedDetection(root, annotations / "instances_train.json", annotations / "instances_val.json",
                                annotations / "novel_in_train.json", root / "split.json", base, novel, {}, 0, 0.0)
    counts = {"train": train_images, "val": val_images}
    files = {split: [f"{index:06d}.png" for index in range(counts[split])] for split in SPLITS}
    manifest_path = root / MANIFEST_NAME
    stored = _read_json(manifest_path)
    outputs = (result.train_json, result.val_json, result.novel_in_train_json, result.split_file)
    if (not force and isinstance(stored, dict) and {k: v for k, v in stored.items() if k != "counts"} == expected
            and all(path.is_file() for path in outputs)
            and all((result.image_dir(split) / name).is_file() for split in SPLITS for name in files[split])):
        result.counts = stored.get("counts", {})
        return result
    manifest_path.unlink(missing_ok=True)
    from PIL import Image

    coco_categories = [c.to_coco() for c in categories]
    documents = {}
    next_id = 1
    for split in SPLITS:
        folder = result.image_dir(split)
        folder.mkdir(parents=True, exist_ok=True)
        wanted = set(files[split])
        for stale in folder.glob("*.png"):
            if stale.name not in wanted:
                stale.unlink()
        images, annotated, unannotated = [], [], []
        for index, name in enumerate(files[split]):
            scene = render_image(seed, split, index, size, min_objects, max_objects, categories)
            buffer = io.BytesIO()
            Image.fromarray(scene.image).save(buffer, format="PNG")
            temporary = folder / f"{name}.tmp"
            temporary.write_bytes(buffer.getvalue())
            temporary.replace(folder / name)
            image_id = index + 1
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
            for obj in scene.objects:
                record = {"id": next_id, "image_id": image_id, "category_id": obj.category.id, "bbox": obj.bbox,
                          "area": obj.area, "iscrowd": 0}
                next_id += 1
                (unannotated if split == "train" and obj.category.half == "novel" else annotated).append(record)
        documents[split] = _coco(images, annotated, coco_categories, f"{DATASET_NAME} {split}")
        if split == "train":
            documents["novel_in_train"] = _coco(images, unannotated, coco_categories,
                                                f"{DATASET_NAME} train: the novel objects, not annotated in training")
    annotations.mkdir(parents=True, exist_ok=True)
    for split, path in (("train", result.train_json), ("val", result.val_json),
                        ("novel_in_train", result.novel_in_train_json)):
        _write_text(path, json.dumps(documents[split]) + "\n")
    _write_text(result.split_file, json.dumps({"base": base, "novel": novel}, indent=1))
    novel_ids = {c.id for c in categories if c.half == "novel"}
    val_annotations = documents["val"]["annotations"]
    result.counts = {
        "train_images": train_images,
        "val_images": val_images,
        "train_annotations": len(documents["train"]["annotations"]),
        "train_novel_objects": len(documents["novel_in_train"]["annotations"]),
        "train_images_with_novel": len({a["image_id"] for a in documents["novel_in_train"]["annotations"]}),
        "val_annotations": len(val_annotations),
        "val_base_annotations": sum(a["category_id"] not in novel_ids for a in val_annotations),
        "val_novel_annotations": sum(a["category_id"] in novel_ids for a in val_annotations),
    }
    _write_text(manifest_path, json.dumps({**expected, "counts": result.counts}, indent=1) + "\n")
    result.rendered = train_images + val_images
    result.seconds = time.perf_counter() - started
    return result


def render_image(seed: int, split: str, index: int, size: int = DEFAULT_SIZE, min_objects: int = 2,
                 max_objects: int = 5, categories: list[DetectionCategory] | None = None) -> Scene:
    """Image ``index`` of ``split`` in the world of ``seed``, as :func:`generate_detection` writes it.

    A training scene is drawn again (the generator going on) until it has a base object,
    as COCO's zero-shot training sets keep only images with base annotations.
    """
    categories = detection_categories() if categories is None else categories
    rng = detection_rng(seed, split, index)
    for _ in range(_MAX_REDRAWS):
        scene = render_scene(rng, categories, size=size, objects=(min_objects, max_objects))
        if split != "train" or any(obj.category.half == "base" for obj in scene.objects):
            return scene
    raise ConfigError(f"could not draw a training scene with a base object for image {index}")


def _coco(images: list[dict], annotations: list[dict], categories: list[dict], description: str) -> dict:
    return {"info": {"description": description, "version": str(FORMAT_VERSION)}, "licenses": [],
            "images": images, "annotations": annotations, "categories": categories}


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- scenes


@dataclass
class SceneObject:
    """A rendered object: its category, its visible box ``[x, y, w, h]`` (pixels) and visible area."""

    category: DetectionCategory
    bbox: list[float]
    area: float
    visible: float  # visible fraction of the object's area


@dataclass
class Scene:
    """A rendered still: uint8 ``image`` (size, size, 3), its objects (in drawing order) and its ground."""

    image: np.ndarray
    objects: list[SceneObject] = field(default_factory=list)
    context: str | None = None


def render_scene(rng: np.random.Generator, categories: list[DetectionCategory] | None = None, style: str = "flat",
                 size: int = DEFAULT_SIZE, objects: tuple[int, int] = (2, 5), radius: tuple[float, float] = RADIUS,
                 min_visible: float = 0.6, context_probability: float = 0.75) -> Scene:
    """A still of ``objects[0]`` to ``objects[1]`` category objects with their exact boxes.

    The backdrop (nuisance background, with probability ``context_probability`` one of
    the four grounds below a horizon), the distractor dots and bars, the brightness
    change and the pixel noise are drawn as for a SynthActions still; the objects are
    static (no motion blur).  Each object's category is uniform over ``categories``
    (default: :func:`detection_categories`) less the colours that vanish on the scene's
    ground; its radius is log-uniform in ``radius`` (fractions of the side), its
    angle uniform, and it lies wholly inside the image.  Each object is drawn in front
    of the earlier ones; a placement that would leave an earlier object less than
    ``min_visible`` of its area visible is drawn again (20 tries, then the object is left
    out), and so is a front distractor (it goes behind the objects instead).  Boxes are
    the tight boxes of the pixels where the object's visible coverage (its anti-aliased
    coverage times one minus that of everything drawn over it) exceeds one half;
    ``area`` is the sum of that visible coverage.
    """
    categories = detection_categories() if categories is None else categories
    style_ = get_style(style)
    grid = _pixel_grid(size)
    context = None
    if rng.random() < context_probability:
        context = list(CONTEXTS)[rng.integers(len(CONTEXTS))]
    allowed = [c for c in categories if (c.colour, context) not in LOW_CONTRAST]
    count = int(rng.integers(objects[0], objects[1] + 1))
    placed: list[tuple[DetectionCategory, _Object, np.ndarray]] = []
    for _ in range(count):
        category = allowed[rng.integers(len(allowed))]
        colour = np.clip(np.asarray(style_.palette[category.colour]) + rng.normal(0.0, 0.03, 3), 0.0, 1.0)
        for _attempt in range(20):
            r = float(np.exp(rng.uniform(math.log(radius[0]), math.log(radius[1]))))
            margin = _REACH[category.shape] * r + 0.5 / size
            obj = _Object(shape=category.shape, colour=colour, x=rng.uniform(margin, 1 - margin),
                          y=rng.uniform(margin, 1 - margin), radius=r, angle=rng.uniform(0.0, 2 * math.pi))
            alpha = _alpha(obj, grid, size)
            if alpha.sum() > 0 and all(_visible_fraction(previous, _front(placed, i) + [alpha]) >= min_visible
                                       for i, (_, _, previous) in enumerate(placed)):
                placed.append((category, obj, alpha))
                break
    if not placed:  # cannot happen with sane settings; keeps the scene valid
        raise ConfigError("could not place any object; lower the object radius")
    backdrop = _sample_backdrop(rng, style_, placed[0][1].colour, context)
    distractors, front_alphas = [], []
    for _ in range(int(rng.integers(style_.distractors + 1))):
        distractor = _sample_distractor(rng)
        if distractor.in_front:
            alpha = _alpha(distractor, grid, size)
            if all(_visible_fraction(a, _front(placed, i) + front_alphas + [alpha]) >= min_visible
                   for i, (_, _, a) in enumerate(placed)):
                front_alphas.append(alpha)
            else:
                distractor.in_front = False
        distractors.append(distractor)
    gain, offset, noise = rng.uniform(0.85, 1.15), rng.uniform(-0.05, 0.05), rng.uniform(*style_.noise)

    image = np.array(np.broadcast_to(_draw_backdrop(backdrop, style_, grid, _TIME), (1, size, size, 3)), np.float32)
    for distractor in (d for d in distractors if not d.in_front):
        _draw_object(image, distractor, style_, grid, _TIME, exposure=0.0)
    for _, obj, _ in placed:
        _draw_object(image, obj, style_, grid, _TIME, exposure=0.0)
    for distractor in (d for d in distractors if d.in_front):
        _draw_object(image, distractor, style_, grid, _TIME, exposure=0.0)
    image = image * gain + offset
    if noise > 0:
        image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    pixels = (np.clip(image[0], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    scene = Scene(pixels, context=context)
    for index, (category, _, alpha) in enumerate(placed):
        visible = alpha.copy()
        for cover in _front(placed, index) + front_alphas:
            visible *= 1.0 - cover
        rows, columns = np.nonzero(visible > 0.5)
        if len(rows) == 0:  # a drawn object must have its box: refuse sizes this small
            raise ConfigError(f"a {category.name} of {size} px images has no visible pixel; use larger images")
        x0, y0, x1, y1 = int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1
        scene.objects.append(SceneObject(category, [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                         round(float(visible.sum()), 2), float(visible.sum() / alpha.sum())))
    return scene


def _alpha(obj: _Object, grid, size: int) -> np.ndarray:
    """Coverage of ``obj`` (H, W) at the scene's time, as :func:`render._draw_object` composites it."""
    pose = obj.pose(_TIME)
    u, v = _local_coordinates(grid, pose)
    return _coverage(_signed_distance(obj.shape, u, v, pose.radius[:, None, None]), size)[0]


def _front(placed, index: int) -> list[np.ndarray]:
    return [alpha for _, _, alpha in placed[index + 1:]]


def _visible_fraction(alpha: np.ndarray, covers: list[np.ndarray]) -> float:
    visible = alpha
    for cover in covers:
        visible = visible * (1.0 - cover)
    return float(visible.sum() / max(alpha.sum(), 1e-6))
