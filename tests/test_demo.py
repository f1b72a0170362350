"""The demo's scoring and detection logic (vlkd.demo.handler), its samples and the `vlkd demo` command line,
without a browser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlkd.cli import main
from vlkd.commands.teacher_options import DEFAULT_TEACHER
from vlkd.data.video import probe_video
from vlkd.data.writer import write_video
from vlkd.demo import (
    DemoInputError,
    detect_objects,
    load_detector,
    load_student_scorer,
    load_teacher_scorer,
    parse_names,
    score_video,
)
from vlkd.demo.handler import MAX_CLASSES, NO_DETECTOR_HELP
from vlkd.demo.samples import FPS, SAMPLES, load_samples
from vlkd.errors import ConfigError, MissingFileError

from .conftest import save_checkpoint

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO / "data" / "samples"


@pytest.fixture(scope="module")
def teacher():
    return load_teacher_scorer(*DEFAULT_TEACHER)


@pytest.fixture(scope="module")
def samples():
    return {sample.file: (path, sample) for path, sample in load_samples()}


def _noise_video(path: Path, frames: int, fps: float, size: int = 32) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    return write_video(path, pixels, fps=fps, crf=35)


# --------------------------------------------------------------------------- action names

def test_names_are_split_on_commas_and_tidied():
    assert parse_names("  red ball on grass,blue   star  rotating clockwise , x") == [
        "red ball on grass", "blue star rotating clockwise", "x"]


@pytest.mark.parametrize(("text", "message"), [
    ("", "type at least one action name"),
    ("   ", "type at least one action name"),
    (None, "type at least one action name"),
    ("running,, jumping", "an action name is empty"),
    ("running, jumping,", "an action name is empty"),
    ("running, Running ", "'Running' is given twice"),
    (", ".join(f"action {i}" for i in range(MAX_CLASSES + 1)), f"at most {MAX_CLASSES} per query"),
    ("x" * 101, "longer than 100 characters"),
])
def test_bad_action_names_get_a_message(text, message):
    with pytest.raises(DemoInputError, match=message):
        parse_names(text)


def test_the_name_limit_is_a_parameter():
    assert len(parse_names(", ".join(f"a{i}" for i in range(MAX_CLASSES)))) == MAX_CLASSES
    with pytest.raises(DemoInputError, match="3 action names given: at most 2"):
        parse_names("a, b, c", max_classes=2)


# --------------------------------------------------------------------------- scores

def test_probabilities_are_sorted_sum_to_one_and_the_curve_has_a_value_per_frame_and_name(teacher, samples):
    path, sample = samples["three_scenes.mp4"]
    scores = score_video(path, sample.queries, teacher)
    names = parse_names(sample.queries)
    frames = probe_video(path).num_frames
    assert scores.names == names and set(scores.probabilities) == set(names)
    values = list(scores.probabilities.values())
    assert values == sorted(values, reverse=True)
    assert sum(values) == pytest.approx(1.0, abs=1e-5)
    assert scores.top_k(2) == list(scores.probabilities.items())[:2]
    # The samples are 8 fps, the demo's default rate: every frame is scored.
    assert len(scores.frame_times) == frames == 3 * 16
    assert scores.frame_times == pytest.approx([i / FPS for i in range(frames)])
    assert scores.frame_similarity.shape == scores.frame_probabilities.shape == (frames, len(names))
    assert scores.frame_similarity.abs().max() <= 1.0 + 1e-5
    torch.testing.assert_close(scores.frame_probabilities.sum(dim=1), torch.ones(frames))
    assert scores.video_seconds == pytest.approx(frames / FPS) and not scores.notes


@pytest.mark.parametrize("file", ["red_square_on_grass.mp4", "purple_ball_in_water.mp4"])
def test_the_shipped_teacher_ranks_the_true_static_class_first(teacher, samples, file):
    path, sample = samples[file]
    scores = score_video(path, sample.queries, teacher)
    (true_class,) = sample.classes
    assert scores.top_k(1)[0][0] == true_class
    assert scores.probabilities[true_class] > 0.9


def test_the_per_frame_curve_shows_when_each_scene_is_on_screen(teacher, samples):
    """three_scenes.mp4 chains three static scenes of 16 frames: each frame's best name is its scene's."""
    path, sample = samples["three_scenes.mp4"]
    scores = score_video(path, list(sample.classes), teacher)
    best = scores.frame_probabilities.argmax(dim=1).tolist()
    assert best == [0] * 16 + [1] * 16 + [2] * 16
    scene_means = scores.frame_similarity.view(3, 16, 3).mean(dim=1)  # (scene, name)
    assert scene_means.argmax(dim=1).tolist() == [0, 1, 2]


def test_a_long_video_is_sampled_over_its_whole_length_and_the_note_says_so(teacher, tmp_path):
    video = _noise_video(tmp_path / "long.mp4", frames=250, fps=25)  # 10 s: 80 frames at 8 fps
    scores = score_video(video, "noise, a red ball", teacher, fps=8, max_frames=16)
    assert len(scores.frame_times) == 16
    assert scores.frame_times[0] == 0 and scores.frame_times[-1] > 9.0
    (note,) = scores.notes
    assert "10.0 s long" in note and "80 frames" in note and "16 frames spread over all of it" in note
    short = score_video(video, "noise", teacher, fps=1, max_frames=16)
    assert len(short.frame_times) == 10 and not short.notes


def test_a_video_of_another_size_and_shape_is_resized_not_refused(teacher, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (6, 48, 80, 3), dtype=np.uint8)
    video = write_video(tmp_path / "wide.webm", pixels, fps=4, codec="vp9")
    scores = score_video(video, ["noise"], teacher)
    assert scores.frame_similarity.shape == (6, 1)
    assert scores.probabilities == {"noise": pytest.approx(1.0)}


def _bad_video(kind: str, folder: Path) -> Path | None:
    """A file the demo cannot read as a video, named after ``kind``."""
    if kind == "none":
        return None
    path = folder / f"{kind}.mp4"
    if kind == "text":
        path.write_text("not a video")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = (SAMPLE_DIR / "red_square_on_grass.mp4").read_bytes()
        path.write_bytes(data[: len(data) // 10])
    elif kind == "image":
        path = folder / "image.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("none", "upload a video or pick one of the samples"),
    ("missing", "cannot read missing.mp4 as a video"),
    ("text", "cannot read text.mp4 as a video"),
    ("empty", "cannot read empty.mp4 as a video"),
    ("truncated", "cannot read truncated.mp4 as a video"),
    ("image", "cannot read image.png as a video"),
])
def test_unreadable_videos_get_a_message_naming_the_file(teacher, tmp_path, kind, message):
    with pytest.raises(DemoInputError, match=message) as error:
        score_video(_bad_video(kind, tmp_path), "running", teacher)
    assert "upload" in str(error.value)
    assert str(tmp_path) not in str(error.value)  # no server paths in the page


def test_names_are_checked_before_the_video_is_decoded(teacher):
    with pytest.raises(DemoInputError, match="given twice"):
        score_video("does-not-matter.mp4", "a, a", teacher)


# --------------------------------------------------------------------------- samples

def test_the_shipped_samples_are_listed_small_and_decodable():
    index = json.loads((SAMPLE_DIR / "samples.json").read_text())
    assert [entry["file"] for entry in index["samples"]] == [sample.file for sample in SAMPLES]
    videos = sorted(SAMPLE_DIR.glob("*.mp4"))
    assert {p.name for p in videos} == {sample.file for sample in SAMPLES}
    assert sum(p.stat().st_size for p in videos) < 300_000
    for path, sample in load_samples(SAMPLE_DIR):
        info = probe_video(path)
        assert info.num_frames == 16 * len(sample.classes) and info.fps == pytest.approx(FPS)
        assert set(sample.classes) <= set(parse_names(sample.queries))


# --------------------------------------------------------------------------- a FROSTER student

def _save_froster(path: Path, **kwargs) -> Path:
    from vlkd.methods import FROSTER
    from vlkd.teacher import TeacherSpec

    return save_checkpoint(FROSTER(teacher=TeacherSpec(*DEFAULT_TEACHER), **kwargs), path)


@pytest.fixture(scope="module")
def froster_checkpoint(tmp_path_factory):
    """A FROSTER checkpoint at initialisation, with independent frames: its student is the teacher."""
    return _save_froster(tmp_path_factory.mktemp("froster") / "init.ckpt", temporal="none")


def test_a_froster_checkpoint_scores_with_its_student(teacher, samples, froster_checkpoint):
    student = load_student_scorer(froster_checkpoint)
    assert student.label == "FROSTER student: init.ckpt"
    path, sample = samples["three_scenes.mp4"]
    by_student, by_teacher = score_video(path, sample.queries, student), score_video(path, sample.queries, teacher)
    # At initialisation the student's towers are the teacher's, so the answers agree...
    torch.testing.assert_close(by_student.frame_similarity, by_teacher.frame_similarity, atol=1e-4, rtol=1e-4)
    # ...and they are the student's: changing its image tower changes them.
    with torch.no_grad():
        student.method.student.model.visual.proj.mul_(-1)
    changed = score_video(path, sample.queries, student)
    torch.testing.assert_close(changed.frame_similarity, -by_teacher.frame_similarity, atol=1e-4, rtol=1e-4)


def test_an_exported_student_scores_as_its_checkpoint_does(samples, tmp_path):
    from vlkd.commands.demo import build_parser, load_models

    descriptions = tmp_path / "descriptions.json"  # recorded in the export, and used by it
    descriptions.write_text(json.dumps({"red star in water": "A red five-pointed star floats on blue water."}))
    checkpoint = _save_froster(tmp_path / "averaged.ckpt", class_descriptions=str(descriptions))
    from_checkpoint = load_student_scorer(checkpoint)
    with torch.no_grad():  # a student that is no longer the teacher
        from_checkpoint.method.student.model.visual.proj.mul_(-1)
    save_checkpoint(from_checkpoint.method, checkpoint)
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "student")]) == 0
    descriptions.unlink()  # the export carries them: the file is not needed any more
    exported = load_student_scorer(tmp_path / "student")
    assert exported.label == "FROSTER student: student" and "red star in water" in exported.descriptions
    path, sample = samples["three_scenes.mp4"]
    by_export, by_checkpoint = score_video(path, sample.queries, exported), score_video(path, sample.queries, from_checkpoint)
    torch.testing.assert_close(by_export.frame_similarity, by_checkpoint.frame_similarity, rtol=0, atol=0)
    assert by_export.probabilities == pytest.approx(by_checkpoint.probabilities)
    # `vlkd demo --checkpoint FOLDER` offers it first, then the teacher.
    scorers = load_models(build_parser().parse_args(["--checkpoint", str(tmp_path / "student")]))
    assert [s.label for s in scorers][0] == "FROSTER student: student" and len(scorers) == 2


def test_a_fine_tuned_checkpoint_written_by_vlkd_fit_loads_as_its_own_class(tmp_path):
    from vlkd.methods import FineTuneCLIP
    from vlkd.teacher import TeacherSpec

    save_checkpoint(FineTuneCLIP(clip=TeacherSpec(*DEFAULT_TEACHER)), tmp_path / "finetuned.ckpt",
                    class_path="vlkd.methods.FineTuneCLIP")
    student = load_student_scorer(tmp_path / "finetuned.ckpt")
    assert type(student.method) is FineTuneCLIP and student.label == "FineTuneCLIP student: finetuned.ckpt"


def test_bad_checkpoints_fail_with_one_clear_error(tmp_path):
    with pytest.raises(MissingFileError, match="student checkpoint not found: .*nope.ckpt"):
        load_student_scorer(tmp_path / "nope.ckpt")
    with pytest.raises(ConfigError, match="is a folder"):
        load_student_scorer(tmp_path)
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(ConfigError, match="text.ckpt is not a PyTorch checkpoint"):
        load_student_scorer(tmp_path / "text.ckpt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match="weights.pt is not a Lightning checkpoint"):
        load_student_scorer(tmp_path / "weights.pt")


@pytest.mark.parametrize(("args", "message"), [
    (["--checkpoint", "/no/such/student.ckpt"],
     "vlkd demo: error: student checkpoint not found: /no/such/student.ckpt"),
    (["--port", "70000"], "vlkd demo: error: --port must be between 1 and 65535, got 70000"),
    (["--max-frames", "0"], "vlkd demo: error: --fps, --max-frames and --max-classes must be positive"),
    (["--detector", "/no/such/last.ckpt"], "vlkd demo: error: detector checkpoint not found: /no/such/last.ckpt"),
])
def test_the_command_line_fails_with_one_line(capsys, args, message):
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_demo_is_listed_in_the_command_line_help(capsys):
    assert main(["--help"]) == 0
    assert "  demo " in capsys.readouterr().out


# --------------------------------------------------------------------------- the detection tab

OBJECTS = "red ball, blue triangle"


def write_random_detector(folder: Path, names: tuple[str, ...] = ("red ball", "blue triangle")) -> Path:
    """An untrained EZAD detector in the folder layout `vlkd export` writes, recording the shipped teacher."""
    from vlkd.models import create_student
    from vlkd.teacher import create_teacher

    teacher = create_teacher(*DEFAULT_TEACHER)
    torch.manual_seed(0)
    detector = create_student("ezad_faster_rcnn", embed_dim=teacher.embed_dim, backbone="resnet18", fpn_channels=16,
                              min_size=128, max_size=128, anchor_sizes=[[8], [16], [32], [64], [128]], shared_convs=0,
                              shared_fcs=1, cls_convs=0, cls_fcs=0, reg_convs=0, reg_fcs=0, fc_channels=64)
    templates = ["a photo of a {}"]
    detector.set_class_embeddings(teacher.encode_text(list(names), templates))
    metadata = {"method": "EZAD", "teacher": {"name": DEFAULT_TEACHER[0], "pretrained": DEFAULT_TEACHER[1]},
                "templates": templates}
    return detector.save_pretrained(folder, list(names), metadata)


def write_scene(path: Path) -> Path:
    """A 96 x 128 picture: a red disc and a blue triangle on grass."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (128, 96), (40, 140, 40))
    draw = ImageDraw.Draw(image)
    draw.ellipse([20, 20, 50, 50], fill=(220, 30, 30))
    draw.polygon([(80, 70), (110, 70), (95, 40)], fill=(30, 60, 220))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return load_detector(write_random_detector(tmp_path_factory.mktemp("detector") / "ezad_synth"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("scene") / "scene.png")


def test_detections_are_sorted_inside_the_image_and_drawn(detector, scene):
    found = detect_objects(scene, OBJECTS, detector, score_threshold=0.0)
    assert found.names == ["red ball", "blue triangle"] and (found.width, found.height) == (128, 96)
    assert found.objects and found.model == "EZAD detector: ezad_synth" and found.score_threshold == 0.0
    scores = [item["score"] for item in found.objects]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores) and len(scores) <= 100
    for item in found.objects:
        x0, y0, x1, y1 = item["box"]
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 96 and item["object"] in found.names
    rows = found.rows()
    assert len(rows) == len(found.objects) and set(rows[0]) == {"object", "score", "x", "y", "width", "height"}
    assert rows[0]["width"] == pytest.approx(found.objects[0]["box"][2] - found.objects[0]["box"][0], abs=0.06)
    assert sum(found.counts().values()) == len(found.objects) and list(found.counts()) == found.names
    assert found.image.size == (128 * 6, 96 * 6)  # drawn enlarged: at least 512 px on the shorter side


