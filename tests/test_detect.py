"""`vlkd detect`: COCO-format detections and drawn PNGs from an EZAD checkpoint or its exported folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image

from vlkd.cli import main
from vlkd.commands.detect import OUTPUT_FILE
from vlkd.data.synthetic.detection import generate_detection
from vlkd.errors import ConfigError, MissingFileError
from vlkd.methods.ezad_inference import DRAW_MIN_SIDE, draw_detections, load_detector, run_teacher_record

from .conftest import TINY, save_checkpoint

CONFIG = Path(__file__).parent.parent / "configs" / "ezad_synth.yaml"
NAMES = "red ball, blue triangle, green star"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short EZAD fit on a tiny SynthDetection world: the checkpoint, the world and the work folder."""
    root = tmp_path_factory.mktemp("detect_run")
    world = generate_detection(root / "world", train_images=4, val_images=2)
    settings = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    override = {
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(root / "run"), "max_epochs": 1, "limit_train_batches": 1,
                    "limit_test_batches": 1, "logger": False},
        "model": {"init_args": {"work_dir": str(root / "work"),
                                "renormalization": {**settings["renormalization"], "epochs": 1, "progress": False}}},
        "data": {"init_args": {"root": str(world.root), "num_workers": 0, "batch_size": 2}},
    }
    (root / "override.yaml").write_text(yaml.safe_dump(override))
    assert main(["fit", "--config", str(CONFIG), "--config", str(root / "override.yaml")]) == 0
    (checkpoint,) = (root / "run").rglob("last.ckpt")
    images = sorted((world.root / "images" / "val").glob("*.png"))
    return SimpleNamespace(checkpoint=checkpoint, images=images, work=root / "work", root=root)


def _detect(tmp_path: Path, images, checkpoint, names: str = NAMES, *extra: str, out: str = "out") -> dict:
    assert main(["detect", *map(str, images), "--checkpoint", str(checkpoint), "--classes", names,
                 "--out", str(tmp_path / out), *extra]) == 0
    return json.loads((tmp_path / out / OUTPUT_FILE).read_text())


def _boxes(result: dict) -> list[tuple]:
    return [(a["image_id"], a["category_id"], tuple(a["bbox"]), a["score"]) for a in result["annotations"]]


# --------------------------------------------------------------------------- output

