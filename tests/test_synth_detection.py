"""SynthDetection: COCO files, base-only training annotations with novel objects in the pixels, the split file,
idempotence, determinism and the ``vlkd synth detection`` command."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from vlkd.commands.synth import main as synth_main
from vlkd.data.synthetic.detection import (
    MANIFEST_NAME,
    detection_categories,
    detection_rng,
    generate_detection,
    render_image,
    render_scene,
)
from vlkd.data.synthetic.world import STYLES, vocabulary
from vlkd.errors import ConfigError

TINY = dict(train_images=12, val_images=6)
CATEGORIES = detection_categories()
BASE_IDS = {c.id for c in CATEGORIES if c.half == "base"}
NOVEL_IDS = {c.id for c in CATEGORIES if c.half == "novel"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_detection(tmp_path_factory.mktemp("synth_detection"), seed=0, **TINY)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _files(root: Path) -> dict[str, Path]:
    return {str(path.relative_to(root)): path for path in sorted(root.rglob("*")) if path.is_file()}


def test_categories_are_teacher_phrases_whose_novel_colours_no_base_name_uses():
    names = [c.name for c in CATEGORIES]
    assert len(names) == len(set(names)) == 12
    assert [c.id for c in CATEGORIES] == list(range(1, 13))
    assert len(BASE_IDS) == 8 and len(NOVEL_IDS) == 4
    base_words = {word for c in CATEGORIES if c.half == "base" for word in c.name.split()}
    for category in CATEGORIES:
        assert category.name.split() == [category.colour, category.shape]
        assert set(category.name.split()) <= vocabulary()  # words of the teacher's captions
        # a novel category cannot be reached by recombining the words base training saw
        assert (category.colour in base_words) == (category.half == "base")
        assert category.shape in base_words


def test_annotation_files_load_with_pycocotools(world):
    for split, path in (("train", world.train_json), ("val", world.val_json), ("train", world.novel_in_train_json)):
        coco = COCO(str(path))
        assert len(coco.getImgIds()) == TINY[f"{split}_images"]
        assert sorted(coco.getCatIds()) == list(range(1, 13))
        assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {c.name for c in CATEGORIES}
        for info in coco.loadImgs(coco.getImgIds()):
            assert "/" not in info["file_name"]  # relative to images/<split>/, as in COCO
            with Image.open(world.image_dir(split) / info["file_name"]) as image:
                assert image.size == (info["width"], info["height"]) and image.mode == "RGB"


def test_boxes_lie_inside_their_images_and_have_positive_area(world):
    for path in (world.train_json, world.val_json, world.novel_in_train_json):
        content = _load(path)
        sizes = {image["id"]: (image["width"], image["height"]) for image in content["images"]}
        assert content["annotations"]
        for annotation in content["annotations"]:
            assert set(annotation) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
            x, y, w, h = annotation["bbox"]
            width, height = sizes[annotation["image_id"]]
            assert all(isinstance(v, float) for v in annotation["bbox"])
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert 0 < annotation["area"] <= w * h and annotation["iscrowd"] == 0
    train_ids = [a["id"] for a in _load(world.train_json)["annotations"]]
    novel_ids = [a["id"] for a in _load(world.novel_in_train_json)["annotations"]]
    assert len(set(train_ids) | set(novel_ids)) == len(train_ids) + len(novel_ids)  # the union is a valid file


def test_training_annotates_base_only_while_novel_objects_are_in_the_images(world):
    train = _load(world.train_json)
    hidden = _load(world.novel_in_train_json)
    assert {a["category_id"] for a in train["annotations"]} <= BASE_IDS
    assert {a["category_id"] for a in hidden["annotations"]} <= NOVEL_IDS
    assert hidden["annotations"], "no training image shows a novel object"
    # every training image has a base box (zero-shot training sets drop the others)
    assert {a["image_id"] for a in train["annotations"]} == {image["id"] for image in train["images"]}
    val_categories = {a["category_id"] for a in _load(world.val_json)["annotations"]}
    assert val_categories & BASE_IDS and val_categories & NOVEL_IDS
    assert world.counts["train_novel_objects"] == len(hidden["annotations"])
    assert world.counts["val_annotations"] == world.counts["val_base_annotations"] + world.counts["val_novel_annotations"]


def test_files_hold_the_rendered_scenes_and_their_boxes(world):
    """Pixels and boxes (annotated and hidden) are those of render_image, so novel boxes mark drawn objects."""
    train, hidden, val = (_load(p) for p in (world.train_json, world.novel_in_train_json, world.val_json))
    for split, documents, image in (("train", (train, hidden), train["images"][3]), ("val", (val,), val["images"][2])):
        scene = render_image(0, split, image["id"] - 1)
        with Image.open(world.image_dir(split) / image["file_name"]) as stored:
            np.testing.assert_array_equal(np.asarray(stored), scene.image)
        written = sorted((a["category_id"], a["bbox"]) for d in documents for a in d["annotations"]
                         if a["image_id"] == image["id"])
        assert written == sorted((o.category.id, o.bbox) for o in scene.objects)


def test_boxes_are_tight_and_objects_mostly_visible_and_of_varied_scale():
    sides = []
    for index in range(30):
        scene = render_scene(detection_rng(5, "val", index))
        assert 2 <= len(scene.objects) <= 5
        for obj in scene.objects:
            assert obj.visible >= 0.6
            x, y, w, h = obj.bbox
            assert obj.area <= w * h
            sides.append(max(w, h))
        if not scene.objects:
            pytest.fail("a scene without objects")
    assert max(sides) > 2.5 * min(sides)


def test_boxes_are_the_tight_boxes_of_the_pixels_more_than_half_covered():
    """Single balls on smooth backdrops, no noise or distractors: the coverage of a pixel is read back from its
    colour (its position between the fitted backdrop and the ball's centre colour) and must give the stored box."""
    style = replace(STYLES["flat"], backgrounds=("solid", "gradient"), distractors=0, noise=(0.0, 0.0))
    balls = [c for c in CATEGORIES if c.shape == "ball"]
    exact = 0
    for index in range(20):
        scene = render_scene(detection_rng(7, "val", index), balls, style=style, objects=(1, 1), context_probability=0)
        (obj,) = scene.objects
        x, y, w, h = (int(v) for v in obj.bbox)
        image = scene.image.astype(float) / 255
        size = image.shape[0]
        rows, columns = np.mgrid[0:size, 0:size]
        window = (columns >= x - 3) & (columns < x + w + 3) & (rows >= y - 3) & (rows < y + h + 3)
        ring = ~window & (columns >= x - 9) & (columns < x + w + 9) & (rows >= y - 9) & (rows < y + h + 9)
        design = np.stack([np.ones(size * size), columns.ravel(), rows.ravel()], 1)
        plane, *_ = np.linalg.lstsq(design[ring.ravel()], image.reshape(-1, 3)[ring.ravel()], rcond=None)
        backdrop = (design @ plane).reshape(size, size, 3)
        centre = image[y + h // 2, x + w // 2]
        direction = centre - backdrop
        coverage = ((image - backdrop) * direction).sum(-1) / (direction**2).sum(-1)
        found_rows, found_columns = np.nonzero((coverage > 0.5) & window)
        found = [found_columns.min(), found_rows.min(), found_columns.max() + 1 - found_columns.min(),
                 found_rows.max() + 1 - found_rows.min()]
        assert np.abs(np.subtract(found, [x, y, w, h])).max() <= 1, (index, found, obj.bbox)
        exact += found == [x, y, w, h]
    assert exact >= 15, f"only {exact} of 20 boxes are exact"


def test_split_file_is_a_disjoint_cover_in_the_coco_ovd_format(world):
    text = world.split_file.read_text(encoding="utf-8")
    split = json.loads(text)
    assert list(split) == ["base", "novel"]
    assert text == json.dumps(split, indent=1)  # data/detection/coco_ovd_48_17.json's formatting
    assert not set(split["base"]) & set(split["novel"])
    assert set(split["base"]) | set(split["novel"]) == {c["name"] for c in _load(world.val_json)["categories"]}
    assert split == {"base": world.base_names, "novel": world.novel_names}
    by_id = {c.name: c.id for c in CATEGORIES}
    assert {by_id[name] for name in split["novel"]} == NOVEL_IDS


def test_same_settings_do_not_render_again(world):
    before = {name: path.stat().st_mtime_ns for name, path in _files(world.root).items()}
    again = generate_detection(world.root, seed=0, **TINY)
    assert again.rendered == 0 and again.counts == world.counts
    assert {name: path.stat().st_mtime_ns for name, path in _files(world.root).items()} == before


def test_other_settings_render_again_and_drop_stale_images(tmp_path):
    first = generate_detection(tmp_path, seed=0, train_images=4, val_images=3)
    manifest = _load(tmp_path / MANIFEST_NAME)
    second = generate_detection(tmp_path, seed=0, train_images=4, val_images=2)
    assert first.rendered == 7 and second.rendered == 6
    assert _load(tmp_path / MANIFEST_NAME)["settings"]["val_images"] == 2 != manifest["settings"]["val_images"]
    assert sorted(p.name for p in (tmp_path / "images" / "val").iterdir()) == ["000000.png", "000001.png"]
    assert len(_load(second.val_json)["images"]) == 2
    (tmp_path / "images" / "train" / "000001.png").unlink()  # a missing image renders the world again
    assert generate_detection(tmp_path, seed=0, train_images=4, val_images=2).rendered == 6


def test_rendering_is_deterministic_for_a_seed(world, tmp_path):
    again = generate_detection(tmp_path / "same", seed=0, **TINY)
    ours, theirs = _files(world.root), _files(again.root)
    assert sorted(ours) == sorted(theirs)
    for name, path in ours.items():
        if name != MANIFEST_NAME:
            assert path.read_bytes() == theirs[name].read_bytes(), name
    other = generate_detection(tmp_path / "other", seed=1, **TINY)
    assert (other.root / "images/val/000000.png").read_bytes() != (world.root / "images/val/000000.png").read_bytes()


def test_bad_settings_are_refused(tmp_path):
    for kwargs in (dict(train_images=0), dict(min_objects=4, max_objects=3), dict(size=16), dict(val_images=2.5)):
        with pytest.raises(ConfigError):
            generate_detection(tmp_path, **kwargs)


def test_cli_renders_and_summarises(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synth_main(["detection", "--out", str(out), "--train-images", "3", "--val-images", "2", "--seed", "2"]) == 0
    line = capsys.readouterr().out.strip()
    counts = _load(out / MANIFEST_NAME)["counts"]
    assert _load(out / MANIFEST_NAME)["settings"]["seed"] == 2
    assert f"train 3 images, {counts['train_annotations']} base boxes" in line
    assert f"val 2 images, {counts['val_annotations']} boxes" in line and "8 base / 4 novel" in line
    assert COCO(str(out / "annotations" / "instances_val.json")).getImgIds() == [1, 2]
    assert synth_main(["detection", "--out", str(out), "--train-images", "3", "--val-images", "2", "--seed", "2"]) == 0
    assert "already up to date" in capsys.readouterr().out