def test_the_threshold_keeps_only_higher_scores(detector, scene):
    everything = detect_objects(scene, OBJECTS, detector, score_threshold=0.0, max_detections=1000)
    middle = sorted(item["score"] for item in everything.objects)[len(everything.objects) // 2]
    above = detect_objects(scene, OBJECTS, detector, score_threshold=middle, max_detections=1000)
    assert above.objects and all(item["score"] > middle for item in above.objects)
    assert len(above.objects) < len(everything.objects)
    kept = sorted((item["object"], item["box"]) for item in everything.objects if item["score"] > middle)
    assert sorted((item["object"], item["box"]) for item in above.objects) == kept
    capped = detect_objects(scene, OBJECTS, detector, score_threshold=0.0, max_detections=5)
    assert len(capped.objects) == 5


def test_other_names_give_other_detections(detector, scene):
    first = detect_objects(scene, OBJECTS, detector, score_threshold=0.0)
    other = detect_objects(scene, ["green star", "yellow square", "purple ball"], detector, score_threshold=0.0)
    assert other.names == ["green star", "yellow square", "purple ball"]
    assert {item["object"] for item in other.objects} <= set(other.names)
    assert [item["score"] for item in other.objects] != [item["score"] for item in first.objects]


def _bad_image(kind: str, folder: Path) -> Path | None:
    if kind == "none":
        return None
    path = folder / f"{kind}.png"
    if kind == "text":
        path.write_text("not an image")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = write_scene(folder / "whole.png").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "video":
        path = folder / "clip.mp4"
        path.write_bytes((SAMPLE_DIR / "red_square_on_grass.mp4").read_bytes())
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("none", "upload an image"),
    ("missing", "cannot read missing.png as an image"),
    ("text", "cannot read text.png as an image"),
    ("empty", "cannot read empty.png as an image"),
    ("truncated", "cannot read truncated.png as an image"),
    ("video", "cannot read clip.mp4 as an image"),
])
def test_unreadable_images_get_a_message_naming_the_file(detector, tmp_path, kind, message):
    with pytest.raises(DemoInputError, match=message) as error:
        detect_objects(_bad_image(kind, tmp_path), OBJECTS, detector)
    assert "upload" in str(error.value)
    assert str(tmp_path) not in str(error.value)  # no server paths in the page


