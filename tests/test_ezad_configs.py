"""The real-scale EZAD configs (COCO 48 / 17, LVIS v1) run end to end on generated data in the real layouts.

Each config is run with ``fast_dev_run`` as it is, but for what needs real data or weights: a tiny random-weight
CLIP teacher (``vlkd-tiny-vit``), a ResNet-50 from random weights, images of 96 x 128 px with grids and sizes to
match, one re-normalisation epoch on the CPU. The category names and ids, the annotation fields and the folder
layouts are the real datasets'.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlkd.cli import main
from vlkd.data.detection import load_category_split, read_coco_annotations

REPO = Path(__file__).resolve().parent.parent
REAL_CONFIGS = sorted(p for p in (REPO / "configs").glob("ezad_*.yaml") if p.stem != "ezad_synth")

#: COCO 2017's 80 categories, with their ids (1-90, with gaps), as instances_*2017.json lists them.
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"),
    (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"),
    (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"),
    (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
]
COCO_IDS = {name: category_id for category_id, name in COCO_CATEGORIES}

#: A few LVIS v1 categories (ids, names and frequencies as lvis_v1_*.json has them; the misspelling is LVIS's).
LVIS_CATEGORIES = [
    (793, "person", "f"), (207, "car_(automobile)", "f"), (173, "bus_(vehicle)", "f"), (225, "cat", "f"),
    (411, "giraffe", "c"), (990, "speaker_(stero_equipment)", "c"), (1, "aerosol_can", "c"),
    (11, "applesauce", "r"), (470, "gargoyle", "r"), (33, "bagpipe", "r"),
]
LVIS_IDS = {name: category_id for category_id, name, _ in LVIS_CATEGORIES}

WIDTH, HEIGHT = 128, 96
COLOURS = [(220, 40, 40), (40, 180, 60), (40, 80, 220), (230, 200, 30), (200, 60, 200), (30, 200, 210)]


def _draw(path: Path, boxes: list[list[float]], seed: int) -> None:
    """A noisy WIDTH x HEIGHT JPEG with a filled rectangle in every [x, y, w, h] box."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(90, 150, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for k, (x, y, w, h) in enumerate(boxes):
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[(seed + k) % len(COLOURS)])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95)


#: Objects of each generated image: (category name, [x, y, w, h]); base and novel both appear, as in the real data.
SCENES = {
    "coco": {
        "train": [[("person", [8, 10, 30, 60]), ("cat", [70, 40, 40, 30])],
                  [("car", [20, 30, 60, 40]), ("dog", [90, 10, 30, 30])],
                  [("bottle", [50, 20, 20, 50]), ("person", [90, 30, 30, 60])],
                  [("umbrella", [30, 20, 50, 40])]],          # novel only: not a training image
        "val": [[("person", [10, 10, 30, 60]), ("bus", [60, 30, 60, 40])],
                [("car", [30, 40, 50, 30]), ("cat", [90, 10, 30, 30])]],
    },
    "lvis": {
        "train": [[("person", [8, 10, 30, 60]), ("applesauce", [70, 40, 40, 30])],
                  [("car_(automobile)", [20, 30, 60, 40]), ("speaker_(stero_equipment)", [90, 10, 30, 30])],
                  [("giraffe", [50, 20, 30, 50]), ("bus_(vehicle)", [90, 30, 30, 50])],
                  [("gargoyle", [30, 20, 50, 40])]],          # rare only: not a training image
        "val": [[("person", [10, 10, 30, 60]), ("gargoyle", [60, 30, 60, 40])],
                [("cat", [30, 40, 50, 30]), ("bagpipe", [90, 10, 30, 30])]],
    },
}


def _coco_files(root: Path) -> None:
    """data/coco: annotations/instances_{train,val}2017.json and train2017/, val2017/ of 12-digit JPEG names."""
    categories = [{"id": i, "name": name, "supercategory": "thing"} for i, name in COCO_CATEGORIES]
    next_id = 1
    for split, first_image in (("train", 391895), ("val", 139)):
        images, annotations = [], []
        for k, objects in enumerate(SCENES["coco"][split]):
            image_id = first_image + k
            name = f"{image_id:012d}.jpg"
            _draw(root / f"{split}2017" / name, [box for _, box in objects], image_id)
            url = f"http://images.cocodataset.org/{split}2017/{name}"
            images.append({"license": 1, "file_name": name, "coco_url": url, "height": HEIGHT, "width": WIDTH,
                           "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": image_id})
            for category, box in objects:
                annotations.append({"segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2],
                                                      box[1] + box[3]]], "area": float(box[2] * box[3]),
                                    "iscrowd": 0, "image_id": image_id, "bbox": [float(v) for v in box],
                                    "category_id": COCO_IDS[category], "id": next_id})
                next_id += 1
        content = {"info": {"description": "COCO 2017 Dataset"}, "licenses": [{"id": 1, "name": "CC BY"}],
                   "images": images, "annotations": annotations, "categories": categories}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(content))