@pytest.mark.slow
def test_detections_are_coco_json_inside_the_images_with_a_png_each(run, tmp_path):
    from pycocotools.coco import COCO

    result = _detect(tmp_path, run.images, run.checkpoint, NAMES, "--score-threshold", "0")
    assert result["categories"] == [{"id": 1, "name": "red ball"}, {"id": 2, "name": "blue triangle"},
                                    {"id": 3, "name": "green star"}]
    assert [image["file_name"] for image in result["images"]] == [str(p) for p in run.images]
    assert result["annotations"] and result["skipped"] == []
    sizes = {image["id"]: (image["width"], image["height"]) for image in result["images"]}
    for annotation in result["annotations"]:
        x, y, w, h = annotation["bbox"]
        width, height = sizes[annotation["image_id"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width + 0.01 and y + h <= height + 0.01
        assert annotation["category_id"] in (1, 2, 3) and 0 < annotation["score"] <= 1
        assert annotation["area"] == pytest.approx(w * h, rel=0.01, abs=0.1)
    for image_id in sizes:  # best first within each image
        scores = [a["score"] for a in result["annotations"] if a["image_id"] == image_id]
        assert scores == sorted(scores, reverse=True) and len(scores) <= 100
    # The run's re-normalised teacher embedded the names, with the run's templates.
    (teacher,) = run.work.glob("teacher-*")
    assert result["info"]["teacher"]["folder"] == str(teacher.resolve())
    assert result["info"]["templates"] == ["a photo of a {}"]
    # Each image drawn as a PNG, enlarged to at least 512 px.
    for image in result["images"]:
        with Image.open(tmp_path / "out" / image["drawn"]) as drawn:
            assert drawn.format == "PNG" and drawn.size == (4 * image["width"], 4 * image["height"])
    # pycocotools reads the file as a dataset; its annotations are a results list.
    coco = COCO(str(tmp_path / "out" / OUTPUT_FILE))
    assert len(coco.getAnnIds()) == len(result["annotations"]) and coco.loadCats(3)[0]["name"] == "green star"


@pytest.mark.slow
def test_any_names_work_and_give_their_own_categories(run, tmp_path):
    first = _detect(tmp_path, run.images[:1], run.checkpoint, NAMES, "--score-threshold", "0", out="a")
    second = _detect(tmp_path, run.images[:1], run.checkpoint, "purple ball, Orange  triangle", "--score-threshold",
                     "0", out="b")
    assert [c["name"] for c in second["categories"]] == ["purple ball", "Orange triangle"]
    assert {a["category_id"] for a in second["annotations"]} <= {1, 2}
    assert _boxes(first) != _boxes(second)  # other text embeddings: other scores and (semantic regression) boxes


@pytest.mark.slow
def test_the_score_threshold_and_the_detection_limit_are_respected(run, tmp_path):
    everything = _detect(tmp_path, run.images, run.checkpoint, NAMES, "--score-threshold", "0",
                         "--max-detections", "1000", "--no-draw", out="all")
    above = _detect(tmp_path, run.images, run.checkpoint, NAMES, "--score-threshold", "0.5",
                    "--max-detections", "1000", "--no-draw", out="above")
    assert all(a["score"] > 0.5 for a in above["annotations"])
    kept = {box[:3] for box in _boxes(everything) if box[3] > 0.5}
    assert {box[:3] for box in _boxes(above)} == kept and 0 < len(kept) < len(everything["annotations"])
    assert not list((tmp_path / "all").glob("*.png"))  # --no-draw
    few = _detect(tmp_path, run.images, run.checkpoint, NAMES, "--score-threshold", "0", "--max-detections", "3",
                  out="few")
    for image in few["images"]:
        assert sum(a["image_id"] == image["id"] for a in few["annotations"]) == 3


@pytest.mark.slow
def test_an_exported_folder_detects_exactly_as_its_checkpoint(run, tmp_path):
    assert main(["export", str(run.checkpoint), "--out", str(tmp_path / "detector")]) == 0
    config = json.loads((tmp_path / "detector" / "config.json").read_text())["vlkd_ezad"]
    (teacher,) = run.work.glob("teacher-*")
    assert config["metadata"]["teacher"]["folder"] == str(teacher.resolve())
    assert config["metadata"]["method"] == "EZAD" and config["metadata"]["templates"] == ["a photo of a {}"]
    assert len(config["class_names"]) == 12  # the run's vocabulary, base and novel
    from_checkpoint = _detect(tmp_path, run.images, run.checkpoint, NAMES, "--score-threshold", "0.1", out="ckpt")
    from_folder = _detect(tmp_path, run.images, tmp_path / "detector", NAMES, "--score-threshold", "0.1", out="dir")
    assert from_folder["annotations"] == from_checkpoint["annotations"] and from_folder["annotations"]
    assert from_folder["categories"] == from_checkpoint["categories"]
    # With --include-teacher the folder carries the re-normalised teacher and works wherever it is moved.
    assert main(["export", str(run.checkpoint), "--out", str(tmp_path / "alone"), "--include-teacher"]) == 0
    shutil.move(tmp_path / "alone", tmp_path / "moved")
    moved = _detect(tmp_path, run.images, tmp_path / "moved", NAMES, "--score-threshold", "0.1", out="moved")
    assert moved["annotations"] == from_checkpoint["annotations"]
    assert moved["info"]["teacher"]["folder"] == str((tmp_path / "moved" / "teacher").resolve())
    # Exporting twice to one folder asks for --overwrite.
    assert main(["export", str(run.checkpoint), "--out", str(tmp_path / "detector")]) == 2


@pytest.mark.slow
def test_an_unreadable_image_among_several_is_skipped_and_reported(run, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    result = _detect(tmp_path, [run.images[0], broken, tmp_path / "gone.jpg"], run.checkpoint)
    assert [image["file_name"] for image in result["images"]] == [str(run.images[0])]
    assert {s["file_name"] for s in result["skipped"]} == {str(broken), str(tmp_path / "gone.jpg")}
    err = capsys.readouterr().err
    assert f"skipped {broken}" in err and "no such file" in err and "Traceback" not in err
    # Only unreadable images: an error, no output.
    assert main(["detect", str(broken), "--checkpoint", str(run.checkpoint), "--classes", NAMES,
                 "--out", str(tmp_path / "none")]) == 2
    assert "none of the 1 images could be read" in capsys.readouterr().err


def test_a_folder_of_images_is_read_in_order(tmp_path):
    from vlkd.methods.ezad_inference import collect_images

    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    images, skipped = collect_images([tmp_path, tmp_path / "a.JPG", tmp_path / "empty"])
    assert images == [tmp_path / "a.JPG", tmp_path / "b.png"]  # a path given twice is read once
    assert skipped == [{"file_name": str(tmp_path / "empty"), "reason": skipped[0]["reason"]}]
    assert "no image files" in skipped[0]["reason"]


# --------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    from vlkd.methods import FROSTER
    from vlkd.teacher import TeacherSpec

    path = tmp_path_factory.mktemp("froster") / "averaged.ckpt"
    return save_checkpoint(FROSTER(teacher=TeacherSpec(TINY, None)), path, class_path="vlkd.methods.FROSTER")


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "image.png"
    Image.new("RGB", (32, 24), "white").save(path)
    return path


@pytest.mark.parametrize(("classes", "message"), [
    ("", "--classes: type at least one class name"),
    ("red ball,, blue ball", "--classes: a class name is empty"),
    ("red ball, Red Ball", "--classes: the class name 'Red Ball' is given twice"),
])
def test_bad_class_names_fail_with_one_line(tmp_path, capsys, image, classes, message):
    assert main(["detect", str(image), "--checkpoint", str(tmp_path), "--classes", classes,
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vlkd detect: error: {message}") and "\n" not in err


@pytest.mark.parametrize(("case", "message"), [
    ("missing_image", "no image to read (nope.png: no such file)"),
    ("missing_checkpoint", "detector checkpoint not found"),
    ("other_method", "holds a vlkd.methods.FROSTER, not an EZAD detector (pass the last.ckpt of a `vlkd fit` run"),
    ("text_checkpoint", "is not a PyTorch checkpoint"),
    ("plain_folder", "is a folder without an exported EZAD detector"),
    ("student_folder", "holds a video student written by `vlkd export`, not an EZAD detector"),
    ("threshold", "--score-threshold must be in [0, 1]"),
    ("max_detections", "--max-detections must be at least 1"),
    ("out_is_a_file", "is a file: pass a folder"),
])
def test_bad_input_fails_with_one_line_naming_the_fix(tmp_path, capsys, image, other_checkpoint, case, message):
    checkpoint, images, extra = other_checkpoint, [str(image)], []
    if case == "missing_image":
        images = ["nope.png"]
    elif case == "missing_checkpoint":
        checkpoint = tmp_path / "last.ckpt"
    elif case == "text_checkpoint":
        checkpoint = tmp_path / "notes.ckpt"
        checkpoint.write_text("hello")
    elif case == "plain_folder":
        checkpoint = tmp_path
    elif case == "student_folder":
        checkpoint = tmp_path / "student"
        checkpoint.mkdir()
        (checkpoint / "open_clip_config.json").write_text(json.dumps({"vlkd": {"method": "FROSTER"}}))
    elif case == "threshold":
        extra = ["--score-threshold", "1.5"]
    elif case == "max_detections":
        extra = ["--max-detections", "0"]
    out = tmp_path / "out"
    if case == "out_is_a_file":
        out.write_text("")
    assert main(["detect", *images, "--checkpoint", str(checkpoint), "--classes", NAMES, "--out", str(out),
                 *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlkd detect: error: ") and message in err and "\n" not in err


def test_a_run_whose_teacher_folder_is_gone_names_the_fix(tmp_path):
    method = SimpleNamespace(teacher_spec={"name": "vlkd-synth-vit", "pretrained": "synthactions"},
                             teacher_folder="work/teacher-0123", uses_renormalization=True, variant="ezad")
    with pytest.raises(MissingFileError, match="re-normalised teacher folder of the run not found.*--teacher"):
        run_teacher_record(method, tmp_path / "run" / "last.ckpt")
    # A relative work_dir is found above the checkpoint (the folder the training ran in).
    (tmp_path / "work" / "teacher-0123").mkdir(parents=True)
    record = run_teacher_record(method, tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert record == {"folder": str((tmp_path / "work" / "teacher-0123").resolve()), "precision": "fp32"}
    # A variant without re-normalisation embeds with the config's teacher.
    raw = SimpleNamespace(teacher_spec=method.teacher_spec, teacher_folder=None, uses_renormalization=False,
                          variant="no_renorm")
    assert run_teacher_record(raw, tmp_path / "x.ckpt") == {"name": "vlkd-synth-vit", "pretrained": "synthactions",
                                                            "precision": "fp32"}
    with pytest.raises(ConfigError, match="records no re-normalised teacher"):
        run_teacher_record(SimpleNamespace(**{**vars(method), "teacher_folder": None}), tmp_path / "x.ckpt")


def test_an_exported_detector_loads_with_the_teacher_it_records(tmp_path):
    from vlkd.models import create_student

    torch.manual_seed(0)
    detector = create_student("ezad_faster_rcnn", embed_dim=128, backbone="resnet18", fpn_channels=16,
                              min_size=64, max_size=64, shared_convs=0, shared_fcs=1, cls_convs=0, cls_fcs=0,
                              reg_convs=0, reg_fcs=0, fc_channels=32)
    detector.set_class_embeddings(torch.randn(2, 128))
    detector.save_pretrained(tmp_path / "d", ["a", "b"], {"teacher": {"name": "vlkd-synth-vit",
                                                                      "pretrained": "synthactions"}})
    loaded = load_detector(tmp_path / "d")
    assert loaded.teacher.embed_dim == 128 and loaded.templates == ("a photo of a {}",)
    assert loaded.trained_names == ["a", "b"] and loaded.label == "EZAD detector: d"
    detector.save_pretrained(tmp_path / "e", ["a", "b"], {})
    with pytest.raises(ConfigError, match="records no teacher"):
        load_detector(tmp_path / "e")
    with pytest.raises(ConfigError, match="embeds 64-wide, the detector expects 128"):
        load_detector(tmp_path / "d", teacher=TINY)
    (tmp_path / "e" / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(ConfigError, match="cannot load the EZAD detector in .*e: .*export it again"):
        load_detector(tmp_path / "e")


def test_boxes_are_drawn_on_an_enlarged_copy():
    image = Image.new("RGB", (64, 32), "white")
    drawn = draw_detections(image, [[8.0, 4.0, 40.0, 28.0]], [1], [0.9], ["ball", "star"])
    scale = DRAW_MIN_SIDE // 32
    assert drawn.size == (64 * scale, 32 * scale) and image.getpixel((8, 4)) == (255, 255, 255)
    assert drawn.getpixel((int(40 * scale) - 1, int(16 * scale))) != (255, 255, 255)  # the box's right edge
    assert drawn.getpixel((int(24 * scale), int(16 * scale))) == (255, 255, 255)  # inside the box: untouched


def test_detect_is_listed_in_the_command_line_help(capsys):
    assert main(["--help"]) == 0
    assert "  detect " in capsys.readouterr().out