@pytest.mark.parametrize(("names", "threshold", "message"), [
    ("", 0.3, "type at least one object name"),
    ("red ball,, blue ball", 0.3, "an object name is empty: remove the extra comma"),
    ("red ball, Red ball", 0.3, "the object name 'Red ball' is given twice"),
    (", ".join(f"thing {i}" for i in range(MAX_CLASSES + 1)), 0.3, f"at most {MAX_CLASSES} per query"),
    ("red ball", 1.5, r"the score threshold must be in \[0, 1\], got 1.5"),
])
def test_bad_object_names_and_thresholds_are_refused_before_the_image_is_read(detector, names, threshold, message):
    with pytest.raises(DemoInputError, match=message):
        detect_objects("does-not-matter.png", names, detector, score_threshold=threshold)


def test_the_demo_command_loads_a_detector_and_refuses_one_as_a_video_student(detector, capsys):
    from vlkd.commands.demo import build_parser, load_detector_model

    folder = detector.source
    loaded = load_detector_model(build_parser().parse_args(["--detector", str(folder)]))
    assert loaded.label == "EZAD detector: ezad_synth" and loaded.trained_names == ["red ball", "blue triangle"]
    assert load_detector_model(build_parser().parse_args([])) is None
    assert main(["demo", "--checkpoint", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"vlkd demo: error: {folder} is an EZAD detector, not a video student: pass it as --detector {folder}"


def test_without_a_detector_the_tab_says_how_to_get_one():
    assert "vlkd demo --detector" in NO_DETECTOR_HELP and "configs/ezad_synth.yaml" in NO_DETECTOR_HELP
    assert "vlkd export" in NO_DETECTOR_HELP