def _lvis_content(split: str, root: Path) -> dict:
    """lvis_v1_{split}.json as LVIS v1 writes it: images with coco_url and no file_name (val images come from
    both COCO folders), federated-annotation fields, categories with frequency, synset and counts."""
    categories = [{"id": i, "name": name, "frequency": frequency, "synset": f"{name}.n.01", "synonyms": [name],
                   "def": name, "image_count": 1, "instance_count": 1} for i, name, frequency in LVIS_CATEGORIES]
    images, annotations, next_id = [], [], 1
    for k, objects in enumerate(SCENES["lvis"][split]):
        image_id = (391895 if split == "train" else 397133) + k
        folder = "train2017" if split == "train" or k % 2 else "val2017"
        name = f"{image_id:012d}.jpg"
        _draw(root / folder / name, [box for _, box in objects], image_id)
        present = sorted({LVIS_IDS[category] for category, _ in objects})
        images.append({"id": image_id, "coco_url": f"http://images.cocodataset.org/{folder}/{name}",
                       "height": HEIGHT, "width": WIDTH, "license": 1, "flickr_url": "",
                       "date_captured": "2013-11-14 11:18:45", "neg_category_ids": [LVIS_IDS["aerosol_can"]],
                       "not_exhaustive_category_ids": present[:1]})
        for category, box in objects:
            annotations.append({"id": next_id, "image_id": image_id, "category_id": LVIS_IDS[category],
                                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                                "segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2],
                                                  box[1] + box[3]]]})
            next_id += 1
    return {"info": {"description": "LVIS v1"}, "licenses": [{"id": 1, "name": "CC BY"}], "images": images,
            "annotations": annotations, "categories": categories}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The dataset roots of both configs: data/coco and data/lvis_v1 (images in train2017/ and val2017/ below)."""
    base = tmp_path_factory.mktemp("ezad_real")
    _coco_files(base / "coco")
    lvis = base / "lvis_v1"
    (lvis / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        content = _lvis_content(split, lvis)
        (lvis / "annotations" / f"lvis_v1_{split}.json").write_text(json.dumps(content))
    return {"ezad_coco": base / "coco", "ezad_lvis": lvis}


#: The towers each config re-normalises (EZAD: both on COCO, the image tower only on LVIS).
TOWERS = {"ezad_coco": ["image", "text"], "ezad_lvis": ["image"]}


def test_every_ezad_config_is_tested():
    assert {p.stem for p in REAL_CONFIGS} == set(TOWERS)


def test_the_generated_layouts_resolve_the_real_splits(layouts):
    coco = load_category_split("coco_48_17")
    assert (len(coco.base), len(coco.novel)) == (48, 17) and set(coco.names) <= set(COCO_IDS)
    lvis = load_category_split(layouts["ezad_lvis"] / "annotations" / "lvis_v1_train.json")
    assert len(lvis.base) == 7 and set(lvis.novel) == {"applesauce", "gargoyle", "bagpipe"}
    images, _, report = read_coco_annotations(layouts["ezad_lvis"] / "annotations" / "lvis_v1_val.json")
    assert [image.path for image in images] == ["val2017/000000397133.jpg", "train2017/000000397134.jpg"]
    assert report.total_skipped == 0 and all((layouts["ezad_lvis"] / image.path).is_file() for image in images)


def test_an_unmodified_lvis_file_gives_its_images_paths_from_coco_url(layouts):
    path = layouts["ezad_lvis"] / "annotations" / "lvis_v1_val.json"
    images, _, _ = read_coco_annotations(path)
    assert [image.path for image in images] == ["val2017/000000397133.jpg", "train2017/000000397134.jpg"]


def _small(settings: dict, tmp_path: Path, root: Path) -> dict:
    """The override of a real config: tiny teacher, random ResNet-50, 96 x 128 px images, CPU, one batch."""
    init = settings["model"]["init_args"]
    detector = {**init["detector"], "weights": None, "max_size": 128,
                "min_size": [64, 96] if isinstance(init["detector"]["min_size"], list) else 96,
                # the box head is the real one (3 convs, 1,024-wide fcs): fewer regions keep it fast on a CPU
                "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100,
                "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 64}
    proposals = {**init["proposals"], "stride": 16, "sizes": [16, 32, 64], "ratios": [1.0], "min_size": None,
                 "max_size": None, "pre_filter": 40, "keep": 10, "batch_size": 64}
    renormalization = {**init["renormalization"], "epochs": 1, "batch_size": 4, "device": "cpu", "workers": 0,
                       "progress": False}
    model = {"teacher": {"name": "vlkd-tiny-vit", "pretrained": None}, "work_dir": str(tmp_path / "work"),
             "detector": detector, "proposals": proposals, "renormalization": renormalization}
    data = {"root": str(root), "num_workers": 0, "batch_size": 2, "teacher_cache": None}
    trainer = {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32", "enable_progress_bar": False,
               "enable_model_summary": False, "default_root_dir": str(tmp_path / "run")}
    return {"trainer": trainer, "model": {"init_args": model}, "data": {"init_args": data}}


@pytest.mark.slow
@pytest.mark.parametrize("config", REAL_CONFIGS, ids=lambda p: p.stem)
def test_real_config_runs_a_fast_dev_run(config, layouts, tmp_path):
    settings = yaml.safe_load(config.read_text())
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump(_small(settings, tmp_path, layouts[config.stem])))
    assert main(["fit", "--config", str(config), "--config", str(override), "--trainer.fast_dev_run", "1"]) == 0
    (teacher,) = (tmp_path / "work").glob("teacher-*")
    manifest = json.loads((teacher / "renormalization.json").read_text())
    assert sorted(manifest["key"]["settings"]["towers"]) == TOWERS[config.stem]
    (cache,) = (tmp_path / "work").glob("cache-*")
    stored = json.loads((cache / "manifest.json").read_text())
    assert stored["data"]["num_samples"] == 3  # the image with novel objects only is left out
    assert stored["proposals"]["drop_base_class"] == (config.stem == "ezad_coco")
    (results,) = (tmp_path / "run").rglob("results.json")
    metrics = json.loads(results.read_text())["metrics"]
    assert {"base_ap50", "novel_ap50", "all_ap50", "novel_ap50_1000det"} <= set(metrics)
