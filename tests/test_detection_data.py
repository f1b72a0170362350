"""Detection data and evaluation: COCO annotation files with bad rows, category splits, the dataset, and
pycocotools AP per category group on cases whose AP is known by hand."""

from __future__ import annotations

import json

import pytest
import torch

from vlkd.data.detection import (
    DetectionDataset,
    collate_detection,
    keep_categories,
    load_category_split,
    read_coco_annotations,
)
from vlkd.errors import ConfigError
from vlkd.eval.detection import coco_box_ap

CATEGORIES = [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 3, "name": "dog", "supercategory": "animal"},
              {"id": 7, "name": "kite", "supercategory": "thing"}]


def _annotation(index, image_id, category_id, bbox, **extra):
    return {"id": index, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": 0, **extra}


def _ground_truth(annotations, images=None):
    images = images or [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
                        {"id": 2, "file_name": "b.png", "width": 60, "height": 60}]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


# --------------------------------------------------------------------------- reading


def test_bad_annotations_are_skipped_or_clipped_and_reported(tmp_path):
    annotations = [
        _annotation(1, 1, 1, [10, 10, 20, 20]),            # fine
        _annotation(2, 1, 3, [90, 70, 30, 30]),            # reaches outside: clipped to [90, 70, 100, 80]
        _annotation(3, 1, 3, [0, 0, 0, 5]),                # zero width
        _annotation(4, 2, 99, [1, 1, 5, 5]),               # unknown category
        _annotation(5, 42, 1, [1, 1, 5, 5]),               # image not listed
        _annotation(6, 2, 7, [200, 200, 5, 5]),            # wholly outside its 60x60 image
        {"id": 7, "image_id": 2, "category_id": 1},        # no bbox
        _annotation(8, 2, 1, [5, 5, 10, 10], iscrowd=1),   # a crowd region: ignore, not an object
    ]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_ground_truth(annotations)))
    images, categories, report = read_coco_annotations(path)
    assert categories == {1: "cat", 3: "dog", 7: "kite"}
    first, second = images
    assert first.boxes.tolist() == [[10, 10, 30, 30], [90, 70, 100, 80]] and first.category_ids.tolist() == [1, 3]
    assert second.num_objects == 0 and second.ignore.tolist() == [[5, 5, 15, 15]]
    assert report.total_skipped == 5 and report.clipped == 1
    summary = report.summary()
    for phrase in ("zero or negative size", "unknown category ids (e.g. annotation 4 (category 99))",
                   "images the file does not list", "outside their image", "without image_id", "clipped 1"):
        assert phrase in summary


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"images": []}), "no annotations, categories list"),
    (json.dumps({"images": [], "annotations": [], "categories": [{"name": "x"}]}), "lacks an integer id"),
])
def test_a_file_that_is_no_coco_file_says_why(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_coco_annotations(path)


def test_the_shipped_coco_split_and_an_lvis_file(tmp_path):
    coco = load_category_split("coco_48_17")
    assert len(coco.base) == 48 and len(coco.novel) == 17 and "person" in coco.base and "bus" in coco.novel
    lvis = {"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "aerosol_can", "frequency": "c"}, {"id": 2, "name": "apple", "frequency": "f"},
        {"id": 3, "name": "bait", "frequency": "r"}]}
    path = tmp_path / "lvis_v1_val.json"
    path.write_text(json.dumps(lvis))
    split = load_category_split(path)
    assert split.base == ("aerosol_can", "apple") and split.novel == ("bait",)
    path.write_text(json.dumps({"base": ["a", "b"], "novel": ["b"]}))
    with pytest.raises(ConfigError, match="both base and novel"):
        load_category_split(path)
    path.write_text(json.dumps(_ground_truth([])))
    with pytest.raises(ConfigError, match="no 'frequency' field"):
        load_category_split(path)


def test_training_keeps_base_annotations_only(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_ground_truth([_annotation(1, 1, 1, [0, 0, 5, 5]), _annotation(2, 1, 7, [9, 9, 5, 5]),
                                              _annotation(3, 2, 7, [1, 1, 5, 5])])))
    images, _, _ = read_coco_annotations(path)
    kept = keep_categories(images, [1, 3])
    assert [image.category_ids.tolist() for image in kept] == [[1], []]
    assert len(keep_categories(images, [1, 3], drop_empty=True)) == 1


