"""CLIP re-normalisation (EZAD): ground-truth crops, crop accuracy, LayerNorm-only tuning, the saved folder and its
manifest, unreadable images and bad settings."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vlkd import create_teacher
from vlkd.data.images import read_image
from vlkd.data.synthetic.detection import generate_detection
from vlkd.errors import ConfigError
from vlkd.paths import asset_path
from vlkd.teacher.renormalize import (
    EZAD_CROP,
    MANIFEST_NAME,
    GroundTruthCrops,
    crop_accuracy,
    layernorm_parameters,
    renormalize_teacher,
)

TEACHER = ("vlkd-synth-vit", "synthactions")
SOURCE_WEIGHTS = asset_path("teachers", "synth-vit", "open_clip_model.safetensors")
# One short epoch: what the tests check does not depend on how well the norms are tuned.
FAST = dict(epochs=1, batch_size=8, lr=1e-3, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_detection(tmp_path_factory.mktemp("renorm_world"), train_images=8, val_images=4)


@pytest.fixture(scope="module")
def teacher():
    return create_teacher(*TEACHER)


def _run(world, out, **kwargs):
    settings = {**FAST, **kwargs}
    return renormalize_teacher(*TEACHER, world.train_json, world.image_dir("train"), world.base_names, out,
                               eval_annotations=world.val_json, eval_image_root=world.image_dir("val"),
                               eval_names=world.category_names, **settings)


@pytest.fixture(scope="module")
def both(world, tmp_path_factory):
    return _run(world, tmp_path_factory.mktemp("runs") / "both")


@pytest.fixture(scope="module")
def image_only(world, tmp_path_factory):
    return _run(world, tmp_path_factory.mktemp("runs") / "image", towers=("image",))


def _changed(saved: dict, source: dict) -> set[str]:
    assert saved.keys() == source.keys()
    return {key for key in saved if not torch.equal(saved[key], source[key].to(saved[key].dtype))}


def test_only_layernorm_parameters_change(both, teacher):
    saved = load_file(str(both.folder / "open_clip_model.safetensors"))
    source = load_file(str(SOURCE_WEIGHTS))
    changed = _changed(saved, source)
    trainable = set(layernorm_parameters(teacher, ("image", "text")))
    assert changed, "training changed nothing"
    assert changed <= trainable
    # Every tuned parameter is a LayerNorm weight or bias, in both towers, ln_final included (EZAD's "ln_" set).
    assert all(".ln_" in f".{key}" for key in trainable)
    assert {"ln_final.weight", "visual.ln_post.weight", "visual.ln_pre.bias"} <= trainable
    assert any(key.startswith("visual.") for key in changed) and any(not key.startswith("visual.") for key in changed)
    assert both.manifest["trainable"]["parameters"] == sorted(trainable)
    assert both.manifest["source"]["weights_sha256"] == teacher.identity.weights_sha256


def test_image_tower_only_leaves_text_tower_untouched(image_only):
    saved = load_file(str(image_only.folder / "open_clip_model.safetensors"))
    changed = _changed(saved, load_file(str(SOURCE_WEIGHTS)))
    assert changed and all(key.startswith("visual.") for key in changed)
    assert all(name.startswith("visual.") for name in image_only.manifest["trainable"]["parameters"])
    source, tuned = create_teacher(*TEACHER), image_only.load()
    names = ["red ball", "blue triangle"]
    assert torch.equal(source.encode_text(names), tuned.encode_text(names))


def test_saved_folder_loads_as_the_trained_teacher(both, world, teacher):
    loaded = create_teacher(str(both.folder))
    pixels = torch.rand(3, 3, loaded.image_size, loaded.image_size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.encode_images(pixels), both.teacher.encode_images(pixels), rtol=0, atol=1e-6)
    torch.testing.assert_close(loaded.encode_text(world.category_names), both.teacher.encode_text(world.category_names),
                               rtol=0, atol=1e-6)
    assert not torch.allclose(loaded.encode_images(pixels), teacher.encode_images(pixels))
    assert loaded.preprocess == teacher.preprocess and loaded.logit_scale == pytest.approx(teacher.logit_scale)
    groups = {"base": world.base_names, "novel": world.novel_names}
    again = crop_accuracy(loaded, (world.val_json, world.image_dir("val")), world.category_names, groups=groups)
    assert again.to_dict() == both.after.to_dict()
    stored = json.loads((both.folder / MANIFEST_NAME).read_text())
    assert stored["accuracy"]["after"] == both.after.to_dict()
    assert stored["accuracy"]["before"]["top1"] == pytest.approx(
        crop_accuracy(teacher, (world.val_json, world.image_dir("val")), world.category_names).top1)
    assert stored["key"]["data"]["annotations_sha256"] and stored["key"]["settings"]["epochs"] == 1


def test_matching_manifest_skips_training_and_other_settings_retrain(world, tmp_path):
    out = tmp_path / "teacher"
    first = _run(world, out)
    files = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in out.iterdir()}
    again = _run(world, out)
    assert first.trained and not again.trained and again.teacher is None
    assert {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in out.iterdir()} == files
    assert again.after == first.after and again.before == first.before
    # Other settings, or other data, train again (and replace the folder whole).
    other = _run(world, out, epochs=2)
    assert other.trained and json.loads((out / MANIFEST_NAME).read_text())["key"]["settings"]["epochs"] == 2
    changed_data = tmp_path / "instances_train.json"
    content = json.loads(world.train_json.read_text())
    content["annotations"] = content["annotations"][1:]
    changed_data.write_text(json.dumps(content))
    retrained = renormalize_teacher(*TEACHER, changed_data, world.image_dir("train"), world.base_names, out, **FAST)
    assert retrained.trained and retrained.manifest["data"]["crops"] == other.manifest["data"]["crops"] - 1
    assert not list(tmp_path.glob(".teacher.*")), "temporary folders left behind"


def test_training_is_deterministic_for_a_seed(both, world, tmp_path):
    again = _run(world, tmp_path / "again")
    first = (both.folder / "open_clip_model.safetensors").read_bytes()
    assert (again.folder / "open_clip_model.safetensors").read_bytes() == first
    assert again.manifest["history"] == both.manifest["history"]
    reseeded = load_file(str(_run(world, tmp_path / "reseeded", seed=1).folder / "open_clip_model.safetensors"))
    assert _changed(reseeded, load_file(str(both.folder / "open_clip_model.safetensors")))


def test_crop_accuracy_equals_a_hand_computation(world, teacher):
    names, groups = world.category_names, {"base": world.base_names, "novel": world.novel_names}
    measured = crop_accuracy(teacher, (world.val_json, world.image_dir("val")), names, groups=groups)
    content = json.loads(world.val_json.read_text())
    name_of = {category["id"]: category["name"] for category in content["categories"]}
    files = {image["id"]: image["file_name"] for image in content["images"]}
    text = teacher.encode_text(names, "a photo of a {}")
    right, truth = [], []
    for annotation in content["annotations"]:
        pixels = read_image(world.image_dir("val") / files[annotation["image_id"]]).float() / 255
        x, y, w, h = annotation["bbox"]
        region = teacher.encode_regions(pixels[None], torch.tensor([[0, x, y, x + w, y + h]]), EZAD_CROP)
        right.append(names[int((region @ text.T).argmax())] == name_of[annotation["category_id"]])
        truth.append(name_of[annotation["category_id"]])
    assert measured.crops == len(right) > 0
    assert measured.top1 == pytest.approx(100 * sum(right) / len(right))
    for group, members in groups.items():
        hits = [hit for hit, name in zip(right, truth) if name in members]
        assert measured.groups[group] == pytest.approx(100 * sum(hits) / len(hits))
        assert measured.group_crops[group] == len(hits)


def test_unreadable_image_is_skipped_and_reported(world, teacher, tmp_path):
    images = tmp_path / "val"
    shutil.copytree(world.image_dir("val"), images)
    (images / "000001.png").write_bytes(b"not a png")
    content = json.loads(world.val_json.read_text())
    lost = sum(annotation["image_id"] == 2 for annotation in content["annotations"])
    crops = GroundTruthCrops.for_teacher(teacher, world.val_json, images, world.category_names)
    measured = crop_accuracy(teacher, crops)
    assert measured.crops == len(content["annotations"]) - lost
    assert len(measured.skipped) == 1 and "000001.png" in measured.skipped[0]
    # In training the image's boxes are replaced by others and the file is reported in the manifest.
    train_images = tmp_path / "train"
    shutil.copytree(world.image_dir("train"), train_images)
    (train_images / "000000.png").write_bytes(b"")
    result = renormalize_teacher(*TEACHER, world.train_json, train_images, world.base_names, tmp_path / "out",
                                 eval_annotations=world.val_json, eval_image_root=images,
                                 eval_names=world.category_names, **FAST)
    assert any("000000.png" in entry for entry in result.manifest["data"]["skipped"])
    assert any("000001.png" in entry for entry in result.after.skipped)


def test_random_flip_in_training_only(world, teacher):
    train = GroundTruthCrops.for_teacher(teacher, world.train_json, world.image_dir("train"), world.base_names,
                                         train=True)
    plain = GroundTruthCrops.for_teacher(teacher, world.train_json, world.image_dir("train"), world.base_names)
    reference = plain[0]["pixels"]
    assert reference.shape == (3, 64, 64) and not torch.equal(reference, reference.flip(-1))
    torch.manual_seed(0)
    views = [train[0]["pixels"] for _ in range(16)]
    same = [torch.equal(view, reference) for view in views]
    mirrored = [torch.equal(view, reference.flip(-1)) for view in views]
    assert all(a or b for a, b in zip(same, mirrored)) and any(same) and any(mirrored)
    assert all(torch.equal(plain[0]["pixels"], reference) for _ in range(4))  # evaluation never flips
    assert all(plain[i]["label"] == label for i, label in enumerate(plain.labels))


def test_hugging_face_teacher_folder(hf_clip_folder, world, tmp_path):
    result = renormalize_teacher(str(hf_clip_folder), None, world.train_json, world.image_dir("train"),
                                 world.base_names, tmp_path / "hf", **FAST)
    source = create_teacher(str(hf_clip_folder))
    loaded = result.load()
    changed = {name for name, value in loaded.adapter.model.state_dict().items()
               if not torch.equal(value, source.adapter.model.state_dict()[name])}
    assert changed and changed <= set(layernorm_parameters(source))
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.encode_images(pixels), result.teacher.encode_images(pixels), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(towers=("image", "vision")), "towers must be a non-empty subset"),
        (dict(towers=()), "towers must be a non-empty subset"),
        (dict(class_names=[]), "class_names is empty"),
        (dict(class_names=["red ball", "green cube"]), "no categories named ['green cube']"),
        (dict(loss="focal"), "loss must be one of"),
        (dict(loss="ce", bias_init=-10.0), "bias_init applies to the sigmoid loss only"),
        (dict(epochs=0), "epochs must be a positive integer"),
        (dict(eval_names=["red ball"]), "eval_names lacks training categories"),
    ],
)
def test_bad_settings_name_the_fix(world, tmp_path, change, message):
    arguments = dict(class_names=world.base_names, **FAST)
    arguments.update(change)
    with pytest.raises(ConfigError) as error:
        renormalize_teacher(*TEACHER, world.train_json, world.image_dir("train"), out_dir=tmp_path / "out",
                            **arguments)
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_refuses_to_replace_a_folder_it_did_not_write(world, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a re-normalised teacher"):
        _run(world, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_crop_accuracy_checks_its_inputs(world, teacher):
    crops = GroundTruthCrops.for_teacher(teacher, world.val_json, world.image_dir("val"), world.category_names)
    with pytest.raises(ConfigError, match="not among the class names"):
        crop_accuracy(teacher, crops, world.base_names)
    with pytest.raises(ConfigError, match="not among the class names"):
        crop_accuracy(teacher, crops, groups={"rare": ["gold ball"]})
    with pytest.raises(ConfigError, match="needs class_names"):
        crop_accuracy(teacher, (world.val_json, world.image_dir("val")))
    training = GroundTruthCrops.for_teacher(teacher, world.val_json, world.image_dir("val"), world.category_names,
                                            train=True)
    with pytest.raises(ConfigError, match="train=False"):
        crop_accuracy(teacher, training)
    small = GroundTruthCrops(world.val_json, world.image_dir("val"), world.category_names, image_size=32)
    with pytest.raises(ConfigError, match="for_teacher"):
        crop_accuracy(teacher, small)