def test_the_dataset_flips_boxes_with_the_pixels(tmp_path):
    import numpy as np
    from PIL import Image

    pixels = np.zeros((80, 100, 3), np.uint8)
    pixels[10:30, 10:30] = 255  # the cat's box, white
    Image.fromarray(pixels).save(tmp_path / "a.png")
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_ground_truth([_annotation(1, 1, 1, [10, 10, 20, 20]), _annotation(2, 1, 7, [0, 0, 9, 9])],
                                             images=[{"id": 1, "file_name": "a.png", "width": 100, "height": 80}])))
    images, _, _ = read_coco_annotations(path)
    dataset = DetectionDataset(tmp_path, images, ["cat", "dog"], [1, 3], train=True)  # kite is not a class here
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)
        item = dataset[0]
        (box,) = item["target"]["boxes"].tolist()
        x0, y0, x1, y1 = (int(v) for v in box)
        assert item["image"][:, y0:y1, x0:x1].min() == 1.0  # the box still covers the white square
        assert item["target"]["labels"].tolist() == [0]
        flips.add(x0)
    assert flips == {10, 70}
    batch = collate_detection([dataset[0], dataset[0]])
    assert len(batch["images"]) == 2 and batch["targets"][0]["image_id"] == 1


def test_a_missing_image_is_skipped_and_reported(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_ground_truth([])))
    images, _, _ = read_coco_annotations(path)
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(tmp_path / "b.png")  # a.png is missing
    dataset = DetectionDataset(tmp_path, images, ["cat"], [1], train=True)
    torch.manual_seed(0)
    item = dataset[0]
    assert item["index"] == 1 and "a.png" in item["skipped"][0]


# --------------------------------------------------------------------------- AP

def _detection(image_id, category_id, bbox, score=0.9):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


GT = _ground_truth([_annotation(1, 1, 1, [10, 10, 20, 20]), _annotation(2, 1, 3, [50, 20, 30, 40]),
                    _annotation(3, 2, 7, [5, 5, 40, 40])])
GROUPS = {"base": [1, 3], "novel": [7], "all": [1, 3, 7]}


def test_perfect_detections_score_100_everywhere():
    detections = [_detection(a["image_id"], a["category_id"], a["bbox"]) for a in GT["annotations"]]
    results = coco_box_ap(GT, detections, GROUPS)
    assert results == {key: pytest.approx(100.0) for key in results} and len(results) == 12


def test_missed_novel_objects_cost_novel_ap_and_a_share_of_all():
    detections = [_detection(a["image_id"], a["category_id"], a["bbox"]) for a in GT["annotations"][:2]]
    results = coco_box_ap(GT, detections, GROUPS)
    assert results["base_ap50"] == pytest.approx(100.0) and results["novel_ap50"] == pytest.approx(0.0)
    assert results["all_ap50"] == pytest.approx(200 / 3)  # mean over the three categories


def test_a_box_of_iou_0_6_counts_at_three_of_the_ten_thresholds():
    # [10, 10, 20, 20] against [10, 10, 20, 12]: IoU 240 / 400 = 0.6 (thresholds 0.5, 0.55, 0.6 of 0.5:0.95)
    results = coco_box_ap(GT, [_detection(1, 1, [10, 10, 20, 12])], {"cat": [1]})
    assert results["cat_ap50"] == pytest.approx(100.0) and results["cat_ap"] == pytest.approx(30.0)


def test_the_detection_limit_per_image():
    # 100 confident false positives rank above the one true box: found at 1,000 detections, not at 100.
    false = [_detection(1, 1, [70, 50 + i * 0.2, 5, 5], score=0.9) for i in range(100)]
    results = coco_box_ap(GT, [*false, _detection(1, 1, [10, 10, 20, 20], score=0.1)], {"cat": [1]})
    assert results["cat_ap50"] == pytest.approx(0.0) and results["cat_ap50_1000det"] > 0


def test_no_detections_and_groups_without_ground_truth():
    assert coco_box_ap(GT, [], GROUPS)["novel_ap50"] == 0.0
    only_cats = _ground_truth([_annotation(1, 1, 1, [10, 10, 20, 20])])
    results = coco_box_ap(only_cats, [_detection(1, 1, [10, 10, 20, 20])], GROUPS)
    assert "novel_ap50" not in results and results["base_ap50"] == pytest.approx(100.0)
    with pytest.raises(ConfigError, match="category_id 5"):
        coco_box_ap(GT, [_detection(1, 5, [1, 1, 2, 2])], GROUPS)


def test_lvis_images_named_by_coco_url_resolve_under_the_coco_root(tmp_path):
    content = {"images": [{"id": 1, "width": 10, "height": 8,
                           "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg"},
                          {"id": 2, "width": 10, "height": 8, "file_name": "a.jpg"},
                          {"id": 3, "width": 10, "height": 8}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 3, 3]}],
               "categories": [{"id": 5, "name": "ball", "frequency": "r"}]}
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(content))
    images, _, report = read_coco_annotations(path)
    assert sorted(image.path for image in images) == ["a.jpg", "val2017/000000000001.jpg"]
    assert report.total_skipped == 1  # the image with neither
